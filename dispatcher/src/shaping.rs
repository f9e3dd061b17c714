//! Traffic shaping: how fast each (source IP or pool, provider) may send, shared by every
//! dispatcher process through Redis.
//!
//! A bucket is a Redis hash updated by one Lua script on Redis' own clock: a token
//! bucket of messages/s (one second of burst), a messages-per-clock-hour window, and the
//! backoff factor that rate-limit replies cut and time restores. The warm-up cap of the
//! chosen IP for the provider (a per-UTC-day counter) is charged in the same call.
//!
//! Tokens are leased in small batches — as many as messages are waiting locally, up to
//! `max_lease` — and a leased token not used within `lease` is dropped, never given
//! back, so leasing saves round trips without ever exceeding a limit. A message without a
//! token sleeps on tokio's timer wheel until the bucket says it may try again; the
//! consumer's capacity bounds how many wait (the local delay queue).

use crate::config::{Config, ShapingRule, ShapingScope, WarmupConfig};
use redis::{aio::ConnectionManager, Script};
use sendmill_platform::{backoff, CancellationToken};
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, LazyLock, Mutex,
    },
    time::Duration,
};
use time::OffsetDateTime;
use tokio::time::Instant;

/// KEYS: bucket hash, warm-up hash. ARGV: rate/s (0: none), per hour (0: none), warm-up
/// cap today (0: none), tokens wanted, rate in backoff when none is set, backoff recovery
/// (µs per doubling), bucket TTL (s). Returns {granted, wait ms}; granted -1: the IP's
/// warm-up cap for today is used up.
static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
        local rate = tonumber(ARGV[1])
        local per_hour = tonumber(ARGV[2])
        local cap = tonumber(ARGV[3])
        local grant = tonumber(ARGV[4])
        local wait = 0
        local b = redis.call('HMGET', KEYS[1], 'tokens', 'at', 'factor', 'cut_at', 'hour', 'hour_used')
        local factor = tonumber(b[3]) or 1
        if factor < 1 then
            local since = now - (tonumber(b[4]) or 0)
            factor = math.min(1, factor * math.pow(2, since / tonumber(ARGV[6])))
        end
        local effective = rate
        if factor < 1 then
            if effective == 0 then effective = tonumber(ARGV[5]) end
            effective = effective * factor
        end
        local hour = math.floor(now / 3600000000)
        local hour_used = 0
        if per_hour > 0 then
            if tonumber(b[5]) == hour then hour_used = tonumber(b[6]) or 0 end
            if per_hour - hour_used < grant then
                grant = math.max(0, per_hour - hour_used)
                if grant == 0 then wait = math.ceil(((hour + 1) * 3600000000 - now) / 1000) end
            end
        end
        local day = math.floor(now / 86400000000)
        local day_used = 0
        if cap > 0 and grant > 0 then
            local w = redis.call('HMGET', KEYS[2], 'day', 'used')
            if tonumber(w[1]) == day then day_used = tonumber(w[2]) or 0 end
            if day_used >= cap then return {-1, 0} end
            grant = math.min(grant, cap - day_used)
        end
        if effective > 0 and grant > 0 then
            local burst = math.max(1, effective)
            local tokens = tonumber(b[1]) or burst
            local at = tonumber(b[2]) or now
            tokens = math.min(burst, tokens + (now - at) * effective / 1000000)
            if tokens < 1 then
                grant = 0
                wait = math.ceil((1 - tokens) * 1000 / effective)
            else
                grant = math.min(grant, math.floor(tokens))
                tokens = tokens - grant
            end
            redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
        end
        if grant > 0 then
            if per_hour > 0 then
                redis.call('HSET', KEYS[1], 'hour', tostring(hour), 'hour_used', tostring(hour_used + grant))
            end
            if cap > 0 then
                redis.call('HSET', KEYS[2], 'day', tostring(day), 'used', tostring(day_used + grant))
                redis.call('EXPIRE', KEYS[2], 172800)
            end
        end
        redis.call('EXPIRE', KEYS[1], ARGV[7])
        return {grant, wait}
        "#,
    )
});

/// KEYS: bucket hash. ARGV: lowest factor, recovery (µs per doubling), bucket TTL (s).
/// Halves the bucket's rate factor, at most once a second so that one burst of replies
/// counts once. Returns the factor now in force, as a string.
static CUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
        local b = redis.call('HMGET', KEYS[1], 'factor', 'cut_at')
        local factor = tonumber(b[1]) or 1
        local cut_at = tonumber(b[2]) or 0
        if factor < 1 then
            factor = math.min(1, factor * math.pow(2, (now - cut_at) / tonumber(ARGV[2])))
        end
        if now - cut_at < 1000000 then return tostring(factor) end
        factor = math.max(tonumber(ARGV[1]), factor / 2)
        redis.call('HSET', KEYS[1], 'factor', tostring(factor), 'cut_at', tostring(now))
        redis.call('EXPIRE', KEYS[1], ARGV[3])
        return tostring(factor)
        "#,
    )
});

/// The outcome of waiting for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    Granted,
    /// The IP reached its warm-up cap for the provider today: choose another.
    WarmupExhausted,
}

/// Where a message would leave from.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    pub pool: &'a str,
    pub ip: IpAddr,
    pub provider: &'a str,
}

#[derive(Default)]
struct Lease {
    tokens: u32,
    valid_until: Option<Instant>,
    not_before: Option<Instant>,
}

#[derive(Default)]
struct LocalBucket {
    lease: tokio::sync::Mutex<Lease>,
    waiting: AtomicUsize,
}

pub struct Shaper {
    redis: ConnectionManager,
    prefix: String,
    rules: Vec<ShapingRule>,
    warmup: Vec<WarmupConfig>,
    max_lease: u32,
    lease_for: Duration,
    backoff_rate: f64,
    min_factor: f64,
    recovery: Duration,
    local: Mutex<HashMap<(String, IpAddr), Arc<LocalBucket>>>,
    /// (IP, provider) pairs out of warm-up quota, until the end of that UTC day.
    exhausted: Mutex<HashMap<(IpAddr, String), time::Date>>,
    /// Buckets this process put in backoff, until they are surely back to full speed:
    /// until then even an unlimited provider goes through Redis.
    backoff: Mutex<HashMap<String, Instant>>,
    shutdown: CancellationToken,
}

impl Shaper {
    pub fn new(
        redis: ConnectionManager,
        prefix: &str,
        config: &Config,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            rules: config.shaping.clone(),
            warmup: config.warmup.clone(),
            max_lease: config.max_lease,
            lease_for: config.lease,
            backoff_rate: config.backoff_rate_per_sec,
            min_factor: config.backoff_min_factor,
            recovery: config.backoff_recovery.max(Duration::from_secs(1)),
            local: Mutex::default(),
            exhausted: Mutex::default(),
            backoff: Mutex::default(),
            shutdown,
        }
    }

    /// The rule for `provider`: its own, else the `*` rule.
    pub fn rule(&self, provider: &str) -> Option<&ShapingRule> {
        self.rules
            .iter()
            .find(|r| r.provider == provider)
            .or_else(|| self.rules.iter().find(|r| r.provider == "*"))
    }

    /// Whether `ip` used up today's warm-up quota for `provider`.
    pub fn is_exhausted(&self, ip: IpAddr, provider: &str) -> bool {
        let today = OffsetDateTime::now_utc().date();
        self.exhausted
            .lock()
            .expect("not poisoned")
            .get(&(ip, provider.to_owned()))
            .is_some_and(|day| *day == today)
    }

    /// Remembers until midnight UTC that `ip` used up its quota for `provider`.
    pub fn exhaust(&self, ip: IpAddr, provider: &str) {
        metrics::counter!(crate::metric::SHAPING_WARMUP_EXHAUSTED_TOTAL).increment(1);
        self.exhausted
            .lock()
            .expect("not poisoned")
            .insert((ip, provider.to_owned()), OffsetDateTime::now_utc().date());
    }

    /// The Redis key of the bucket a route draws from.
    pub fn bucket_key(&self, route: &Route<'_>) -> String {
        let per_pool = self
            .rule(route.provider)
            .is_some_and(|r| r.per == ShapingScope::Pool);
        if per_pool {
            format!(
                "{}shape:pool:{}:{}",
                self.prefix, route.pool, route.provider
            )
        } else {
            format!("{}shape:ip:{}:{}", self.prefix, route.ip, route.provider)
        }
    }

    /// Today's warm-up cap of the route's IP for its provider, if it is warming up.
    fn warmup_cap(&self, route: &Route<'_>) -> Option<u64> {
        let today = OffsetDateTime::now_utc().date();
        let ramp = self
            .warmup
            .iter()
            .filter(|w| w.ip == route.ip)
            .find(|w| w.provider == route.provider)
            .or_else(|| {
                self.warmup
                    .iter()
                    .find(|w| w.ip == route.ip && w.provider == "*")
            })?;
        let day = (today - ramp.start).whole_days();
        if day < 0 {
            // Not started: the first day's cap.
            return ramp.daily_caps.first().copied();
        }
        ramp.daily_caps.get(day as usize).copied()
    }

    /// Waits until the route may send one message (or its IP is out of warm-up quota).
    pub async fn acquire(&self, route: &Route<'_>) -> Result<Token, backoff::ShutDown> {
        let key = self.bucket_key(route);
        let rule = self.rule(route.provider);
        let (rate, per_hour) = rule.map_or((0.0, 0), |r| (r.messages_per_sec, r.messages_per_hour));
        let cap = self.warmup_cap(route).unwrap_or(0);
        let in_backoff = self
            .backoff
            .lock()
            .expect("not poisoned")
            .get(&key)
            .is_some_and(|until| *until > Instant::now());
        if rate == 0.0 && per_hour == 0 && cap == 0 && !in_backoff {
            return Ok(Token::Granted);
        }
        let bucket = self
            .local
            .lock()
            .expect("not poisoned")
            .entry((key.clone(), route.ip))
            .or_default()
            .clone();
        bucket.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&bucket.waiting);
        let warm_key = format!("{}warmup:{}:{}", self.prefix, route.ip, route.provider);
        loop {
            let wake_at = {
                let mut lease = bucket.lease.lock().await;
                let now = Instant::now();
                if lease.tokens > 0 && lease.valid_until.is_some_and(|v| now < v) {
                    lease.tokens -= 1;
                    return Ok(Token::Granted);
                }
                match lease.not_before.filter(|&t| now < t) {
                    Some(t) => t,
                    None => {
                        let want = (bucket.waiting.load(Ordering::Relaxed) as u32)
                            .clamp(1, self.max_lease);
                        let (granted, wait_ms) = self
                            .lease(&key, &warm_key, rate, per_hour, cap, want)
                            .await?;
                        if granted < 0 {
                            return Ok(Token::WarmupExhausted);
                        }
                        if granted > 0 {
                            lease.tokens = granted as u32 - 1;
                            lease.valid_until = Some(now + self.lease_for);
                            return Ok(Token::Granted);
                        }
                        let t = now + Duration::from_millis(wait_ms.max(1));
                        lease.not_before = Some(t);
                        t
                    }
                }
            };
            metrics::counter!(crate::metric::SHAPING_WAITS_TOTAL).increment(1);
            metrics::histogram!(crate::metric::SHAPING_WAIT_SECONDS).record(
                wake_at
                    .saturating_duration_since(tokio::time::Instant::now())
                    .as_secs_f64(),
            );
            tokio::select! {
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = self.shutdown.cancelled() => return Err(backoff::ShutDown("shaping wait")),
            }
        }
    }

    async fn lease(
        &self,
        key: &str,
        warm_key: &str,
        rate: f64,
        per_hour: u64,
        cap: u64,
        want: u32,
    ) -> Result<(i64, u64), backoff::ShutDown> {
        let recovery_us = self.recovery.as_micros() as u64;
        backoff::until_ok("lease shaping tokens", &self.shutdown, || {
            let mut redis = self.redis.clone();
            async move {
                LEASE
                    .key(key)
                    .key(warm_key)
                    .arg(rate)
                    .arg(per_hour)
                    .arg(cap)
                    .arg(want)
                    .arg(self.backoff_rate)
                    .arg(recovery_us)
                    .arg(3 * 3600)
                    .invoke_async::<(i64, u64)>(&mut redis)
                    .await
            }
        })
        .await
    }

    /// A provider answered "slow down" (421, rate-limited): halve the route's rate for
    /// every dispatcher; it doubles back every `backoff_recovery` without another.
    pub async fn rate_limited(&self, route: &Route<'_>) -> Result<f64, backoff::ShutDown> {
        let key = self.bucket_key(route);
        let recovery_us = self.recovery.as_micros() as u64;
        let factor: String = backoff::until_ok("cut shaping rate", &self.shutdown, || {
            let mut redis = self.redis.clone();
            let key = key.clone();
            async move {
                CUT.key(&key)
                    .arg(self.min_factor)
                    .arg(recovery_us)
                    .arg(3 * 3600)
                    .invoke_async(&mut redis)
                    .await
            }
        })
        .await?;
        let factor: f64 = factor.parse().unwrap_or(1.0);
        // From the lowest factor back to 1 takes log2(1/min) doublings.
        let doublings = (1.0 / self.min_factor).log2().ceil() as u32 + 1;
        self.backoff
            .lock()
            .expect("not poisoned")
            .insert(key, Instant::now() + self.recovery * doublings);
        metrics::gauge!(crate::metric::SHAPING_BACKOFF_FACTOR, "provider" => route.provider.to_owned())
            .set(factor);
        metrics::counter!(crate::metric::SHAPING_RATE_LIMITED_TOTAL, "provider" => route.provider.to_owned())
            .increment(1);
        tracing::warn!(provider = route.provider, ip = %route.ip, pool = route.pool, factor, "provider is rate limiting: backing off");
        Ok(factor)
    }
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
