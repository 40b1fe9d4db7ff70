//! The HTTP control API of a proxy, for suites in any language:
//!
//! | request | effect |
//! |---|---|
//! | `GET /faults` | the faults, as `[{"id": N, "spec": {...}}]` |
//! | `POST /faults` (a spec) | adds one; answers `{"id": N}` |
//! | `PUT /faults/N` (a spec) | replaces fault N |
//! | `DELETE /faults/N` | removes fault N |
//! | `POST /reset` | removes every fault |
//! | `GET /decisions` | the fault decisions so far, with the seed |
//!
//! Changes reach live connections at once.

use std::net::SocketAddr;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::proxy::{ChaosError, Control};
use crate::spec::FaultSpec;

const MAX_REQUEST_BYTES: usize = 1 << 20;

/// Serves the control API on `listener` for ever.
pub async fn serve(listener: TcpListener, control: Control) {
    while let Ok((stream, _)) = listener.accept().await {
        let control = control.clone();
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(10), answer(stream, &control))
                    .await;
        });
    }
}

/// A request as read off the wire.
struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || data.len() + n > MAX_REQUEST_BYTES {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let mut words = head.split_whitespace();
    let (method, path) = (words.next()?.to_string(), words.next()?.to_string());
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    if length > MAX_REQUEST_BYTES {
        return None;
    }
    let mut body = data[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&buf[..n]);
    }
    body.truncate(length);
    Some(Request { method, path, body })
}

async fn answer(mut stream: TcpStream, control: &Control) -> std::io::Result<()> {
    let Some(req) = read_request(&mut stream).await else {
        return reply(&mut stream, 400, json!({"error": "bad request"})).await;
    };
    let id = req
        .path
        .strip_prefix("/faults/")
        .and_then(|id| id.parse::<u64>().ok());
    let spec = || serde_json::from_slice::<FaultSpec>(&req.body);
    let (status, body) = match (req.method.as_str(), req.path.as_str(), id) {
        ("GET", "/faults", _) => {
            let list: Vec<_> = control
                .list()
                .into_iter()
                .map(|(id, spec)| json!({"id": id, "spec": spec}))
                .collect();
            (200, json!(list))
        }
        ("POST", "/faults", _) => match spec() {
            Ok(spec) => outcome(control.add(spec).map(|id| json!({"id": id}))),
            Err(e) => (400, json!({"error": e.to_string()})),
        },
        ("PUT", _, Some(id)) => match spec() {
            Ok(spec) => outcome(control.update(id, spec).map(|()| json!({"id": id}))),
            Err(e) => (400, json!({"error": e.to_string()})),
        },
        ("DELETE", _, Some(id)) => outcome(control.remove(id).map(|()| json!({"id": id}))),
        ("POST", "/reset", _) => {
            control.reset();
            (200, json!({"faults": 0}))
        }
        ("GET", "/decisions", _) => (
            200,
            json!({"seed": control.seed(), "decisions": control.decisions()}),
        ),
        _ => (404, json!({"error": "not found"})),
    };
    reply(&mut stream, status, body).await
}

fn outcome(result: Result<serde_json::Value, ChaosError>) -> (u16, serde_json::Value) {
    match result {
        Ok(v) => (200, v),
        Err(e @ ChaosError::NoSuchFault(_)) => (404, json!({"error": e.to_string()})),
        Err(e) => (400, json!({"error": e.to_string()})),
    }
}

async fn reply(
    stream: &mut TcpStream,
    status: u16,
    body: serde_json::Value,
) -> std::io::Result<()> {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        if status == 200 { "OK" } else { "Error" },
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Sends one request to a control API; returns the status and the JSON body.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, serde_json::Value)> {
    let mut stream = TcpStream::connect(addr).await?;
    let body = body.unwrap_or("");
    stream
        .write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: chaos\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let json = response
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}
