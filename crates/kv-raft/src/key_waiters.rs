//! Waiting for a key to change: the requests that wait (a blocking read, `?wait=`) register the
//! key here, and the state machine wakes them once it has applied a command on that key. A
//! waiter checks the key's state after registering and again after each wake-up, so a change
//! applied in between is never missed; a wake-up for another write of the key just means one
//! more look.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// A waited-on key's notifier, and how many waiters share it.
type Waited = (Arc<Notify>, usize);

/// The keys of one group that requests wait on.
#[derive(Default)]
pub(crate) struct KeyWaiters {
    keys: Mutex<HashMap<Vec<u8>, Waited>>,
    /// How many waiters there are: applying checks this before taking the lock.
    waiting: AtomicUsize,
}

impl KeyWaiters {
    /// Register a waiter on `key`, until the returned guard is dropped.
    pub(crate) fn wait_on(self: &Arc<Self>, key: &[u8]) -> KeyWait {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let entry = keys
            .entry(key.to_vec())
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        self.waiting.fetch_add(1, Ordering::AcqRel);
        KeyWait {
            notify: entry.0.clone(),
            key: key.to_vec(),
            waiters: self.clone(),
        }
    }

    /// Whether anything waits: applying skips collecting its keys otherwise.
    pub(crate) fn any(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// Wake every waiter on any of `keys` (the keys of commands just applied).
    pub(crate) fn applied<'a>(&self, keys: impl IntoIterator<Item = &'a [u8]>) {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return;
        }
        let waiting = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            if let Some((notify, _)) = waiting.get(key) {
                notify.notify_waiters();
            }
        }
    }

    /// Wake every waiter of the group (a snapshot replaced its data).
    pub(crate) fn all_changed(&self) {
        let waiting = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        for (notify, _) in waiting.values() {
            notify.notify_waiters();
        }
    }
}

/// A registered waiter on one key (see [`crate::Group::wait_on`]).
pub struct KeyWait {
    notify: Arc<Notify>,
    key: Vec<u8>,
    waiters: Arc<KeyWaiters>,
}

impl KeyWait {
    /// A wake-up for the next change of the key applied after this call: create it, check the
    /// key, then await it.
    pub fn next_change(&self) -> std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>> {
        let mut notified = Box::pin(self.notify.notified());
        // Enabled now, so a change applied between this call and the await is not missed.
        notified.as_mut().enable();
        notified
    }
}

impl Drop for KeyWait {
    fn drop(&mut self) {
        let mut keys = self.waiters.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = keys.get_mut(&self.key) {
            entry.1 -= 1;
            if entry.1 == 0 {
                keys.remove(&self.key);
            }
        }
        self.waiters.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_change_applied_after_registering_wakes_the_waiter_and_others_do_not() {
        let waiters = Arc::new(KeyWaiters::default());
        let wait = waiters.wait_on(b"k");
        let next = wait.next_change();
        // Applied before the await: still seen.
        waiters.applied([b"other".as_slice()]);
        waiters.applied([b"k".as_slice()]);
        tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("woken");
        let next = wait.next_change();
        waiters.applied([b"other".as_slice()]);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), next)
                .await
                .is_err(),
            "woken by another key"
        );
        let second = waiters.wait_on(b"k");
        drop(wait);
        assert_eq!(waiters.waiting.load(Ordering::Acquire), 1);
        drop(second);
        assert!(waiters.keys.lock().unwrap().is_empty());
    }
}
