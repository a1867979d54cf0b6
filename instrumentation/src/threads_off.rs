//! The watched runtime's threads where stall stacks are not supported (not Linux x86_64):
//! nothing is noted.

/// Never noted.
#[derive(Debug)]
pub(crate) struct Threads;

impl Threads {
    pub(crate) fn new() -> Self {
        Threads
    }
    pub(crate) fn note_current(&self) {}
    pub(crate) fn note_driver(&self) {}
}
