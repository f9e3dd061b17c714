//! Which offset of each partition the consumer loop may store (and so commit): handlers
//! finish out of order, and a crash or rebalance must redeliver every unfinished record.

use super::gate::PartitionKey;
use std::collections::{BTreeMap, HashMap};

/// Which offsets of each partition may be stored: everything below the oldest record
/// still in flight. Records arrive in offset order per partition (until a rewind), so
/// with nothing in flight the highest finished offset is safe.
#[derive(Default)]
pub(crate) struct OffsetTracker {
    partitions: HashMap<PartitionKey, PartitionProgress>,
}

#[derive(Default)]
struct PartitionProgress {
    /// Offset → the generation it was received in.
    in_flight: BTreeMap<i64, u64>,
    /// The lowest offset this consumer received: nothing below it is ours to store.
    first_received: Option<i64>,
    highest_done: Option<i64>,
    stored: Option<i64>,
    /// Bumped on rewind: completions of records fetched before it no longer count.
    generation: u64,
}

impl OffsetTracker {
    /// Registers a received record; returns the generation to report its completion with.
    pub(crate) fn begin(&mut self, key: &PartitionKey, offset: i64) -> u64 {
        let p = self.partitions.entry(key.clone()).or_default();
        p.in_flight.insert(offset, p.generation);
        p.first_received = Some(p.first_received.map_or(offset, |f| f.min(offset)));
        p.generation
    }

    /// Whether a completion no longer counts: its record was let go by a rewind (it
    /// will be read again) or was received again since.
    pub(crate) fn is_stale(&self, key: &PartitionKey, generation: u64, offset: i64) -> bool {
        self.partitions
            .get(key)
            .is_none_or(|p| p.in_flight.get(&offset) != Some(&generation))
    }

    /// Marks a record done; returns the offset to store if it advanced.
    pub(crate) fn complete(
        &mut self,
        key: &PartitionKey,
        generation: u64,
        offset: i64,
    ) -> Option<i64> {
        if self.is_stale(key, generation, offset) {
            return None;
        }
        let p = self.partitions.get_mut(key)?;
        p.in_flight.remove(&offset);
        p.highest_done = Some(p.highest_done.map_or(offset, |h| h.max(offset)));
        let safe = match p.in_flight.first_key_value() {
            Some((&oldest, _)) => oldest - 1,
            None => p.highest_done?,
        };
        let ours = p.first_received.is_some_and(|f| safe >= f);
        if ours && p.stored.is_none_or(|s| safe > s) {
            p.stored = Some(safe);
            Some(safe)
        } else {
            None
        }
    }

    /// The partition will be re-read from `offset`: forget it and everything after.
    /// Records before it still in flight are not re-read, so they stay tracked: their
    /// completions count, and no offset past them is stored until they finish.
    pub(crate) fn rewind(&mut self, key: &PartitionKey, offset: i64) {
        let p = self.partitions.entry(key.clone()).or_default();
        p.generation += 1;
        p.in_flight.retain(|&o, _| o < offset);
        p.highest_done = p.highest_done.map(|h| h.min(offset - 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PartitionKey {
        ("t".into(), 0)
    }

    #[test]
    fn stores_only_below_the_oldest_record_in_flight() {
        let mut t = OffsetTracker::default();
        let g = t.begin(&key(), 10);
        t.begin(&key(), 11);
        t.begin(&key(), 12);
        assert_eq!(t.complete(&key(), g, 12), None);
        assert_eq!(t.complete(&key(), g, 10), Some(10));
        assert_eq!(t.complete(&key(), g, 11), Some(12));
    }

    #[test]
    fn a_rewind_discards_completions_of_older_generations() {
        let mut t = OffsetTracker::default();
        let g0 = t.begin(&key(), 5);
        t.begin(&key(), 6);
        assert_eq!(t.complete(&key(), g0, 5), Some(5));
        t.rewind(&key(), 6);
        // A record fetched after 6 before the rewind finishes late: it must not count.
        assert_eq!(t.complete(&key(), g0, 7), None);
        let g1 = t.begin(&key(), 6);
        t.begin(&key(), 7);
        assert_eq!(t.complete(&key(), g1, 7), None);
        assert_eq!(t.complete(&key(), g1, 6), Some(7));
    }

    #[test]
    fn a_record_before_the_rewind_point_still_counts() {
        // 5 and 6 in flight; 6 is not due yet and rewinds the partition to 6 first.
        let mut t = OffsetTracker::default();
        let g0 = t.begin(&key(), 5);
        t.begin(&key(), 6);
        t.rewind(&key(), 6);
        // 5 is not read again, so its answer (done, or not due either) must count...
        assert!(!t.is_stale(&key(), g0, 5));
        assert!(t.is_stale(&key(), g0, 6));
        // ...and nothing past it is stored before it finishes.
        let g1 = t.begin(&key(), 6);
        assert_eq!(t.complete(&key(), g1, 6), None);
        assert_eq!(t.complete(&key(), g0, 5), Some(6));
    }

    #[test]
    fn nothing_is_stored_twice() {
        let mut t = OffsetTracker::default();
        let g = t.begin(&key(), 0);
        assert_eq!(t.complete(&key(), g, 0), Some(0));
        let g = t.begin(&key(), 0);
        assert_eq!(t.complete(&key(), g, 0), None);
    }
}
