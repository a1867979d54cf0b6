//! Soundness driver for `loopwatch::heap::CountingAllocator` (run by `../alloc-sanitizer.sh`).
//!
//! Includes the allocator module's source directly (it depends on std only), installs it as
//! the global allocator and stresses every `GlobalAlloc` method from several threads: alloc,
//! alloc_zeroed, realloc (grow, shrink, across size classes), dealloc, over-aligned layouts,
//! zero-sized collections, thread-local teardown. Run under AddressSanitizer and valgrind
//! memcheck, any out-of-bounds access, use-after-free, double free, mismatched layout or leak
//! introduced by the wrapper fails the run. At the end the counted live bytes must be back
//! at the baseline within the documented batching bound.
#![allow(unsafe_code, dead_code)]

#[path = "../../src/heap/alloc.rs"]
mod alloc;

use std::alloc::{GlobalAlloc, Layout};

#[global_allocator]
static ALLOC: alloc::CountingAllocator = alloc::CountingAllocator::system();

#[repr(align(256))]
struct Aligned([u8; 300]);

fn churn(seed: u64, rounds: usize) {
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut vecs: Vec<Vec<u8>> = Vec::new();
    for _ in 0..rounds {
        match next() % 6 {
            0 => vecs.push(vec![0u8; (next() % 70_000) as usize]), // alloc_zeroed
            1 => {
                let mut v = Vec::with_capacity((next() % 64) as usize);
                for i in 0..(next() % 5000) {
                    v.push(i as u8); // realloc while growing
                }
                vecs.push(v);
            }
            2 => {
                if let Some(mut v) = vecs.pop() {
                    v.truncate(v.len() / 3);
                    v.shrink_to_fit(); // realloc shrinking
                    if let Some(b) = v.last_mut() {
                        *b = 1;
                    }
                    vecs.push(v);
                }
            }
            3 => {
                let b = Box::new(Aligned([7; 300])); // over-aligned
                assert_eq!(std::ptr::from_ref(&*b) as usize % 256, 0);
                std::hint::black_box(&b);
            }
            4 => {
                let s: String = (0..(next() % 300))
                    .map(|i| char::from(b'a' + (i % 26) as u8))
                    .collect();
                std::hint::black_box(s);
                let empty: Vec<u64> = Vec::new(); // zero-sized: no allocation
                std::hint::black_box(empty);
            }
            _ => {
                if !vecs.is_empty() {
                    let i = (next() as usize) % vecs.len();
                    drop(vecs.swap_remove(i));
                }
            }
        }
    }
}

fn main() {
    // Direct use of the trait with raw layouts, including realloc across alignments' rules.
    let a = alloc::CountingAllocator::system();
    unsafe {
        let l = Layout::from_size_align(100, 64).expect("layout");
        let p = a.alloc(l);
        assert!(!p.is_null());
        p.write_bytes(0xAB, 100);
        let q = a.realloc(p, l, 10_000);
        assert!(!q.is_null());
        assert_eq!(*q.add(99), 0xAB);
        q.add(9_999).write(1);
        let l2 = Layout::from_size_align(10_000, 64).expect("layout");
        let r = a.realloc(q, l2, 8);
        assert!(!r.is_null());
        a.dealloc(r, Layout::from_size_align(8, 64).expect("layout"));
        let z = a.alloc_zeroed(Layout::from_size_align(4096, 4096).expect("layout"));
        assert!(!z.is_null() && *z.add(4095) == 0);
        a.dealloc(z, Layout::from_size_align(4096, 4096).expect("layout"));
    }

    let baseline = alloc::counted_heap_bytes().unwrap_or(0) as i64;
    let threads: Vec<_> = (0..4u64)
        .map(|t| std::thread::spawn(move || churn(0x9E37_79B9 + t, 3_000)))
        .collect();
    for t in threads {
        t.join().expect("churn thread");
    }
    churn(12345, 3_000);
    let end = alloc::counted_heap_bytes().unwrap_or(0) as i64;
    // Each exited thread may have taken up to BATCH unpublished bytes with it, plus this
    // thread's own unpublished remainder.
    let bound = 6 * alloc::BATCH as i64;
    println!("counted live bytes: baseline {baseline}, end {end}, bound ±{bound}");
    assert!(
        (end - baseline).abs() <= bound,
        "count drifted: {baseline} -> {end}"
    );
    println!("alloc-sanitizer driver: ok");
}
