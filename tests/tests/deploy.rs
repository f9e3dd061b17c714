//! What deploy/ ships, checked the way its consumers read it (no cluster runs here,
//! and no container registry answers): the Kustomize base and overlays rendered by kustomize's own
//! library and validated strictly against the Kubernetes 1.33 schemas and KEDA's CRD;
//! the Compose file loaded by compose-go, `docker compose config`'s loader; every config
//! file they mount accepted by `sendmill validate-config`. The renderer is
//! deploy/tools (Go, versions pinned in its go.mod), the validator deploy/k8s/validate.py
//! (kubernetes-validate and jsonschema from PyPI, pinned in install-packages.sh).
//!
//! The image: deploy/Containerfile built by Debian's podman and run, with two stand-ins
//! because no image registry is reachable here. The run stage's base is a debootstrap
//! bookworm (deploy/local/container-base.sh) instead of distroless; the build stage is
//! replaced (`--build-context build=…`) by the binary this test suite built, since the
//! Rust 1.95 image cannot be pulled and a release build inside would add ~10 minutes.
//! Everything the run stage does is checked: the binary's place, the non-root user, the
//! entrypoint, a stage that serves and drains from inside the container.

use sendmill_tests::*;
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

/// Kubernetes version the manifests are written for (and validated against).
const KUBERNETES: &str = "1.33.0";
/// KEDA release whose ScaledObject CRD the manifests are validated against.
const KEDA: &str = "github.com/kedacore/keda/v2@v2.21.0";

fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|e| {
        panic!("cannot run {command:?}: {e} (deploy/local/install-packages.sh installs it)")
    })
}

fn ok(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// deploy/tools built once per test binary.
fn renderer() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let binary = std::env::temp_dir().join(unique("deploy-render-"));
        ok(
            run(Command::new("go")
                .args(["build", "-o"])
                .arg(&binary)
                .arg(".")
                .current_dir(repo_root().join("deploy/tools"))),
            "go build deploy/tools",
        );
        binary
    })
}

fn render(what: &str, path: &Path) -> Output {
    run(Command::new(renderer()).arg(what).arg(path))
}

/// KEDA's CRD files, from the Go module proxy (cached after the first download).
fn keda_crds() -> PathBuf {
    let json = ok(
        run(Command::new("go").args(["mod", "download", "-json", KEDA])),
        "go mod download KEDA",
    );
    let info: serde_json::Value = serde_json::from_str(&json).unwrap();
    PathBuf::from(info["Dir"].as_str().expect("the module's directory")).join("config/crd/bases")
}

fn validate(files: &[PathBuf]) -> Output {
    run(Command::new(local_dir().join("venv/bin/python"))
        .arg(repo_root().join("deploy/k8s/validate.py"))
        .args(["--kubernetes", KUBERNETES, "--crds"])
        .arg(keda_crds())
        .args(files))
}

/// `sendmill validate-config` on a deployment's file, with the secrets its deployment
/// gives every pod as variables (the Secret `sendmill`, compose's `sendmill.env`) that
/// a file needs: the tracking secret, which the inbound stage requires.
fn validate_config(path: &Path) {
    ok(
        run(Command::new(sendmill_binary())
            .args(["validate-config", "--config"])
            .arg(path)
            .env(
                "SENDMILL_TRACKING_SECRET",
                "a-deployment-test-secret-of-32-bytes",
            )),
        &format!("sendmill validate-config {}", path.display()),
    );
}

#[test]
fn every_kubernetes_overlay_renders_and_validates_strictly() {
    let k8s = repo_root().join("deploy/k8s");
    let dir = std::env::temp_dir().join(unique("k8s-"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for overlay in ["base", "overlays/small", "overlays/large"] {
        let yaml = ok(render("kustomize", &k8s.join(overlay)), overlay);
        let file = dir.join(format!("{}.yaml", overlay.replace('/', "-")));
        std::fs::write(&file, &yaml).unwrap();
        files.push(file);
    }
    let report = ok(validate(&files), "validate.py");
    // Every stage, the migrate Job, readiness apart from liveness, and the scaling kinds
    // each overlay promises.
    for (file, must) in [
        (
            "base",
            &[
                "StatefulSet/sendmill-dispatcher",
                "ScaledObject/sendmill-render",
                "ScaledObject/sendmill-dispatcher",
            ][..],
        ),
        (
            "overlays-small",
            &[
                "HorizontalPodAutoscaler/sendmill-render",
                "Deployment/sendmill-ingest",
            ][..],
        ),
        (
            "overlays-large",
            &[
                "StatefulSet/sendmill-dispatcher-mta1",
                "Job/sendmill-migrate",
                "Deployment/sendmill-analytics",
            ][..],
        ),
    ] {
        for resource in must {
            assert!(
                report.contains(&format!(
                    "valid {}: {resource}",
                    dir.join(format!("{file}.yaml")).display()
                )),
                "{file} lacks {resource}:\n{report}"
            );
        }
    }
    let small = std::fs::read_to_string(&files[1]).unwrap();
    assert!(
        !small.contains("kind: ScaledObject"),
        "the CPU alternative keeps no ScaledObject"
    );
    let large = std::fs::read_to_string(&files[2]).unwrap();
    assert!(large.contains("hostNetwork: true"));
    for text in [&small, &large] {
        assert!(text.contains("path: /readyz") && text.contains("path: /livez"));
    }

    // The validator refuses what a cluster would: a misspelt field in a built-in kind
    // and in a ScaledObject.
    for (good, bad) in [
        ("terminationGracePeriodSeconds:", "terminationGracePeriod:"),
        ("maxReplicaCount:", "maxReplicaCnt:"),
    ] {
        let broken = dir.join("broken.yaml");
        std::fs::write(&broken, large.replacen(good, bad, 1)).unwrap();
        let output = validate(&[broken]);
        assert!(!output.status.success(), "{bad} was accepted");
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains(bad.trim_end_matches(':')), "{said}");
    }

    // And what no schema sees: pods under two PodDisruptionBudgets (the pooled
    // dispatchers' label is what keeps a sending node's pods out of their budget).
    let overlapping: String = large
        .lines()
        .filter(|l| l.trim() != "sendmill.io/sending-node: pooled")
        .map(|l| format!("{l}\n"))
        .collect();
    let broken = dir.join("broken.yaml");
    std::fs::write(&broken, overlapping).unwrap();
    let output = validate(&[broken]);
    assert!(
        !output.status.success(),
        "overlapping budgets were accepted"
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("pods under"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    validate_config(&k8s.join("base/sendmill.toml"));
    validate_config(&k8s.join("overlays/large/sending-node-mta1/sendmill.toml"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_compose_file_loads_as_docker_compose_reads_it() {
    let dir = std::env::temp_dir().join(unique("compose-"));
    std::fs::create_dir_all(&dir).unwrap();
    let source = repo_root().join("deploy/compose");
    for file in ["compose.yaml", "sendmill.toml"] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    std::fs::copy(
        source.join("sendmill.env.example"),
        dir.join("sendmill.env"),
    )
    .unwrap();
    let load = |extra: &[(&str, &str)]| {
        let mut command = Command::new(renderer());
        command
            .arg("compose")
            .arg(dir.join("compose.yaml"))
            .env("POSTGRES_PASSWORD", "p")
            .env("CLICKHOUSE_PASSWORD", "c");
        for (k, v) in extra {
            command.env(k, v);
        }
        run(&mut command)
    };
    let project = ok(load(&[]), "compose-go");
    for service in [
        "kafka:",
        "postgres:",
        "redis:",
        "clickhouse:",
        "migrate:",
        "ingest:",
        "render:",
        "dispatcher:",
        "analytics:",
    ] {
        assert!(
            project.contains(&format!("\n  {service}\n")),
            "no {service}\n{project}"
        );
    }
    assert!(project.contains("service_completed_successfully"));
    assert!(project.contains("SENDMILL_KEKS"), "sendmill.env is read");

    // A required variable left unset is refused, as docker compose refuses it.
    let mut unset = Command::new(renderer());
    unset
        .arg("compose")
        .arg(dir.join("compose.yaml"))
        .env_remove("POSTGRES_PASSWORD");
    let output = run(unset.env("CLICKHOUSE_PASSWORD", "c"));
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("POSTGRES_PASSWORD"));
    // So is a dependency on a service that does not exist.
    let text = std::fs::read_to_string(dir.join("compose.yaml")).unwrap();
    std::fs::write(
        dir.join("compose.yaml"),
        text.replacen("postgres: {condition", "postgress: {condition", 1),
    )
    .unwrap();
    assert!(
        !load(&[]).status.success(),
        "a dependency on an unknown service was accepted"
    );

    validate_config(&source.join("sendmill.toml"));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn podman() -> Command {
    let mut command = Command::new("podman");
    // crun cannot run containers on this machine's hybrid cgroup hierarchy; runc can.
    command.args(["--runtime", "runc"]);
    command
}

/// A container and an image of this test's own, removed when dropped.
struct Built {
    image: String,
    container: String,
}

impl Drop for Built {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "-f", &self.container]).output();
        let _ = podman().args(["rmi", "-f", &self.image]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_builds_from_the_containerfile_and_serves_and_drains_as_non_root() {
    let p = TestPipeline::start_stages(&[]).await;
    let base = ok(
        run(Command::new("bash").arg(repo_root().join("deploy/local/container-base.sh"))),
        "deploy/local/container-base.sh",
    );
    let dir = std::env::temp_dir().join(unique("image-"));
    let out = dir.join("build/out");
    std::fs::create_dir_all(out.join("var/lib/sendmill/dispatcher")).unwrap();
    std::fs::copy(sendmill_binary(), out.join("sendmill")).unwrap();
    // The run stage takes nothing from the build context.
    std::fs::create_dir_all(dir.join("context")).unwrap();
    let built = Built {
        image: format!("localhost/sendmill-test:{}", unique("i")),
        container: unique("sendmill-image-"),
    };
    ok(
        run(podman()
            .args(["build", "-q", "-t", &built.image])
            .arg(format!("--build-arg=RUNTIME_IMAGE={}", base.trim()))
            .arg(format!(
                "--build-context=build={}",
                dir.join("build").display()
            ))
            .arg("-f")
            .arg(repo_root().join("deploy/Containerfile"))
            .arg(dir.join("context"))),
        "podman build",
    );
    let image_config = ok(
        run(podman().args([
            "image",
            "inspect",
            "--format",
            "{{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.Cmd}}",
            &built.image,
        ])),
        "podman image inspect",
    );
    assert_eq!(
        image_config.trim(),
        r#"65532:65532 ["/usr/local/bin/sendmill"] ["all"]"#
    );

    // Ingest from the image, on the host's network (the services listen on loopback).
    let port = free_port();
    let config = dir.join("sendmill.toml");
    std::fs::write(
        &config,
        stage_config(
            &p.config,
            &format!(
                "[ingest]\nlisten = \"127.0.0.1:{port}\"\nallow_unverified_domains = true\n\
                 drain_delay = \"0s\"\n"
            ),
        ),
    )
    .unwrap();
    let kek = &p.config.secrets.kek_file;
    ok(
        run(podman()
            .args(["run", "-d", "--name", &built.container, "--network", "host"])
            // podman's default limits here exceed what this machine grants a container.
            .args([
                "--ulimit",
                "nofile=1024:4096",
                "--ulimit",
                "nproc=4096:4096",
            ])
            .arg(format!(
                "--volume={}:/etc/sendmill/sendmill.toml:ro",
                config.display()
            ))
            .arg(format!("--volume={kek}:{kek}:ro"))
            .arg(format!(
                "--env=SENDMILL_KAFKA_BROKERS={}",
                p.config.kafka.brokers
            ))
            .args([
                &built.image,
                "--config",
                "/etc/sendmill/sendmill.toml",
                "ingest",
            ])),
        "podman run",
    );
    let logs = || {
        let output = run(podman().args(["logs", &built.container]));
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };
    let ready = poll_until(std::time::Duration::from_secs(60), || async {
        let response = p
            .http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "/readyz never answered 200: {}", logs());
    let processes = ok(
        run(podman().args(["top", &built.container, "user", "args"])),
        "podman top",
    );
    assert!(
        processes
            .lines()
            .skip(1)
            .all(|l| l.trim_start().starts_with("65532")),
        "every process runs as 65532: {processes}"
    );
    let (status, body, _) = call(
        &p.http,
        &p.api_key,
        reqwest::Method::POST,
        &format!("http://127.0.0.1:{port}/v1/messages"),
        Some(&message_to(&p, serde_json::json!(["image@ok.test"]))),
    )
    .await;
    assert_eq!(status, 202, "the containerised ingest queues: {body}");

    // `podman stop` sends SIGTERM: the stage drains and exits 0.
    ok(
        run(podman().args(["stop", "--time", "30", &built.container])),
        "podman stop",
    );
    let exit = ok(
        run(podman().args([
            "inspect",
            "--format",
            "{{.State.ExitCode}}",
            &built.container,
        ])),
        "podman inspect",
    );
    assert_eq!(
        exit.trim(),
        "0",
        "ingest exits 0 after its drain: {}",
        logs()
    );
    drop(built);
    let _ = std::fs::remove_dir_all(dir);
}
