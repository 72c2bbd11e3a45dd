//! The egress tier's harness: the service binary run as root inside the
//! engine host's namespace (where it installs its nftables table), reached
//! through the door; runners' `/probe` endpoints reached at their published
//! ports through the same door; the table read with `nft -j` there.

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::images::TestImages;
use crate::support::service::{ServiceProcess, service_command};
use crate::support::wait::poll_until;
use crate::world::World;

pub type Test = crate::support::tier::Test<Egress>;

/// How long the service may take to start and reconcile.
pub const START_LIMIT: Duration = Duration::from_secs(60);
/// How long a repair by the periodic reconcile (every second here) may take.
pub const REPAIR_LIMIT: Duration = Duration::from_secs(20);
const INSTANCE_LABEL: &str = "taylored-orchestrator-id";
const SESSION_LABEL: &str = "taylored-runner-session-id";
/// The service's default `GATEWAY_DOMAIN`.
const GATEWAY_DOMAIN: &str = ".runners.localhost";

pub struct Egress {
    pub world: World,
    pub images: TestImages,
    http: reqwest::Client,
    /// This run's instances, whose runners, networks and tables `clean_up`
    /// removes.
    instances: Mutex<Vec<String>>,
    dir: tempfile::TempDir,
}

/// One service binary in the engine host.
pub struct Service {
    pub process: ServiceProcess,
    pub instance: String,
    /// The env it was started with on top of the tier's (for restarts and
    /// the operator commands).
    pub env: Vec<(String, String)>,
    base: String,
    http: reqwest::Client,
}

/// A provisioned runner, reached at its published port through the door.
pub struct Runner {
    pub session: String,
    /// `http://<door>:<published port>`, or in gateway mode the service's
    /// own port at the door.
    pub url: String,
    /// In gateway mode, the `Host` its requests carry (`<token>.<domain>`).
    pub host: Option<String>,
    /// The network it is on and that network's gateway (the engine host's
    /// address as the runner sees it).
    pub network: String,
    pub gateway: String,
}

/// What one probe must find.
#[derive(Clone, Debug)]
pub enum Expect {
    /// Connected and answered this text.
    Reach(&'static str),
    /// Connected (the peer may answer nothing to `ping\n`, as an HTTP
    /// server does).
    Connect,
    /// The connect failed (refused or timed out).
    Block,
}

#[derive(Clone, Debug)]
pub struct Probe {
    pub what: String,
    /// `IP:PORT`, or `dns:NAME` for a DNS query.
    pub target: String,
    pub expect: Expect,
}

pub fn tcp(what: &str, target: impl Into<String>, expect: Expect) -> Probe {
    Probe {
        what: what.to_owned(),
        target: target.into(),
        expect,
    }
}

/// A DNS A query; `Reach` means it resolved to the world's public host.
pub fn dns(expect: Expect) -> Probe {
    Probe {
        what: "DNS through the runner's resolver".to_owned(),
        target: "dns:anything.example".to_owned(),
        expect,
    }
}

/// `taylored_egress_<id>`, the id's characters other than [a-zA-Z0-9_] as
/// `_` (the contract's name; see [`Egress::table_of`] for the suffixed form).
pub fn table_name(instance: &str) -> String {
    let id: String = instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("taylored_egress_{id}")
}

/// One rule of a table: its chain, handle and comment.
pub type Rule = (String, u64, String);

impl Egress {
    pub fn new(world: World, images: TestImages) -> Self {
        Self {
            world,
            images,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("an HTTP client"),
            instances: Mutex::default(),
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    /// A fresh instance name (runners, networks, table and database its own).
    pub fn instance(&self, what: &str) -> String {
        let instance = format!("egr-{what}-{}", std::process::id());
        self.instances.lock().unwrap().push(instance.clone());
        instance
    }

    fn database(&self, instance: &str) -> String {
        format!(
            "sqlite://{}",
            self.dir.path().join(format!("{instance}.db")).display()
        )
    }

    /// The orchestrator binary with `args` inside the engine host, with the
    /// tier's settings and `env` on top.
    fn command(&self, instance: &str, env: &[(String, String)], args: &[&str]) -> Command {
        let base = service_command(&self.database(instance), instance, &self.images.runner);
        let program = base.get_program().to_string_lossy().into_owned();
        let mut command = self.world.in_engine_host(&program);
        command.args(args).env_clear();
        for (key, value) in base.get_envs() {
            if let Some(value) = value {
                command.env(key, value);
            }
        }
        command
            .env("DOCKER_HOST", &self.world.socket)
            .env("LISTEN_ADDRESS", "0.0.0.0")
            .env("RUNNER_BIND_ADDRESS", "0.0.0.0")
            .env(
                "RUNNERS_HOST",
                format!("http://{}", self.world.door_address),
            )
            .env("RECONCILE_INTERVAL_SECONDS", "1")
            .env("RUNNER_DNS", &self.world.dns)
            .env("RUST_LOG", "info");
        for (key, value) in env {
            command.env(key, value);
        }
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        command
    }

    /// Starts the service for `instance` and waits until it is ready.
    pub async fn spawn(&self, instance: &str, env: &[(&str, &str)]) -> Result<Service, String> {
        let mut service = self.spawn_listening(instance, env).await?;
        service.process.wait_ready(START_LIMIT).await?;
        Ok(service)
    }

    /// Starts the service and waits only until it listens.
    pub async fn spawn_listening(
        &self,
        instance: &str,
        env: &[(&str, &str)],
    ) -> Result<Service, String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        self.world.check_routes()?;
        let process =
            ServiceProcess::spawn_listening(self.command(instance, &env, &["serve"]), START_LIMIT)
                .await?;
        let base = format!("http://{}:{}", self.world.door_address, process.port);
        Ok(Service {
            process,
            instance: instance.to_owned(),
            env,
            base,
            http: self.http.clone(),
        })
    }

    /// SIGTERM, then the same instance started again on its database.
    pub async fn restart(&self, service: Service) -> Result<Service, String> {
        let Service {
            process,
            instance,
            env,
            ..
        } = service;
        let status = process.terminate(START_LIMIT).await?;
        if !status.success() {
            return Err(format!("the service exited {status} on SIGTERM"));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.spawn(&instance, &env).await
    }

    /// `orchestrator <args>` as an operator runs it for this instance, in
    /// the engine host: its stdout, or its stderr as the error.
    pub fn operator(
        &self,
        instance: &str,
        env: &[(String, String)],
        args: &[&str],
    ) -> Result<String, String> {
        let output = self
            .command(instance, env, args)
            .stdout(Stdio::piped())
            .output()
            .map_err(|error| error.to_string())?;
        if !output.status.success() {
            return Err(format!(
                "orchestrator {args:?} exited {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The rules of this instance's table, as `(chain, handle, comment)`,
    /// or `None` when there is no such table.
    pub fn rules(&self, instance: &str) -> Result<Option<Vec<Rule>>, String> {
        let table = self.table_of(instance)?;
        let output = self
            .world
            .in_engine_host("nft")
            .args(["-j", "list", "table", "inet", &table])
            .output()
            .map_err(|error| format!("nft: {error}"))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            if stderr.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(format!("nft list table inet {table}: {}", stderr.trim()));
        }
        let listing: Value = serde_json::from_slice(&output.stdout)
            .map_err(|error| format!("nft -j output: {error}"))?;
        let mut rules = Vec::new();
        for item in listing["nftables"].as_array().into_iter().flatten() {
            let rule = &item["rule"];
            if rule.is_null() {
                continue;
            }
            rules.push((
                rule["chain"].as_str().unwrap_or_default().to_owned(),
                rule["handle"].as_u64().unwrap_or_default(),
                rule["comment"].as_str().unwrap_or_default().to_owned(),
            ));
        }
        Ok(Some(rules))
    }

    /// This instance's table: `taylored_egress_<sanitised id>`, or, when
    /// sanitising changed the id, that name with a `_<8 hex>` suffix (the
    /// service's way to keep `a-b` and `a_b` apart), if there is one.
    pub fn table_of(&self, instance: &str) -> Result<String, String> {
        let exact = table_name(instance);
        if table_name(instance) == format!("taylored_egress_{instance}") {
            return Ok(exact);
        }
        let suffixed = self.tables()?.into_iter().find(|name| {
            name.strip_prefix(&exact)
                .and_then(|rest| rest.strip_prefix('_'))
                .is_some_and(|hex| hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        });
        Ok(suffixed.unwrap_or(exact))
    }

    /// The names of every `taylored_egress_*` table in the engine host.
    pub fn tables(&self) -> Result<Vec<String>, String> {
        let output = self
            .world
            .in_engine_host("nft")
            .args(["list", "tables"])
            .output()
            .map_err(|error| format!("nft: {error}"))?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.strip_prefix("table inet "))
            .filter(|name| name.starts_with("taylored_egress_"))
            .map(str::to_owned)
            .collect())
    }

    /// Removes this run's runners, their networks and this run's tables
    /// (between tests, and after a failure). Services are gone by then:
    /// each test's [`Service`] values are dropped (killed) when it returns.
    pub fn clean_up(&self) {
        let instances = self.instances.lock().unwrap().clone();
        for instance in &instances {
            let label = format!("label={INSTANCE_LABEL}={instance}");
            if let Ok(ids) = self.world.docker(&["ps", "-aq", "--filter", &label]) {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(ids);
                    let _ = self.world.docker(&args);
                }
            }
            for network in [
                format!("taylored-runners-{instance}"),
                format!("taylored-runners-{instance}-none"),
            ] {
                let _ = self.world.docker(&["network", "rm", &network]);
            }
            let _ = self
                .world
                .in_engine_host("nft")
                .args([
                    "delete",
                    "table",
                    "inet",
                    &self.table_of(instance).unwrap_or_default(),
                ])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Runs every probe from inside `runner` and checks each against its
    /// expectation; all failures are reported together. Unless
    /// `pairing_elsewhere` names where this run reached something, a list
    /// with a `Block` must also hold a `Reach`, so that a test cannot pass
    /// by probing nothing.
    pub async fn check_probes(
        &self,
        runner: &Runner,
        probes: &[Probe],
        pairing_elsewhere: Option<&str>,
    ) -> Result<(), String> {
        let blocks = probes.iter().any(|p| matches!(p.expect, Expect::Block));
        let reaches = probes.iter().any(|p| matches!(p.expect, Expect::Reach(_)));
        if blocks && !reaches && pairing_elsewhere.is_none() {
            return Err("a blocked probe with nothing reached beside it proves nothing".to_owned());
        }
        // The runner itself answers at its published port: the probes below
        // ran, whatever they found.
        let alive = self.runner_get(runner, "/").await?;
        if alive["runner"] != "ok" {
            return Err(format!("the runner at {} answered {alive}", runner.url));
        }
        let mut failures = Vec::new();
        let mut report = Vec::new();
        for probe in probes {
            let path = match probe.target.strip_prefix("dns:") {
                Some(name) => format!("/probe/dns?name={name}"),
                None => format!("/probe/tcp?addr={}", probe.target),
            };
            let answer = self.runner_get(runner, &path).await?;
            let ok = answer["ok"].as_bool() == Some(true);
            let error = answer["error"].as_str().unwrap_or_default();
            let is_dns = probe.target.starts_with("dns:");
            let passed = match (&probe.expect, is_dns) {
                (Expect::Reach(_), true) => {
                    ok && answer["addresses"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|a| a == self.world.public.as_str()))
                }
                (Expect::Reach(text), false) => {
                    ok && answer["reply"].as_str().map(str::trim) == Some(*text)
                }
                (Expect::Connect, _) => ok || error.starts_with("read"),
                (Expect::Block, true) => !ok,
                (Expect::Block, false) => !ok && error.starts_with("connect"),
            };
            let line = format!(
                "{} {} ({}): expected {:?}, got {answer}",
                if passed { "ok  " } else { "FAIL" },
                probe.what,
                probe.target,
                probe.expect
            );
            if !passed {
                failures.push(line.clone());
            }
            report.push(line);
        }
        println!("    probes from {} ({}):", runner.session, runner.network);
        for line in &report {
            println!("      {line}");
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "from runner {} on {}:\n      {}",
                runner.session,
                runner.network,
                failures.join("\n      ")
            ))
        }
    }

    /// `GET path` of the runner, at its port or through the gateway.
    pub async fn runner_get(&self, runner: &Runner, path: &str) -> Result<Value, String> {
        self.get_json(&format!("{}{path}", runner.url), runner.host.as_deref())
            .await
    }

    async fn get_json(&self, url: &str, host: Option<&str>) -> Result<Value, String> {
        let mut request = self.http.get(url);
        if let Some(host) = host {
            request = request.header(reqwest::header::HOST, host);
        }
        let response = request
            .send()
            .await
            .map_err(|error| format!("GET {url}: {error}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|error| format!("GET {url}: {error}"))?;
        if !status.is_success() {
            return Err(format!("GET {url} answered {status}: {text}"));
        }
        serde_json::from_str(&text).map_err(|_| format!("GET {url} answered {text}"))
    }

    /// The runner behind a provision's answer: reached at its published
    /// port through the door, or through the service's gateway by its host
    /// name; its network and gateway address from the engine.
    pub fn runner(&self, service: &Service, session: &str, body: Value) -> Result<Runner, String> {
        let endpoint = body["endpoint"]
            .as_str()
            .ok_or_else(|| format!("no endpoint in {body}"))?;
        let authority = endpoint
            .split_once("://")
            .map_or(endpoint, |(_, rest)| rest)
            .trim_end_matches('/');
        let (host, port) = authority
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
            .ok_or_else(|| format!("no port in the endpoint {endpoint}"))?;
        let (url, host) = if host.ends_with(GATEWAY_DOMAIN) {
            (
                format!(
                    "http://{}:{}",
                    self.world.door_address, service.process.port
                ),
                Some(authority.to_owned()),
            )
        } else {
            (format!("http://{}:{port}", self.world.door_address), None)
        };
        let label = format!("label={SESSION_LABEL}={session}");
        let ids = self.world.docker(&["ps", "-q", "--filter", &label])?;
        let id = ids
            .split_whitespace()
            .next()
            .ok_or_else(|| format!("no container for session {session}"))?;
        let inspect: Value = serde_json::from_str(&self.world.docker(&["inspect", id])?)
            .map_err(|error| error.to_string())?;
        let (network, settings) = inspect[0]["NetworkSettings"]["Networks"]
            .as_object()
            .and_then(|networks| networks.iter().next())
            .ok_or_else(|| format!("container {id} is on no network"))?;
        Ok(Runner {
            session: session.to_owned(),
            url,
            host,
            network: network.clone(),
            gateway: settings["Gateway"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// A provision that must succeed, and its runner.
    pub async fn provision(
        &self,
        service: &Service,
        session: &str,
        body: Value,
    ) -> Result<Runner, String> {
        let (status, answer) = service.provision(session, body).await?;
        if status != 200 && status != 201 {
            return Err(format!(
                "provision of {session} answered {status}: {answer}"
            ));
        }
        let runner = self.runner(service, session, answer)?;
        // The runner's server may take a moment after the start.
        poll_until(START_LIMIT, "the runner answering", || async {
            self.runner_get(&runner, "/").await.ok()
        })
        .await?;
        Ok(runner)
    }
}

impl Service {
    /// `POST /api/runner/provision` for `session` with this body.
    pub async fn provision(&self, session: &str, body: Value) -> Result<(u16, Value), String> {
        let mut body = body;
        if let Some(object) = body.as_object_mut() {
            object.entry("sessionId").or_insert_with(|| json!(session));
        }
        let response = self
            .http
            .post(format!("{}/api/runner/provision", self.base))
            .header("X-Session-Id", session)
            .json(&body)
            .send()
            .await
            .map_err(|error| error.to_string())?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|error| error.to_string())?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, body))
    }

    /// `GET path`: its status and body text.
    pub async fn get(&self, path: &str) -> Result<(u16, String), String> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|error| format!("GET {path}: {error}"))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|error| error.to_string())?;
        Ok((status, text))
    }

    /// The sum of a metric's samples on `/metrics` whose line starts with
    /// `name` (labels included in `name` when given), if any.
    pub async fn metric(&self, name: &str) -> Result<Option<f64>, String> {
        let (status, text) = self.get("/metrics").await?;
        if status != 200 {
            return Err(format!("/metrics answered {status}"));
        }
        let mut found = None;
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            if !(rest.starts_with(' ') || rest.starts_with('{') || name.ends_with('}')) {
                continue;
            }
            if let Some(value) = line
                .rsplit(' ')
                .next()
                .and_then(|value| value.parse::<f64>().ok())
            {
                *found.get_or_insert(0.0) += value;
            }
        }
        Ok(found)
    }
}
