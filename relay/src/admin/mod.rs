//! The admin listener (off unless `--admin` is given), on axum:
//!
//! - `GET /metrics`: Prometheus text: the relay's counters, then the admin listener's own.
//! - `GET /sessions`: JSON of live and recent clone sessions. It names users and client
//!   addresses, so a client on loopback reads it and any other needs the admin token.
//! - `GET /healthz`: 200 while the relay runs.
//! - `GET /readyz`: 200 when a donor's latest dial succeeded, or one did within the last
//!   minute (see [`crate::recovery::health`]); else 503 with the reason. It never dials a donor itself.
//! - `GET /limits`: the bandwidth caps, and the rate each of the relay's buckets let through.
//! - `PUT /limits`: replaces the bandwidth caps, as a JSON object with the keys of the settings
//!   file's `[limits]` table (`{"session": "40MiB/s"}`; a key left out is no cap); live
//!   connections follow within a second. 400 names a bad key or value.
//! - `POST /sessions/{id}/reset`: resets every connection of a clone session so that the
//!   recipient resumes it; `{"session": id, "connections_reset": n}`, 404 when none was live.
//!
//! Mutating endpoints need `Authorization: Bearer <token>` matching the configured admin token
//! (compared in constant time); a missing or wrong token is 401 and changes nothing. Without a
//! configured token they are off (403). Errors are JSON `{"error": "..."}` with their status:
//! 400 for a malformed session id, 404 for an unknown path, 405 (with `Allow`) for a wrong
//! method, 503 when busy or timed out.
//!
//! Bounds, so that a flood of admin requests never takes resources from the relay: at most
//! [`MAX_CONNECTIONS`] admin connections are open (further ones wait in the listen backlog),
//! each for at most [`CONNECTION_LIFETIME`] and one request (every response says
//! `Connection: close`); at most [`MAX_CONCURRENT_REQUESTS`] requests run at once, and one
//! that cannot start within [`QUEUE_WAIT`] gets 503; each runs within [`REQUEST_TIMEOUT`].
//! The listener is [`plumbing::listener`]'s (a failed accept is retried, with backoff unless
//! the error concerned only that connection).

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use plumbing::listener::{BoundedListener, PeerAddr};

use crate::config::LimitSettings;
use crate::metrics::page::{self, Page};
use crate::state::Relay;

/// Admin requests served at once.
pub const MAX_CONCURRENT_REQUESTS: usize = 64;
/// Admin connections open at once.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a request may wait for one of the [`MAX_CONCURRENT_REQUESTS`] slots before 503.
pub const QUEUE_WAIT: Duration = Duration::from_secs(2);
/// How long a request may run once started before 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an admin connection may stay open, however slowly its client sends or reads.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(20);

/// Serves admin requests on `listener` until `shutdown` completes. Connections open then run
/// to their end (each is bounded by [`CONNECTION_LIFETIME`]).
pub async fn serve(listener: TcpListener, relay: Relay, shutdown: impl Future<Output = ()>) {
    let limits = Arc::new(Limits::default());
    serve_router(listener, router(relay, limits.clone()), limits, shutdown).await;
}

/// Serves `routes` under `limits` on `listener`, with the connection bounds, until `shutdown`.
async fn serve_router(
    listener: TcpListener,
    routes: Router,
    limits: Arc<Limits>,
    shutdown: impl Future<Output = ()>,
) {
    let listener = BoundedListener::new(listener, MAX_CONNECTIONS, CONNECTION_LIFETIME, "admin");
    let app = routes.layer(middleware::from_fn_with_state(limits, limit));
    tokio::select! {
        result = axum::serve(listener, app.into_make_service_with_connect_info::<PeerAddr>()).into_future() => {
            if let Err(e) = result {
                warn!(error = %e, "admin listener stopped");
            }
        }
        () = shutdown => {}
    }
}

/// The admin API's routes, over `relay`; `limits` only for their counts in `/metrics`.
fn router(relay: Relay, limits: Arc<Limits>) -> Router {
    let state = AdminState { relay, limits };
    let mutating = Router::new()
        .route("/sessions/{id}/reset", post(reset))
        .route("/limits", put(set_limits))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let private = Router::new().route("/sessions", get(sessions)).route_layer(
        middleware::from_fn_with_state(state.clone(), require_loopback_or_token),
    );
    Router::new()
        .route("/metrics", get(metrics))
        .route("/limits", get(show_limits))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(mutating)
        .merge(private)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

#[derive(Debug, Clone)]
struct AdminState {
    relay: Relay,
    limits: Arc<Limits>,
}

/// The request slots, and counts of their use for `/metrics`.
#[derive(Debug)]
struct Limits {
    permits: Arc<Semaphore>,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    rejected: AtomicU64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_REQUESTS)),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            rejected: AtomicU64::new(0),
        }
    }
}

impl Limits {
    fn render(&self, page: &mut Page) {
        page.gauge(
            "clone_relay_admin_requests_in_flight",
            "Admin requests being served.",
            self.in_flight.load(Ordering::SeqCst) as f64,
        );
        page.gauge(
            "clone_relay_admin_requests_in_flight_peak",
            "Most admin requests served at once since the listener started.",
            self.peak.load(Ordering::SeqCst) as f64,
        );
        page.counter(
            "clone_relay_admin_requests_rejected_total",
            "Admin requests answered 503 because every request slot stayed taken.",
            self.rejected.load(Ordering::SeqCst) as f64,
        );
    }
}

/// Counts a request as in flight until it ends, even when its client goes away.
struct InFlight<'a>(&'a Limits);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Outermost middleware: a request slot (503 after [`QUEUE_WAIT`]), the request timeout, and
/// `Connection: close` on every response.
async fn limit(State(limits): State<Arc<Limits>>, request: Request, next: Next) -> Response {
    let mut response =
        match tokio::time::timeout(QUEUE_WAIT, limits.permits.clone().acquire_owned()).await {
            Ok(Ok(_permit)) => {
                let in_flight = limits.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                let _guard = InFlight(&limits);
                limits.peak.fetch_max(in_flight, Ordering::SeqCst);
                match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
                    Ok(response) => response,
                    Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "request timed out"),
                }
            }
            _ => {
                limits.rejected.fetch_add(1, Ordering::SeqCst);
                let mut busy = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many admin requests at once; retry",
                );
                busy.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                busy
            }
        };
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Lets a request from loopback through; any other needs the admin token ([`require_token`]).
async fn require_loopback_or_token(
    State(state): State<AdminState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    request: Request,
    next: Next,
) -> Response {
    if peer.ip().is_loopback() {
        return next.run(request).await;
    }
    require_token(State(state), request, next).await
}

/// Lets a request through only with the configured bearer token (compared in constant time).
async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let Some(expected) = state.relay.config().admin_token.as_ref() else {
        return error(
            StatusCode::FORBIDDEN,
            "no admin token is configured (CLONE_RELAY_ADMIN_TOKEN): this endpoint is off \
             (GET /sessions answers loopback clients without one)",
        );
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let authorized = given.is_some_and(|token| expected.matches(token));
    if !authorized {
        debug!(
            path = %request.uri().path(),
            token_given = given.is_some(),
            "admin request refused: missing or wrong bearer token"
        );
        let mut refused = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        refused
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return refused;
    }
    next.run(request).await
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let relay = &state.relay;
    let stale: Vec<String> = (relay.registry().stale_donors().into_iter())
        .map(|d| d.upstream)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut page = Page::default();
    relay
        .metrics()
        .render(&mut page, &relay.registry().count_by_state(), &stale);
    crate::metrics::render_limits(&mut page, relay.limits());
    state.limits.render(&mut page);
    match page.text() {
        Ok(text) => ([(header::CONTENT_TYPE, page::CONTENT_TYPE)], text).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render metrics: {e}"),
        ),
    }
}

async fn sessions(State(state): State<AdminState>) -> Response {
    let mut view = state.relay.registry().view();
    for session in &mut view.sessions {
        session.bandwidth = state
            .relay
            .limits()
            .session_if_live(session.id)
            .map(|pair| pair.view());
    }
    match serde_json::to_string_pretty(&view) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render sessions: {e}"),
        ),
    }
}

async fn show_limits(State(state): State<AdminState>) -> Response {
    Json(state.relay.limits().view()).into_response()
}

async fn set_limits(
    State(state): State<AdminState>,
    body: Result<Json<LimitSettings>, JsonRejection>,
) -> Response {
    let settings = match body {
        Ok(Json(settings)) => settings,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("bad limits: {}", e.body_text()),
            );
        }
    };
    state.relay.set_limits(&settings);
    Json(state.relay.limits().view()).into_response()
}

async fn healthz() -> Response {
    ([(header::CONTENT_TYPE, "text/plain")], "ok\n").into_response()
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let readiness = state.relay.health().readiness();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

async fn reset(State(state): State<AdminState>, id: Result<Path<u64>, PathRejection>) -> Response {
    let Ok(Path(id)) = id else {
        return error(StatusCode::BAD_REQUEST, "the session id must be a number");
    };
    let n = state.relay.registry().abort_session(id);
    if n == 0 {
        let body = json!({
            "session": id,
            "connections_reset": 0,
            "error": format!("clone session {id} has no live connection"),
        });
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    }
    info!(
        clone_session = id,
        connections_reset = n,
        "clone session reset on request"
    );
    Json(json!({"session": id, "connections_reset": n})).into_response()
}

async fn not_found(uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// A JSON error body with its status.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

#[cfg(test)]
mod tests {
    use plumbing::http::request;

    use super::*;
    use crate::config::{Config, Secret};
    use tower::ServiceExt;

    /// GET `/sessions` from `peer`, with `token` as the bearer token when given.
    async fn sessions_from(relay: &Relay, peer: &str, token: Option<&str>) -> StatusCode {
        let mut request = Request::get("/sessions");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let mut request = request.body(axum::body::Body::empty()).unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(PeerAddr(peer.parse().unwrap())));
        let routes = router(relay.clone(), Arc::new(Limits::default()));
        routes.oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn sessions_answer_loopback_and_others_only_with_the_token() {
        let open = Relay::new(Config::new("127.0.0.1:3306")).unwrap();
        assert_eq!(
            sessions_from(&open, "127.0.0.1:5000", None).await,
            StatusCode::OK
        );
        assert_eq!(
            sessions_from(&open, "[::1]:5000", None).await,
            StatusCode::OK
        );
        // No token configured: nobody off this host reads user names and addresses.
        assert_eq!(
            sessions_from(&open, "10.0.0.7:5000", None).await,
            StatusCode::FORBIDDEN
        );
        let mut config = Config::new("127.0.0.1:3306");
        config.admin_token = Some(Secret::new("a-token-of-twenty-chars"));
        let guarded = Relay::new(config).unwrap();
        assert_eq!(
            sessions_from(&guarded, "10.0.0.7:5000", None).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            sessions_from(&guarded, "10.0.0.7:5000", Some("wrong")).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            sessions_from(&guarded, "10.0.0.7:5000", Some("a-token-of-twenty-chars")).await,
            StatusCode::OK
        );
        assert_eq!(
            sessions_from(&guarded, "127.0.0.1:5000", None).await,
            StatusCode::OK
        );
    }

    /// A route slow enough that the request slots fill up: in flight never exceeds the limit
    /// (counted by the handler itself), requests beyond it wait and, past QUEUE_WAIT, get 503,
    /// and the listener answers afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_beyond_the_limit_wait_then_get_503() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let slow = {
            let (in_flight, peak) = (in_flight.clone(), peak.clone());
            move || async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(1)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                "done"
            }
        };
        let routes = Router::new().route("/slow", get(slow));
        let limits = Arc::new(Limits::default());
        let listener = crate::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_router(
            listener,
            routes,
            limits.clone(),
            std::future::pending(),
        ));

        let started = tokio::time::Instant::now();
        // More than MAX_CONNECTIONS, so that some wait past QUEUE_WAIT for a request slot.
        let flood: Vec<_> = (0..400)
            .map(|_| tokio::spawn(request(addr, "GET", "/slow")))
            .collect();
        let (mut ok, mut busy) = (0, 0);
        for answer in flood {
            let (status, body) = answer.await.unwrap().unwrap();
            match status {
                200 => ok += 1,
                503 => {
                    assert!(body.contains("too many admin requests"), "{body}");
                    busy += 1;
                }
                other => panic!("status {other}: {body}"),
            }
        }
        let took = started.elapsed();
        assert!(took < Duration::from_secs(30), "the flood took {took:?}");
        assert_eq!(peak.load(Ordering::SeqCst), MAX_CONCURRENT_REQUESTS);
        assert_eq!(limits.peak.load(Ordering::SeqCst), MAX_CONCURRENT_REQUESTS);
        assert_eq!(limits.rejected.load(Ordering::SeqCst), busy);
        assert!(
            ok >= MAX_CONCURRENT_REQUESTS && busy > 0,
            "{ok} ok, {busy} busy"
        );
        assert_eq!(in_flight.load(Ordering::SeqCst), 0);
        assert_eq!(request(addr, "GET", "/slow").await.unwrap().0, 200);
    }
}
