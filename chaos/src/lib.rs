//! chaos: seeded fault injection on TCP streams, so that every failure a chaos suite finds can
//! be replayed. Every fault Toxiproxy has, plus emulated loss, flaps, shared bandwidth caps,
//! per-connection targeting, schedules, and decisions that depend only on the seed and the bytes.
//!
//! # Layout
//! - [`spec`]: what a fault is, as declared (Rust, JSON, TOML), with validation.
//! - [`fault`]: the [`fault::Fault`] trait and what faults work on: pieces, cuts, windows, the
//!   decision log.
//! - [`faults`]: the faults, one per file, and building one from its spec.
//! - [`schedule`]: a fault's activation on a connection (toxicity, target, trigger, duration);
//!   imports [`fault`] and [`faults`], which do not import it.
//! - [`rng`]: seeded, keyed randomness.
//! - [`link`]: one connection, each direction through its chain, with backpressure.
//! - [`proxy`]: the standalone fault proxy and its Rust control handle.
//! - [`control`]: the HTTP control API and a client for it.
//! - [`netfilter`]: kernel-level loss and delay inside a network namespace (iptables, netem).

pub mod control;
pub mod fault;
pub mod faults;
pub mod link;
pub mod netfilter;
pub mod proxy;
pub mod rng;
pub mod schedule;
pub mod spec;

pub use proxy::{ChaosError, ChaosProxy, Control};
pub use spec::{Direction, FaultKind, FaultSpec, FlapMode};
