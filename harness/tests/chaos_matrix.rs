//! A seeded chaos matrix, end to end: resets, blackholes, flaps and loss, three seeds each, on
//! the relay's upstream leg, one real clone per cell, each verified by checksums. It prints a
//! table (and writes it to `$CARGO_TARGET_TMPDIR/chaos-matrix.txt`, which CI shows).
//!
//! `CHAOS_SEED=N` moves the seeds (N, N+1, N+2) to replay or widen the matrix.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chaos::{ChaosProxy, Direction, FaultKind, FaultSpec, FlapMode};
use harness::clone::clone_instance;
use harness::dataset::Dataset;
use harness::image::mysql_image;
use harness::{MysqlServer, RelayFixture, ServerOptions, docker_available};

const MIB: u64 = 1024 * 1024;
const DATASET_BYTES: u64 = 100 * MIB;
const CLONE_TIMEOUT: Duration = Duration::from_secs(300);

/// The faults of one cell. Offsets and times come from the seed; loss decisions from the
/// chaos proxy's seeded randomness.
fn scenario(name: &str, seed: u64) -> Vec<FaultSpec> {
    let cap = FaultSpec::new(FaultKind::Bandwidth {
        rate_bytes_per_sec: 20 * MIB,
        shared_group: Some("link".into()),
    })
    .direction(Direction::Downstream);
    let offset = 10 * MIB + (seed % 7) * 5 * MIB;
    let fault = match name {
        "reset" => FaultSpec::new(FaultKind::Reset {})
            .connections(vec![1])
            .after_bytes(offset)
            .direction(Direction::Downstream),
        "blackhole" => FaultSpec::new(FaultKind::Blackhole {})
            .connections(vec![1])
            .after_bytes(offset)
            .lasting_ms(4000)
            .direction(Direction::Downstream),
        "flap" => FaultSpec::new(FaultKind::Flap {
            period_ms: 6000,
            down_ms: 1000,
            mode: FlapMode::Reset,
        })
        .at_ms(1000 + (seed % 5) * 400),
        "loss" => FaultSpec::new(FaultKind::Loss {
            probability: 0.002,
            segment_bytes: 1448,
            retransmit_ms: 50,
        }),
        other => panic!("no scenario {other}"),
    };
    vec![cap, fault]
}

#[tokio::test(flavor = "multi_thread")]
async fn seeded_chaos_matrix() -> anyhow::Result<()> {
    if !docker_available("seeded_chaos_matrix").await {
        return Ok(());
    }
    let base: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let image = mysql_image().await?;
    let donor = MysqlServer::start(&image, ServerOptions::donor()).await?;
    let dataset = Dataset::of_size(DATASET_BYTES);
    dataset.seed(&donor).await?;

    // One relay and one recipient for every cell; each cell gets a fresh chaos proxy on the
    // same address, so the relay's upstream stays put.
    let chaos_addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut config = RelayFixture::config_for(&[chaos_addr]);
    RelayFixture::fast_failover(&mut config);
    let relay = RelayFixture::start_with(config)?;
    let mut options = ServerOptions::recipient(2, &[relay.addr()]);
    options.extra_args = vec![
        "--clone-autotune-concurrency=OFF".into(),
        "--clone-max-concurrency=2".into(),
    ];
    let recipient = MysqlServer::start(&image, options).await?;

    let mut table = vec![format!(
        "{:<10} {:>6} {:>8} {:<10} {:<9} {:>7}",
        "scenario", "seed", "resumes", "outcome", "checksums", "seconds"
    )];
    let mut failures = Vec::new();
    for name in ["reset", "blackhole", "flap", "loss"] {
        for seed in base..base + 3 {
            let chaos = ChaosProxy::start(
                chaos_addr,
                donor.addr().to_string(),
                seed,
                scenario(name, seed),
            )
            .await?;
            let started = Instant::now();
            let outcome = clone_instance(&recipient, relay.addr(), CLONE_TIMEOUT).await?;
            let took = started.elapsed();
            let resumes = relay
                .sessions()
                .sessions
                .last()
                .map_or(0, |s| s.resume_count);
            let same = outcome.completed() && dataset.compare(&donor, &recipient).await?.is_empty();
            table.push(format!(
                "{name:<10} {seed:>6} {resumes:>8} {:<10} {:<9} {:>7.1}",
                outcome.state,
                if same { "equal" } else { "DIFFER" },
                took.as_secs_f64()
            ));
            if !same {
                failures.push(format!("{name} seed {seed}: {outcome:?}"));
            }
            chaos.stop().await;
        }
    }
    let table = table.join("\n");
    eprintln!("{table}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("chaos-matrix.txt");
    std::fs::write(&path, format!("{table}\n"))?;
    assert!(
        failures.is_empty(),
        "failed cells:\n{}",
        failures.join("\n")
    );
    relay.stop().await
}
