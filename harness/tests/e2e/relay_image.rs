//! The relay's container image in the shape of the Kubernetes example
//! (`deploy/kubernetes/recipient-sidecar.yaml`): built without a registry by
//! `scripts/relay-image.sh`, run as user 10001 with a read-only root file system, in the
//! recipient container's network namespace (`--network container:<recipient>`, as a pod's
//! containers share one), on its defaults. The recipient clones from `127.0.0.1:3307`, the relay
//! reaches the donor by its DNS name on a Docker network, the clone completes with the donor's
//! data table by table over TLS on both legs, and `/healthz` and `/readyz` answer on the admin
//! port from outside the namespace.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use harness::clone::{Transport, clone_instance_with};
use harness::dataset::Dataset;
use harness::image::{mysql_image, relay_image};
use harness::mysql::CONTAINER_LABEL;
use harness::process::release_relay_binary_raised_by;
use harness::{MysqlServer, ServerOptions};
use tokio::process::Command;
use tokio::time::Instant;

/// The admin token the sidecar gets from its environment.
const ADMIN_TOKEN: &str = "relay-image-test-admin-token";
const MIB: u64 = 1024 * 1024;
/// Enough for a clone with data in flight; the test is about the image and the pod's shape.
const DATASET_BYTES: u64 = 64 * MIB;
const CLONE_TIMEOUT: Duration = Duration::from_secs(600);
/// The relay's listener inside the pod, as the Kubernetes example sets it.
const RELAY_IN_POD: &str = "127.0.0.1:3307";
const ADMIN_PORT: u16 = 9104;
const READY_WAIT: Duration = Duration::from_secs(60);
/// What the Kubernetes example runs the relay as.
const RELAY_USER: &str = "10001:10001";

/// `docker` with `args`; its standard output, or an error with its standard error.
async fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .await
        .context("running docker")?;
    if !out.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The relay's container, removed when dropped (also when the test fails).
struct Sidecar(String);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &self.0])
            .output();
    }
}

impl Sidecar {
    /// The relay's last log lines, for a failure's message.
    async fn logs(&self) -> String {
        docker(&["logs", "--tail", "30", &self.0])
            .await
            .unwrap_or_else(|e| e.to_string())
    }
}

/// Waits until `path` on the admin listener answers 200.
async fn wait_ok(admin: SocketAddr, path: &str, sidecar: &Sidecar) -> Result<()> {
    let deadline = Instant::now() + READY_WAIT;
    loop {
        match plumbing::http::request(admin, "GET", path).await {
            Ok((200, _)) => return Ok(()),
            other if Instant::now() >= deadline => bail!(
                "{path} on {admin} did not answer 200 within {READY_WAIT:?} (last: {other:?}); relay log:\n{}",
                sidecar.logs().await
            ),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The release build the image is made from, the test's preparation: at the lowest CPU
/// priority while measuring tests run, so that a build from nothing overlaps them, then at the
/// normal one.
pub async fn build_the_release_binary() -> Result<()> {
    release_relay_binary_raised_by(async {
        while crate::runner::measuring() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await?;
    Ok(())
}

pub async fn the_image_runs_as_a_sidecar_in_the_recipients_namespace_and_clones() -> Result<()> {
    let tag = relay_image().await?;
    let help = docker(&["run", "--rm", &tag, "--help"]).await?;
    ensure!(help.contains("Usage: clone-relay"), "{help}");
    let facts = docker(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.User}} {{.Size}}",
        &tag,
    ])
    .await?;
    let (user, size) = facts.trim().split_once(' ').context("inspect output")?;
    assert_eq!(user, RELAY_USER, "the image's user");
    let size: u64 = size.parse()?;
    eprintln!(
        "image {tag}: {:.1} MiB, user {user}",
        size as f64 / MIB as f64
    );

    // The donor and the recipient on one Docker network, the donor known there by its name.
    let image = mysql_image().await?;
    let pid = std::process::id();
    let network = format!("clone-relay-pod-{pid}");
    let donor_name = format!("clone-relay-pod-donor-{pid}");
    let mut options = ServerOptions::donor();
    options.name = donor_name.clone();
    options.network = Some(network.clone());
    let donor = MysqlServer::start(&image, options).await?;
    let dataset = Dataset::of_size(DATASET_BYTES);
    dataset.seed(&donor).await?;
    let mut options = ServerOptions::recipient(2, &[]);
    options.name = format!("clone-relay-pod-recipient-{pid}");
    options.network = Some(network.clone());
    options.valid_donors = vec![RELAY_IN_POD.to_string()];
    let recipient = MysqlServer::start(&image, options).await?;

    // The relay as the example's sidecar: the recipient's namespace, a non-root user, a
    // read-only root file system with a writable /tmp, the donor by name, its defaults.
    let upstream = format!("{donor_name}:3306");
    let admin = format!("0.0.0.0:{ADMIN_PORT}");
    let id = docker(&[
        "run",
        "-d",
        "--label",
        &format!("{CONTAINER_LABEL}=relay"),
        "--network",
        &format!("container:{}", recipient.container_id()),
        "--user",
        RELAY_USER,
        "--read-only",
        "--tmpfs",
        "/tmp",
        // As the example's Secret gives it.
        "--env",
        &format!("CLONE_RELAY_ADMIN_TOKEN={ADMIN_TOKEN}"),
        &tag,
        "--listen",
        RELAY_IN_POD,
        "--upstream",
        &upstream,
        "--admin",
        &admin,
    ])
    .await?;
    let sidecar = Sidecar(id.trim().to_string());

    // From outside the namespace: the pod's address on the network, as a kubelet probes it.
    let pod_ip = recipient.bridge_addr().await?.ip();
    let admin = SocketAddr::new(pod_ip, ADMIN_PORT);
    wait_ok(admin, "/healthz", &sidecar).await?;
    wait_ok(admin, "/readyz", &sidecar).await?;

    let outcome = clone_instance_with(
        &recipient,
        RELAY_IN_POD.parse()?,
        CLONE_TIMEOUT,
        Transport::Default,
    )
    .await?;
    assert!(
        outcome.completed(),
        "{outcome:?}; relay log:\n{}",
        sidecar.logs().await
    );
    assert_eq!(
        dataset.compare(&donor, &recipient).await?,
        Vec::<String>::new(),
        "tables that differ from the donor's"
    );
    // The sessions name users and addresses: from off the pod only with the token.
    let (status, body) = plumbing::http::request(admin, "GET", "/sessions").await?;
    assert_eq!(
        status, 401,
        "/sessions without the token from off the pod: {body}"
    );
    let (status, body) =
        plumbing::http::request_with_token(admin, "GET", "/sessions", Some(ADMIN_TOKEN)).await?;
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body)?;
    let session = view["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["state"] == "completed")
        .with_context(|| format!("no completed session: {body}"))?;
    let connections = session["connections"].as_array().context("connections")?;
    assert!(
        !connections.is_empty()
            && connections
                .iter()
                .all(|c| c["tls_downstream"] == true && c["tls_upstream"] == true),
        "TLS on both legs on the relay's defaults: {session:#}"
    );
    eprintln!(
        "pod-shaped clone: {:.1} s, {} connections through the sidecar, TLS on both legs",
        outcome.total_time.as_secs_f64(),
        connections.len()
    );
    drop(sidecar);
    Ok(())
}
