//! A real browser as the Angular client: headless Chromium loads a page from
//! an origin of its own (a small server on 127.0.0.1) whose script
//! (`browser_client.html`) provisions a runner through the API, sends a
//! heartbeat, does Socket.IO's polling handshake at the endpoint and an
//! engine.io echo over its websocket transport, and posts what happened back
//! to that server. Chromium comes from `chromium.sh` (installed if missing).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Json;
use axum::response::Html;
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::sync::mpsc;

const PAGE: &str = include_str!("browser_client.html");

/// How long the page may take, Chromium's start included.
const PAGE_LIMIT: Duration = Duration::from_secs(90);

/// What the page did and saw, as it reported it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrowserRun {
    /// Whether every step passed (the echo equals what was sent).
    pub ok: bool,
    /// Each request and its answer, in order.
    pub steps: Vec<String>,
    pub error: Option<String>,
    /// The page's origin (not the API's, nor the runner's).
    #[serde(default)]
    pub page_origin: String,
    pub session_id: Option<String>,
    pub endpoint: Option<String>,
    /// The body of the polling handshake at the endpoint (`0{"sid":…}`).
    pub polling_handshake: Option<String>,
    /// The websocket transport's open packet.
    pub open_packet: Option<String>,
    /// The `42["echo",…]` event sent, and what came back.
    pub sent: Option<String>,
    pub echoed: Option<String>,
}

/// Runs the browser client against the API at `api_base` (e.g.
/// `http://127.0.0.1:<port>`) and returns its report, whether or not its
/// steps passed (see [`BrowserRun::ok`]); `Err` if Chromium cannot be had or
/// the page never reported (with Chromium's log).
pub async fn run_browser_client(api_base: &str) -> Result<BrowserRun, String> {
    let chromium = tokio::task::spawn_blocking(chromium)
        .await
        .map_err(|error| error.to_string())??;
    let (reports, mut reported) = mpsc::channel::<BrowserRun>(1);
    let router = axum::Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route(
            "/report",
            post(move |Json(run): Json<BrowserRun>| async move {
                let _ = reports.send(run).await;
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|error| format!("bind the page's server: {error}"))?;
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let page = reqwest::Url::parse_with_params(&format!("{origin}/"), [("api", api_base)])
        .map_err(|error| error.to_string())?;

    let profile = tempfile::tempdir().map_err(|error| error.to_string())?;
    let log_path = profile.path().join("chromium.log");
    let log = std::fs::File::create(&log_path).map_err(|error| error.to_string())?;
    let mut browser = tokio::process::Command::new(&chromium)
        .args([
            "--headless",
            // Root in a container has no user namespace sandbox.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("profile").display()
        ))
        .arg(page.as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| format!("start {}: {error}", chromium.display()))?;

    let outcome = tokio::select! {
        run = reported.recv() => run.ok_or_else(|| "the page's server stopped".to_owned()),
        status = browser.wait() => Err(format!("Chromium exited ({status:?}) before the page reported")),
        _ = tokio::time::sleep(PAGE_LIMIT) => Err(format!("the page did not report within {PAGE_LIMIT:?}")),
    };
    // Chromium's helper processes share its process group.
    if let Some(pid) = browser.id() {
        let group = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = browser.wait().await;
    server.abort();
    match outcome {
        Ok(run) => Ok(BrowserRun {
            page_origin: origin,
            ..run
        }),
        Err(error) => {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            Err(format!("{error} (page {page}); Chromium's log:\n{log}"))
        }
    }
}

/// The Chromium binary, from `chromium.sh` (which installs Debian's
/// `chromium` if none is found); looked up once per test process.
fn chromium() -> Result<PathBuf, String> {
    static CHROMIUM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    CHROMIUM
        .get_or_init(|| {
            let script =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/chromium.sh");
            let output = std::process::Command::new(&script)
                .stdin(Stdio::null())
                .output()
                .map_err(|error| format!("run {}: {error}", script.display()))?;
            if !output.status.success() {
                return Err(format!(
                    "The browser test needs headless Chromium, and {} could not find or install it \
                     (apt-get install -y chromium; or set CHROMIUM to a binary):\n{}",
                    script.display(),
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
            Ok(PathBuf::from(
                String::from_utf8_lossy(&output.stdout).trim(),
            ))
        })
        .clone()
}
