//! The HTTP control API of a proxy, on axum, for suites in any language:
//!
//! | request | effect |
//! |---|---|
//! | `GET /faults` | the faults, as `[{"id": N, "spec": {...}}]` |
//! | `POST /faults` (a spec) | adds one; answers `{"id": N}` |
//! | `PUT /faults/N` (a spec) | replaces fault N; answers `{"id": N}` |
//! | `DELETE /faults/N` | removes fault N; answers `{"id": N}` |
//! | `POST /reset` | removes every fault; answers `{"faults": 0}` |
//! | `GET /decisions` | the fault decisions so far, with the seed: `{"seed": S, "decisions": [...]}` |
//!
//! Changes reach live connections at once. Errors are JSON, `{"error": "..."}`, with their
//! status: 400 for a spec that does not parse or validate (with `"field"`, the path of the bad
//! field, where there is one) or a fault id that is not a number, 404 for an unknown path or
//! fault id, 405 (with `Allow`) for a method the path does not take, 413 for a body over
//! [`MAX_BODY_BYTES`].
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections are served at once (further ones wait in the
//! listen backlog), each for at most [`CONNECTION_LIFETIME`] and one request (every response
//! says `Connection: close`), so requests in flight are bounded too. The listener is
//! [`plumbing::listener`]'s (a failed accept is retried with backoff).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use plumbing::BoundedListener;
use serde_json::json;
use tokio::net::TcpListener;
use tracing::warn;

use crate::proxy::{ChaosError, Control};
use crate::spec::FaultSpec;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a connection may stay open, however slowly its client sends or reads.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);
/// Largest request body (a fault spec).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Serves the control API on `listener` for ever.
pub async fn serve(listener: TcpListener, control: Control) {
    serve_bounded(listener, control, MAX_CONNECTIONS).await;
}

/// [`serve`] with at most `max_connections` connections at once.
async fn serve_bounded(listener: TcpListener, control: Control, max_connections: usize) {
    let listener = BoundedListener::new(
        listener,
        max_connections,
        CONNECTION_LIFETIME,
        "chaos control",
    );
    // `axum::serve` runs until its listener fails, and this listener never does.
    if let Err(e) = axum::serve(listener, router(control)).await {
        warn!(error = %e, "chaos control API stopped");
    }
}

/// The routes, over `control`.
fn router(control: Control) -> Router {
    Router::new()
        .route("/faults", get(list).post(add))
        .route("/faults/{id}", put(update).delete(remove))
        .route("/reset", post(reset))
        .route("/decisions", get(decisions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::map_response(close_after))
        .with_state(control)
}

/// One request per connection: every response closes it.
async fn close_after(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

async fn list(State(control): State<Control>) -> Json<serde_json::Value> {
    let list: Vec<_> = control
        .list()
        .into_iter()
        .map(|(id, spec)| json!({"id": id, "spec": spec}))
        .collect();
    Json(json!(list))
}

async fn add(State(control): State<Control>, body: Bytes) -> Answer {
    let spec = parse_spec(&body)?;
    Ok(Json(json!({"id": control.add(spec)?})))
}

async fn update(State(control): State<Control>, Path(id): Path<String>, body: Bytes) -> Answer {
    let id = fault_id(&id)?;
    control.update(id, parse_spec(&body)?)?;
    Ok(Json(json!({"id": id})))
}

async fn remove(State(control): State<Control>, Path(id): Path<String>) -> Answer {
    let id = fault_id(&id)?;
    control.remove(id)?;
    Ok(Json(json!({"id": id})))
}

async fn reset(State(control): State<Control>) -> Json<serde_json::Value> {
    control.reset();
    Json(json!({"faults": 0}))
}

async fn decisions(State(control): State<Control>) -> Json<serde_json::Value> {
    Json(json!({"seed": control.seed(), "decisions": control.decisions()}))
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// A fault id from the path.
fn fault_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("fault id {id:?} is not a number"),
        )
    })
}

/// A spec from a request body; the error names the field that does not parse.
fn parse_spec(body: &[u8]) -> Result<FaultSpec, ApiError> {
    let mut json = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("invalid fault: {e}"),
            field: (path != ".").then_some(path),
        }
    })
}

/// What a handler that can fail answers.
type Answer = Result<Json<serde_json::Value>, ApiError>;

/// An error answer: its status, and a JSON body `{"error": ..., "field": ...}` (the field,
/// the path of a bad spec field, only when there is one).
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, message: String) -> Self {
        ApiError {
            status,
            message,
            field: None,
        }
    }
}

impl From<ChaosError> for ApiError {
    fn from(e: ChaosError) -> Self {
        match e {
            ChaosError::NoSuchFault(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            ChaosError::Spec(spec) => ApiError {
                status: StatusCode::BAD_REQUEST,
                message: format!("invalid fault: {spec}"),
                field: Some(spec.field),
            },
            ChaosError::Listen { .. } => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.field {
            Some(field) => json!({"error": self.message, "field": field}),
            None => json!({"error": self.message}),
        };
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpStream;

    use super::*;
    use crate::proxy::ChaosProxy;

    /// With room for two connections, two idle clients hold both: a third request waits in
    /// the backlog until one of them goes, then is answered.
    #[tokio::test]
    async fn connections_beyond_the_limit_wait_their_turn() {
        let proxy = ChaosProxy::start("127.0.0.1:0".parse().unwrap(), "127.0.0.1:9", 1, Vec::new())
            .await
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_bounded(listener, proxy.control().clone(), 2));
        let idle1 = TcpStream::connect(addr).await.unwrap();
        let idle2 = TcpStream::connect(addr).await.unwrap();
        let third = tokio::spawn(plumbing::http::request_json(addr, "GET", "/faults", None));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!third.is_finished(), "served beyond the limit");
        drop(idle1);
        let (status, body) = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("served once a connection went")
            .unwrap()
            .unwrap();
        assert_eq!((status, body), (200, json!([])));
        drop(idle2);
    }
}
