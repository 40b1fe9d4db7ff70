//! Validation: every setting checked, the error naming the first one that is wrong.

use std::time::Duration;

use crate::error::RelayError;

use super::{ClientTlsMode as C, Config, MIN_TOKEN_LEN, ServerTlsMode as S, ServerTlsVerify};

impl Config {
    /// Checks every setting; the error names the first one that is wrong.
    pub fn validate(&self) -> Result<(), RelayError> {
        if self.peer.is_some() && !self.upstreams.is_empty() {
            return Err(invalid(
                "peer",
                "a recipient-side relay sends everything to its peer; --upstream belongs on the donor side",
            ));
        }
        if self.peer.is_some() && self.peer_listen.is_some() {
            return Err(invalid(
                "peer_listen",
                "a relay is either the recipient side (--peer) or the donor side (--peer-listen)",
            ));
        }
        if self.upstreams.is_empty() && self.peer.is_none() {
            return Err(invalid("upstream", "at least one donor is needed"));
        }
        if let Some(peer) = &self.peer {
            validate_host_port(peer).map_err(|reason| invalid("peer", reason))?;
        }
        for upstream in &self.upstreams {
            validate_host_port(upstream).map_err(|reason| invalid("upstream", reason))?;
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid("connect_timeout", "must be above 0"));
        }
        if !(4096..=64 * 1024 * 1024).contains(&self.copy_buffer_bytes) {
            return Err(invalid("copy_buffer", "must be between 4KiB and 64MiB"));
        }
        if let Some(n) = self.socket_buffer_bytes
            && !(4096..=256 * 1024 * 1024).contains(&n)
        {
            return Err(invalid("socket_buffer", "must be between 4KiB and 256MiB"));
        }
        if self.keepalive_idle < Duration::from_secs(1) {
            return Err(invalid("keepalive_idle", "must be at least 1s"));
        }
        if self.keepalive_interval < Duration::from_secs(1) {
            return Err(invalid("keepalive_interval", "must be at least 1s"));
        }
        if self.keepalive_retries == 0 {
            return Err(invalid("keepalive_retries", "must be at least 1"));
        }
        if self.user_timeout < Duration::from_secs(1) {
            return Err(invalid("user_timeout", "must be at least 1s"));
        }
        if self.stall.min.is_zero() || self.stall.max < self.stall.min {
            return Err(invalid(
                "stall.min",
                "must be above 0 and at most stall.max",
            ));
        }
        if self.stall.factor == 0 {
            return Err(invalid("stall.factor", "must be at least 1"));
        }
        if self.stall.min_streaming.is_zero() {
            return Err(invalid("stall.min_streaming", "must be above 0"));
        }
        if self.max_pending_logins_per_address == 0 {
            return Err(invalid(
                "max_pending_logins_per_address",
                "must be at least 1",
            ));
        }
        if self.handshake_timeout.is_zero() {
            return Err(invalid("handshake_timeout", "must be above 0"));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_login_packet_bytes) {
            return Err(invalid(
                "max_login_packet",
                "must be between 1KiB and 16MiB",
            ));
        }
        if !(2 * 1024 * 1024..=1024 * 1024 * 1024).contains(&self.max_packet_bytes) {
            return Err(invalid(
                "max_packet",
                "must be between 2MiB (clone needs 2 MiB) and 1GiB",
            ));
        }
        if self.resume_timeout < Duration::from_secs(1) {
            return Err(invalid("resume_timeout", "must be at least 1s"));
        }
        if let Some(token) = &self.admin_token {
            // The reasons never quote the token.
            let token = token.expose();
            if token.len() < MIN_TOKEN_LEN {
                return Err(invalid(
                    "admin_token",
                    format!("must be at least {MIN_TOKEN_LEN} characters"),
                ));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(
                    "admin_token",
                    "must be printable ASCII without spaces",
                ));
            }
        }
        if let Some(dir) = &self.state_dir
            && dir.as_os_str().is_empty()
        {
            return Err(invalid("state_dir", "must not be empty"));
        }
        self.validate_tls()?;
        self.validate_tunnel()
    }

    /// A pair's tunnel needs its certificate, key and CA unless it is explicitly plain.
    fn validate_tunnel(&self) -> Result<(), RelayError> {
        let t = &self.tunnel;
        if t.plain && (t.cert.is_some() || t.key.is_some() || t.ca.is_some()) {
            return Err(invalid(
                "tunnel.plain",
                "a plain tunnel takes no tunnel.cert, tunnel.key or tunnel.ca: give either --tunnel-plain or the certificates",
            ));
        }
        if (self.peer.is_some() || self.peer_listen.is_some()) && !t.plain {
            for (field, given) in [
                ("tunnel.cert", t.cert.is_some()),
                ("tunnel.key", t.key.is_some()),
                ("tunnel.ca", t.ca.is_some()),
            ] {
                if !given {
                    return Err(invalid(
                        field,
                        "missing: the tunnel is mutual TLS (give --tunnel-cert, --tunnel-key and --tunnel-ca, or --tunnel-plain)",
                    ));
                }
            }
        }
        if t.memory_bytes < 1024 * 1024 {
            return Err(invalid("tunnel.memory", "must be at least 1MiB"));
        }
        if t.bridge < Duration::from_secs(1) {
            return Err(invalid("tunnel.bridge", "must be at least 1s"));
        }
        if t.timeout < Duration::from_millis(500) || t.timeout >= t.bridge {
            return Err(invalid(
                "tunnel.timeout",
                "must be at least 500ms and below tunnel.bridge",
            ));
        }
        Ok(())
    }

    /// The TLS modes must fit together, and each file they need must be named.
    fn validate_tls(&self) -> Result<(), RelayError> {
        match (self.client_tls_mode, self.server_tls_mode) {
            (C::Passthrough, S::AsClient) => {}
            (C::Passthrough, _) => {
                return Err(invalid(
                    "client_tls_mode",
                    "passthrough needs server_tls_mode = as-client (the recipient's own TLS goes to the donor)",
                ));
            }
            _ => {}
        }
        if self.client_tls_cert.is_some() != self.client_tls_key.is_some() {
            return Err(invalid(
                "client_tls_key",
                "client_tls_cert and client_tls_key go together",
            ));
        }
        if self.client_tls_ca.is_some() && self.client_tls_mode != C::Required {
            return Err(invalid(
                "client_tls_ca",
                "needs client_tls_mode = required: a recipient without TLS has no certificate to check",
            ));
        }
        if !self.client_tls_allowed_subjects.is_empty() && self.client_tls_ca.is_none() {
            return Err(invalid(
                "client_tls_allowed_subjects",
                "needs client_tls_ca: only verified certificates have subjects to check",
            ));
        }
        if let Some(bad) = self
            .client_tls_allowed_subjects
            .iter()
            .find(|s| s.trim().is_empty() || s.trim() != s.as_str())
        {
            return Err(invalid(
                "client_tls_allowed_subjects",
                format!("{bad:?}: an entry must be a name without surrounding spaces"),
            ));
        }
        if self.server_tls_cert.is_some() != self.server_tls_key.is_some() {
            return Err(invalid(
                "server_tls_key",
                "server_tls_cert and server_tls_key go together",
            ));
        }
        if self.server_tls_cert.is_some()
            && (self.server_tls_mode == S::Disabled || self.client_tls_mode == C::Passthrough)
        {
            return Err(invalid(
                "server_tls_cert",
                "the relay dials no TLS to donors with these modes, so it would present no certificate",
            ));
        }
        if self.server_tls_verify != ServerTlsVerify::Disabled && self.server_tls_ca.is_none() {
            return Err(invalid(
                "server_tls_ca",
                "needed when server_tls_verify is ca or identity",
            ));
        }
        if self.server_tls_verify != ServerTlsVerify::Disabled
            && (self.server_tls_mode == S::Disabled || self.client_tls_mode == C::Passthrough)
        {
            return Err(invalid(
                "server_tls_verify",
                "the relay dials no TLS to donors with these modes, so there is no certificate to verify",
            ));
        }
        Ok(())
    }
}

pub(super) fn invalid(field: &'static str, reason: impl Into<String>) -> RelayError {
    RelayError::Config {
        field,
        reason: reason.into(),
    }
}

/// `HOST:PORT` with a non-empty host and a port in 1..=65535 (`[v6]:PORT` accepted).
pub(super) fn validate_host_port(s: &str) -> Result<(), String> {
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
