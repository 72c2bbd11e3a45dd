//! The swarm tier's harness: the service binary against the swarm, its API
//! as a browser calls it, runners reached from the client namespace, and
//! what the manager says about this run's services.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{ListServicesOptionsBuilder, ListTasksOptionsBuilder};
use serde_json::{Value, json};

use crate::cluster::{Cluster, Node};
use crate::support::images::TestImages;
use crate::support::service::{ServiceProcess, service_command};

pub type Test = crate::support::tier::Test<Swarm>;

/// How long the service may take to start and reconcile.
const START_LIMIT: Duration = Duration::from_secs(60);
const INSTANCE_LABEL: &str = "taylored-orchestrator-id";

pub struct Swarm {
    pub cluster: Cluster,
    pub images: TestImages,
    pub manager: Docker,
    /// This run's instances, whose services `clean_up` removes.
    instances: Mutex<Vec<String>>,
    dir: tempfile::TempDir,
}

/// One service binary started against the swarm.
pub struct Service {
    pub process: ServiceProcess,
    pub database: String,
    http: reqwest::Client,
    base: String,
}

impl Swarm {
    pub fn new(cluster: Cluster, images: TestImages) -> Self {
        let manager = engine(cluster.manager());
        Self {
            cluster,
            images,
            manager,
            instances: Mutex::default(),
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    /// A fresh instance name (its services, ports and database its own).
    pub fn instance(&self, what: &str) -> String {
        let mut instances = self.instances.lock().unwrap();
        let instance = format!("swarm-{what}-{}", std::process::id());
        instances.push(instance.clone());
        instance
    }

    /// Starts the service for `instance` (its database kept across
    /// restarts), with `env` on top of the tier's settings.
    pub async fn spawn(&self, instance: &str, env: &[(&str, &str)]) -> Result<Service, String> {
        self.start(instance, env, true).await
    }

    /// Starts the service and waits only until it listens.
    pub async fn spawn_listening(
        &self,
        instance: &str,
        env: &[(&str, &str)],
    ) -> Result<Service, String> {
        self.start(instance, env, false).await
    }

    async fn start(
        &self,
        instance: &str,
        env: &[(&str, &str)],
        ready: bool,
    ) -> Result<Service, String> {
        let database = self.file(&format!("{instance}.db"));
        self.start_on(instance, env, ready, self.cluster.manager(), &database)
            .await
    }

    /// Starts the service for `instance` through `manager`'s engine, on the
    /// database file `database` (a path; see [`Swarm::file`]).
    pub async fn spawn_on(
        &self,
        instance: &str,
        env: &[(&str, &str)],
        manager: &Node,
        database: &str,
    ) -> Result<Service, String> {
        self.start_on(instance, env, true, manager, database).await
    }

    /// A path in this run's temporary directory.
    pub fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    async fn start_on(
        &self,
        instance: &str,
        env: &[(&str, &str)],
        ready: bool,
        manager: &Node,
        database: &str,
    ) -> Result<Service, String> {
        let database = format!("sqlite://{database}");
        let mut command = service_command(&database, instance, &self.images.runner);
        command
            .env("RUNNER_BACKEND", "swarm")
            .env("DOCKER_HOST", &manager.socket)
            // Swarm publishes on every address of the node.
            .env("RUNNER_BIND_ADDRESS", "0.0.0.0")
            .env("RECONCILE_INTERVAL_SECONDS", "1")
            .env("RUNNER_START_TIMEOUT_SECONDS", "30")
            .env("RUST_LOG", "info");
        for (key, value) in env {
            command.env(key, value);
        }
        let process = if ready {
            ServiceProcess::spawn(command, START_LIMIT).await?
        } else {
            ServiceProcess::spawn_listening(command, START_LIMIT).await?
        };
        let base = format!("http://127.0.0.1:{}", process.port);
        Ok(Service {
            process,
            database,
            http: reqwest::Client::new(),
            base,
        })
    }

    /// GET `endpoint` from the client namespace, as a browser elsewhere on
    /// the network would; the runner's JSON answer, if any.
    pub fn fetch_as_client(&self, endpoint: &str) -> Option<Value> {
        self.get_as_client(&format!("{endpoint}/"))
    }

    /// GET `url` from the client namespace; its JSON answer, if any.
    pub fn get_as_client(&self, url: &str) -> Option<Value> {
        let output = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.cluster.client_netns))
            .args(["curl", "-s", "-m", "5", url])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        serde_json::from_slice(&output.stdout).ok()
    }

    /// `nft` in `node`'s network namespace (its kernel's rules).
    pub fn nft(&self, node: &Node, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", node.netns))
            .arg("nft")
            .args(args)
            .output()
            .expect("nsenter nft")
    }

    /// `docker` against `node`'s engine.
    pub fn docker_on(&self, node: &Node, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .arg("-H")
            .arg(&node.socket)
            .args(args)
            .output()
            .expect("docker")
    }

    /// This instance's services, each with the hostname of the node its
    /// latest task was placed on.
    pub async fn services(&self, instance: &str) -> Result<Vec<(String, Option<String>)>, String> {
        services_on(&self.manager, instance).await
    }

    /// The node whose address an endpoint names.
    pub fn node_of(&self, endpoint: &str) -> Option<&Node> {
        let host = endpoint.trim_start_matches("http://").split(':').next()?;
        self.cluster.nodes.iter().find(|node| node.address == host)
    }

    /// Removes every service of this run's instances (between tests, and
    /// after a failure).
    /// Through every manager that answers: the failover test loses the
    /// first.
    pub async fn clean_up(&self) {
        let instances = self.instances.lock().unwrap().clone();
        for manager in self.cluster.managers() {
            let engine = engine(manager);
            for instance in &instances {
                if let Ok(services) = services_on(&engine, instance).await {
                    for (name, _) in services {
                        let _ = engine.delete_service(&name).await;
                    }
                }
            }
        }
    }
}

impl Service {
    pub async fn provision(&self, session: &str) -> Result<(u16, Value), String> {
        self.provision_request(Some(session), json!({})).await
    }

    /// A provision as the browser makes its first one: no session id.
    pub async fn provision_without_session(&self) -> Result<(u16, Value), String> {
        self.provision_body(json!({})).await
    }

    /// A provision with this JSON body and no session header.
    pub async fn provision_body(&self, body: Value) -> Result<(u16, Value), String> {
        self.provision_request(None, body).await
    }

    async fn provision_request(
        &self,
        session: Option<&str>,
        body: Value,
    ) -> Result<(u16, Value), String> {
        let mut request = self
            .http
            .post(format!("{}/api/runner/provision", self.base))
            .json(&body);
        if let Some(session) = session {
            request = request.header("X-Session-Id", session);
        }
        let response = request.send().await.map_err(|error| error.to_string())?;
        let status = response.status().as_u16();
        let body = response.json().await.map_err(|error| error.to_string())?;
        Ok((status, body))
    }

    /// A provision that must succeed: its endpoint.
    pub async fn endpoint(&self, session: &str) -> Result<String, String> {
        let (status, body) = self.provision(session).await?;
        if status != 200 && status != 201 {
            return Err(format!("provision of {session} answered {status}: {body}"));
        }
        body["endpoint"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no endpoint in {body}"))
    }

    /// `GET path` of the service: its status and JSON body.
    pub async fn get(&self, path: &str) -> Result<(u16, Value), String> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|error| error.to_string())?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|error| error.to_string())?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    pub async fn heartbeat(&self, session: &str) -> Result<u16, String> {
        self.post("heartbeat", session).await
    }

    pub async fn deprovision(&self, session: &str) -> Result<u16, String> {
        self.post("deprovision", session).await
    }

    async fn post(&self, what: &str, session: &str) -> Result<u16, String> {
        let response = self
            .http
            .post(format!("{}/api/runner/{what}", self.base))
            .json(&json!({ "sessionId": session }))
            .send()
            .await
            .map_err(|error| error.to_string())?;
        Ok(response.status().as_u16())
    }

    /// `orchestrator runners list`, as an operator runs it on this database.
    pub fn runners_list(&self) -> Result<String, String> {
        let output = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .args(["runners", "list"])
            .env("DATABASE_URL", &self.database)
            .output()
            .map_err(|error| error.to_string())?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The audit log's reasons for one session, oldest first.
    pub async fn audit_reasons(&self, session: &str) -> Result<Vec<String>, String> {
        use sqlx::Row;
        let pool = sqlx::SqlitePool::connect(&self.database)
            .await
            .map_err(|error| error.to_string())?;
        let rows = sqlx::query("SELECT reason FROM audit_log WHERE session_id = ? ORDER BY id")
            .bind(session)
            .fetch_all(&pool)
            .await
            .map_err(|error| error.to_string())?;
        pool.close().await;
        Ok(rows.iter().map(|row| row.get::<String, _>(0)).collect())
    }
}

/// A client of `node`'s engine.
pub fn engine(node: &Node) -> Docker {
    Docker::connect_with_unix(
        node.socket.trim_start_matches("unix://"),
        30,
        bollard::API_DEFAULT_VERSION,
    )
    .expect("a node's socket")
}

/// `instance`'s services as `manager` lists them, each with the hostname of
/// the node its latest task was placed on.
pub async fn services_on(
    manager: &Docker,
    instance: &str,
) -> Result<Vec<(String, Option<String>)>, String> {
    let label = format!("{INSTANCE_LABEL}={instance}");
    let filters = HashMap::from([("label", vec![label.as_str()])]);
    let services = manager
        .list_services(Some(
            ListServicesOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
        .map_err(|error| error.to_string())?;
    let mut found = Vec::new();
    for service in services {
        let name = service.spec.and_then(|spec| spec.name).unwrap_or_default();
        let filters = HashMap::from([("service", vec![name.as_str()])]);
        let tasks = manager
            .list_tasks(Some(
                ListTasksOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .map_err(|error| error.to_string())?;
        let node_id = tasks.iter().find_map(|task| task.node_id.clone());
        let node = match node_id {
            Some(id) => manager
                .inspect_node(&id)
                .await
                .ok()
                .and_then(|node| node.description?.hostname),
            None => None,
        };
        found.push((name, node));
    }
    Ok(found)
}
