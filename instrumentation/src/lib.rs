//! loopwatch
