//! The admin listener (off unless `--admin` is given): `GET /metrics` in Prometheus text
//! format, `GET /sessions` as JSON, `GET /healthz`, and `POST /sessions/{id}/reset` to reset a
//! clone session's connections so that the recipient resumes it. A minimal HTTP/1.1 server: one request per
//! connection, bounded in size and time.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::state::Relay;

const MAX_REQUEST_BYTES: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves admin requests on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, relay: Relay, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let relay = relay.clone();
        tokio::spawn(async move {
            if let Err(e) = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &relay)).await {
                debug!(%peer, error = %e, "admin request timed out");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, relay: &Relay) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || request.len() + n > MAX_REQUEST_BYTES {
            return respond(&mut stream, 400, "text/plain", "bad request\n").await;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if method == "POST" {
        // POST /sessions/{id}/reset: reset a clone session's connections so it resumes.
        let id = path
            .strip_prefix("/sessions/")
            .and_then(|rest| rest.strip_suffix("/reset"))
            .and_then(|id| id.parse().ok());
        return match id {
            Some(id) => {
                let n = relay.registry().abort_session(id);
                let body = format!("{{\"session\": {id}, \"connections_reset\": {n}}}\n");
                respond(
                    &mut stream,
                    if n > 0 { 200 } else { 404 },
                    "application/json",
                    &body,
                )
                .await
            }
            None => respond(&mut stream, 404, "text/plain", "not found\n").await,
        };
    }
    if method != "GET" {
        return respond(&mut stream, 405, "text/plain", "only GET and POST\n").await;
    }
    match path {
        "/metrics" => {
            let stale: Vec<String> = (relay.registry().stale_donors().into_iter())
                .map(|d| d.upstream)
                .collect();
            let page = relay
                .metrics()
                .render(&relay.registry().count_by_state(), &stale);
            respond(&mut stream, 200, "text/plain; version=0.0.4", &page).await
        }
        "/sessions" => {
            let body = serde_json::to_string_pretty(&relay.registry().view())
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
            respond(&mut stream, 200, "application/json", &body).await
        }
        "/healthz" => respond(&mut stream, 200, "text/plain", "ok\n").await,
        _ => respond(&mut stream, 404, "text/plain", "not found\n").await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// A plain HTTP request (`GET` or `POST` without a body) against an admin listener: status and
/// body. For tests and tools.
pub async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(format!("{method} {path} HTTP/1.1\r\nHost: relay\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
