//! One tunnel connection per stream, against one connection shared by every stream. The pair
//! carries each stream over a tunnel connection of its own; a shared connection would carry all
//! of them over one TCP connection (and one TLS session), so the most it could carry in all is
//! what one stream alone carries over one connection. Measured here: one stream alone, against
//! [`STREAMS`] streams at once on their own connections, at full speed and across a chaos proxy
//! that emulates packet loss on the tunnel (a lost segment holds up what follows it on its
//! connection until it is sent again, as TCP does).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::procs;
use crate::report::StreamsResult;

/// Streams carried at once.
pub const STREAMS: usize = 4;
/// The emulated loss: 1 in 1000 segments of 1448 bytes towards the recipient held 20 ms.
pub const LOSS_FAULT: &str = r#"{"fault":{"type":"loss","probability":0.001,"segment_bytes":1448,"retransmit_ms":20},"direction":"downstream"}"#;
/// How [`LOSS_FAULT`] reads in the report.
pub const LOSS_LABEL: &str = "0.1% of 1448-byte segments held 20 ms";

/// `reps` rounds, each of one stream alone through `addr` and then [`STREAMS`] at once.
pub fn measure(
    me: &Path,
    addr: SocketAddr,
    expect: u64,
    reps: usize,
    conditions: &str,
) -> Result<StreamsResult> {
    let mib = |n: usize, secs: f64| (n as u64 * expect) as f64 / (1 << 20) as f64 / secs;
    let (mut alone, mut together) = (Vec::new(), Vec::new());
    for round in 0..reps {
        let what = |n: usize| format!("{n} stream(s), {conditions}, round {}", round + 1);
        alone.push(mib(1, at_once(me, addr, 1, expect).context(what(1))?));
        together.push(mib(
            STREAMS,
            at_once(me, addr, STREAMS, expect).context(what(STREAMS))?,
        ));
    }
    Ok(StreamsResult::new(conditions, STREAMS, alone, together))
}

/// Seconds from the start of `n` transfers at once to the end of the last.
fn at_once(me: &Path, addr: SocketAddr, n: usize, expect: u64) -> Result<f64> {
    let started = Instant::now();
    std::thread::scope(|scope| {
        let transfers: Vec<_> = (0..n)
            .map(|_| scope.spawn(|| procs::transfer(me, addr, None, expect)))
            .collect();
        for transfer in transfers {
            transfer
                .join()
                .map_err(|_| anyhow::anyhow!("a transfer thread panicked"))??;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(started.elapsed().as_secs_f64())
}
