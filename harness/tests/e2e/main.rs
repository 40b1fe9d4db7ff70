//! The end-to-end tier: real MySQL donors and recipients in containers, the relay, chaos on the
//! links. Every test here is ignored unless selected (`--include-ignored`, as the README's full
//! command and CI run them, or `--ignored`), and one selected without Docker fails naming it.
//! One test binary: the tree is linked once for all of them.

mod busy_relay;
mod chaos_matrix;
mod clone_chaos;
mod clone_e2e;
mod clone_encrypted;
mod clone_limits;
mod clone_mixed_legs;
mod clone_sessions;
mod clone_tls;
mod drill;
mod host_cache;
mod hostile_sessions;
mod link_down;
mod link_drops;
mod path_probes;
mod protocol_versions;
mod relay_image;
mod relay_memory;
mod relay_pair;
mod relay_restart;
mod slow_peers;
mod tls_downgrade;
mod unknown_messages;
