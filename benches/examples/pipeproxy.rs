//! A bare TCP proxy for comparing copy strategies in a process of their own, without decoding:
//! `pipeproxy LISTEN UPSTREAM splice|copy [BUFFER_BYTES]`. Each connection is carried both ways in one
//! task, by splice(2) through a pipe per direction, or by a user-space buffer per direction.

use std::net::SocketAddr;

use clone_relay::splice::{Pipe, pump};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listen: SocketAddr = args[0].parse().expect("LISTEN");
    let upstream: SocketAddr = args[1].parse().expect("UPSTREAM");
    let splice = args[2] == "splice";
    let buffer: usize = args
        .get(3)
        .map(|s| s.parse().expect("bytes"))
        .unwrap_or(256 << 10);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("bind");
        loop {
            let (mut down, _) = listener.accept().await.expect("accept");
            tokio::spawn(async move {
                let mut up = TcpStream::connect(upstream).await.expect("connect");
                down.set_nodelay(true).unwrap();
                up.set_nodelay(true).unwrap();
                if splice {
                    let (mut p1, mut p2) = (Pipe::new(buffer).unwrap(), Pipe::new(buffer).unwrap());
                    let (dr, mut dw) = down.split();
                    let (ur, mut uw) = up.split();
                    let a = async {
                        pump(dr.as_ref(), uw.as_ref(), &mut p1).await?;
                        uw.shutdown().await
                    };
                    let b = async {
                        pump(ur.as_ref(), dw.as_ref(), &mut p2).await?;
                        dw.shutdown().await
                    };
                    let _ = tokio::try_join!(a, b);
                } else {
                    let _ = tokio::io::copy_bidirectional_with_sizes(
                        &mut down, &mut up, buffer, buffer,
                    )
                    .await;
                    let _ = down.shutdown().await;
                }
            });
        }
    });
}
