//! The recent tail of a group's log, decoded, in memory. Replication sends entries right after
//! they are appended, and the state machine applies them right after they commit: both read
//! the newest entries, which this cache answers without a storage read (a blocking-pool hop,
//! a read transaction, a copy and a decode per entry otherwise).
//!
//! Invariant: the cache holds a contiguous run of the log's indexes that ends at the log's
//! last entry (or is empty). Appends extend it at the end (an append replacing entries first
//! drops those from the cache), truncation drops a suffix, purging and the size caps drop a
//! prefix. After a restart it starts empty and fills with new appends; older entries come from
//! the store.

use std::collections::BTreeMap;

use crate::types::Entry;

/// Most entries, and bytes of encoded entries, one group keeps.
const MAX_ENTRIES: usize = 1024;
const MAX_BYTES: usize = 1 << 20;

#[derive(Default)]
pub(crate) struct EntryCache {
    /// Index -> (entry, its encoded size).
    entries: BTreeMap<u64, (Entry, usize)>,
    bytes: usize,
}

impl EntryCache {
    /// Entries `first..` were appended (contiguous, ascending), replacing any at or after
    /// `first`.
    pub(crate) fn appended(&mut self, entries: impl IntoIterator<Item = (Entry, usize)>) {
        let mut entries = entries.into_iter().peekable();
        let Some((first, _)) = entries.peek() else {
            return;
        };
        let first = first.log_id.index;
        self.truncate(first);
        // Only a run that continues the cached one keeps the invariant.
        if let Some((&last, _)) = self.entries.last_key_value() {
            if last + 1 != first {
                self.clear();
            }
        }
        for (entry, size) in entries {
            self.bytes += size;
            self.entries.insert(entry.log_id.index, (entry, size));
        }
        while self.entries.len() > MAX_ENTRIES || self.bytes > MAX_BYTES {
            match self.entries.pop_first() {
                Some((_, (_, size))) => self.bytes -= size,
                None => break,
            }
        }
    }

    /// Entries at or after `from` are gone.
    pub(crate) fn truncate(&mut self, from: u64) {
        for (_, (_, size)) in self.entries.split_off(&from) {
            self.bytes -= size;
        }
    }

    /// Entries at or before `through` are gone.
    pub(crate) fn purge(&mut self, through: u64) {
        let keep = self.entries.split_off(&through.saturating_add(1));
        for (_, (_, size)) in std::mem::replace(&mut self.entries, keep) {
            self.bytes -= size;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Entries `from..to` (`to` may be `u64::MAX`: to the end), at most `budget` bytes of them
    /// (at least one), if the cache holds all of them; `None` sends the caller to the store.
    pub(crate) fn get(&self, from: u64, to: u64, budget: usize) -> Option<Vec<Entry>> {
        if from >= to {
            return Some(Vec::new());
        }
        let (&first, _) = self.entries.first_key_value()?;
        let (&last, _) = self.entries.last_key_value()?;
        if from < first || (to != u64::MAX && to > last + 1) || from > last.saturating_add(1) {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (_, (entry, size)) in self.entries.range(from..to) {
            if !out.is_empty() && bytes + size > budget {
                break;
            }
            bytes += size;
            out.push(entry.clone());
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    fn entry(index: u64) -> (Entry, usize) {
        (
            Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, crate::NodeId(1)), index),
                payload: EntryPayload::Blank,
            },
            10,
        )
    }

    fn indexes(got: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        got.map(|es| es.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn the_cache_answers_only_ranges_it_holds_whole() {
        let mut cache = EntryCache::default();
        assert_eq!(indexes(cache.get(0, 5, usize::MAX)), None);
        cache.appended((5..10).map(entry));
        assert_eq!(
            indexes(cache.get(5, 10, usize::MAX)),
            Some(vec![5, 6, 7, 8, 9])
        );
        assert_eq!(
            indexes(cache.get(7, u64::MAX, usize::MAX)),
            Some(vec![7, 8, 9])
        );
        assert_eq!(
            indexes(cache.get(4, 10, usize::MAX)),
            None,
            "starts before the cache"
        );
        assert_eq!(
            indexes(cache.get(5, 11, usize::MAX)),
            None,
            "ends after the log"
        );
        assert_eq!(
            indexes(cache.get(5, 10, 25)),
            Some(vec![5, 6]),
            "byte budget"
        );
        assert_eq!(indexes(cache.get(5, 10, 0)), Some(vec![5]), "at least one");
        // A replacing append (after a leader change) drops the old suffix.
        cache.appended((8..9).map(entry));
        assert_eq!(
            indexes(cache.get(5, u64::MAX, usize::MAX)),
            Some(vec![5, 6, 7, 8])
        );
        cache.truncate(7);
        assert_eq!(
            indexes(cache.get(5, u64::MAX, usize::MAX)),
            Some(vec![5, 6])
        );
        cache.purge(5);
        assert_eq!(indexes(cache.get(5, 7, usize::MAX)), None);
        assert_eq!(indexes(cache.get(6, 7, usize::MAX)), Some(vec![6]));
        // A run that does not continue the cached one replaces it.
        cache.appended((20..22).map(entry));
        assert_eq!(indexes(cache.get(6, 7, usize::MAX)), None);
        assert_eq!(indexes(cache.get(20, 22, usize::MAX)), Some(vec![20, 21]));
        cache.appended((22..22 + MAX_ENTRIES as u64).map(entry));
        assert_eq!(cache.entries.len(), MAX_ENTRIES, "capped");
    }
}
