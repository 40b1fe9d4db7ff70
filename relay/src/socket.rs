//! Socket tuning through socket2, applied to both legs of every connection.

use std::io;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

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

/// The round trip a capped leg's receive buffer is sized for: with the cap times this in
/// flight, a leg keeps its cap across paths up to this long.
pub const ROUND_TRIP_ALLOWANCE: Duration = Duration::from_millis(250);
/// The smallest receive buffer a cap leads to.
const MIN_RECEIVE_BUFFER: usize = 64 << 10;
/// The ceiling assumed where the kernel's settings cannot be read.
const DEFAULT_RECEIVE_CEILING: usize = 4 << 20;

/// The receive buffer for a leg whose reads are capped at `cap` bytes per second: the cap times
/// [`ROUND_TRIP_ALLOWANCE`], at least 64 KiB, so the kernel does not take in megabytes at full
/// speed ahead of a slow cap. `None` (the kernel's autotuning stays, as without a cap) where
/// that reaches `ceiling`, the most a socket may ask for: a fixed buffer there would only be
/// smaller than what autotuning reaches.
pub fn receive_buffer_for(cap: u64, ceiling: usize) -> Option<usize> {
    let bytes = (cap as f64 * ROUND_TRIP_ALLOWANCE.as_secs_f64()) as usize;
    let bytes = bytes.max(MIN_RECEIVE_BUFFER);
    (bytes < ceiling).then_some(bytes)
}

/// The most a socket may ask for as its receive buffer: the lower of `net.core.rmem_max` and
/// the top of autotuning (`net.ipv4.tcp_rmem`'s third figure), read once.
pub fn receive_buffer_ceiling() -> usize {
    static CEILING: OnceLock<usize> = OnceLock::new();
    *CEILING.get_or_init(|| {
        let read = |path: &str, field: usize| {
            std::fs::read_to_string(path)
                .ok()?
                .split_whitespace()
                .nth(field)?
                .parse::<usize>()
                .ok()
        };
        let rmem_max = read("/proc/sys/net/core/rmem_max", 0);
        let autotune_max = read("/proc/sys/net/ipv4/tcp_rmem", 2);
        match (rmem_max, autotune_max) {
            (None, None) => DEFAULT_RECEIVE_CEILING,
            (a, b) => a
                .into_iter()
                .chain(b)
                .min()
                .unwrap_or(DEFAULT_RECEIVE_CEILING),
        }
    })
}

/// Bounds SO_RCVBUF on a leg whose reads are capped (see [`receive_buffer_for`]; the kernel
/// doubles the figure for bookkeeping). A leg without a bound keeps the kernel's autotuning.
pub fn bound_receive_buffer(stream: &TcpStream, cap: Option<u64>) -> io::Result<()> {
    match cap.and_then(|cap| receive_buffer_for(cap, receive_buffer_ceiling())) {
        Some(bytes) => SockRef::from(stream).set_recv_buffer_size(bytes),
        None => Ok(()),
    }
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

    /// A connected pair of sockets on loopback.
    async fn connected() -> (TcpStream, TcpStream) {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn a_cap_far_above_the_link_leaves_the_receive_buffer_to_the_kernel() {
        let (untouched, capped) = connected().await;
        bound_receive_buffer(&capped, Some(1 << 40)).unwrap();
        bound_receive_buffer(&capped, None).unwrap();
        assert_eq!(
            SockRef::from(&capped).recv_buffer_size().unwrap(),
            SockRef::from(&untouched).recv_buffer_size().unwrap()
        );
    }

    #[tokio::test]
    async fn a_slow_cap_bounds_the_receive_buffer_to_its_round_trip_allowance() {
        let (_, capped) = connected().await;
        // A cap whose allowance is half the ceiling: bounded to it (doubled by the kernel).
        let ceiling = receive_buffer_ceiling();
        let cap = (ceiling as f64 / 2.0 / ROUND_TRIP_ALLOWANCE.as_secs_f64()) as u64;
        let bytes = receive_buffer_for(cap, ceiling).unwrap();
        assert!(
            bytes.abs_diff(ceiling / 2) <= 1,
            "{bytes} for a ceiling of {ceiling}"
        );
        bound_receive_buffer(&capped, Some(cap)).unwrap();
        assert_eq!(
            SockRef::from(&capped).recv_buffer_size().unwrap(),
            2 * bytes
        );
        assert_eq!(receive_buffer_for(1, ceiling), Some(MIN_RECEIVE_BUFFER));
    }

    #[tokio::test]
    async fn a_port_in_use_is_refused() {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = listen(first.local_addr().unwrap()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
