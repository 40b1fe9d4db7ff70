//! The TLS record path, in one run, over the same clone-shaped 64 MiB stream:
//!
//! - `rustls_in_memory`: a rustls server encrypts the stream in 256 KiB application writes and
//!   a rustls client decrypts it, records passed through memory on one thread: no sockets, no
//!   runtime: one encryption and one decryption per byte, on one core.
//! - `relay_tls_both_legs`: a fake donor speaking TLS inside the MySQL protocol (SSLRequest,
//!   then TLS) through clone-relay on its defaults (client TLS preferred, server TLS as-client)
//!   to a recipient that asks for TLS, so both legs are TLS and the relay's decoder follows the
//!   clone inside them.
//! - `direct_tls`: the same donor and recipient with no relay between them.
//! - `relay_plain` and `direct_plain`: the plain donor and a recipient that does not ask for
//!   TLS, through the relay (on its defaults: it offers TLS, the recipient declines, both legs
//!   stay plain) and not.
//!
//! The socket cases time each whole connection (connect, TLS handshakes, preamble, stream);
//! `rustls_in_memory` times the stream only, its handshake done beforehand. At the end a
//! summary gives each case's MiB/s and its ratio to `rustls_in_memory`, from the median of the
//! transfers this run timed (warm-up included).
//!
//! Reading the ratio of `relay_tls_both_legs` to `rustls_in_memory`: the relay decrypts the
//! donor's records and encrypts them again for the recipient (two record-layer passes per
//! byte), while the fake donor encrypts and the recipient decrypts (one pass each): four
//! passes per byte against the in-memory pair's two, all on this machine's cores (two on the
//! project's machines) together with the loopback copies. The ratio therefore understates what
//! the relay alone can carry.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clone_relay::Config;
use clone_relay_benches::tls::{
    InMemoryPair, RELAY_NAME, TlsRelay, bench_pki, client_config, clone_tls_client, fake_tls_donor,
    server_config,
};
use clone_relay_benches::{clone_client, clone_stream, fake_donor, start_relay};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use rustls::ProtocolVersion;
use tokio::runtime::Runtime;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// 1 MiB DATA blocks in the stream.
const BLOCKS: usize = 64;
/// The application writes of `rustls_in_memory`: 256 KiB, as the reference has always been
/// measured (the relay's copy buffer defaults to 1 MiB; its records are 16 KiB either way).
const WRITE_BYTES: usize = 256 * 1024;
/// The name in the fake donor's certificate (the relay does not check it on its defaults).
const DONOR_NAME: &str = "donor";

/// The cases in the order they run and are summed up, with the summary's labels.
const CASES: [(&str, &str); 5] = [
    ("rustls_in_memory", "rustls in memory"),
    ("relay_tls_both_legs", "relay TLS both legs"),
    ("direct_tls", "direct TLS"),
    ("relay_plain", "relay plain"),
    ("direct_plain", "direct plain"),
];

/// Every transfer's duration, by case.
#[derive(Default)]
struct Timings(RefCell<BTreeMap<&'static str, Vec<Duration>>>);

impl Timings {
    fn record(&self, case: &'static str, took: Duration) -> Duration {
        self.0.borrow_mut().entry(case).or_default().push(took);
        took
    }

    /// MiB/s of the median transfer of `case`, and how many transfers there were.
    fn mib_per_sec(&self, case: &str, bytes: u64) -> Option<(f64, usize)> {
        let mut all = self.0.borrow().get(case)?.clone();
        all.sort();
        let median = all[all.len() / 2];
        Some((
            bytes as f64 / f64::from(1 << 20) / median.as_secs_f64(),
            all.len(),
        ))
    }
}

fn tls(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let stream = Arc::new(clone_stream(BLOCKS, 1 << 20));
    let bytes = stream.len() as u64;
    let timings = Timings::default();

    let donor_pki = bench_pki(DONOR_NAME);
    let donor_server = server_config(&donor_pki);
    let donor_client = client_config([donor_pki.ca.clone()]);
    let in_memory_suite = {
        let pair = InMemoryPair::new(donor_server.clone(), donor_client.clone(), DONOR_NAME);
        let (version, suite) = pair.negotiated();
        assert_eq!(version, ProtocolVersion::TLSv1_3);
        suite
    };

    let plain_donor = rt.block_on(fake_donor(stream.clone()));
    let tls_donor = rt.block_on(fake_tls_donor(
        stream.clone(),
        TlsAcceptor::from(donor_server.clone()),
    ));
    let (tls_relay, plain_relay_addr) = {
        let _guard = rt.enter();
        let (_, plain_relay) = start_relay(Config::new(plain_donor.to_string()));
        (TlsRelay::start(tls_donor), plain_relay)
    };
    let to_relay = tls_relay.connector();
    let to_donor = TlsConnector::from(donor_client.clone());

    // One transfer before any timing: both legs really are TLS 1.3 (the donor accepts nothing
    // else, the recipient verified the relay's certificate) and the relay's decoder follows
    // the clone inside them.
    let decoded_before = tls_relay.decoded_bytes();
    let (read, version, relay_suite) =
        rt.block_on(clone_tls_client(tls_relay.addr, &to_relay, RELAY_NAME));
    assert_eq!(read, bytes);
    assert_eq!(version, ProtocolVersion::TLSv1_3);
    let decoded = tls_relay.decoded_bytes() - decoded_before;
    assert!(
        decoded >= (BLOCKS as u64) << 20,
        "the relay's decoder saw {decoded} clone data bytes inside TLS"
    );

    let mut group = c.benchmark_group("tls_clone_stream_64MiB");
    group.throughput(Throughput::Bytes(bytes));
    group.sample_size(10);
    // Each iteration takes tens to hundreds of milliseconds: the same count in every sample.
    group.sampling_mode(SamplingMode::Flat);

    group.bench_function(CASES[0].0, |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let mut pair =
                        InMemoryPair::new(donor_server.clone(), donor_client.clone(), DONOR_NAME);
                    let started = Instant::now();
                    let read = pair.transfer(&stream, WRITE_BYTES);
                    let took = started.elapsed();
                    assert_eq!(read, bytes);
                    timings.record(CASES[0].0, took)
                })
                .sum()
        })
    });
    for (case, addr, connector, name) in [
        (CASES[1].0, tls_relay.addr, &to_relay, RELAY_NAME),
        (CASES[2].0, tls_donor, &to_donor, DONOR_NAME),
    ] {
        group.bench_function(case, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let started = Instant::now();
                        let (read, _, _) = rt.block_on(clone_tls_client(addr, connector, name));
                        let took = started.elapsed();
                        assert_eq!(read, bytes);
                        timings.record(case, took)
                    })
                    .sum()
            })
        });
    }
    for (case, addr) in [(CASES[3].0, plain_relay_addr), (CASES[4].0, plain_donor)] {
        group.bench_function(case, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let started = Instant::now();
                        let read = rt.block_on(clone_client(addr));
                        let took = started.elapsed();
                        assert_eq!(read, bytes);
                        timings.record(case, took)
                    })
                    .sum()
            })
        });
    }
    group.finish();
    drop(rt);
    drop(tls_relay);

    // The ratios understate the relay alone: see the module's comment (the relay makes two
    // record-layer passes per byte, the donor and the recipient one each, on shared cores).
    println!(
        "\nTLS record path: {:.1} MiB per transfer, median of the transfers timed; \
         in memory {in_memory_suite:?}, relay recipient leg {relay_suite:?}",
        bytes as f64 / f64::from(1 << 20)
    );
    let base = timings.mib_per_sec(CASES[0].0, bytes);
    for (case, label) in CASES {
        match (timings.mib_per_sec(case, bytes), base) {
            (None, _) => println!("{label}: not run"),
            (Some((rate, n)), _) if case == CASES[0].0 => {
                println!("{label}: {rate:.0} MiB/s ({n} transfers)")
            }
            (Some((rate, n)), Some((base, _))) => println!(
                "{label}: {rate:.0} MiB/s = {:.2}x rustls in memory ({base:.0} MiB/s) ({n} transfers)",
                rate / base
            ),
            (Some((rate, n)), None) => println!("{label}: {rate:.0} MiB/s ({n} transfers)"),
        }
    }
}

criterion_group!(benches, tls);
criterion_main!(benches);
