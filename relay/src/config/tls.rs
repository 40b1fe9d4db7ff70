//! The TLS modes of each leg, as settings. What each one means for a connection is decided in
//! [`crate::tls::policy`] alone.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// TLS on the recipient's leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientTlsMode {
    Disabled,
    Preferred,
    Required,
    Passthrough,
}

/// TLS on the donor's leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    Disabled,
    Preferred,
    Required,
    AsClient,
}

/// How the donor's certificate is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsVerify {
    Disabled,
    Ca,
    Identity,
}
