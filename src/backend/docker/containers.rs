//! Finding and removing this instance's runner containers.

use crate::backend::labels;
use std::collections::HashMap;

use bollard::models::ContainerSummaryStateEnum;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};

use super::error::status_of;
use super::{DockerBackend, claims};
use crate::backend::labels::kind_of;
use crate::backend::{EngineError, NetworkMode, ObservedRunner, RUNNER_PORT, Stop};
use crate::config::SESSION_LABEL;

impl DockerBackend {
    /// Stops a container as `stop` says, then removes it by force (which
    /// kills what still runs). A container the engine does not know counts
    /// as removed.
    pub(super) async fn remove_container(
        &self,
        container: &str,
        stop: Stop,
    ) -> Result<(), EngineError> {
        if stop == Stop::Graceful {
            let options = StopContainerOptionsBuilder::new()
                .t(self.stop_timeout_seconds as i32)
                .build();
            match self.docker.stop_container(container, Some(options)).await {
                Ok(()) => {}
                Err(error) if status_of(&error) == Some(404) => {
                    tracing::info!(container, "runner container already gone");
                    return Ok(());
                }
                // Stopping is a courtesy to the runner; the forced removal
                // below is what must succeed.
                Err(error) => tracing::warn!(container, %error, "stopping a runner failed"),
            }
        }
        let remove = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(container, Some(remove)).await {
            Ok(()) => {
                tracing::info!(container, ?stop, "runner container removed");
                Ok(())
            }
            Err(error) if status_of(&error) == Some(404) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    pub(super) async fn inspect_running(&self, container: &str) -> Result<bool, EngineError> {
        match self.docker.inspect_container(container, None).await {
            Ok(inspected) => Ok(inspected
                .state
                .and_then(|state| state.running)
                .unwrap_or(false)),
            Err(error) if status_of(&error) == Some(404) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// This instance's containers, running or not: all of them, or one
    /// session's.
    pub(super) async fn list_labelled(
        &self,
        session_id: Option<&str>,
    ) -> Result<Vec<ObservedRunner>, EngineError> {
        let label_filter = match session_id {
            Some(session) => format!("{SESSION_LABEL}={session}"),
            None => SESSION_LABEL.to_owned(),
        };
        let filters = HashMap::from([("label", vec![label_filter.as_str()])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let (summaries, watermark) = tokio::try_join!(
            async { Ok(self.docker.list_containers(Some(options)).await?) },
            self.claims.watermark(),
        )?;
        Ok(summaries
            .into_iter()
            .filter_map(|summary| {
                let labels = summary.labels.unwrap_or_default();
                if !self.spec.owns(&labels) {
                    return None;
                }
                let ports = summary.ports.unwrap_or_default();
                let host_port = self.spec.pick_host_port(
                    ports
                        .iter()
                        .filter(|port| port.private_port == RUNNER_PORT)
                        .map(|port| (port.ip.as_deref(), port.public_port)),
                );
                let address = summary
                    .network_settings
                    .as_ref()
                    .and_then(|settings| settings.networks.as_ref())
                    .and_then(|networks| {
                        super::runner_address(networks.values().map(|n| n.ip_address.as_deref()))
                    });
                let name = summary
                    .names
                    .unwrap_or_default()
                    .first()
                    .map(|name| name.trim_start_matches('/').to_owned())
                    .unwrap_or_default();
                let id = summary.id?;
                let pooled_at = labels::pooled_at(&labels);
                if let Some(at) = pooled_at {
                    self.claims.remember(&id, at);
                }
                Some(ObservedRunner {
                    pooled: claims::waiting(
                        labels::pooled(&labels),
                        name.ends_with(labels::CLAIMED_SUFFIX),
                        pooled_at,
                        watermark,
                    ),
                    id,
                    name,
                    session_id: labels.get(SESSION_LABEL)?.clone(),
                    running: summary.state == Some(ContainerSummaryStateEnum::RUNNING),
                    kind: kind_of(&labels),
                    host_port,
                    network_mode: NetworkMode::from(
                        summary
                            .host_config
                            .and_then(|config| config.network_mode)
                            .filter(|mode| !matches!(mode.as_str(), "default" | "bridge")),
                    ),
                    created: summary.created.unwrap_or_default(),
                    node: None,
                    address,
                    token: labels::token_of(&labels),
                })
            })
            .collect())
    }
}
