//! The watched runtime's threads (OS id, name, stack range), as the probe task and the
//! [`crate::UnparkHook`] note them for stall stacks. A leaf: the hook, the builder that holds
//! it and the stack capture all depend on it, and it on none of them.

use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::ThreadId;

use crate::signal::{current_stack, gettid};

/// Most threads remembered per watched runtime.
const MAX_THREADS: usize = 1024;

/// A thread the probe task ran on.
#[derive(Debug, Clone)]
pub(crate) struct Watched {
    pub(crate) tid: i32,
    pub(crate) thread: ThreadId,
    pub(crate) name: String,
    pub(crate) stack: (usize, usize),
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The id of the [`Threads`] this thread was last noted in.
    static NOTED: Cell<u64> = const { Cell::new(0) };
}

/// Threads of one watched runtime.
#[derive(Debug)]
pub(crate) struct Threads {
    id: u64,
    list: Mutex<Vec<Watched>>,
}

impl Threads {
    pub(crate) fn new() -> Self {
        Threads {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            list: Mutex::new(Vec::new()),
        }
    }

    /// Records the calling thread (runs in the probe task: one thread-local read once known).
    pub(crate) fn note_current(&self) {
        if NOTED.with(Cell::get) == self.id {
            return;
        }
        NOTED.with(|n| n.set(self.id));
        let Some(stack) = current_stack() else {
            return;
        };
        let t = std::thread::current();
        let w = Watched {
            tid: gettid(),
            thread: t.id(),
            name: t.name().unwrap_or("unnamed").to_owned(),
            stack,
        };
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|x| x.tid != w.tid);
        if list.len() < MAX_THREADS {
            list.push(w);
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<Watched> {
        self.list.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn forget(&self, tid: i32) {
        self.list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|x| x.tid != tid);
    }
}
