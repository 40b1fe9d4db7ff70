//! One run: the processes, the interleaved transfers, the in-memory TLS reference, the round
//! trips, and the report.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clone_relay_benches::clone_stream;
use clone_relay_benches::tls::{InMemoryPair, bench_pki, client_config, server_config};
use rustls::{ClientConfig, ServerConfig};

use crate::peers::{DONOR_NAME, DonorPorts, RecvTls, RoundTrips, parse_line};
use crate::probes::{self, Perf};
use crate::procs::{self, PairSpec, PairTunnel};
use crate::report::{DIRECT, Latency, RelayCpu, Report, RowResult};
use crate::{Options, PerfRelay, streams};

/// The name in the certificate clone-relay makes for itself.
const RELAY_NAME: &str = clone_relay_benches::tls::RELAY_NAME;
/// Application writes of the in-memory TLS reference: 256 KiB, as it has always been measured
/// (the relay's copy buffer defaults to 1 MiB; its records are 16 KiB either way).
const IN_MEMORY_WRITE: usize = 256 * 1024;
/// clone-relay's default copy buffer (`--copy-buffer`), which socat's second row is given.
const RELAY_COPY_BUFFER: usize = 1 << 20;

/// One measured path.
struct Row {
    key: &'static str,
    label: &'static str,
    /// Where the recipient connects and with what TLS, or why the row is skipped.
    target: Result<(SocketAddr, Option<RecvTls>), String>,
    secs: Vec<f64>,
}

/// A scratch folder for this run, removed at its end.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("netbench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(opts: &Options) -> Result<()> {
    let (blocks, reps) = (opts.size_mib(), opts.reps());
    if blocks == 0 {
        bail!("--size-mib must be at least 1");
    }
    let bins = procs::locate_bins(opts.bin_dir.as_deref(), opts.no_build)?;
    let socat = procs::find_or_install_socat();
    if let Err(why) = &socat {
        eprintln!("netbench: no socat row: {why}");
    }
    let me = std::env::current_exe().context("this executable's path")?;
    let scratch = Scratch::new()?;
    let stream = clone_stream(blocks, 1 << 20);
    let expect = stream.len() as u64;

    eprintln!("netbench: starting the donor, twelve clone-relay processes, chaos and socat");
    let donor_ca = scratch.0.join("donor-ca.der");
    let (mut donor, ports) = procs::start_donor(
        Command::new(&me)
            .args(["donor", "--blocks", &blocks.to_string(), "--ca-out"])
            .arg(&donor_ca),
    )?;
    let ports: DonorPorts = serde_json::from_str(ports.trim()).context("the donor's ports")?;
    let plain = procs::start_relay(&bins, "clone-relay (plain)", ports.plain, &[])?;
    let tls_state = scratch.0.join("relay-state");
    std::fs::create_dir_all(&tls_state)?;
    let tls_state_arg = tls_state.to_str().context("scratch path is not UTF-8")?;
    let tls = procs::start_relay(
        &bins,
        "clone-relay (TLS)",
        ports.tls,
        &["--state-dir", tls_state_arg],
    )?;
    let relay_ca = tls_state.join("tls").join(clone_relay::tls::CA_FILE);
    let capped = procs::start_relay(
        &bins,
        "clone-relay (--rate 1TiB/s)",
        ports.plain,
        &["--rate", "1TiB/s"],
    )?;
    let pinged = procs::start_relay(&bins, "clone-relay (latency)", ports.ping, &[])?;
    let pair_dir = scratch.0.join("pair");
    std::fs::create_dir_all(&pair_dir)?;
    let pair = procs::start_pair(
        &bins,
        ports.plain,
        &pair_dir,
        PairSpec::tunnel(PairTunnel::MutualTls),
    )?;
    let plain_pair = procs::start_pair(
        &bins,
        ports.plain,
        &pair_dir,
        PairSpec::tunnel(PairTunnel::Plain),
    )?;
    // The same pair with the least memory the relay takes: what it cannot hold unacknowledged
    // goes to its (encrypted) spill segments.
    let spill_dir = scratch.0.join("spill");
    std::fs::create_dir_all(&spill_dir)?;
    let spill_dir_arg = spill_dir.to_str().context("scratch path is not UTF-8")?;
    let spilling = procs::start_pair(
        &bins,
        ports.plain,
        &pair_dir,
        PairSpec {
            donor_flags: &[
                "--tunnel-memory",
                "1MiB",
                "--tunnel-spill-dir",
                spill_dir_arg,
            ],
            ..PairSpec::tunnel(PairTunnel::MutualTls)
        },
    )?;
    // The pair again, its tunnel across a chaos proxy that emulates loss.
    let lossy_pair = procs::start_pair(
        &bins,
        ports.plain,
        &pair_dir,
        PairSpec {
            link_faults: &[streams::LOSS_FAULT],
            ..PairSpec::tunnel(PairTunnel::MutualTls)
        },
    )?;
    let (_chaos, chaos_addr) = procs::start_chaos(&bins, ports.plain, &[])?;
    // socat on its own default buffer, and on the relay's default copy buffer.
    let start_socat = |buffer: Option<usize>| {
        socat.clone().and_then(|path| {
            procs::start_socat(&path, ports.plain, buffer)
                .map_err(|e| format!("socat did not start: {e:#}"))
        })
    };
    let socat_default = start_socat(None);
    let socat_sized = start_socat(Some(RELAY_COPY_BUFFER));

    let tls_to = |ca: &Path, name: &str| {
        Some(RecvTls {
            ca: ca.to_path_buf(),
            name: name.to_string(),
        })
    };
    let mut rows = vec![
        Row {
            key: DIRECT,
            label: "direct TCP",
            target: Ok((ports.plain, None)),
            secs: Vec::new(),
        },
        Row {
            key: "relay_plain",
            label: "clone-relay, defaults (plain legs)",
            target: Ok((plain.addr, None)),
            secs: Vec::new(),
        },
        Row {
            key: "relay_tls",
            label: "clone-relay, TLS on both legs",
            target: Ok((tls.addr, tls_to(&relay_ca, RELAY_NAME))),
            secs: Vec::new(),
        },
        Row {
            key: "relay_capped",
            label: "clone-relay, --rate 1TiB/s (limiter cost)",
            target: Ok((capped.addr, None)),
            secs: Vec::new(),
        },
        Row {
            key: "relay_pair",
            label: "clone-relay pair, mutual-TLS tunnel (plain legs)",
            target: Ok((pair.recipient_side.addr, None)),
            secs: Vec::new(),
        },
        Row {
            key: "relay_pair_plain",
            label: "clone-relay pair, --tunnel-plain (plain legs)",
            target: Ok((plain_pair.recipient_side.addr, None)),
            secs: Vec::new(),
        },
        Row {
            key: "relay_pair_spill",
            label: "clone-relay pair, --tunnel-memory 1MiB (spills, encrypted)",
            target: Ok((spilling.recipient_side.addr, None)),
            secs: Vec::new(),
        },
        Row {
            key: "chaos",
            label: "chaos proxy, no faults",
            target: Ok((chaos_addr, None)),
            secs: Vec::new(),
        },
        Row {
            key: "socat",
            label: "socat (TCP-LISTEN,fork to TCP)",
            target: socat_default
                .as_ref()
                .map(|(_, addr)| (*addr, None))
                .map_err(Clone::clone),
            secs: Vec::new(),
        },
        Row {
            key: "socat_1mib",
            label: "socat -b 1048576 (the relay's copy buffer)",
            target: socat_sized
                .as_ref()
                .map(|(_, addr)| (*addr, None))
                .map_err(Clone::clone),
            secs: Vec::new(),
        },
        Row {
            key: "direct_tls",
            label: "direct, TLS (reference)",
            target: Ok((ports.tls, tls_to(&donor_ca, DONOR_NAME))),
            secs: Vec::new(),
        },
    ];

    eprintln!(
        "netbench: {blocks} MiB stream, {reps} transfers per row after one warm-up, {} rows",
        rows.len()
    );
    for row in &rows {
        if let Ok((addr, tls)) = &row.target {
            procs::transfer(&me, *addr, tls.as_ref(), expect)
                .with_context(|| format!("warm-up of {}", row.label))?;
        }
    }
    // The in-memory TLS reference takes its turn in each round too, in this process.
    let mut in_memory = InMemoryTls::new();
    in_memory.transfer(&stream);
    let mut in_memory_secs = Vec::with_capacity(reps);
    let perf = opts
        .perf
        .as_deref()
        .map(|file| {
            let recorded = match opts.perf_relay {
                PerfRelay::Plain => &plain,
                PerfRelay::Tls => &tls,
                PerfRelay::PlainPairDonorSide => &plain_pair.donor_side,
                PerfRelay::PlainPairRecipientSide => &plain_pair.recipient_side,
            };
            Perf::start(recorded.proc.pid(), file)
        })
        .transpose()?;
    // The CPU each relay uses in the timed rounds, per byte it carries.
    let timed_relays = [
        ("plain", &plain),
        ("TLS", &tls),
        ("pair recipient side", &pair.recipient_side),
        ("pair donor side", &pair.donor_side),
        ("plain pair recipient side", &plain_pair.recipient_side),
        ("plain pair donor side", &plain_pair.donor_side),
    ];
    let cpu_before = timed_relays
        .iter()
        .map(|(_, relay)| probes::cpu_seconds(relay.proc.pid()))
        .collect::<Result<Vec<_>>>()?;
    let started = Instant::now();
    for round in 0..reps {
        for row in &mut rows {
            if let Ok((addr, tls)) = &row.target {
                let secs = procs::transfer(&me, *addr, tls.as_ref(), expect)
                    .with_context(|| format!("{} (round {})", row.label, round + 1))?;
                row.secs.push(secs);
            }
        }
        in_memory_secs.push(in_memory.transfer(&stream));
    }
    let transfers_took = started.elapsed();
    let carried_gib = (reps as u64 * expect) as f64 / (1u64 << 30) as f64;
    let mut relay_cpu = Vec::new();
    for ((name, relay), (user, system)) in timed_relays.iter().zip(cpu_before) {
        let (user_after, system_after) = probes::cpu_seconds(relay.proc.pid())?;
        relay_cpu.push(RelayCpu {
            relay: (*name).to_string(),
            user_secs_per_gib: (user_after - user) / carried_gib,
            system_secs_per_gib: (system_after - system) / carried_gib,
        });
    }
    if let Some(perf) = perf {
        let file = perf.file.clone();
        perf.stop()?;
        eprintln!(
            "netbench: perf recorded the {:?} relay into {} (perf report -i {1} --no-children)",
            opts.perf_relay,
            file.display()
        );
    }
    let relay_peak_rss = probes::peak_rss(plain.proc.pid()).context("the plain relay's VmHWM")?;

    // The relays followed the clone: their decoders counted every DATA byte.
    let transfers = (reps + 1) as f64;
    for (relay, what) in [(&plain, "plain"), (&tls, "TLS"), (&capped, "capped")] {
        let decoded = probes::metric(relay.admin, "clone_relay_clone_data_bytes_total")
            .with_context(|| format!("the {what} relay's /metrics"))?;
        if decoded < transfers * (blocks << 20) as f64 {
            bail!(
                "the {what} relay decoded {decoded} clone data bytes over {transfers} transfers \
                 of {blocks} MiB: it did not follow the clone"
            );
        }
    }

    // The spilling pair's row measured spill segments written and read back.
    let spills = probes::metric(spilling.donor_side.admin, "clone_relay_tunnel_spills_total")
        .context("the spilling pair's donor side /metrics")?;
    if spills == 0.0 {
        bail!("the pair on 1 MiB of memory never spilled: its row measured memory alone");
    }
    eprintln!("netbench: the pair on 1 MiB of memory spilled {spills} times");

    eprintln!("netbench: the pair's tunnel connections, one per stream against one shared");
    let tunnel_connections = vec![
        streams::measure(&me, pair.recipient_side.addr, expect, reps, "full speed")?,
        // Three rounds: a lossy transfer takes seconds.
        streams::measure(
            &me,
            lossy_pair.recipient_side.addr,
            expect,
            reps.min(3),
            streams::LOSS_LABEL,
        )?,
    ];

    eprintln!("netbench: round trips, direct and through clone-relay");
    // Direct and relayed runs alternate, so that both see the same share of the machine.
    let count = opts.round_trips();
    let per_run = count.div_ceil(reps);
    let warmup = (per_run / 10).max(10);
    let (mut direct_us, mut relay_us) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        direct_us.extend(ping(&me, ports.ping, per_run, warmup).context("round trips, direct")?);
        relay_us.extend(ping(&me, pinged.addr, per_run, warmup).context("round trips, relay")?);
    }

    donor.close_stdin();
    let mut results: Vec<RowResult> = rows
        .iter()
        .map(|row| {
            RowResult::new(
                row.key,
                row.label,
                expect,
                &row.secs,
                row.target.as_ref().err(),
            )
        })
        .collect();
    results.push(RowResult::new(
        "rustls_in_memory",
        "rustls in memory, encrypt+decrypt (reference)",
        expect,
        &in_memory_secs,
        None,
    ));
    let mut report = Report::new(
        opts,
        expect,
        blocks,
        reps,
        results,
        Latency::new(&direct_us, &relay_us),
        relay_peak_rss,
        transfers_took,
    );
    report.relay_cpu = relay_cpu;
    report.tunnel_connections = tunnel_connections;
    print!("{}", report.table());
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// One `ping` process's round-trip times, in microseconds.
fn ping(me: &Path, addr: SocketAddr, count: usize, warmup: usize) -> Result<Vec<f64>> {
    let out = procs::output(
        "ping",
        Command::new(me).args([
            "ping",
            "--addr",
            &addr.to_string(),
            "--count",
            &count.to_string(),
            "--warmup",
            &warmup.to_string(),
        ]),
    )?;
    Ok(parse_line::<RoundTrips>("ping", &out)?.rtt_us)
}

/// rustls encrypting and decrypting in memory, on this process's thread: the TLS reference.
struct InMemoryTls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl InMemoryTls {
    fn new() -> InMemoryTls {
        let pki = bench_pki(DONOR_NAME);
        InMemoryTls {
            server: server_config(&pki),
            client: client_config([pki.ca.clone()]),
        }
    }

    /// Seconds of one transfer of `stream` on a fresh pair whose handshake is not timed.
    fn transfer(&mut self, stream: &[u8]) -> f64 {
        let mut pair = InMemoryPair::new(self.server.clone(), self.client.clone(), DONOR_NAME);
        let started = Instant::now();
        let read = pair.transfer(stream, IN_MEMORY_WRITE);
        let took = started.elapsed().as_secs_f64();
        assert_eq!(read, stream.len() as u64, "rustls in memory lost bytes");
        took
    }
}
