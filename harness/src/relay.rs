//! clone-relay running in-process on a loopback port, for a test or a drill.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use clone_relay::{Config, RelayError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running relay; dropping it stops it.
#[derive(Debug)]
pub struct RelayFixture {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), RelayError>>,
}

impl RelayFixture {
    /// A relay to `upstream` with default settings (and a short shutdown grace).
    pub fn start(upstream: SocketAddr) -> Result<Self> {
        let mut config = Config::new(upstream.to_string());
        config.shutdown_grace = Duration::from_secs(1);
        Self::start_with(config)
    }

    /// A relay with the given settings, listening on a free loopback port.
    pub fn start_with(config: Config) -> Result<Self> {
        config.validate()?;
        let listener = clone_relay::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let addr = listener.local_addr().context("relay listener address")?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(clone_relay::run(listener, config, async move {
            let _ = stopped.await;
        }));
        Ok(RelayFixture {
            addr,
            stop: Some(stop),
            task,
        })
    }

    /// Where the recipient should clone from.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the relay and waits for it to finish.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await?.map_err(Into::into)
    }
}

impl Drop for RelayFixture {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
