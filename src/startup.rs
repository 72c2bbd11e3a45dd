//! Builds the service from its settings: database, engine, startup
//! reconciliation, then the listener, so that no request is accepted before
//! the database and the engine agree.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::db::Db;
use crate::docker::Engine;
use crate::reaper::Reaper;
use crate::reconcile::{Reconciler, Summary};
use crate::runners::Runners;

pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    runners: Runners,
    reconciled: Summary,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let db = Db::connect(&settings.database_url).await?;
        let engine = Engine::connect(&settings).context("invalid DOCKER_HOST")?;
        engine.ping().await.context(
            "cannot reach the Docker Engine (check DOCKER_HOST and the socket's permissions)",
        )?;
        let reconciled = Reconciler {
            db: &db,
            engine: &engine,
            policy: settings.orphan_policy,
        }
        .run()
        .await
        .context("startup reconcile failed")?;
        let listener = TcpListener::bind((settings.listen_address, settings.port))
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}:{}",
                    settings.listen_address, settings.port
                )
            })?;
        let address = listener.local_addr()?;
        Ok(Self {
            listener,
            address,
            runners: Runners::new(db, engine, Arc::new(settings)),
            reconciled,
        })
    }

    /// The bound port (the real one when `PORT=0`).
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn runners(&self) -> &Runners {
        &self.runners
    }

    /// What the startup reconcile did.
    pub fn reconciled(&self) -> Summary {
        self.reconciled
    }

    /// Serves until `shutdown` is cancelled, then lets in-flight requests
    /// finish and stops the reaper. Runners are left running: the next
    /// start adopts them.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let settings = self.runners.settings();
        let reaper = Reaper::new(
            self.runners.clone(),
            settings.inactivity_timeout,
            settings.cleanup_interval,
        );
        let reaper = tokio::spawn(reaper.run_until_stopped(shutdown.clone()));
        tracing::info!(address = %self.address, "listening");
        let served = axum::serve(self.listener, crate::http::router(self.runners))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await;
        shutdown.cancel();
        reaper.await.context("reaper task failed")?;
        served.context("HTTP server failed")?;
        tracing::info!("stopped");
        Ok(())
    }
}
