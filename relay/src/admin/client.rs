//! A small HTTP/1.1 client of the admin API, for tests and tools.

use super::*;

/// How long [`request`] waits for a whole answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A plain HTTP request (`GET`, or `POST` without a body) against an admin listener: status
/// and body. For tests and tools.
pub async fn request(addr: SocketAddr, method: &str, path: &str) -> io::Result<(u16, String)> {
    request_with_token(addr, method, path, None).await
}

/// [`request`] with `Authorization: Bearer <token>` when a token is given.
pub async fn request_with_token(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> io::Result<(u16, String)> {
    request_with_json(addr, method, path, token, None).await
}

/// [`request_with_token`] with a JSON body.
pub async fn request_with_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    json: Option<&str>,
) -> io::Result<(u16, String)> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(json) = json {
        head.push_str("Content-Type: application/json\r\n");
        head.push_str(&format!("Content-Length: {}\r\n", json.len()));
    } else if method != "GET" && method != "HEAD" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    head.push_str(json.unwrap_or_default());
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(head.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(CLIENT_TIMEOUT, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "admin request timed out"))??;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP status line"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
