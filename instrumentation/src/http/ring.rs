//! The lock-free bounded ring between requests and the drain: a Vyukov MPMC queue with
//! atomic payloads, one consumer at a time.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

pub(super) struct RingSlot {
    pub(super) seq: AtomicUsize,
    pub(super) words: [AtomicU64; 4],
}

/// One request record: duration, packed ids (see [`pack`]), poll time, waited time (ns).
pub(super) type Record = [u64; 4];

pub(super) struct Ring {
    pub(super) slots: Box<[RingSlot]>,
    pub(super) mask: usize,
    pub(super) tail: AtomicUsize,
    pub(super) head: AtomicUsize,
}

impl Ring {
    pub(super) fn new(capacity: usize) -> Ring {
        let cap = capacity.clamp(2, 1 << 24).next_power_of_two();
        let slots = (0..cap)
            .map(|i| RingSlot {
                seq: AtomicUsize::new(i),
                words: Default::default(),
            })
            .collect();
        Ring {
            slots,
            mask: cap - 1,
            tail: AtomicUsize::new(0),
            head: AtomicUsize::new(0),
        }
    }

    /// Lock-free push; false when full.
    pub(super) fn push(&self, rec: Record) -> bool {
        let mut pos = self.tail.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[pos & self.mask];
            let seq = slot.seq.load(Ordering::Acquire);
            let diff = seq.wrapping_sub(pos) as isize;
            if diff == 0 {
                match self.tail.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        for (w, v) in slot.words.iter().zip(rec) {
                            w.store(v, Ordering::Relaxed);
                        }
                        slot.seq.store(pos.wrapping_add(1), Ordering::Release);
                        return true;
                    }
                    Err(p) => pos = p,
                }
            } else if diff < 0 {
                return false;
            } else {
                pos = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Pops one record. Callers serialize consumers (the drain state mutex).
    pub(super) fn pop(&self) -> Option<Record> {
        let pos = self.head.load(Ordering::Relaxed);
        let slot = &self.slots[pos & self.mask];
        let seq = slot.seq.load(Ordering::Acquire);
        if seq != pos.wrapping_add(1) {
            return None;
        }
        let rec = [0, 1, 2, 3].map(|i| slot.words[i].load(Ordering::Relaxed));
        slot.seq
            .store(pos.wrapping_add(self.mask + 1), Ordering::Release);
        self.head.store(pos.wrapping_add(1), Ordering::Relaxed);
        Some(rec)
    }
}
