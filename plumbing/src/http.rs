//! An HTTP client for tests and tools (reqwest, plain HTTP, no proxy): one request to an API on
//! a socket address, its status and its body.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// How long a request waits for its whole answer.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// One request to `addr`: the status and the body as text.
#[derive(Debug, Default, Clone, Copy)]
pub struct Request<'a> {
    /// Sent as `Authorization: Bearer <token>`.
    pub token: Option<&'a str>,
    /// Sent as the body, with `Content-Type: application/json`.
    pub json: Option<&'a str>,
}

impl Request<'_> {
    /// Sends `method path` to `addr`.
    pub async fn send(
        self,
        addr: SocketAddr,
        method: &str,
        path: &str,
    ) -> io::Result<(u16, String)> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(TIMEOUT)
            .build()
            .map_err(io::Error::other)?;
        let mut request = client.request(method, format!("http://{addr}{path}"));
        if let Some(token) = self.token {
            request = request.bearer_auth(token);
        }
        if let Some(json) = self.json {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(json.to_owned());
        }
        let response = request.send().await.map_err(into_io)?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(into_io)?;
        Ok((status, body))
    }
}

/// `method path` to `addr`, without a token or a body: the status and the body.
pub async fn request(addr: SocketAddr, method: &str, path: &str) -> io::Result<(u16, String)> {
    Request::default().send(addr, method, path).await
}

/// [`request`] with `Authorization: Bearer <token>` when a token is given.
pub async fn request_with_token(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> io::Result<(u16, String)> {
    Request { token, json: None }.send(addr, method, path).await
}

/// [`request_with_token`] with a JSON body.
pub async fn request_with_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    json: Option<&str>,
) -> io::Result<(u16, String)> {
    Request { token, json }.send(addr, method, path).await
}

/// [`request`], the body read as JSON (`null` when it is not JSON).
pub async fn request_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> io::Result<(u16, serde_json::Value)> {
    let (status, body) = Request { token: None, json }
        .send(addr, method, path)
        .await?;
    let value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    Ok((status, value))
}

fn into_io(e: reqwest::Error) -> io::Error {
    let kind = if e.is_timeout() {
        io::ErrorKind::TimedOut
    } else if e.is_connect() {
        io::ErrorKind::ConnectionRefused
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}
