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
//! says `Connection: close`), so requests in flight are bounded too. A failed accept is retried
//! after a pause that doubles from [`ACCEPT_BACKOFF_MIN`] to [`ACCEPT_BACKOFF_MAX`] while
//! accepts keep failing, and starts again from the bottom after a success.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tracing::{debug, warn};

use crate::proxy::{ChaosError, Control};
use crate::spec::FaultSpec;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a connection may stay open, however slowly its client sends or reads.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);
/// Largest request body (a fault spec).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// First pause after a failed accept.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between failed accepts.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves the control API on `listener` for ever.
pub async fn serve(listener: TcpListener, control: Control) {
    serve_bounded(listener, control, MAX_CONNECTIONS).await;
}

/// [`serve`] with at most `max_connections` connections at once.
async fn serve_bounded(listener: TcpListener, control: Control, max_connections: usize) {
    let listener = BoundedListener {
        inner: listener,
        permits: Arc::new(Semaphore::new(max_connections)),
        backoff: Backoff::default(),
    };
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

/// Pauses between failed accepts: doubling from [`ACCEPT_BACKOFF_MIN`] up to
/// [`ACCEPT_BACKOFF_MAX`], back to the bottom after a success.
#[derive(Debug, Default)]
struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    /// The pause to take after a failure.
    fn failed(&mut self) -> Duration {
        let pause = self.next.unwrap_or(ACCEPT_BACKOFF_MIN);
        self.next = Some((pause * 2).min(ACCEPT_BACKOFF_MAX));
        pause
    }

    fn succeeded(&mut self) {
        self.next = None;
    }
}

/// Accepts a connection only when one of its permits is free (so at most that many are
/// served at once), and keeps accepting through errors, with a [`Backoff`].
struct BoundedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    backoff: Backoff,
}

impl axum::serve::Listener for BoundedListener {
    type Io = BoundedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (BoundedStream, SocketAddr) {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    self.backoff.succeeded();
                    let stream = BoundedStream {
                        stream,
                        deadline: Box::pin(tokio::time::sleep(CONNECTION_LIFETIME)),
                        _permit: permit,
                    };
                    return (stream, peer);
                }
                Err(e) => {
                    let pause = self.backoff.failed();
                    if pause == ACCEPT_BACKOFF_MIN {
                        debug!(error = %e, "chaos control accept failed");
                    } else {
                        warn!(error = %e, ?pause, "chaos control accepts keep failing");
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A control connection: holds its permit until dropped, and fails its reads and writes once
/// [`CONNECTION_LIFETIME`] is over.
struct BoundedStream {
    stream: TcpStream,
    deadline: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl BoundedStream {
    /// An error once the lifetime is over (and the task woken when it will be).
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "chaos control connection open too long",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for BoundedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// How long [`call`] waits for a whole answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one request to a control API; returns the status and the JSON body (`null` when the
/// body is not JSON).
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> io::Result<(u16, serde_json::Value)> {
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: chaos\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "chaos control call timed out"))??;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP status line"))?;
    let json = response
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::ChaosProxy;

    #[test]
    fn accept_backoff_doubles_to_its_ceiling_and_resets() {
        let mut b = Backoff::default();
        let pauses: Vec<Duration> = (0..9).map(|_| b.failed()).collect();
        let ms = Duration::from_millis;
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000].map(ms));
        b.succeeded();
        assert_eq!(b.failed(), ACCEPT_BACKOFF_MIN);
    }

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
        let third = tokio::spawn(call(addr, "GET", "/faults", None));
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
