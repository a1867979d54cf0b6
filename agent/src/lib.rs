//! loopwatch-agent library
