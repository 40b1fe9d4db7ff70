//! Socket tuning through socket2, applied to both legs of every connection.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpStream};

use crate::config::Config;

/// Listen backlog: a clone opens up to 17 connections in a burst when workers attach.
const LISTEN_BACKLOG: i32 = 1024;

/// TCP_NODELAY (clone ACKs and commands are small and latency-bound), the configured buffer
/// sizes, keepalive and TCP_USER_TIMEOUT so that a silently dead peer is noticed.
pub fn tune(stream: &TcpStream, config: &Config) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let sock = SockRef::from(stream);
    if let Some(bytes) = config.socket_buffer_bytes {
        sock.set_recv_buffer_size(bytes)?;
        sock.set_send_buffer_size(bytes)?;
    }
    let keepalive = TcpKeepalive::new()
        .with_time(config.keepalive_idle)
        .with_interval(config.keepalive_interval)
        .with_retries(config.keepalive_retries);
    sock.set_tcp_keepalive(&keepalive)?;
    sock.set_tcp_user_timeout(Some(config.user_timeout))
}

/// Bounds SO_RCVBUF on a connection whose reads are capped, so the kernel does not take in
/// megabytes at full speed ahead of the cap (the kernel doubles the figure for bookkeeping).
pub fn bound_receive_buffer(stream: &TcpStream, bytes: usize) -> io::Result<()> {
    SockRef::from(stream).set_recv_buffer_size(bytes)
}

/// A listener with SO_REUSEADDR (a restarted relay can rebind at once) and a deep backlog.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tuning_applies_to_a_real_socket() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let mut config = Config::new("db:3306");
        config.socket_buffer_bytes = Some(1 << 20);
        tune(&client, &config).unwrap();

        let sock = SockRef::from(&client);
        assert!(client.nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        // Linux doubles the requested size for bookkeeping.
        assert!(sock.recv_buffer_size().unwrap() >= 1 << 20);
        assert_eq!(sock.tcp_keepalive_time().unwrap(), config.keepalive_idle);
        assert_eq!(sock.tcp_user_timeout().unwrap(), Some(config.user_timeout));
    }

    #[tokio::test]
    async fn a_port_in_use_is_refused() {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = listen(first.local_addr().unwrap()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
