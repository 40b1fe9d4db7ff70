//! Both ends of a clone-shaped stream as separate processes, to measure the relay (or any
//! proxy) in a process of its own:
//!
//! - `loadgen donor [BLOCKS]`: a fake donor on a loopback port (printed on stdout) that plays
//!   the server's side of the clone preamble on every connection, then sends BLOCKS (default
//!   64) DATA packets of 1 MiB behind their descriptors and closes.
//! - `loadgen client ADDR ROUNDS [BLOCKS]`: clones from ADDR ROUNDS times, checks the byte count
//!   and prints one line per round: seconds and GiB/s.
//!
//! Each end runs on a current-thread runtime, so it takes one core at most.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use clone_relay_benches::{clone_client, clone_stream, fake_donor};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let number = |i: usize, default: usize| {
        args.get(i)
            .map(|s| s.parse().expect("a number"))
            .unwrap_or(default)
    };
    match args.first().map(String::as_str) {
        Some("donor") => {
            let stream = Arc::new(clone_stream(number(1, 64), 1 << 20));
            rt.block_on(async move {
                let addr = fake_donor(stream).await;
                println!("{addr}");
                std::future::pending::<()>().await
            })
        }
        Some("client") => {
            let addr: SocketAddr = args.get(1).expect("ADDR").parse().expect("an address");
            let rounds = number(2, 5);
            let expected = clone_stream(number(3, 64), 1 << 20).len() as u64;
            for _ in 0..rounds {
                let started = Instant::now();
                let got = rt.block_on(clone_client(addr));
                let secs = started.elapsed().as_secs_f64();
                assert_eq!(got, expected, "bytes received");
                println!("{secs:.4} {:.3}", got as f64 / secs / f64::from(1 << 30));
            }
        }
        _ => {
            eprintln!("usage: loadgen donor [BLOCKS] | loadgen client ADDR ROUNDS [BLOCKS]");
            std::process::exit(2);
        }
    }
}
