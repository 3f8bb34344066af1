//! A binary min-heap of waiter deadlines, indexed by slot so a waiter that ends early leaves it in
//! O(log n). The earliest deadline is read in O(1); memory is 20 bytes per slot in use.

use alloc::vec::Vec;

use crate::time::Instant;

const NOT_QUEUED: u32 = u32::MAX;

/// Bytes per queued slot: its heap entry and its position.
pub(crate) const BYTES_PER_ENTRY: usize =
    core::mem::size_of::<Entry>() + core::mem::size_of::<u32>();

#[derive(Clone, Copy, Debug)]
struct Entry {
    deadline: Instant,
    slot: u32,
}

#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    heap: Vec<Entry>,
    /// `position[slot]`: where the slot's entry sits in `heap`, or `NOT_QUEUED`.
    position: Vec<u32>,
}

impl Deadlines {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Deadlines {
            heap: Vec::with_capacity(n),
            position: Vec::with_capacity(n),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// The earliest deadline and its slot.
    pub(crate) fn peek(&self) -> Option<(Instant, usize)> {
        self.heap.first().map(|e| (e.deadline, e.slot as usize))
    }

    /// Queues `slot` (which must not be queued) with `deadline`.
    #[inline]
    pub(crate) fn insert(&mut self, slot: usize, deadline: Instant) {
        if self.position.len() <= slot {
            self.grow_positions(slot);
        }
        debug_assert_eq!(self.position[slot], NOT_QUEUED);
        let at = self.heap.len();
        self.heap.push(Entry {
            deadline,
            slot: slot as u32,
        });
        self.position[slot] = at as u32;
        // The usual case: no earlier deadline than its parent's (requests sent in time
        // order with one timeout), nothing to move.
        if at > 0 && self.heap[(at - 1) / 2].deadline > deadline {
            self.sift_up(at);
        }
    }

    #[cold]
    #[inline(never)]
    fn grow_positions(&mut self, slot: usize) {
        self.position.resize(slot + 1, NOT_QUEUED);
    }

    /// Removes `slot`'s entry, if queued.
    pub(crate) fn remove(&mut self, slot: usize) {
        let Some(&at) = self.position.get(slot) else {
            return;
        };
        if at == NOT_QUEUED {
            return;
        }
        let at = at as usize;
        self.position[slot] = NOT_QUEUED;
        let last = self
            .heap
            .pop()
            .expect("a queued slot means a non-empty heap");
        if at == self.heap.len() {
            return;
        }
        self.heap[at] = last;
        self.position[last.slot as usize] = at as u32;
        if at > 0 && self.heap[(at - 1) / 2].deadline > last.deadline {
            self.sift_up(at);
        } else {
            self.sift_down(at);
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.position[self.heap[a].slot as usize] = a as u32;
        self.position[self.heap[b].slot as usize] = b as u32;
    }

    fn sift_up(&mut self, mut at: usize) {
        while at > 0 {
            let parent = (at - 1) / 2;
            if self.heap[parent].deadline <= self.heap[at].deadline {
                break;
            }
            self.swap(at, parent);
            at = parent;
        }
    }

    fn sift_down(&mut self, mut at: usize) {
        loop {
            let left = 2 * at + 1;
            if left >= self.heap.len() {
                break;
            }
            let right = left + 1;
            let child = if right < self.heap.len()
                && self.heap[right].deadline < self.heap[left].deadline
            {
                right
            } else {
                left
            };
            if self.heap[at].deadline <= self.heap[child].deadline {
                break;
            }
            self.swap(at, child);
            at = child;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn behaves_like_a_sorted_list(ops in proptest::collection::vec((0usize..64, 0u64..1000, any::<bool>()), 0..400)) {
            let mut heap = Deadlines::default();
            let mut model: Vec<Option<u64>> = vec![None; 64];
            for (slot, deadline, insert) in ops {
                if insert && model[slot].is_none() {
                    heap.insert(slot, Instant::from_nanos(deadline));
                    model[slot] = Some(deadline);
                } else {
                    heap.remove(slot);
                    model[slot] = None;
                }
                let min = model.iter().flatten().min().copied();
                prop_assert_eq!(heap.peek().map(|(d, _)| d.as_nanos()), min);
                prop_assert_eq!(heap.len(), model.iter().flatten().count());
                if let Some((d, s)) = heap.peek() {
                    prop_assert_eq!(model[s], Some(d.as_nanos()));
                }
            }
        }
    }
}
