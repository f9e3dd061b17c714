//! The suppression lists as the send path reads them: a Redis copy of PostgreSQL's,
//! checked in one round trip for every recipient of a request (ingest) or a delivery
//! (dispatcher), and written through by every writer (API, unsubscribe, bounces).
//!
//! **Keeping the copy in step.** Each list (an account's, the global one) is a Redis
//! hash `email → reason[|expires unix]`, a `loaded` marker and a write generation. A
//! writer changes PostgreSQL first, then the hash, and bumps the generation. A reader
//! that finds no marker (Redis restarted, the marker's TTL ran out) rebuilds the hash
//! from PostgreSQL and sets the marker only if no write happened meanwhile (the
//! generation is unchanged); otherwise it rebuilds again. The marker's TTL bounds how
//! long a write lost between PostgreSQL and Redis (a crash in between) can go unseen.

use redis::{aio::ConnectionManager, Script};
use sendmill_store::{
    suppressions::{List, NewSuppression},
    Store, StoreError,
};
use sendmill_wire::AccountId;
use std::{sync::LazyLock, time::Duration};
use time::OffsetDateTime;

/// `[suppressions]`: the send path's copy of the suppression lists, shared by every
/// stage in a process (ingest, dispatcher, analytics).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SuppressionsConfig {
    /// How long a list's Redis copy is trusted before it is rebuilt from PostgreSQL (by
    /// whichever stage reads it next). It bounds how long a write lost between the two
    /// (a crash in between) can go unseen.
    #[serde(with = "sendmill_platform::config::duration")]
    pub cache: Duration,
}

impl Default for SuppressionsConfig {
    fn default() -> Self {
        Self {
            cache: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SuppressionError {
    #[error("suppression cache: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("suppression store: {0}")]
    Store(#[from] StoreError),
    #[error("suppression cache kept changing while it was rebuilt")]
    Contended,
}

/// Why a recipient is suppressed, as the send path reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suppressed {
    pub reason: String,
    /// The operators' global list rather than the account's.
    pub global: bool,
}

#[derive(Clone)]
pub struct SuppressionCache {
    store: Store,
    redis: ConnectionManager,
    prefix: String,
    marker_ttl: Duration,
}

const UNLOADED: &str = "!unloaded";

/// KEYS: account hash, account marker, global hash, global marker. ARGV: addresses.
/// Returns, per address, `a:<value>`, `g:<value>` or nil; or `{"!unloaded", which}`.
static CHECK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
        if redis.call('EXISTS', KEYS[2]) == 0 then return {'!unloaded', 'account'} end
        if redis.call('EXISTS', KEYS[4]) == 0 then return {'!unloaded', 'global'} end
        local out = {}
        for i, email in ipairs(ARGV) do
            local v = redis.call('HGET', KEYS[1], email)
            if v then
                out[i] = 'a:' .. v
            else
                v = redis.call('HGET', KEYS[3], email)
                if v then out[i] = 'g:' .. v else out[i] = false end
            end
        end
        return out
        "#,
    )
});

/// KEYS: hash, generation. ARGV: address, value (empty: delete). A write: it changes the
/// hash and tells rebuilds in progress that they missed something.
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
        redis.call('INCR', KEYS[2])
        for i = 1, #ARGV, 2 do
            if ARGV[i + 1] == '' then
                redis.call('HDEL', KEYS[1], ARGV[i])
            else
                redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
            end
        end
        return 1
        "#,
    )
});

/// KEYS: hash, marker, generation. ARGV: generation seen before reading PostgreSQL,
/// first chunk (1/0), last chunk (1/0), marker TTL ms, then address/value pairs.
/// Returns 0 when a write happened since (the rebuild starts over).
static LOAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
        if (redis.call('GET', KEYS[3]) or '0') ~= ARGV[1] then return 0 end
        if ARGV[2] == '1' then redis.call('DEL', KEYS[1]) end
        for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
        if ARGV[3] == '1' then redis.call('SET', KEYS[2], '1', 'PX', ARGV[4]) end
        return 1
        "#,
    )
});

const LOAD_CHUNK: usize = 2_000;

fn encode_value(reason: &str, expires_at: Option<OffsetDateTime>) -> String {
    match expires_at {
        Some(at) => format!("{reason}|{}", at.unix_timestamp()),
        None => reason.to_owned(),
    }
}

/// The reason in a cached value, unless it has expired.
fn active_reason(value: &str, now: OffsetDateTime) -> Option<&str> {
    match value.split_once('|') {
        Some((reason, expires)) => {
            let expires: i64 = expires.parse().ok()?;
            (expires > now.unix_timestamp()).then_some(reason)
        }
        None => Some(value),
    }
}

impl SuppressionCache {
    pub fn new(store: Store, redis: ConnectionManager, prefix: &str, marker_ttl: Duration) -> Self {
        Self {
            store,
            redis,
            prefix: prefix.to_owned(),
            marker_ttl,
        }
    }

    fn keys(&self, list: List) -> [String; 3] {
        let base = match list {
            List::Account(id) => format!("{}supp:a:{id}", self.prefix),
            List::Global => format!("{}supp:g", self.prefix),
        };
        [
            format!("{base}:h"),
            format!("{base}:loaded"),
            format!("{base}:gen"),
        ]
    }

    /// For each address (lower-cased by the caller or not), why it is suppressed for
    /// the account, if it is.
    pub async fn check(
        &self,
        account: AccountId,
        emails: &[String],
    ) -> Result<Vec<Option<Suppressed>>, SuppressionError> {
        let lowered: Vec<String> = emails.iter().map(|e| e.to_lowercase()).collect();
        let [account_hash, account_marker, _] = self.keys(List::Account(account));
        let [global_hash, global_marker, _] = self.keys(List::Global);
        // Two rebuilds at most (account, global), then the answer.
        for _ in 0..4 {
            let mut redis = self.redis.clone();
            let reply: Vec<Option<String>> = CHECK
                .key(&account_hash)
                .key(&account_marker)
                .key(&global_hash)
                .key(&global_marker)
                .arg(&lowered)
                .invoke_async(&mut redis)
                .await?;
            if reply.first().and_then(|v| v.as_deref()) == Some(UNLOADED) {
                let list = match reply.get(1).and_then(|v| v.as_deref()) {
                    Some("global") => List::Global,
                    _ => List::Account(account),
                };
                self.rebuild(list).await?;
                continue;
            }
            let now = OffsetDateTime::now_utc();
            return Ok(reply
                .into_iter()
                .map(|value| {
                    let value = value?;
                    let (scope, value) = value.split_at(2);
                    active_reason(value, now).map(|reason| Suppressed {
                        reason: reason.to_owned(),
                        global: scope == "g:",
                    })
                })
                .collect());
        }
        Err(SuppressionError::Contended)
    }

    /// Rebuilds `list`'s copy from PostgreSQL.
    pub async fn rebuild(&self, list: List) -> Result<(), SuppressionError> {
        let [hash, marker, generation] = self.keys(list);
        for _ in 0..5 {
            let mut redis = self.redis.clone();
            let seen: Option<String> = redis::cmd("GET")
                .arg(&generation)
                .query_async(&mut redis)
                .await?;
            let seen = seen.unwrap_or_else(|| "0".into());
            let entries = self.store.active_suppressions(list).await?;
            let chunks: Vec<_> = if entries.is_empty() {
                vec![&entries[..]]
            } else {
                entries.chunks(LOAD_CHUNK).collect()
            };
            let last = chunks.len() - 1;
            let mut complete = true;
            for (i, chunk) in chunks.into_iter().enumerate() {
                let mut invocation = LOAD.key(&hash);
                invocation
                    .key(&marker)
                    .key(&generation)
                    .arg(&seen)
                    .arg(if i == 0 { "1" } else { "0" })
                    .arg(if i == last { "1" } else { "0" })
                    .arg(self.marker_ttl.as_millis() as u64);
                for (email, reason, expires) in chunk {
                    invocation.arg(email).arg(encode_value(reason, *expires));
                }
                let done: i64 = invocation.invoke_async(&mut redis).await?;
                if done == 0 {
                    complete = false;
                    break;
                }
            }
            if complete {
                return Ok(());
            }
        }
        Err(SuppressionError::Contended)
    }

    /// Writes entries to PostgreSQL, then to the copy.
    pub async fn upsert(
        &self,
        list: List,
        entries: &[NewSuppression],
    ) -> Result<u64, SuppressionError> {
        let written = self.store.upsert_suppressions(list, entries).await?;
        let pairs: Vec<(String, String)> = entries
            .iter()
            .map(|e| {
                (
                    e.email.to_lowercase(),
                    encode_value(e.reason.as_str(), e.expires_at),
                )
            })
            .collect();
        self.write_through(list, &pairs).await?;
        Ok(written)
    }

    /// Adds one entry unless the address is already on the list (unsubscribes, bounces:
    /// an existing entry keeps its reason). Returns whether it was added.
    pub async fn add_if_absent(
        &self,
        account: AccountId,
        email: &str,
        reason: sendmill_store::SuppressionReason,
        source: Option<&str>,
    ) -> Result<bool, SuppressionError> {
        let added = self
            .store
            .add_suppression(account, email, reason, source)
            .await?;
        if added {
            let pair = (email.to_lowercase(), encode_value(reason.as_str(), None));
            self.write_through(List::Account(account), &[pair]).await?;
        }
        Ok(added)
    }

    /// Removes an entry from PostgreSQL and the copy; `false` when there was none.
    pub async fn delete(&self, list: List, email: &str) -> Result<bool, SuppressionError> {
        let deleted = self.store.delete_suppression(list, email).await?;
        self.write_through(list, &[(email.to_lowercase(), String::new())])
            .await?;
        Ok(deleted)
    }

    async fn write_through(
        &self,
        list: List,
        pairs: &[(String, String)],
    ) -> Result<(), SuppressionError> {
        let [hash, _, generation] = self.keys(list);
        let mut redis = self.redis.clone();
        for chunk in pairs.chunks(LOAD_CHUNK) {
            let mut invocation = WRITE.key(&hash);
            invocation.key(&generation);
            for (email, value) in chunk {
                invocation.arg(email).arg(value);
            }
            let _: i64 = invocation.invoke_async(&mut redis).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_values_expire() {
        let now = OffsetDateTime::now_utc();
        assert_eq!(active_reason("bounce", now), Some("bounce"));
        let later = encode_value("manual", Some(now + Duration::from_secs(60)));
        assert_eq!(active_reason(&later, now), Some("manual"));
        let earlier = encode_value("manual", Some(now - Duration::from_secs(1)));
        assert_eq!(active_reason(&earlier, now), None);
    }
}
