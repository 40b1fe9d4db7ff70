//! The relay pair's tunnel on real sockets, without MySQL: a stream carried from the recipient
//! side to the donor side (mutual TLS, or plain) and echoed back, through the chaos proxy
//! between the two, which resets every tunnel connection at byte offsets, or goes dark (new
//! connections too). The bytes must come back whole and in order; an outage past the bridge must fail the
//! stream's reads with a reason.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chaos::{ChaosProxy, Direction, FaultKind, FaultSpec, FlapMode};
use clone_relay::Config;
use clone_relay::metrics::Metrics;
use clone_relay::tunnel::{StreamEnd, Tunnel};
use rcgen::{CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const MIB: u64 = 1024 * 1024;

/// The chaos proxy as the link between the relays: with `reset_every`, each tunnel connection
/// is reset each time that many bytes of it passed either way (a flap by bytes);
/// [`Link::go_dark`] holds every byte, of new connections too, until [`Link::light`].
struct Link {
    proxy: ChaosProxy,
    dark: std::sync::Mutex<Option<u64>>,
}

impl Link {
    async fn start(to: SocketAddr, reset_every: Option<u64>) -> Link {
        let faults = reset_every
            .map(|every| {
                FaultSpec::new(FaultKind::Flap {
                    period_ms: None,
                    period_bytes: Some(every),
                    down_ms: 0,
                    mode: FlapMode::Reset,
                })
                .direction(Direction::Both)
            })
            .into_iter()
            .collect();
        let proxy = ChaosProxy::start("127.0.0.1:0".parse().unwrap(), to.to_string(), 7, faults)
            .await
            .unwrap();
        Link {
            proxy,
            dark: std::sync::Mutex::default(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.proxy.addr()
    }

    fn accepted(&self) -> u64 {
        self.proxy.control().counts().0
    }

    fn go_dark(&self) {
        let id = self
            .proxy
            .control()
            .add(FaultSpec::new(FaultKind::Blackhole {}))
            .unwrap();
        *self.dark.lock().unwrap() = Some(id);
    }

    /// Caps each tunnel connection at `rate` bytes per second each way.
    fn slow(&self, rate: u64) {
        self.proxy
            .control()
            .add(FaultSpec::new(FaultKind::Bandwidth {
                rate_bytes_per_sec: rate,
                shared_group: None,
            }))
            .unwrap();
    }

    fn light(&self) {
        if let Some(id) = self.dark.lock().unwrap().take() {
            self.proxy.control().remove(id).unwrap();
        }
    }
}

/// A CA and two certificates it signs, written as files: the donor side's (for `localhost`)
/// and the recipient side's.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("tunnel-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        for side in ["donor", "recipient"] {
            let mut params = CertificateParams::default();
            params.subject_alt_names = vec![SanType::DnsName("localhost".try_into().unwrap())];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca).unwrap();
            std::fs::write(dir.join(format!("{side}.pem")), cert.pem()).unwrap();
            write_private(&dir.join(format!("{side}-key.pem")), &key.serialize_pem());
        }
        Pki { dir }
    }

    fn apply(&self, config: &mut Config, side: &str) {
        config.tunnel.cert = Some(self.dir.join(format!("{side}.pem")));
        config.tunnel.key = Some(self.dir.join(format!("{side}-key.pem")));
        config.tunnel.ca = Some(self.dir.join("ca.pem"));
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
}

/// Both sides of a pair's tunnel, the donor side echoing every stream back.
struct Pair {
    recipient_side: Arc<Tunnel>,
    recipient_config: Config,
    donor_metrics: Arc<Metrics>,
    recipient_metrics: Arc<Metrics>,
    link: Link,
    _pki: Option<Pki>,
}

impl Pair {
    async fn start(tls: bool, reset_every: Option<u64>, adjust: impl Fn(&mut Config)) -> Pair {
        let pki = tls.then(|| Pki::new(if reset_every.is_some() { "r" } else { "d" }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut donor_config = Config::new("127.0.0.1:3306");
        donor_config.peer_listen = Some(listener.local_addr().unwrap());
        let link = Link::start(listener.local_addr().unwrap(), reset_every).await;
        let mut recipient_config = Config::with_upstreams(Vec::new());
        recipient_config.peer = Some(format!("localhost:{}", link.addr().port()));
        for (config, side) in [
            (&mut donor_config, "donor"),
            (&mut recipient_config, "recipient"),
        ] {
            match &pki {
                Some(pki) => pki.apply(config, side),
                None => config.tunnel.plain = true,
            }
            adjust(config);
            config.validate().unwrap();
        }
        let donor_metrics = Arc::new(Metrics::default());
        let donor_side = Arc::new(
            Tunnel::new(&donor_config, donor_metrics.clone())
                .unwrap()
                .unwrap(),
        );
        tokio::spawn(async move {
            loop {
                let (tcp, from) = listener.accept().await.unwrap();
                let (donor_side, config) = (donor_side.clone(), donor_config.clone());
                tokio::spawn(async move {
                    if let Ok(Some((end, _))) = donor_side.accept(&config, tcp, from).await {
                        echo(end).await;
                    }
                });
            }
        });
        let recipient_metrics = Arc::new(Metrics::default());
        let recipient_side = Arc::new(
            Tunnel::new(&recipient_config, recipient_metrics.clone())
                .unwrap()
                .unwrap(),
        );
        Pair {
            recipient_side,
            recipient_config,
            donor_metrics,
            recipient_metrics,
            link,
            _pki: pki,
        }
    }

    async fn open(&self) -> StreamEnd {
        self.recipient_side
            .open(
                &self.recipient_config,
                "10.0.0.9:51000".parse().unwrap(),
                None,
            )
            .await
            .unwrap()
    }
}

async fn echo(end: StreamEnd) {
    let (mut r, mut w) = tokio::io::split(end);
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// Bytes that differ at every offset.
fn pattern(len: u64) -> Vec<u8> {
    (0..len).map(|i| (i ^ (i >> 8) ^ (i >> 17)) as u8).collect()
}

/// Sends `data` through the stream and reads the echo to its end; the echo must equal it.
async fn round_trip(end: StreamEnd, data: Vec<u8>) -> Result<(), std::io::Error> {
    let (mut r, mut w) = tokio::io::split(end);
    let len = data.len();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await?;
        Ok::<_, std::io::Error>(data)
    });
    let mut back = Vec::with_capacity(len);
    r.read_to_end(&mut back).await?;
    let sent = writer.await.unwrap()?;
    assert_eq!(back.len(), sent.len(), "the echo's length");
    assert!(back == sent, "the echo differs from what was sent");
    Ok(())
}

fn count(m: &Metrics, f: impl Fn(&Metrics) -> &AtomicU64) -> u64 {
    f(m).load(Ordering::Relaxed)
}

#[tokio::test]
async fn a_stream_survives_ten_resets_of_its_tunnel_connection_with_mutual_tls() {
    let pair = Pair::start(true, Some(MIB), |_| {}).await;
    let end = pair.open().await;
    tokio::time::timeout(Duration::from_secs(60), round_trip(end, pattern(16 * MIB)))
        .await
        .expect("the round trip ends")
        .expect("the stream carries every byte");
    // 16 MiB crossed the link each way: a reset every MiB of a connection's either way.
    let reconnects = count(&pair.recipient_metrics, |m| &m.tunnel_reconnects);
    assert!(reconnects >= 10, "{reconnects} reconnects");
    assert_eq!(count(&pair.recipient_metrics, |m| &m.tunnel_fallbacks), 0);
    assert!(count(&pair.donor_metrics, |m| &m.tunnel_replayed_bytes) > 0);
    assert!(pair.link.accepted() > 10);
}

#[tokio::test]
async fn a_link_at_16_kib_per_second_carries_the_stream_without_reconnecting() {
    // Data frames of 64 KiB (what the pipeline hands over at once) take 4 s each at this rate,
    // longer than the default --tunnel-timeout of 3 s: the link is alive while its bytes come.
    let pair = Pair::start(false, None, |_| {}).await;
    pair.link.slow(16 * 1024);
    let end = pair.open().await;
    tokio::time::timeout(
        Duration::from_secs(60),
        round_trip(end, pattern(160 * 1024)),
    )
    .await
    .expect("the round trip ends")
    .expect("the stream carries every byte");
    assert_eq!(count(&pair.recipient_metrics, |m| &m.tunnel_reconnects), 0);
    assert_eq!(count(&pair.recipient_metrics, |m| &m.tunnel_fallbacks), 0);
    assert_eq!(pair.link.accepted(), 1);
}

#[tokio::test]
async fn a_link_at_4_kib_per_second_carries_a_tls_stream_without_reconnecting() {
    // A TLS record of 16 KiB takes 4 s at this rate, longer than the default --tunnel-timeout of
    // 3 s: the link is alive while its socket's bytes come, whole records or not.
    let pair = Pair::start(true, None, |_| {}).await;
    pair.link.slow(4 * 1024);
    let end = pair.open().await;
    tokio::time::timeout(Duration::from_secs(60), round_trip(end, pattern(40 * 1024)))
        .await
        .expect("the round trip ends")
        .expect("the stream carries every byte");
    assert_eq!(count(&pair.recipient_metrics, |m| &m.tunnel_reconnects), 0);
    assert_eq!(count(&pair.recipient_metrics, |m| &m.tunnel_fallbacks), 0);
    assert_eq!(pair.link.accepted(), 1);
}

#[tokio::test]
async fn a_dark_link_is_bridged_and_its_backlog_spills_to_an_unnamed_file_that_goes() {
    let spill = std::env::temp_dir().join(format!("tunnel-spill-{}", std::process::id()));
    std::fs::create_dir_all(&spill).unwrap();
    let dir = spill.clone();
    let pair = Pair::start(false, None, move |c| {
        c.tunnel.timeout = Duration::from_millis(500);
        c.tunnel.memory_bytes = MIB as usize;
        c.tunnel.spill_dir = Some(dir.clone());
    })
    .await;
    let end = pair.open().await;
    let (mut r, mut w) = tokio::io::split(end);
    let data = pattern(12 * MIB);
    w.write_all(&data[..MIB as usize]).await.unwrap();
    let mut back = vec![0u8; MIB as usize];
    r.read_exact(&mut back).await.unwrap();
    pair.link.go_dark();
    // While dark, the recipient side buffers what it is given: past 1 MiB, in spill segments
    // (8 MiB each) that have no name in the spill directory.
    w.write_all(&data[MIB as usize..]).await.unwrap();
    assert_eq!(count(&pair.recipient_metrics, |m| &m.tunnel_spills), 2);
    assert!(count(&pair.recipient_metrics, |m| &m.tunnel_spill_bytes) > 0);
    assert_eq!(std::fs::read_dir(&spill).unwrap().count(), 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    pair.link.light();
    w.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut rest))
        .await
        .expect("the echo ends")
        .unwrap();
    back.extend_from_slice(&rest);
    assert!(back == data, "the echo differs from what was sent");
    assert!(count(&pair.recipient_metrics, |m| &m.tunnel_reconnects) >= 1);
    assert_eq!(count(&pair.recipient_metrics, |m| &m.tunnel_fallbacks), 0);
    // The spill file goes once its bytes are acknowledged, and with its stream at the latest.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count(&pair.recipient_metrics, |m| &m.tunnel_spill_bytes) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the spill file outlived its stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let active = count(&pair.recipient_metrics, |m| &m.tunnel_streams_opened);
    assert_eq!(active, 1);
    std::fs::remove_dir_all(&spill).unwrap();
}

#[tokio::test]
async fn an_outage_past_the_bridge_fails_the_stream_with_a_reason() {
    let pair = Pair::start(false, None, |c| {
        c.tunnel.timeout = Duration::from_millis(500);
        c.tunnel.bridge = Duration::from_secs(2);
    })
    .await;
    let end = pair.open().await;
    let (mut r, mut w) = tokio::io::split(end);
    w.write_all(b"hello").await.unwrap();
    let mut back = [0u8; 5];
    r.read_exact(&mut back).await.unwrap();
    pair.link.go_dark();
    let mut more = [0u8; 1];
    let e = tokio::time::timeout(Duration::from_secs(20), r.read(&mut more))
        .await
        .expect("the stream gives up within the bridge and a redial's bounds")
        .expect_err("a read fails once the stream is given up");
    assert!(e.to_string().contains("tunnel.bridge"), "{e}");
    assert_eq!(count(&pair.recipient_metrics, |m| &m.tunnel_fallbacks), 1);
}

#[tokio::test]
async fn a_tunnel_without_the_right_certificate_is_refused() {
    let pair = Pair::start(true, None, |_| {}).await;
    let other = Pki::new("other");
    let mut stranger = pair.recipient_config.clone();
    other.apply(&mut stranger, "recipient");
    let tunnel = Arc::new(Tunnel::new(&stranger, Arc::default()).unwrap().unwrap());
    let refused = tunnel
        .open(&stranger, "10.0.0.9:51000".parse().unwrap(), None)
        .await;
    assert!(
        refused.is_err(),
        "a recipient side from another CA gets no stream"
    );
    assert_eq!(count(&pair.donor_metrics, |m| &m.tunnel_streams_opened), 0);
}

#[tokio::test]
async fn a_client_certificate_the_donor_side_does_not_trust_is_refused_by_the_donor_side() {
    let pair = Pair::start(true, None, |_| {}).await;
    // A recipient side that trusts the donor side's CA, with a certificate from another CA: the
    // refusal can only be the donor side's.
    let other = Pki::new("untrusted-client");
    let mut stranger = pair.recipient_config.clone();
    stranger.tunnel.cert = Some(other.dir.join("recipient.pem"));
    stranger.tunnel.key = Some(other.dir.join("recipient-key.pem"));
    let tunnel = Arc::new(Tunnel::new(&stranger, Arc::default()).unwrap().unwrap());
    let refused = tunnel
        .open(&stranger, "10.0.0.9:51000".parse().unwrap(), None)
        .await
        .expect_err("a recipient side with an untrusted certificate gets no stream");
    let reason = refused.to_string();
    assert!(reason.contains("alert"), "{reason}");
    assert_eq!(count(&pair.donor_metrics, |m| &m.tunnel_streams_opened), 0);
}

#[tokio::test]
async fn a_donor_side_certificate_for_another_name_is_refused_by_the_recipient_side() {
    let pair = Pair::start(true, None, |c| {
        if c.peer.is_some() {
            c.tunnel.server_name = Some("donor-side.example".into());
        }
    })
    .await;
    let refused = pair
        .recipient_side
        .open(
            &pair.recipient_config,
            "10.0.0.9:51000".parse().unwrap(),
            None,
        )
        .await
        .expect_err("the donor side's certificate names localhost only");
    let reason = refused.to_string();
    assert!(reason.contains("donor-side.example"), "{reason}");
    assert_eq!(count(&pair.donor_metrics, |m| &m.tunnel_streams_opened), 0);
}

#[tokio::test]
async fn a_restarted_recipient_side_relay_has_its_earlier_streams_given_up_at_once() {
    let pair = Pair::start(true, None, |_| {}).await;
    let (mut first_r, mut first_w) = tokio::io::split(pair.open().await);
    let other = pair
        .recipient_side
        .open(
            &pair.recipient_config,
            "10.0.0.7:51000".parse().unwrap(),
            None,
        )
        .await
        .unwrap();
    let (mut other_r, mut other_w) = tokio::io::split(other);
    for (r, w) in [(&mut first_r, &mut first_w), (&mut other_r, &mut other_w)] {
        w.write_all(b"up").await.unwrap();
        let mut back = [0u8; 2];
        r.read_exact(&mut back).await.unwrap();
    }
    // The relay restarted: a new run, same certificate and address, opens a stream for the same
    // recipient. The donor side gives up the earlier run's stream for it at once (the bridge is
    // 45 s): the earlier stream's reads fail.
    let restarted = Arc::new(
        Tunnel::new(&pair.recipient_config, Arc::default())
            .unwrap()
            .unwrap(),
    );
    let _fresh = restarted
        .open(
            &pair.recipient_config,
            "10.0.0.9:52000".parse().unwrap(),
            None,
        )
        .await
        .unwrap();
    let mut more = [0u8; 1];
    let e = tokio::time::timeout(Duration::from_secs(10), first_r.read(&mut more))
        .await
        .expect("the earlier run's stream is given up long before the bridge")
        .expect_err("its reads fail");
    assert!(e.to_string().contains("no longer holds"), "{e}");
    // Another recipient's stream goes on.
    other_w.write_all(b"on").await.unwrap();
    let mut back = [0u8; 2];
    other_r.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"on");
}
