//! loopwatch-agent
fn main() {}
