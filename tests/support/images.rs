//! The stand-in runner images, built once per machine from `tests/runner`
//! (no registry needed).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The stand-in runner image and one that cannot start (its user does not
/// exist: the engine refuses the start, with or without an init process),
/// for failures half-way through a provision; built once per machine.
pub struct TestImages {
    pub runner: String,
    pub broken: String,
    /// Allocates 256 MiB a second after start.
    pub memory_hog: String,
    /// Starts threads until the PID limit refuses one.
    pub thread_spawner: String,
    /// Ignores SIGTERM as PID 1, as the real (Node.js) runner does.
    pub stubborn: String,
}

/// Builds `tests/runner` as a static binary and packs it into a `FROM
/// scratch` image, tagged by a hash of its sources so that an unchanged
/// runner is not rebuilt. A file lock keeps parallel test processes from
/// building at the same time.
pub fn build_images() -> TestImages {
    require_docker_cli();
    let repo_root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let runner_dir = repo_root.join("tests/runner");
    let tag = sources_hash(&runner_dir);
    let images = TestImages {
        runner: format!("taylored-test-runner:{tag}"),
        broken: format!("taylored-test-runner:{tag}-broken-user"),
        memory_hog: format!("taylored-test-runner:{tag}-memory-hog"),
        thread_spawner: format!("taylored-test-runner:{tag}-thread-spawner"),
        stubborn: format!("taylored-test-runner:{tag}-stubborn"),
    };
    let target_dir = repo_root.join("target/test-runner");
    std::fs::create_dir_all(&target_dir).unwrap();
    let lock = std::fs::File::create(target_dir.join("build.lock")).unwrap();
    lock.lock().expect("lock the test image build");
    let all = [
        &images.runner,
        &images.broken,
        &images.memory_hog,
        &images.thread_spawner,
        &images.stubborn,
    ];
    if all.iter().all(|image| image_exists(image)) {
        return images;
    }
    let triple = "x86_64-unknown-linux-gnu";
    run(Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--quiet",
            "--target",
            triple,
            "--manifest-path",
        ])
        .arg(runner_dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static"));
    let context = tempfile::tempdir().unwrap();
    std::fs::copy(
        target_dir.join(triple).join("release/test-runner"),
        context.path().join("runner"),
    )
    .unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY runner /runner\nEXPOSE 3000\nCMD [\"/runner\"]\n",
    )
    .unwrap();
    docker_build(context.path(), &images.runner);
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {}\nUSER no-such-user\n", images.runner),
    )
    .unwrap();
    docker_build(context.path(), &images.broken);
    for (tag, command) in [
        (&images.memory_hog, r#""--hog-memory-mb", "256""#),
        (&images.thread_spawner, r#""--spawn-until-refused""#),
    ] {
        std::fs::write(
            context.path().join("Dockerfile"),
            format!("FROM {}\nCMD [\"/runner\", {command}]\n", images.runner),
        )
        .unwrap();
        docker_build(context.path(), tag);
    }
    std::fs::write(
        context.path().join("Dockerfile"),
        format!(
            "FROM {}\nENV TEST_RUNNER_ON_SIGTERM=ignore\n",
            images.runner
        ),
    )
    .unwrap();
    docker_build(context.path(), &images.stubborn);
    images
}

/// A hash of the runner's manifest, lock file and every source file.
fn sources_hash(runner_dir: &Path) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(runner_dir.join("src"))
        .expect("read tests/runner/src")
        .map(|entry| entry.expect("read tests/runner/src").path())
        .collect();
    files.sort();
    files.extend(["Cargo.toml", "Cargo.lock"].map(|file| runner_dir.join(file)));
    let mut hasher = std::hash::DefaultHasher::new();
    for file in files {
        let text = std::fs::read(&file).expect("read test runner sources");
        std::hash::Hash::hash(&file.file_name(), &mut hasher);
        std::hash::Hash::hash(&text, &mut hasher);
    }
    format!("{:016x}", std::hash::Hasher::finish(&hasher))
}

fn require_docker_cli() {
    let reachable = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false);
    assert!(
        reachable,
        "These tests need a running Docker Engine and the docker CLI: `docker version` failed. \
         Start the daemon (e.g. `service docker start`) or set DOCKER_HOST."
    );
}

fn image_exists(tag: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", tag])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

/// No registry is reachable, so the legacy builder (which needs none for
/// `FROM scratch` or a local image) is used explicitly.
fn docker_build(context: &Path, tag: &str) {
    run(Command::new("docker")
        .args(["build", "--quiet", "--tag", tag])
        .arg(context)
        .env("DOCKER_BUILDKIT", "0"));
}

fn run(command: &mut Command) {
    let output = command.output().expect("spawn command");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
