//! chaos: seeded fault injection on TCP streams (loss, blackholes, resets, latency, bandwidth,
//! link flaps), so that every failure a chaos suite finds can be replayed.
//!
//! # Layout
//! Nothing yet: the faults arrive with the chaos issue. They will wrap the relay's streams as
//! I/O decorators, one fault type per module behind one trait, one chain per direction.
