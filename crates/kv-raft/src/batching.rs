//! Natural batching toward one destination, the shape both peer channels share (this crate's
//! Raft channel, kv-node's channel of forwarded operations): items queue while batches are on
//! their way; one pump task per destination takes whatever waits as the next batch whenever
//! fewer than `in_flight` batches are out (no timer, no linger), up to a number of items and of
//! bytes (one larger item still goes, alone).
//!
//! The caller owns the sending: [`BatchQueue::push`] says when to start the pump, the pump
//! loops on [`BatchQueue::next_batch`], and each batch's [`Slot`] is given back when the batch
//! no longer counts as in flight (delivered, or failed), at the latest when it drops.

use std::sync::Mutex;

use tokio::sync::Notify;

/// How much one destination gets at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Batches on their way at once.
    pub in_flight: usize,
    /// Most items in one batch.
    pub max_items: usize,
    /// Most bytes of items in one batch (one larger item still goes, alone).
    pub max_bytes: usize,
}

/// The queue of one destination.
pub struct BatchQueue<T> {
    state: Mutex<State<T>>,
    /// A slot was given back.
    freed: Notify,
    limits: BatchLimits,
    size: fn(&T) -> usize,
}

struct State<T> {
    waiting: Vec<T>,
    in_flight: usize,
    /// A pump runs for this queue.
    pumping: bool,
}

impl<T> BatchQueue<T> {
    /// An empty queue; `size` is an item's size in bytes.
    pub fn new(limits: BatchLimits, size: fn(&T) -> usize) -> Self {
        BatchQueue {
            state: Mutex::new(State {
                waiting: Vec::new(),
                in_flight: 0,
                pumping: false,
            }),
            freed: Notify::new(),
            limits: BatchLimits {
                in_flight: limits.in_flight.max(1),
                max_items: limits.max_items.max(1),
                ..limits
            },
            size,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `item`. Returns true when no pump runs for this queue: the caller starts one
    /// (a task looping on [`BatchQueue::next_batch`]).
    #[must_use = "start the pump when this is true"]
    pub fn push(&self, item: T) -> bool {
        let mut state = self.state();
        state.waiting.push(item);
        !std::mem::replace(&mut state.pumping, true)
    }

    /// For the pump: the next batch, once a slot is free, with that slot taken (see
    /// [`BatchQueue::slot`]); `None` once nothing waits, and the pump ends (the next
    /// [`BatchQueue::push`] asks for a new one).
    pub async fn next_batch(&self) -> Option<Vec<T>> {
        loop {
            {
                let mut state = self.state();
                if state.waiting.is_empty() {
                    state.pumping = false;
                    return None;
                }
                if state.in_flight < self.limits.in_flight {
                    let (mut bytes, mut take) = (0, 0);
                    for item in &state.waiting {
                        let size = (self.size)(item);
                        if take > 0
                            && (bytes + size > self.limits.max_bytes
                                || take >= self.limits.max_items)
                        {
                            break;
                        }
                        bytes += size;
                        take += 1;
                    }
                    state.in_flight += 1;
                    return Some(state.waiting.drain(..take).collect());
                }
            }
            // A slot given back between the check and here leaves a permit: no lost wake-up.
            self.freed.notified().await;
        }
    }

    /// How many items wait for a batch.
    pub fn waiting(&self) -> usize {
        self.state().waiting.len()
    }

    /// The slot a batch from [`BatchQueue::next_batch`] took, given back once.
    pub fn slot(&self) -> Slot<'_, T> {
        Slot {
            queue: self,
            held: true,
        }
    }

    fn release(&self) {
        self.state().in_flight -= 1;
        self.freed.notify_one();
    }
}

/// A batch's place among those in flight, given back by [`Slot::release`] or on drop.
pub struct Slot<'a, T> {
    queue: &'a BatchQueue<T>,
    held: bool,
}

impl<T> Slot<'_, T> {
    /// The batch no longer counts as in flight: the next one may go.
    pub fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            self.queue.release();
        }
    }
}

impl<T> Drop for Slot<'_, T> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(in_flight: usize, max_items: usize, max_bytes: usize) -> BatchQueue<Vec<u8>> {
        let limits = BatchLimits {
            in_flight,
            max_items,
            max_bytes,
        };
        BatchQueue::new(limits, Vec::len)
    }

    #[tokio::test]
    async fn items_waiting_go_together_within_the_limits_and_a_large_one_alone() {
        let q = queue(2, 3, 10);
        assert!(q.push(vec![0; 4]), "the first push starts the pump");
        for size in [4, 4, 4, 20, 1] {
            assert!(!q.push(vec![0; size]), "one pump per queue");
        }
        let sizes = |b: Vec<Vec<u8>>| b.iter().map(Vec::len).collect::<Vec<_>>();
        // Bytes end the first batch (4 + 4 + 4 > 10), items would have at 3.
        let first = q.next_batch().await.unwrap();
        let mut first_slot = q.slot();
        assert_eq!(sizes(first), vec![4, 4]);
        let second = q.next_batch().await.unwrap();
        let _second_slot = q.slot();
        assert_eq!(sizes(second), vec![4, 4]);
        // Both slots are taken: the pump waits until one is given back.
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), q.next_batch());
        assert!(
            waiting.await.is_err(),
            "a third batch while two are in flight"
        );
        first_slot.release();
        first_slot.release(); // once only
        let large = q.next_batch().await.unwrap();
        assert_eq!(
            sizes(large),
            vec![20],
            "larger than a batch: goes on its own"
        );
        drop(_second_slot);
        assert_eq!(sizes(q.next_batch().await.unwrap()), vec![1]);
    }

    #[tokio::test]
    async fn an_empty_queue_ends_the_pump_and_the_next_push_starts_another() {
        let q = queue(1, 8, 1024);
        assert!(q.push(vec![1]));
        assert_eq!(q.next_batch().await.unwrap().len(), 1);
        drop(q.slot());
        assert!(q.next_batch().await.is_none());
        assert!(q.push(vec![2]), "the pump ended: the next push starts one");
    }
}
