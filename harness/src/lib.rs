//! Test harness for clone-relay: MySQL donors and recipients in containers, a data set to clone,
//! CLONE itself, and the comparison of both sides.
//!
//! # Layout
//! - [`docker`]: whether Docker is there (an end-to-end test without it fails, naming it), and
//!   whether this build runs the soak tier's extras.
//! - [`image`]: the clone-capable MySQL image: built from Debian packages when missing, or any
//!   image named by `CLONE_RELAY_MYSQL_IMAGE`.
//! - [`mysql`]: a MySQL server in a container (donor or recipient), and running SQL in it.
//! - [`dataset`]: seeding a donor with a data set of a chosen size, and checksumming it.
//! - [`clone`]: running `CLONE INSTANCE` on a recipient and following it to its end.
//! - [`clone_client`]: a recipient at the protocol level, proposing a chosen clone protocol
//!   version and reading the donor's answers itself.
//! - [`relay`]: clone-relay running in-process for a test.
//! - [`process`]: clone-relay as a process of its own, for figures of the relay alone (memory)
//!   and its log.
//! - [`tap`]: a recording TCP proxy between the relay and a donor: what an eavesdropper on that
//!   leg would see, and an attacker there could do to the donor's handshake (strip its TLS
//!   offer, replace its RSA key).
//! - [`load`]: traffic on a relay besides a clone (idle logged-in clients, half logins).
//! - [`drill`]: the whole scenario (donor, relay, recipients, clones, comparison), as
//!   `clone-drill` runs it.

pub mod clone;
pub mod clone_client;
pub mod dataset;
pub mod docker;
pub mod drill;
pub mod image;
pub mod load;
pub mod mysql;
pub mod process;
pub mod relay;
pub mod tap;

pub use clone::{CloneOutcome, Transport, clone_instance, clone_instance_as, clone_instance_with};
pub use dataset::Dataset;
pub use docker::{SOAK, require_docker};
pub use mysql::{MysqlServer, ServerOptions};
pub use relay::RelayFixture;
