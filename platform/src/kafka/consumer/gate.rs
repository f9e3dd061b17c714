//! When the consumer loop reads and which partitions it holds back: the two kinds of
//! pause, in one place, decided here and carried out by the loop on the Kafka clients
//! (so the rules are testable without a broker, like the offset tracker).
//!
//! - **Capacity.** When the handlers have held `capacity` records (or `max_bytes` of
//!   them) for [`FULL_BEFORE_PAUSE`] without one finishing, every assigned partition is
//!   paused. The
//!   loop keeps polling (a consumer that stops polling loses its group membership) and
//!   lets go what was already fetched, remembering per partition the first offset let
//!   go. When a quarter of the capacity (and of the bytes) is free again, each partition
//!   resumes from that
//!   offset (a seek), or simply resumes when nothing was let go.
//! - **Due time.** A handler that answers "not before T" for a record (the retry delay
//!   topics) pauses that record's partition; records after it are let go; at T the
//!   partition is sought back to the earliest such record and resumed. Other partitions
//!   keep flowing.
//!
//! They meet: a partition due-paused during a capacity pause stays paused at the
//! capacity resume and resumes at its due time from the earlier of the two offsets; a
//! due time that comes during a capacity pause hands its offset to the capacity resume.
//! A failed seek (the broker away) keeps the partition paused and tries again after
//! [`SEEK_RETRY`]: resumed without the seek it would read on past records let go.

use std::{collections::HashMap, time::Duration};
use tokio::time::Instant;

/// A topic and partition.
pub(crate) type PartitionKey = (String, i32);

/// How long every handler slot may stay taken, none finishing, before the partitions are
/// paused. Fast handlers (render) free a slot within milliseconds and never cause a
/// pause, whose resume costs a refetch; slow ones (deliveries waiting for shaping tokens)
/// pause, so the consumer keeps polling and stays in its group however long they wait.
pub(crate) const FULL_BEFORE_PAUSE: Duration = Duration::from_millis(250);

/// How soon a failed seek is tried again.
pub(crate) const SEEK_RETRY: Duration = Duration::from_millis(500);

/// What the loop does to the clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    Pause(Vec<PartitionKey>),
    /// Resume reading where the client is.
    Resume(PartitionKey),
    /// Seek to the offset, then resume; report a failed seek with [`PauseGate::seek_failed`].
    ResumeFrom(PartitionKey, i64),
}

/// What the handlers hold: records, and their payload bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Load {
    pub records: usize,
    pub bytes: usize,
}

/// A partition paused until a record's due time.
#[derive(Debug, Clone, Copy)]
struct DuePause {
    /// The earliest offset let go: reading starts again here.
    from: i64,
    at: Instant,
}

/// The capacity pause in force.
#[derive(Debug, Default)]
struct CapacityPause {
    partitions: Vec<PartitionKey>,
    /// Per partition, the first offset let go during the pause.
    first_let_go: HashMap<PartitionKey, i64>,
}

pub(crate) struct PauseGate {
    capacity: usize,
    max_bytes: usize,
    stage: &'static str,
    /// Since when every handler slot has been taken without one finishing.
    full_since: Option<Instant>,
    capacity_pause: Option<CapacityPause>,
    due: HashMap<PartitionKey, DuePause>,
}

impl PauseGate {
    /// A gate for `capacity` records and `max_bytes` of them held at once (at least one
    /// record either way); `stage` names the metrics.
    pub(crate) fn new(capacity: usize, max_bytes: usize, stage: &'static str) -> Self {
        Self {
            capacity: capacity.max(1),
            max_bytes: max_bytes.max(1),
            stage,
            full_since: None,
            capacity_pause: None,
            due: HashMap::new(),
        }
    }

    /// Whether `load` fills the handlers: `capacity` records, or `max_bytes`.
    fn full(&self, load: Load) -> bool {
        load.records >= self.capacity || load.bytes >= self.max_bytes
    }

    /// Whether the loop reads a record now: below capacity, or during a capacity pause
    /// (what was fetched is read and let go). At capacity otherwise nothing is read
    /// until a handler finishes or the pause begins.
    pub(crate) fn may_read(&self, load: Load) -> bool {
        !self.full(load) || self.capacity_pause.is_some()
    }

    /// Whether a record just read is let go (it is read again after its partition's
    /// resume) rather than handled.
    pub(crate) fn lets_go(&mut self, key: &PartitionKey, offset: i64) -> bool {
        if self.due.get(key).is_some_and(|d| offset >= d.from) {
            // Fetched before the due-time pause took effect.
            return true;
        }
        match &mut self.capacity_pause {
            Some(pause) => {
                let first = pause.first_let_go.entry(key.clone()).or_insert(offset);
                *first = (*first).min(offset);
                true
            }
            None => false,
        }
    }

    /// A handler answered that the record at `offset` is not due until `at`: pauses its
    /// partition (if not paused for a due time already) until then.
    pub(crate) fn not_before(
        &mut self,
        key: PartitionKey,
        offset: i64,
        at: Instant,
    ) -> Vec<Action> {
        match self.due.get_mut(&key) {
            Some(pause) => {
                pause.from = pause.from.min(offset);
                Vec::new()
            }
            None => {
                self.due.insert(key.clone(), DuePause { from: offset, at });
                vec![Action::Pause(vec![key])]
            }
        }
    }

    /// A seek to `offset` failed: the partition stays paused and is tried again soon.
    pub(crate) fn seek_failed(&mut self, key: PartitionKey, offset: i64, now: Instant) {
        let pause = self.due.entry(key).or_insert(DuePause {
            from: offset,
            at: now + SEEK_RETRY,
        });
        pause.from = pause.from.min(offset);
        pause.at = pause.at.min(now + SEEK_RETRY);
    }

    /// When the loop must call [`Self::wake`] next: the capacity pause's deadline or the
    /// earliest due time.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        let capacity = self
            .full_since
            .filter(|_| self.capacity_pause.is_none())
            .map(|since| since + FULL_BEFORE_PAUSE);
        let due = self.due.values().map(|d| d.at).min();
        capacity.into_iter().chain(due).min()
    }

    /// Acts on what is due at `now`: the capacity pause (of every partition `assignment`
    /// lists; `None` when it cannot be read, then tried again shortly) and due times.
    pub(crate) fn wake(
        &mut self,
        now: Instant,
        assignment: impl FnOnce() -> Option<Vec<PartitionKey>>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let pause_due = self
            .full_since
            .is_some_and(|since| since + FULL_BEFORE_PAUSE <= now);
        if pause_due && self.capacity_pause.is_none() {
            match assignment() {
                Some(partitions) => {
                    actions.push(Action::Pause(partitions.clone()));
                    self.capacity_pause = Some(CapacityPause {
                        partitions,
                        first_let_go: HashMap::new(),
                    });
                    metrics::counter!(crate::metric::CONSUMER_CAPACITY_PAUSES_TOTAL, "stage" => self.stage)
                        .increment(1);
                    metrics::gauge!(crate::metric::CONSUMER_PAUSED, "stage" => self.stage).set(1.0);
                    tracing::debug!(stage = self.stage, "handlers full: partitions paused");
                }
                None => self.full_since = Some(now),
            }
        }
        let ready: Vec<PartitionKey> = self
            .due
            .iter()
            .filter(|(_, d)| d.at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in ready {
            let from = self.due.remove(&key).expect("listed above").from;
            match &mut self.capacity_pause {
                // Still paused for capacity: that resume reads from here.
                Some(pause) if pause.partitions.contains(&key) => {
                    let first = pause.first_let_go.entry(key).or_insert(from);
                    *first = (*first).min(from);
                }
                _ => actions.push(Action::ResumeFrom(key, from)),
            }
        }
        actions
    }

    /// After each turn of the loop, with `load` held: notes when the handlers became
    /// full, and ends a capacity pause once a quarter of the capacity and of the bytes is
    /// free (partitions also waiting for a due time stay paused until it).
    pub(crate) fn settle(&mut self, now: Instant, load: Load) -> Vec<Action> {
        if !self.full(load) {
            self.full_since = None;
        } else if self.full_since.is_none() {
            self.full_since = Some(now);
        }
        let room = load.records <= self.capacity - self.capacity / 4
            && load.bytes <= self.max_bytes - self.max_bytes / 4;
        let Some(pause) = self.capacity_pause.take_if(|_| room) else {
            return Vec::new();
        };
        let CapacityPause {
            partitions,
            mut first_let_go,
        } = pause;
        let mut actions = Vec::new();
        for key in partitions {
            let let_go = first_let_go.remove(&key);
            if let Some(due) = self.due.get_mut(&key) {
                if let Some(let_go) = let_go {
                    due.from = due.from.min(let_go);
                }
                continue;
            }
            actions.push(match let_go {
                Some(offset) => Action::ResumeFrom(key, offset),
                None => Action::Resume(key),
            });
        }
        // Records of partitions assigned during the pause.
        for (key, offset) in first_let_go {
            actions.push(Action::ResumeFrom(key, offset));
        }
        metrics::counter!(crate::metric::CONSUMER_CAPACITY_RESUMES_TOTAL, "stage" => self.stage)
            .increment(1);
        metrics::gauge!(crate::metric::CONSUMER_PAUSED, "stage" => self.stage).set(0.0);
        tracing::debug!(stage = self.stage, "handlers have room: partitions resumed");
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> PartitionKey {
        ("t".into(), n)
    }

    /// `n` records of 100 bytes.
    fn held(n: usize) -> Load {
        Load {
            records: n,
            bytes: n * 100,
        }
    }

    fn both() -> Option<Vec<PartitionKey>> {
        Some(vec![p(0), p(1)])
    }

    /// A gate of capacity 4 that is capacity-paused at the returned instant.
    fn capacity_paused() -> (PauseGate, Instant) {
        let mut gate = PauseGate::new(4, 1_000_000, "test");
        let t0 = Instant::now();
        assert!(gate.settle(t0, held(4)).is_empty());
        assert!(!gate.may_read(held(4)));
        assert_eq!(gate.next_wake(), Some(t0 + FULL_BEFORE_PAUSE));
        let at = t0 + FULL_BEFORE_PAUSE;
        assert_eq!(gate.wake(at, both), vec![Action::Pause(vec![p(0), p(1)])]);
        (gate, at)
    }

    #[test]
    fn below_capacity_it_reads_and_never_pauses() {
        let mut gate = PauseGate::new(4, 1_000_000, "test");
        let now = Instant::now();
        assert!(gate.settle(now, held(3)).is_empty());
        assert!(gate.may_read(held(3)));
        assert_eq!(gate.next_wake(), None);
        assert!(!gate.lets_go(&p(0), 10));
    }

    #[test]
    fn a_slot_freed_before_the_deadline_prevents_the_pause() {
        let mut gate = PauseGate::new(4, 1_000_000, "test");
        let t0 = Instant::now();
        gate.settle(t0, held(4));
        gate.settle(t0 + Duration::from_millis(100), held(3));
        assert_eq!(gate.next_wake(), None);
        assert!(gate.wake(t0 + FULL_BEFORE_PAUSE, both).is_empty());
    }

    #[test]
    fn a_capacity_pause_resumes_each_partition_from_the_first_record_let_go() {
        let (mut gate, at) = capacity_paused();
        assert!(
            gate.may_read(held(4)),
            "paused, fetched records are read and let go"
        );
        assert!(gate.lets_go(&p(0), 12));
        assert!(gate.lets_go(&p(0), 11));
        // Still 4 held, then 3 = capacity - capacity/4: room.
        assert!(gate.settle(at, held(4)).is_empty());
        let actions = gate.settle(at, held(3));
        assert_eq!(
            actions,
            vec![Action::ResumeFrom(p(0), 11), Action::Resume(p(1))]
        );
        assert!(!gate.lets_go(&p(0), 11), "resumed: read again, handled");
    }

    #[test]
    fn a_partition_assigned_during_the_pause_resumes_from_what_was_let_go() {
        let (mut gate, at) = capacity_paused();
        assert!(gate.lets_go(&p(7), 3));
        let actions = gate.settle(at, held(0));
        assert!(
            actions.contains(&Action::ResumeFrom(p(7), 3)),
            "{actions:?}"
        );
    }

    #[test]
    fn a_due_time_pause_lets_later_records_go_and_resumes_at_the_due_time() {
        let mut gate = PauseGate::new(4, 1_000_000, "test");
        let now = Instant::now();
        let due = now + Duration::from_secs(60);
        assert_eq!(
            gate.not_before(p(0), 5, due),
            vec![Action::Pause(vec![p(0)])]
        );
        // A second record not due either: no second pause, the earlier offset kept.
        assert!(gate
            .not_before(p(0), 7, due + Duration::from_secs(1))
            .is_empty());
        assert!(gate.lets_go(&p(0), 6));
        assert!(!gate.lets_go(&p(1), 6), "other partitions flow");
        assert_eq!(gate.next_wake(), Some(due));
        assert!(gate
            .wake(due - Duration::from_millis(1), || None)
            .is_empty());
        assert_eq!(gate.wake(due, || None), vec![Action::ResumeFrom(p(0), 5)]);
        assert_eq!(gate.next_wake(), None);
    }

    #[test]
    fn a_due_paused_partition_stays_paused_through_a_capacity_resume() {
        let (mut gate, at) = capacity_paused();
        let due = at + Duration::from_secs(30);
        gate.not_before(p(0), 20, due);
        // Let go during the capacity pause, before the due record: read again first.
        assert!(gate.lets_go(&p(0), 25), "after the due record");
        let actions = gate.settle(at, held(0));
        assert_eq!(actions, vec![Action::Resume(p(1))]);
        assert_eq!(gate.wake(due, || None), vec![Action::ResumeFrom(p(0), 20)]);
    }

    #[test]
    fn a_capacity_resume_from_an_earlier_offset_wins_over_the_due_offset() {
        let (mut gate, at) = capacity_paused();
        assert!(gate.lets_go(&p(0), 15));
        gate.not_before(p(0), 20, at + Duration::from_secs(30));
        gate.settle(at, held(0));
        let actions = gate.wake(at + Duration::from_secs(30), || None);
        assert_eq!(actions, vec![Action::ResumeFrom(p(0), 15)]);
    }

    #[test]
    fn a_due_time_during_a_capacity_pause_is_handed_to_the_capacity_resume() {
        let (mut gate, at) = capacity_paused();
        gate.not_before(p(1), 40, at + Duration::from_secs(1));
        let actions = gate.wake(at + Duration::from_secs(1), || {
            unreachable!("paused already")
        });
        assert!(actions.is_empty(), "still paused for capacity: {actions:?}");
        let actions = gate.settle(at + Duration::from_secs(2), held(0));
        assert_eq!(
            actions,
            vec![Action::Resume(p(0)), Action::ResumeFrom(p(1), 40)]
        );
    }

    #[test]
    fn a_failed_seek_is_tried_again_from_the_same_offset() {
        let mut gate = PauseGate::new(4, 1_000_000, "test");
        let now = Instant::now();
        gate.seek_failed(p(0), 9, now);
        assert!(gate.lets_go(&p(0), 9), "stays paused");
        assert_eq!(gate.next_wake(), Some(now + SEEK_RETRY));
        assert_eq!(
            gate.wake(now + SEEK_RETRY, || None),
            vec![Action::ResumeFrom(p(0), 9)]
        );
    }

    #[test]
    fn a_few_large_records_fill_the_handlers_as_many_small_ones_do() {
        let mut gate = PauseGate::new(4096, 10_000_000, "test");
        let t0 = Instant::now();
        let large = |n: usize| Load {
            records: n,
            bytes: n * 3_000_000,
        };
        assert!(gate.may_read(large(3)));
        assert!(!gate.may_read(large(4)), "12 MB held: no more is read");
        gate.settle(t0, large(4));
        let at = t0 + FULL_BEFORE_PAUSE;
        assert_eq!(gate.wake(at, both), vec![Action::Pause(vec![p(0), p(1)])]);
        assert!(gate.lets_go(&p(0), 9));
        // 3 records (9 MB) are still more than 3/4 of the bytes: paused on.
        assert!(gate.settle(at, large(3)).is_empty());
        let actions = gate.settle(at, large(2));
        assert_eq!(
            actions,
            vec![Action::ResumeFrom(p(0), 9), Action::Resume(p(1))]
        );
    }

    #[test]
    fn one_record_larger_than_the_byte_budget_is_still_read() {
        let gate = PauseGate::new(4, 1_000, "test");
        assert!(gate.may_read(Load::default()));
        assert!(!gate.may_read(Load {
            records: 1,
            bytes: 5_000
        }));
    }

    #[test]
    fn an_unreadable_assignment_postpones_the_capacity_pause() {
        let mut gate = PauseGate::new(1, 1_000_000, "test");
        let t0 = Instant::now();
        gate.settle(t0, held(1));
        let at = t0 + FULL_BEFORE_PAUSE;
        assert!(gate.wake(at, || None).is_empty());
        assert!(!gate.may_read(held(1)));
        assert_eq!(gate.next_wake(), Some(at + FULL_BEFORE_PAUSE));
    }
}
