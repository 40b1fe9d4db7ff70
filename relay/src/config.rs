//! The relay's settings, with defaults and validation.
//!
//! Names carry their unit. [`Config::validate`] refuses a bad value with an error naming the
//! setting, so the binary can stop at start rather than misbehave later.

use std::time::Duration;

use crate::error::RelayError;
use crate::protocol::decoder::Limits;
use crate::session::SessionSettings;

/// Everything the relay needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The donors, as `HOST:PORT`, resolved at each dial. A new clone goes to the first donor
    /// not busy with another clone; every connection of a clone session stays on its donor.
    pub upstreams: Vec<String>,
    /// Connections carried at once; further recipients wait in the listen backlog.
    pub max_connections: usize,
    /// Bound on dialing the donor (TCP handshake).
    pub connect_timeout: Duration,
    /// Size of each direction's copy buffer.
    pub copy_buffer_bytes: usize,
    /// SO_SNDBUF/SO_RCVBUF for both legs; `None` keeps the kernel's autotuning, which on Linux
    /// grows further than a fixed size set here allows.
    pub socket_buffer_bytes: Option<usize>,
    /// TCP keepalive: idle time before the first probe.
    pub keepalive_idle: Duration,
    /// TCP keepalive: time between probes.
    pub keepalive_interval: Duration,
    /// TCP keepalive: unanswered probes before the kernel drops the connection.
    pub keepalive_retries: u32,
    /// TCP_USER_TIMEOUT: how long sent data may stay unacknowledged before the kernel drops the
    /// connection (a dead link noticed while sending).
    pub user_timeout: Duration,
    /// Stall detection on main and worker connections while the donor owes data.
    pub stall: StallSettings,
    /// How long a reconnect of a resuming clone may wait for its donor to come back.
    pub reconnect_dial_timeout: Duration,
    /// On shutdown, how long connections in flight may run before they are closed.
    pub shutdown_grace: Duration,
    /// A recipient must finish logging in within this (slow or stuck clients are cut).
    pub handshake_timeout: Duration,
    /// Largest packet accepted before auth completes.
    pub max_login_packet_bytes: usize,
    /// Largest logical packet accepted afterwards.
    pub max_packet_bytes: usize,
    /// A clone session whose main connection is lost fails if the recipient does not resume
    /// within this (MySQL's own limit, `clone_donor_timeout_after_network_failure`, is 5 min).
    pub resume_timeout: Duration,
    /// Where the relay keeps small state files (the affinity table); none when not given.
    pub state_dir: Option<std::path::PathBuf>,
}

/// When a connection that is owed data counts as dead: silent for longer than `factor` times the
/// longest gap seen on it so far, but never less than `min` nor more than `max`. Aux connections
/// and connections not in a transfer are never judged (they are legitimately quiet).
#[derive(Debug, Clone, Copy)]
pub struct StallSettings {
    pub enabled: bool,
    pub min: Duration,
    pub max: Duration,
    pub factor: u32,
}

impl Default for StallSettings {
    fn default() -> Self {
        // The donor sends keep-alive descriptors every ~5 s while it waits, so 8 s of silence
        // is never a healthy wait.
        StallSettings {
            enabled: true,
            min: Duration::from_secs(8),
            max: Duration::from_secs(60),
            factor: 4,
        }
    }
}

impl Config {
    /// Defaults for relaying to one donor.
    pub fn new(upstream: impl Into<String>) -> Self {
        Self::with_upstreams(vec![upstream.into()])
    }

    /// Defaults for relaying to several donors.
    pub fn with_upstreams(upstreams: Vec<String>) -> Self {
        Config {
            upstreams,
            max_connections: 1024,
            connect_timeout: Duration::from_secs(5),
            copy_buffer_bytes: 256 * 1024,
            socket_buffer_bytes: None,
            keepalive_idle: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(10),
            keepalive_retries: 3,
            user_timeout: Duration::from_secs(20),
            stall: StallSettings::default(),
            reconnect_dial_timeout: Duration::from_secs(240),
            shutdown_grace: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_login_packet_bytes: 64 * 1024,
            max_packet_bytes: 64 * 1024 * 1024,
            resume_timeout: Duration::from_secs(6 * 60),
            state_dir: None,
        }
    }

    /// The settings of the session registry.
    pub fn session_settings(&self) -> SessionSettings {
        SessionSettings {
            resume_timeout: self.resume_timeout,
            limits: Limits {
                max_login_packet_bytes: self.max_login_packet_bytes,
                max_packet_bytes: self.max_packet_bytes,
            },
            ..SessionSettings::default()
        }
    }

    /// Checks every setting; the error names the first one that is wrong.
    pub fn validate(&self) -> Result<(), RelayError> {
        if self.upstreams.is_empty() {
            return Err(invalid("upstream", "at least one donor is needed"));
        }
        for upstream in &self.upstreams {
            validate_host_port(upstream).map_err(|reason| invalid("upstream", reason))?;
        }
        if self.user_timeout < Duration::from_secs(1) {
            return Err(invalid("user_timeout_ms", "must be at least 1000"));
        }
        if self.stall.min.is_zero() || self.stall.max < self.stall.min {
            return Err(invalid(
                "stall_min_ms",
                "must be above 0 and at most stall_max_ms",
            ));
        }
        if self.stall.factor == 0 {
            return Err(invalid("stall_factor", "must be at least 1"));
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid("connect_timeout_ms", "must be above 0"));
        }
        if !(4096..=64 * 1024 * 1024).contains(&self.copy_buffer_bytes) {
            return Err(invalid(
                "copy_buffer_bytes",
                "must be between 4096 and 67108864",
            ));
        }
        if let Some(n) = self.socket_buffer_bytes
            && !(4096..=256 * 1024 * 1024).contains(&n)
        {
            return Err(invalid(
                "socket_buffer_bytes",
                "must be between 4096 and 268435456",
            ));
        }
        if self.keepalive_idle < Duration::from_secs(1) {
            return Err(invalid("keepalive_idle_ms", "must be at least 1000"));
        }
        if self.keepalive_interval < Duration::from_secs(1) {
            return Err(invalid("keepalive_interval_ms", "must be at least 1000"));
        }
        if self.handshake_timeout.is_zero() {
            return Err(invalid("handshake_timeout_ms", "must be above 0"));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_login_packet_bytes) {
            return Err(invalid(
                "max_login_packet_bytes",
                "must be between 1024 and 16777216",
            ));
        }
        if !(2 * 1024 * 1024..=1024 * 1024 * 1024).contains(&self.max_packet_bytes) {
            return Err(invalid(
                "max_packet_bytes",
                "must be between 2097152 (clone needs 2 MiB) and 1073741824",
            ));
        }
        if self.resume_timeout < Duration::from_secs(1) {
            return Err(invalid("resume_timeout_ms", "must be at least 1000"));
        }
        if self.keepalive_retries == 0 {
            return Err(invalid("keepalive_retries", "must be at least 1"));
        }
        Ok(())
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> RelayError {
    RelayError::Config {
        field,
        reason: reason.into(),
    }
}

/// `HOST:PORT` with a non-empty host and a port in 1..=65535 (`[v6]:PORT` accepted).
fn validate_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
    if host.is_empty() || host == "[]" {
        return Err(format!("{s:?} has no host"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{s:?} has no valid port (1-65535)")),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(config: &Config) -> &'static str {
        match config.validate() {
            Err(RelayError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        Config::new("db.example:3306").validate().unwrap();
        Config::new("[::1]:3306").validate().unwrap();
    }

    #[test]
    fn bad_upstream_is_named() {
        for bad in ["db", ":3306", "db:", "db:0", "db:70000", "db:x"] {
            assert_eq!(field_of(&Config::new(bad)), "upstream", "{bad}");
        }
    }

    #[test]
    fn bad_numbers_are_named() {
        let mut c = Config::new("db:3306");
        c.max_connections = 0;
        assert_eq!(field_of(&c), "max_connections");

        let mut c = Config::new("db:3306");
        c.copy_buffer_bytes = 10;
        assert_eq!(field_of(&c), "copy_buffer_bytes");

        let mut c = Config::new("db:3306");
        c.socket_buffer_bytes = Some(1);
        assert_eq!(field_of(&c), "socket_buffer_bytes");

        let mut c = Config::new("db:3306");
        c.connect_timeout = Duration::ZERO;
        assert_eq!(field_of(&c), "connect_timeout_ms");
    }
}
