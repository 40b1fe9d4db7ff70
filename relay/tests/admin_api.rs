//! The admin API over real sockets, with a relay built from `Config::new` and no MySQL: the
//! bearer token on resets, JSON errors with their statuses, the request limit under a flood,
//! and `/healthz` and `/readyz` following the relay's own dials.

mod common;
use common::{GREETING, packet, unhex};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clone_relay::admin::{self, MAX_CONCURRENT_REQUESTS};
use clone_relay::config::Secret;
use clone_relay::connection::dial as upstream;
use clone_relay::protocol::packet::read_packet;
use clone_relay::{Config, Relay};
use plumbing::http::{request, request_with_token};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "test-token-0123456789abcdef";

/// A relay's admin listener on a free port.
fn start_admin(relay: &Relay) -> SocketAddr {
    let listener = clone_relay::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(admin::serve(
        listener,
        relay.clone(),
        std::future::pending(),
    ));
    addr
}

/// The relay itself on a free port.
fn start_relay(relay: &Relay) -> SocketAddr {
    let listener = clone_relay::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let relay = relay.clone();
    tokio::spawn(async move { relay.serve(listener, std::future::pending()).await });
    addr
}

/// A fake donor that sends a MySQL greeting to each connection, then closes it; counts them.
async fn fake_donor() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = s.write_all(&packet(0, &unhex(GREETING))).await;
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest).await;
            });
        }
    });
    (addr, accepted)
}

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn relay_with_token(upstream: impl Into<String>, token: Option<&str>) -> Relay {
    let mut config = Config::new(upstream);
    config.admin_token = token.map(Secret::new);
    Relay::new(config).unwrap()
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// A whole raw response (head and body) to `request_text`.
async fn raw(addr: SocketAddr, request_text: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request_text.as_bytes()).await.unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    response
}

/// The value of header `name` in a raw response.
fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

#[tokio::test]
async fn resets_need_the_configured_bearer_token() {
    let relay = relay_with_token("db:3306", Some(TOKEN));
    let admin = start_admin(&relay);

    // No token, a wrong one, another scheme: 401, and the handler is never reached.
    for token in [None, Some("wrong-token-0123456789abcdef"), Some("")] {
        let (status, body) = request_with_token(admin, "POST", "/sessions/7/reset", token)
            .await
            .unwrap();
        assert_eq!(status, 401, "{token:?}: {body}");
        assert!(json(&body)["error"].as_str().unwrap().contains("token"));
        assert!(!body.contains(TOKEN));
    }
    let basic = raw(
        admin,
        &format!(
            "POST /sessions/7/reset HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Authorization: Basic {TOKEN}\r\nContent-Length: 0\r\n\r\n"
        ),
    )
    .await;
    assert!(basic.starts_with("HTTP/1.1 401"), "{basic}");
    assert_eq!(header(&basic, "www-authenticate"), Some("Bearer"));
    // Auth comes before the path is judged.
    let (status, _) = request(admin, "POST", "/sessions/x/reset").await.unwrap();
    assert_eq!(status, 401);

    // The right token reaches the handler: no such session here, so 404 with the usual body.
    let (status, body) = request_with_token(admin, "POST", "/sessions/7/reset", Some(TOKEN))
        .await
        .unwrap();
    assert_eq!(status, 404, "{body}");
    let body = json(&body);
    assert_eq!(body["session"], 7);
    assert_eq!(body["connections_reset"], 0);
    assert!(body["error"].is_string());
    // The scheme's case does not matter.
    let lower = raw(
        admin,
        &format!(
            "POST /sessions/7/reset HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             authorization: bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n"
        ),
    )
    .await;
    assert!(lower.starts_with("HTTP/1.1 404"), "{lower}");

    let (status, body) = request_with_token(admin, "POST", "/sessions/x/reset", Some(TOKEN))
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(json(&body)["error"].is_string());
}

#[tokio::test]
async fn without_a_token_resets_are_off() {
    let relay = relay_with_token("db:3306", None);
    let admin = start_admin(&relay);
    for token in [None, Some(TOKEN)] {
        let (status, body) = request_with_token(admin, "POST", "/sessions/1/reset", token)
            .await
            .unwrap();
        assert_eq!(status, 403, "{body}");
        let error = json(&body)["error"].as_str().unwrap().to_string();
        assert!(error.contains("no admin token is configured"), "{error}");
    }
    // Reading stays open.
    let (status, _) = request(admin, "GET", "/sessions").await.unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn errors_are_json_with_their_status() {
    let relay = relay_with_token("db:3306", Some(TOKEN));
    let admin = start_admin(&relay);

    let (status, body) = request(admin, "GET", "/nowhere").await.unwrap();
    assert_eq!(status, 404);
    assert!(json(&body)["error"].as_str().unwrap().contains("/nowhere"));

    let response = raw(
        admin,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 405"), "{response}");
    assert!(
        header(&response, "allow").unwrap().contains("GET"),
        "{response}"
    );
    assert_eq!(header(&response, "connection"), Some("close"));
    let body = response.split_once("\r\n\r\n").unwrap().1;
    assert!(json(body)["error"].is_string());

    let response = raw(
        admin,
        "GET /sessions/1/reset HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    // A wrong method is 405 whether or not a token comes with it.
    assert!(response.starts_with("HTTP/1.1 405"), "{response}");
    assert_eq!(header(&response, "allow"), Some("POST"));
    let response = raw(
        admin,
        &format!(
            "GET /sessions/1/reset HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Authorization: Bearer {TOKEN}\r\n\r\n"
        ),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 405"), "{response}");
    assert_eq!(header(&response, "allow"), Some("POST"));

    let response = raw(admin, "NONSENSE\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
}

#[tokio::test]
async fn the_read_endpoints_keep_their_shapes() {
    let relay = relay_with_token("db:3306", None);
    let admin = start_admin(&relay);

    let (status, body) = request(admin, "GET", "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("clone_relay_"), "{body}");
    assert!(
        body.contains("clone_relay_admin_requests_in_flight 1"),
        "{body}"
    );

    let (status, body) = request(admin, "GET", "/sessions").await.unwrap();
    assert_eq!(status, 200);
    let view = json(&body);
    assert!(
        view["sessions"].is_array() && view["unassigned"].is_array(),
        "{body}"
    );

    let (status, body) = request(admin, "GET", "/healthz").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

/// The value of a metric line in Prometheus text.
fn metric(page: &str, name: &str) -> u64 {
    plumbing::prometheus_text::value(page, name).unwrap_or_else(|| panic!("no {name} in {page}"))
        as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_requests_stays_within_the_limit() {
    let (donor, _) = fake_donor().await;
    let relay = relay_with_token(donor.to_string(), None);
    let admin = start_admin(&relay);
    let relay_addr = start_relay(&relay);

    let paths = ["/metrics", "/sessions", "/healthz"];
    let flood = (0..1000)
        .map(|i| tokio::spawn(async move { request(admin, "GET", paths[i % paths.len()]).await }));
    let results = tokio::time::timeout(Duration::from_secs(60), futures_join_all(flood.collect()))
        .await
        .expect("1000 admin requests answered within a minute");
    let mut busy = 0;
    for result in results {
        let (status, body) = result.unwrap().unwrap();
        match status {
            200 => {}
            503 => {
                busy += 1;
                assert!(json(&body)["error"].is_string(), "{body}");
            }
            other => panic!("status {other}: {body}"),
        }
    }

    let (status, page) = request(admin, "GET", "/metrics").await.unwrap();
    assert_eq!(status, 200);
    let peak = metric(&page, "clone_relay_admin_requests_in_flight_peak");
    assert!(
        (1..=MAX_CONCURRENT_REQUESTS as u64).contains(&peak),
        "peak {peak}"
    );
    assert_eq!(
        metric(&page, "clone_relay_admin_requests_rejected_total"),
        busy
    );
    eprintln!("peak of {peak} admin requests at once; {busy} answered 503");

    // The admin listener and the relay keep answering.
    let (status, _) = request(admin, "GET", "/healthz").await.unwrap();
    assert_eq!(status, 200);
    let mut through = TcpStream::connect(relay_addr).await.unwrap();
    let (header, _) =
        tokio::time::timeout(Duration::from_secs(10), read_packet(&mut through, 1024))
            .await
            .expect("the relay answers")
            .unwrap();
    assert_eq!(header.seq, 0);
}

/// Awaits every handle (no extra crate for `join_all`).
async fn futures_join_all<T>(
    handles: Vec<tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await);
    }
    out
}

#[tokio::test]
async fn healthz_answers_whatever_the_donors_do() {
    let relay = relay_with_token(closed_port().to_string(), None);
    let admin = start_admin(&relay);
    let (status, _) = request(admin, "GET", "/healthz").await.unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn readyz_follows_the_relays_own_dials() {
    // An unreachable donor: not ready before any dial, nor after a failed one.
    let dead = closed_port();
    let relay = relay_with_token(dead.to_string(), None);
    let admin = start_admin(&relay);
    let (status, body) = request(admin, "GET", "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    let error = json(&body)["error"].as_str().unwrap().to_string();
    assert!(error.contains("no donor dialed yet"), "{error}");

    let relay_addr = start_relay(&relay);
    let mut refused = TcpStream::connect(relay_addr).await.unwrap();
    let mut rest = Vec::new();
    let _ = refused.read_to_end(&mut rest).await;
    let (status, body) = request(admin, "GET", "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    let error = json(&body)["error"].as_str().unwrap().to_string();
    assert!(error.contains(&dead.to_string()), "{error}");

    // A donor that answers: not ready until a real dial, which /readyz never makes.
    let (donor, accepted) = fake_donor().await;
    let relay = relay_with_token(donor.to_string(), None);
    let admin = start_admin(&relay);
    for _ in 0..3 {
        let (status, _) = request(admin, "GET", "/readyz").await.unwrap();
        assert_eq!(status, 503);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "/readyz dialed the donor"
    );

    // A connection through the relay dials the donor: ready.
    let relay_addr = start_relay(&relay);
    let mut through = TcpStream::connect(relay_addr).await.unwrap();
    read_packet(&mut through, 1024).await.unwrap();
    let (status, body) = request(admin, "GET", "/readyz").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let body = json(&body);
    assert_eq!(body["ready"], true);
    assert_eq!(body["upstreams"][0]["upstream"], donor.to_string());
    assert_eq!(body["upstreams"][0]["last_dial_ok"], true);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // The start-up probe counts too.
    let relay = relay_with_token(donor.to_string(), None);
    let admin = start_admin(&relay);
    upstream::probe(relay.config(), relay.health(), &donor.to_string())
        .await
        .unwrap();
    let (status, _) = request(admin, "GET", "/readyz").await.unwrap();
    assert_eq!(status, 200);
}

/// `/metrics` keeps its series: every family's name, type and label names (from a relay with a
/// relay-wide cap that has ended one connection: its donor is unreachable) as checked in at
/// `tests/metrics-series.txt`. A change to the page shows as a diff of that file;
/// `UPDATE_METRICS_SERIES=1` rewrites it. A family shows once it has a sample: on this relay,
/// every family but `clone_relay_upstream_stale_clone` (a donor left holding a clone).
#[tokio::test]
async fn the_metrics_series_match_the_checked_in_list() {
    let mut config = Config::new(closed_port().to_string());
    config.limits.relay = Some(20 << 20);
    let relay = Relay::new(config).unwrap();
    let admin = start_admin(&relay);
    let mut refused = TcpStream::connect(start_relay(&relay)).await.unwrap();
    let mut rest = Vec::new();
    let _ = refused.read_to_end(&mut rest).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let page = loop {
        let (status, page) = request(admin, "GET", "/metrics").await.unwrap();
        assert_eq!(status, 200);
        if page.contains("clone_relay_connections_closed_total{") {
            break page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no close counted:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let families = plumbing::prometheus_text::families(&page).join("\n") + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/metrics-series.txt");
    if std::env::var("UPDATE_METRICS_SERIES").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &families).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        families,
        checked_in,
        "/metrics series differ from {}",
        path.display()
    );
}
