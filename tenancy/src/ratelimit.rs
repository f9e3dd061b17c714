//! Per-account send limits in Redis, shared by every ingest process: a token bucket of
//! recipients per second (refilled by Redis' own clock, so process clocks do not
//! matter) and a daily quota per UTC day, checked and charged in one script.
//!
//! A request larger than the bucket is admitted when the bucket is full and leaves it in
//! debt, so a 1,000-recipient request is possible under a 100/s limit and the account
//! then waits out the debt.

use redis::{aio::ConnectionManager, Script};
use sendmill_wire::AccountId;
use std::{sync::LazyLock, time::Duration};
use time::OffsetDateTime;

/// KEYS: bucket, today's quota counter. ARGV: rate/s (0: none), burst, quota (0: none),
/// recipients, quota TTL s. Returns {admitted (1/0), which limit refused (0 rate,
/// 1 quota), wait ms, quota remaining (-1: none)}.
static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
        local rate = tonumber(ARGV[1])
        local burst = tonumber(ARGV[2])
        local quota = tonumber(ARGV[3])
        local want = tonumber(ARGV[4])
        local used = tonumber(redis.call('GET', KEYS[2]) or '0')
        if quota > 0 and used + want > quota then
            return {0, 1, 0, quota - used}
        end
        if rate > 0 then
            local t = redis.call('TIME')
            local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
            local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
            local tokens = tonumber(b[1]) or burst
            local at = tonumber(b[2]) or now
            tokens = math.min(burst, tokens + (now - at) * rate / 1000000)
            local needed = math.min(want, burst)
            if tokens < needed then
                redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
                redis.call('PEXPIRE', KEYS[1], 60000 + math.ceil(burst * 1000 / rate))
                return {0, 0, math.ceil((needed - tokens) * 1000 / rate), -1}
            end
            tokens = tokens - want
            redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
            redis.call('PEXPIRE', KEYS[1], 60000 + math.ceil((burst - tokens) * 1000 / rate))
        end
        local remaining = -1
        if quota > 0 then
            used = redis.call('INCRBY', KEYS[2], want)
            redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
            remaining = quota - used
        end
        return {1, 0, 0, remaining}
        "#,
    )
});

/// The limits in force for one account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Recipients per second; 0: unlimited.
    pub per_sec: u32,
    /// Recipients per UTC day; 0: unlimited.
    pub per_day: u64,
}

/// The answer for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Admitted {
        /// Recipients left today, when a quota applies.
        quota_remaining: Option<u64>,
    },
    /// Over the rate: retry after this long.
    RateLimited { retry_after: Duration },
    /// Over today's quota: retry after the next UTC midnight.
    QuotaExceeded { retry_after: Duration },
}

#[derive(Clone)]
pub struct SendLimiter {
    redis: ConnectionManager,
    prefix: String,
}

impl SendLimiter {
    pub fn new(redis: ConnectionManager, prefix: &str) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
        }
    }

    /// Admits `recipients` for `account` under `limits`, charging them when admitted.
    pub async fn admit(
        &self,
        account: AccountId,
        limits: Limits,
        recipients: u32,
    ) -> Result<Admission, redis::RedisError> {
        if limits.per_sec == 0 && limits.per_day == 0 {
            return Ok(Admission::Admitted {
                quota_remaining: None,
            });
        }
        let now = OffsetDateTime::now_utc();
        let until_midnight = until_next_utc_midnight(now);
        let mut redis = self.redis.clone();
        let (admitted, refused_by, wait_ms, remaining): (i64, i64, i64, i64) = ADMIT
            .key(format!("{}rate:{account}", self.prefix))
            .key(format!("{}quota:{account}:{}", self.prefix, now.date()))
            .arg(limits.per_sec)
            .arg(limits.per_sec.max(1))
            .arg(limits.per_day)
            .arg(recipients)
            .arg(until_midnight.as_secs() + 3600)
            .invoke_async(&mut redis)
            .await?;
        Ok(match (admitted, refused_by) {
            (1, _) => Admission::Admitted {
                quota_remaining: (remaining >= 0).then_some(remaining as u64),
            },
            (_, 1) => Admission::QuotaExceeded {
                retry_after: until_midnight,
            },
            _ => Admission::RateLimited {
                retry_after: Duration::from_millis(wait_ms.max(1) as u64),
            },
        })
    }
}

fn until_next_utc_midnight(now: OffsetDateTime) -> Duration {
    let midnight = now
        .date()
        .next_day()
        .map(|d| d.midnight().assume_utc())
        .unwrap_or(now);
    Duration::from_secs((midnight - now).whole_seconds().max(1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn midnight_is_at_most_a_day_away() {
        let now = OffsetDateTime::now_utc();
        let wait = until_next_utc_midnight(now);
        assert!(wait <= Duration::from_secs(86_400) && wait >= Duration::from_secs(1));
        let late = OffsetDateTime::from_unix_timestamp(1_795_391_970).unwrap(); // 2026-11-22 23:59:30 UTC
        assert_eq!(until_next_utc_midnight(late), Duration::from_secs(30));
    }
}
