//! The watched runtime's threads (OS id, name, stack range), as the probe task and the
//! [`crate::UnparkHook`] note them for stall stacks. A leaf: the hook, the builder that holds
//! it and the stack capture all depend on it, and it on none of them.
//!
//! Why unsafe is needed: a thread's OS id (`gettid`) and its stack bounds
//! (`pthread_getattr_np`) have no safe wrapper in std. Both calls concern the calling thread
//! only; `gettid` is async-signal-safe, so the signal handler uses it too.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::ThreadId;

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

/// The calling thread's OS id.
pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// The calling thread's stack range `lo..hi` (the stack grows down from `hi`).
pub(crate) fn current_stack() -> Option<(usize, usize)> {
    // SAFETY: attr is initialized by pthread_getattr_np before use and destroyed once.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        (rc == 0 && !addr.is_null()).then(|| (addr as usize, addr as usize + size))
    }
}
