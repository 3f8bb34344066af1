//! The machine's queue of events: a ring of slots in which each event is built where it waits
//! ([`Events::slot`]), and from which [`Connection::poll_event`] moves it out. A decoded
//! response so moves twice between the decoder and the caller: from the decoder's result into
//! its slot, and from its slot into `poll_event`'s return value (a `VecDeque` took it by value,
//! one more move: the event was built first and copied in after the room check).
//!
//! [`Connection::poll_event`]: crate::Connection::poll_event

use alloc::vec::Vec;

use crate::conn::connection::Event;

/// Events in the order they happened: `slots[head..]` then `slots[..]` wrapping, `len` of them.
/// A slot outside that range is `None`.
#[derive(Debug)]
pub(crate) struct Events<T> {
    slots: Vec<Option<Event<T>>>,
    head: usize,
    len: usize,
}

/// First room for events: enough for a read's worth of frames on a busy connection.
const FIRST_ROOM: usize = 8;

impl<T> Events<T> {
    pub(crate) const fn new() -> Self {
        Events {
            slots: Vec::new(),
            head: 0,
            len: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The empty slot after the last event, now counted as queued: the caller must fill it
    /// before anything else touches the queue (an empty slot taken out is simply no event).
    /// Build the event in it with [`fill`](Self::fill), the slot taken first: then the event
    /// is written once, where it waits.
    #[inline]
    pub(crate) fn slot(&mut self) -> &mut Option<Event<T>> {
        if self.len == self.slots.len() {
            self.grow();
        }
        let mut at = self.head + self.len;
        if at >= self.slots.len() {
            at -= self.slots.len();
        }
        self.len += 1;
        &mut self.slots[at]
    }

    /// Writes `event` into an empty `slot`. Inlined, and nothing runs between building the
    /// event and storing it (the slot's old value, `None`, is looked at and forgotten after),
    /// so the event is built in the slot.
    #[inline(always)]
    pub(crate) fn fill(slot: &mut Option<Event<T>>, event: Event<T>) {
        let empty = slot.replace(event);
        debug_assert!(empty.is_none(), "an event slot is written once");
        core::mem::forget(empty);
    }

    /// Queues `event` (built by the caller: one move more than [`slot`](Self::slot)).
    #[inline]
    pub(crate) fn push(&mut self, event: Event<T>) {
        let slot = self.slot();
        Self::fill(slot, event);
    }

    /// The oldest event, moved out of its slot.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<Event<T>> {
        if self.len == 0 {
            return None;
        }
        let event = self.slots[self.head].take();
        self.head += 1;
        if self.head == self.slots.len() {
            self.head = 0;
        }
        self.len -= 1;
        event
    }

    /// Doubles the room, the queued events first in order.
    #[cold]
    #[inline(never)]
    fn grow(&mut self) {
        self.slots.rotate_left(self.head);
        self.head = 0;
        let room = (self.slots.len() * 2).max(FIRST_ROOM);
        self.slots.resize_with(room, || None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::VecDeque;
    use proptest::prelude::*;

    fn event(n: u32) -> Event<u32> {
        Event::Oneway {
            command: crate::Command::request(n as i32),
        }
    }

    proptest! {
        /// Any interleaving of pushes (through `slot` or `push`) and pops gives the events back
        /// in order, as a `VecDeque` does, across growth and wrap-around.
        #[test]
        fn a_ring_of_slots_is_a_fifo(ops in proptest::collection::vec(0u8..3, 0..300)) {
            let mut events = Events::new();
            let mut model = VecDeque::new();
            let mut next = 0u32;
            for op in ops {
                match op {
                    0 => {
                        let slot = events.slot();
                        Events::fill(slot, event(next));
                        model.push_back(event(next));
                        next += 1;
                    }
                    1 => {
                        events.push(event(next));
                        model.push_back(event(next));
                        next += 1;
                    }
                    _ => prop_assert_eq!(events.pop(), model.pop_front()),
                }
                prop_assert_eq!(events.len(), model.len());
            }
            while let Some(e) = model.pop_front() {
                prop_assert_eq!(events.pop(), Some(e));
            }
            prop_assert_eq!(events.pop(), None);
        }
    }
}
