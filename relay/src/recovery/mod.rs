//! Recovery from lost links: noticing a connection the donor owes data fall silent
//! ([`stall`]), finding out whether its flow is lost or the whole link is down ([`liveness`],
//! with a fresh connection to the donor from [`probe`]), and what the latest dials of each donor
//! say for readiness ([`health`]).

pub mod health;
pub mod liveness;
pub mod probe;
pub mod stall;
