//! The egress agent on the swarm's nodes: its image (this build's service
//! binary and `nft`, each with the libraries it loads, on `scratch`, as the
//! compose image lays them out), and the global service that runs it as
//! docs/swarm.md tells an operator to.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::cluster::Cluster;

/// Builds the agent image (once per binary) and loads it on every node.
pub fn image(cluster: &Cluster) -> Result<String, String> {
    let binary = Path::new(env!("CARGO_BIN_EXE_orchestrator"));
    let meta = std::fs::metadata(binary).map_err(|error| error.to_string())?;
    let stamp = meta
        .modified()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |since| since.as_secs());
    let tag = format!("taylored-test-agent:{:x}-{stamp:x}", meta.len());
    if !succeeds(Command::new("docker").args(["image", "inspect", &tag])) {
        let context = tempfile::tempdir().map_err(|error| error.to_string())?;
        let root = context.path().join("root");
        let nft_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compose/nft-root.sh");
        if !succeeds(Command::new(nft_root).arg(&root)) {
            return Err("tests/compose/nft-root.sh failed (is nft installed?)".to_owned());
        }
        copy_with_libraries(binary, &root.join("orchestrator"), &root)?;
        std::fs::write(
            context.path().join("Dockerfile"),
            "FROM scratch\nCOPY root/ /\nENV PATH=/usr/sbin:/usr/bin:/sbin:/bin\n\
             ENTRYPOINT [\"/orchestrator\"]\nCMD [\"egress\", \"node\"]\n",
        )
        .map_err(|error| error.to_string())?;
        let built = Command::new("docker")
            .args(["build", "--quiet", "--tag", &tag])
            .arg(context.path())
            .env("DOCKER_BUILDKIT", "0")
            .stdout(Stdio::null())
            .status()
            .map_err(|error| error.to_string())?;
        if !built.success() {
            return Err(format!("could not build {tag}"));
        }
        remove_older_than(&tag);
    }
    for node in &cluster.nodes {
        cluster.load(&tag, node)?;
    }
    Ok(tag)
}

/// Copies `binary` to `to` and every shared library it loads under `root`.
fn copy_with_libraries(binary: &Path, to: &Path, root: &Path) -> Result<(), String> {
    std::fs::copy(binary, to).map_err(|error| error.to_string())?;
    let ldd = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|error| format!("ldd: {error}"))?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let library = match words.as_slice() {
            [_, "=>", path, ..] if path.starts_with('/') => *path,
            [path, ..] if path.starts_with('/') => *path,
            _ => continue,
        };
        let target = root.join(library.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).map_err(|error| error.to_string())?;
        std::fs::copy(library, &target).map_err(|error| format!("copy {library}: {error}"))?;
    }
    Ok(())
}

/// Removes the agent images of earlier builds (one per binary).
fn remove_older_than(tag: &str) {
    let Ok(listed) = Command::new("docker")
        .args([
            "images",
            "taylored-test-agent",
            "--format",
            "{{.Repository}}:{{.Tag}}",
        ])
        .output()
    else {
        return;
    };
    for old in String::from_utf8_lossy(&listed.stdout).lines() {
        if old != tag {
            let _ = succeeds(Command::new("docker").args(["rmi", old]));
        }
    }
}

fn succeeds(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The agent's global service for `instance` (on every node but those in
/// `except`), as an operator deploys it: host network, `NET_ADMIN`, the
/// node's own engine socket (each node's found by its hostname here, as the
/// tier's engines have sockets of their own).
pub fn deploy(
    cluster: &Cluster,
    image: &str,
    instance: &str,
    env: &[(&str, &str)],
    except: &[&str],
) -> Result<String, String> {
    for node in &cluster.nodes {
        let socket = node.socket.trim_start_matches("unix://");
        let link = cluster.state_dir().join(format!("{}.sock", node.hostname));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(socket, &link).map_err(|error| error.to_string())?;
    }
    let name = format!("taylored-egress-{instance}");
    let mount = format!(
        "type=bind,source={}/{{{{.Node.Hostname}}}}.sock,target=/var/run/docker.sock",
        cluster.state_dir().display()
    );
    let mut args: Vec<String> = [
        "service",
        "create",
        "--detach",
        "--name",
        &name,
        "--label",
        &format!("taylored-egress-agent={instance}"),
        "--mode",
        "global",
        "--network",
        "host",
        "--cap-add",
        "CAP_NET_ADMIN",
        "--restart-condition",
        "any",
        "--restart-delay",
        "1s",
        "--mount",
        &mount,
        "--env",
        &format!("ORCHESTRATOR_ID={instance}"),
        "--env",
        "DOCKER_HOST=unix:///var/run/docker.sock",
        "--env",
        "RECONCILE_INTERVAL_SECONDS=1",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    for (key, value) in env {
        args.extend(["--env".to_owned(), format!("{key}={value}")]);
    }
    for hostname in except {
        args.extend([
            "--constraint".to_owned(),
            format!("node.hostname!={hostname}"),
        ]);
    }
    args.push(image.to_owned());
    let output = Command::new("docker")
        .arg("-H")
        .arg(&cluster.manager().socket)
        .args(&args)
        .output()
        .map_err(|error| error.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "docker service create {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(name)
}
