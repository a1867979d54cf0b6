//! Fuzz harnesses for loopwatch (see `harness.rs`).

#[path = "harness.rs"]
pub mod harness;
