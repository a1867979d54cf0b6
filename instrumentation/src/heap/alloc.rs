//! [`CountingAllocator`]: a global allocator wrapper that counts live heap bytes.
//!
//! One of the crate's two modules with unsafe code (`#[allow(unsafe_code)]` on its declaration
//! in `heap.rs`; the other is `signal.rs`, stall stacks' signal capture). It is unavoidable: `GlobalAlloc` is an `unsafe trait` and its
//! methods are `unsafe fn`s. Every unsafe block only forwards the caller's pointer and layout,
//! unchanged, to the wrapped allocator, whose contract is exactly the one our caller upholds; the
//! counting itself is safe code (a thread-local `Cell` and one atomic).
//!
//! Cost per allocation: one thread-local add; every [`BATCH`] bytes of net change per thread,
//! one relaxed atomic add on a global counter. No lock, no allocation, no syscall.
//! Accuracy: each thread holds up to ±[`BATCH`] bytes not yet published, and a thread that exits
//! loses its unpublished remainder (no thread-local destructor: registering one could allocate
//! inside the allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

/// Net bytes a thread accumulates before publishing them to the global counter: 32 KiB.
pub const BATCH: isize = 32 * 1024;

/// Published live bytes (allocated − freed), all threads.
static LIVE: AtomicIsize = AtomicIsize::new(0);
/// Set on the first publish: a `CountingAllocator` is the global allocator.
static ACTIVE: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// This thread's net bytes not yet published. `const` init and no destructor: accessing it
    /// never allocates and works during thread teardown.
    static PENDING: Cell<isize> = const { Cell::new(0) };
}

/// A [`GlobalAlloc`] wrapper that counts live heap bytes for `loopwatch.heap.allocated` and
/// `loopwatch.heap.growth_rate`. Opt-in:
///
/// ```
/// #[global_allocator]
/// static ALLOC: loopwatch::heap::CountingAllocator = loopwatch::heap::CountingAllocator::system();
/// ```
///
/// Wrap another allocator with [`CountingAllocator::new`], e.g. jemalloc:
/// `CountingAllocator::new(tikv_jemallocator::Jemalloc)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAllocator<A = System> {
    inner: A,
}

impl CountingAllocator<System> {
    /// Counts allocations of the system allocator.
    pub const fn system() -> Self {
        CountingAllocator { inner: System }
    }
}

impl<A> CountingAllocator<A> {
    /// Counts allocations of `inner`.
    pub const fn new(inner: A) -> Self {
        CountingAllocator { inner }
    }
}

/// Live heap bytes counted by a [`CountingAllocator`] installed as the global allocator, or
/// `None` when none is installed (nothing published yet). Accurate to ±[`BATCH`] bytes per
/// thread (see the module docs).
pub fn counted_heap_bytes() -> Option<u64> {
    if !ACTIVE.load(Ordering::Relaxed) {
        return None;
    }
    Some(u64::try_from(LIVE.load(Ordering::Relaxed).max(0)).unwrap_or(0))
}

#[inline]
fn record(delta: isize) {
    let publish = PENDING
        .try_with(|p| {
            let v = p.get().saturating_add(delta);
            if v >= BATCH || v <= -BATCH {
                p.set(0);
                v
            } else {
                p.set(v);
                0
            }
        })
        // Thread-local storage gone (thread teardown): publish directly.
        .unwrap_or(delta);
    if publish != 0 {
        LIVE.fetch_add(publish, Ordering::Relaxed);
        if !ACTIVE.load(Ordering::Relaxed) {
            ACTIVE.store(true, Ordering::Relaxed);
        }
    }
}

fn size(n: usize) -> isize {
    isize::try_from(n).unwrap_or(isize::MAX)
}

// SAFETY (whole impl): each method forwards its arguments unchanged to `self.inner`, so the
// caller's obligations for `GlobalAlloc` are passed on exactly; the returned pointers come from
// `self.inner` unchanged. Counting happens after the call and never touches the memory.
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAllocator<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract, see above.
        let p = unsafe { self.inner.alloc(layout) };
        if !p.is_null() {
            record(size(layout.size()));
        }
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract, see above.
        let p = unsafe { self.inner.alloc_zeroed(layout) };
        if !p.is_null() {
            record(size(layout.size()));
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract, see above.
        unsafe { self.inner.dealloc(ptr, layout) };
        record(-size(layout.size()));
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract, see above.
        let p = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            record(size(new_size) - size(layout.size()));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_through_the_trait_without_being_global() {
        // Not installed globally here: exercise the wrapper directly.
        let a = CountingAllocator::system();
        let layout = Layout::from_size_align(BATCH as usize * 2, 16).expect("layout");
        let before = LIVE.load(Ordering::Relaxed);
        // SAFETY: layout has non-zero size; the pointer is freed with the same layout.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            p.write_bytes(7, layout.size());
            let after_alloc = LIVE.load(Ordering::Relaxed);
            assert!(after_alloc - before >= BATCH, "{before} -> {after_alloc}");
            let q = a.realloc(p, layout, layout.size() * 2);
            assert!(!q.is_null());
            assert_eq!(*q.add(layout.size() - 1), 7);
            let bigger = Layout::from_size_align(layout.size() * 2, 16).expect("layout");
            a.dealloc(q, bigger);
        }
        let end = LIVE.load(Ordering::Relaxed);
        assert!((end - before).abs() < BATCH, "{before} -> {end}");
        assert!(counted_heap_bytes().is_some());
    }
}
