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

/// A thread of the watched runtime.
#[derive(Debug, Clone)]
pub(crate) struct Watched {
    pub(crate) tid: i32,
    pub(crate) thread: ThreadId,
    pub(crate) name: String,
    pub(crate) stack: (usize, usize),
    /// Seen running the runtime's scheduler (the probe task ran on it, or it woke up through
    /// the unpark hook), not only started by the runtime (blocking-pool threads are too).
    pub(crate) driver: bool,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The id of the [`Threads`] this thread was last noted in.
    static NOTED: Cell<u64> = const { Cell::new(0) };
    /// The id of the [`Threads`] this thread was last noted in as a driver.
    static DRIVES: Cell<u64> = const { Cell::new(0) };
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

    /// Records the calling thread as one the runtime started (`on_thread_start`: workers and
    /// blocking-pool threads alike). One thread-local read once known.
    pub(crate) fn note_current(&self) {
        self.note(&NOTED, false);
    }

    /// Records the calling thread as one that runs the runtime's scheduler: the probe task
    /// runs on it, or it wakes up through the unpark hook (the thread in `block_on` of a
    /// `current_thread` runtime, which no `on_thread_start` sees). One thread-local read once
    /// known.
    pub(crate) fn note_driver(&self) {
        self.note(&DRIVES, true);
    }

    fn note(&self, seen: &'static std::thread::LocalKey<Cell<u64>>, driver: bool) {
        if seen.with(Cell::get) == self.id {
            return;
        }
        let Some(stack) = current_stack() else {
            return;
        };
        seen.with(|n| n.set(self.id));
        NOTED.with(|n| n.set(self.id));
        let t = std::thread::current();
        let tid = gettid();
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        let was_driver = list.iter().any(|x| x.tid == tid && x.driver);
        list.retain(|x| x.tid != tid);
        if list.len() < MAX_THREADS {
            list.push(Watched {
                tid,
                thread: t.id(),
                name: t.name().unwrap_or("unnamed").to_owned(),
                stack,
                driver: driver || was_driver,
            });
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
