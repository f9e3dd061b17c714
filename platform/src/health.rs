//! Liveness and readiness of this process, as a scheduler's probes ask for them
//! (`/livez`, `/readyz` on every stage's ops router; see [`crate::http`]).
//!
//! - **Live**: the process answers HTTP at all. Nothing else: a live process with an
//!   unreachable dependency must not be restarted for it (it would come back just as
//!   unreachable, and lose what it holds).
//! - **Ready**: every registered [`Condition`] holds (a consumer loop has joined its
//!   group and been assigned partitions, or learnt it has none; ingest is not draining)
//!   and every registered [`Probe`] answers within [`PROBE_TIMEOUT`] (PostgreSQL, Redis,
//!   Kafka, ClickHouse: whichever the stages in this process use). A stage that drains
//!   after SIGTERM turns its condition off first, so traffic stops before work does.
//!
//! The registry is one per process, like the metrics recorder: stages register what
//! they depend on while they start, and a registration ends when its guard is dropped.

use futures::future::BoxFuture;
use std::{
    collections::BTreeMap,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

/// How long `/readyz` waits for each probe, ms-precision; a slower dependency counts as
/// unreachable. Kubernetes' default probe timeout is 1 s; probes run side by side.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(900);

type ProbeFn = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

#[derive(Default)]
struct Registry {
    /// Condition name → `None` when it holds, else why not.
    conditions: BTreeMap<u64, (String, Option<String>)>,
    /// Conditions waiting for a consumer group's clients: group id by condition.
    expected_groups: BTreeMap<u64, String>,
    probes: BTreeMap<u64, (String, ProbeFn)>,
    next: u64,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    // A panic while holding the lock leaves plain data behind: still usable.
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A named condition of readiness, registered until dropped. Starts as not holding, for
/// `reason`.
pub struct Condition {
    id: u64,
}

impl Condition {
    pub fn new(name: impl Into<String>, reason: impl Into<String>) -> Self {
        let mut r = registry();
        r.next += 1;
        let id = r.next;
        r.conditions.insert(id, (name.into(), Some(reason.into())));
        Self { id }
    }

    /// The condition holds.
    pub fn holds(&self) {
        self.set(None);
    }

    /// The condition does not hold, for `reason` (said in `/readyz`'s answer).
    pub fn fails(&self, reason: impl Into<String>) {
        self.set(Some(reason.into()));
    }

    fn set(&self, state: Option<String>) {
        if let Some(entry) = registry().conditions.get_mut(&self.id) {
            entry.1 = state;
        }
    }
}

impl Drop for Condition {
    fn drop(&mut self) {
        let mut r = registry();
        r.conditions.remove(&self.id);
        r.expected_groups.remove(&self.id);
    }
}

/// A condition that holds once consumer group `group_id` (as the broker knows it,
/// prefix included) has subscribed in this process ([`consumer_subscribed`]). Created
/// before a stage starts, it keeps the process unready until the stage's consumer loops
/// exist; from then on their own conditions (joined, assigned, draining) decide.
pub fn expect_consumer(group_id: &str) -> Condition {
    let condition = Condition::new(
        format!("kafka consumer group {group_id}"),
        "not subscribed yet",
    );
    registry()
        .expected_groups
        .insert(condition.id, group_id.to_owned());
    condition
}

/// Consumer group `group_id` has subscribed: every [`expect_consumer`] of it holds.
pub fn consumer_subscribed(group_id: &str) {
    let mut r = registry();
    let ids: Vec<u64> = r
        .expected_groups
        .iter()
        .filter(|(_, g)| *g == group_id)
        .map(|(id, _)| *id)
        .collect();
    for id in ids {
        if let Some(entry) = r.conditions.get_mut(&id) {
            entry.1 = None;
        }
    }
}

/// A dependency asked on every `/readyz`, registered until dropped.
pub struct Probe {
    id: u64,
}

impl Probe {
    /// Registers `check` under `name` (e.g. `"postgresql"`): an `Err` (or no answer within
    /// [`PROBE_TIMEOUT`]) makes the process not ready, with the error said.
    pub fn new<F>(name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    {
        let mut r = registry();
        r.next += 1;
        let id = r.next;
        r.probes.insert(id, (name.into(), Arc::new(check)));
        Self { id }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        registry().probes.remove(&self.id);
    }
}

/// A probe that Redis answers `PING`.
pub fn redis_probe(redis: redis::aio::ConnectionManager) -> Probe {
    Probe::new("redis", move || {
        let mut redis = redis.clone();
        Box::pin(async move {
            redis::cmd("PING")
                .query_async::<String>(&mut redis)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    })
}

/// A probe that ClickHouse answers `SELECT 1`.
pub fn clickhouse_probe(clickhouse: clickhouse::Client) -> Probe {
    Probe::new("clickhouse", move || {
        let clickhouse = clickhouse.clone();
        Box::pin(async move {
            clickhouse
                .query("SELECT 1")
                .execute()
                .await
                .map_err(|e| e.to_string())
        })
    })
}

/// The answer to one readiness question: whether the process is ready, and each
/// condition's and probe's state (`"ok"` or why not), by name.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub ready: bool,
    pub checks: BTreeMap<String, String>,
}

/// The last probes' answer and when it was asked.
static LAST: LazyLock<tokio::sync::Mutex<Option<(std::time::Instant, Answers)>>> =
    LazyLock::new(Default::default);

/// How long an answer of [`readiness`] is reused: the readiness endpoint may be public
/// (ingest's and analytics' ports), and each answer asks every dependency.
pub const ANSWER_REUSE: Duration = Duration::from_secs(1);

/// Asks every probe (side by side) and reads every condition; an answer younger than
/// [`ANSWER_REUSE`] is given again instead (its conditions read afresh). A probe's
/// error is logged, and reported only as "unreachable": the endpoint may be public.
pub async fn readiness() -> Report {
    let answers = {
        // One asker at a time: concurrent requests wait for its answer.
        let mut last = LAST.lock().await;
        match &*last {
            Some((at, answers)) if at.elapsed() < ANSWER_REUSE => answers.clone(),
            _ => {
                let answers = ask_probes().await;
                *last = Some((std::time::Instant::now(), answers.clone()));
                answers
            }
        }
    };
    let conditions: Vec<_> = registry().conditions.values().cloned().collect();
    let mut checks = BTreeMap::new();
    let mut ready = true;
    for (name, failure) in conditions.into_iter().chain(answers) {
        ready &= failure.is_none();
        // Two registrations of one name (two pipelines in one test process): a failure
        // is never hidden by the other's success.
        let entry = checks.entry(name).or_insert_with(|| "ok".to_owned());
        if let Some(reason) = failure {
            *entry = reason;
        }
    }
    Report { ready, checks }
}

/// Each probe's name and `None` when it answered, else what to report.
type Answers = Vec<(String, Option<String>)>;

/// Every probe's answer.
async fn ask_probes() -> Answers {
    let probes: Vec<_> = registry().probes.values().cloned().collect();
    futures::future::join_all(probes.into_iter().map(|(name, check)| async move {
        let failure = match tokio::time::timeout(PROBE_TIMEOUT, check()).await {
            Ok(Ok(())) => None,
            Ok(Err(error)) => {
                tracing::warn!(dependency = %name, %error, "readiness: unreachable");
                Some("unreachable".to_owned())
            }
            Err(_) => Some(format!("no answer within {} ms", PROBE_TIMEOUT.as_millis())),
        };
        (name, failure)
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer with the probes asked afresh: the reused answer forgotten.
    async fn fresh() -> Report {
        *LAST.lock().await = None;
        readiness().await
    }

    #[tokio::test]
    async fn conditions_and_probes_decide_readiness_until_dropped() {
        let joined = Condition::new("test consumer a", "joining the group");
        let report = fresh().await;
        assert!(!report.ready);
        assert_eq!(report.checks["test consumer a"], "joining the group");
        joined.holds();
        let down = Probe::new("test database", || {
            Box::pin(async { Err("connection refused to db.internal".to_owned()) })
        });
        let slow = Probe::new("test cache", || {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            })
        });
        let report = fresh().await;
        assert!(!report.ready);
        assert_eq!(report.checks["test consumer a"], "ok");
        // The error is logged, not said: the endpoint may be public.
        assert_eq!(report.checks["test database"], "unreachable");
        assert_eq!(report.checks["test cache"], "no answer within 900 ms");
        drop((down, slow));
        assert!(fresh().await.ready);
        // Conditions are read afresh even while the probes' answer is reused.
        joined.fails("draining");
        assert_eq!(readiness().await.checks["test consumer a"], "draining");
        drop(joined);
        assert!(!readiness().await.checks.contains_key("test consumer a"));

        let expected = expect_consumer("test-group");
        assert!(!readiness().await.ready);
        consumer_subscribed("another-group");
        assert!(!readiness().await.ready);
        consumer_subscribed("test-group");
        assert!(readiness().await.ready);
        drop(expected);
    }
}
