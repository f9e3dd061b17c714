//! `[dispatcher]` in the TOML config: how delivery is shaped. Providers, IP pools,
//! warm-up ramps, traffic-shaping rules, TLS policy, the reply-classification table and
//! the retry schedule all live here, so ops change behaviour by editing config (checked
//! by `sendmill validate-config`), not code.

use crate::outcome::ClassifyRule;
use sendmill_wire::RetryTier;
use serde::Deserialize;
use std::{net::IpAddr, net::SocketAddr, time::Duration};
use time::Date;

/// `[dispatcher]`: delivery.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kafka consumer group of the delivery loop.
    pub group_id: String,
    /// Kafka consumer group of the retry (delay topic) loop.
    pub retry_group_id: String,
    /// Messages sending at once per process: from the SMTP transaction until their
    /// outcome is recorded (so it also bounds what a crash can leave to the journal).
    pub concurrency: usize,
    /// Messages a process holds at once, sending or waiting for a shaping token (the local
    /// delay queue). When it is full the `ready` partitions are paused until a quarter of
    /// it is free.
    pub queue_capacity: usize,
    /// Address of `/healthz` and `/metrics` when the dispatcher runs as its own process.
    /// Env: `SENDMILL_DISPATCH_OPS_LISTEN`.
    pub ops_listen: String,
    /// Name announced in EHLO by IPs that name none; empty: this machine's host name.
    pub helo_name: String,
    /// TCP port of receiving MX hosts (25 everywhere but in tests).
    pub smtp_port: u16,
    /// Source address of the implicit `default` pool (used when `pools` is empty); empty:
    /// the system's choice.
    pub source_ip: String,
    /// DNS servers for MX lookups, `ip:port`; empty: the system's resolv.conf.
    /// Env: `SENDMILL_DNS_NAMESERVERS` (comma-separated).
    pub nameservers: Vec<String>,
    /// How long a DNS query may take.
    #[serde(with = "sendmill_platform::config::duration")]
    pub dns_timeout: Duration,
    /// How long it may take to establish a TCP connection to an MX host.
    #[serde(with = "sendmill_platform::config::duration")]
    pub connect_timeout: Duration,
    /// How long the greeting, EHLO, STARTTLS and each envelope command may take.
    #[serde(with = "sendmill_platform::config::duration")]
    pub command_timeout: Duration,
    /// How long sending the message data and reading the final reply may take.
    #[serde(with = "sendmill_platform::config::duration")]
    pub data_timeout: Duration,
    /// `[dispatcher.mta_sts]`: recipient domains' MTA-STS policies (RFC 8461).
    pub mta_sts: crate::mta_sts::MtaStsConfig,
    /// Idle connections kept per (source IP, MX address).
    pub max_idle_per_host: usize,
    /// How long an idle connection is kept for reuse.
    #[serde(with = "sendmill_platform::config::duration")]
    pub idle_timeout: Duration,
    /// How long after acceptance a message keeps being retried; then it expires (a hard
    /// bounce with the last reply).
    #[serde(with = "sendmill_platform::config::duration")]
    pub max_retry_age: Duration,
    /// Delay of each retry tier, in the order of the tier topics (`1m`, `5m`, `15m`,
    /// `1h`): the first retry waits the first, the fourth and every later one the last.
    /// Shortened only in tests.
    #[serde(deserialize_with = "sendmill_platform::config::durations::deserialize")]
    pub retry_delays: [Duration; 4],
    /// How long a message's terminal event is remembered in Redis (the dedupe barrier);
    /// longer than any redelivery can come late.
    #[serde(with = "sendmill_platform::config::duration")]
    pub terminal_ttl: Duration,
    /// Directory of the durable dedupe journal: the id of every message whose data was
    /// handed to a receiver, written before its reply is read. Keep it on a disk that
    /// survives restarts.
    pub journal_dir: String,
    /// Message ids per journal segment; the newest `journal_segments` are kept.
    pub journal_segment_entries: usize,
    /// Journal segments kept (and loaded at start).
    pub journal_segments: usize,
    /// Most shaping tokens leased from Redis in one call (fewer round trips; tokens unused
    /// after `lease` are dropped, never returned, so limits are never exceeded).
    pub max_lease: u32,
    /// How long a leased token stays usable.
    #[serde(with = "sendmill_platform::config::duration")]
    pub lease: Duration,
    /// Time between reads of the pause flags set by ops and the reputation
    /// monitor (a new connection checks them itself).
    #[serde(with = "sendmill_platform::config::duration")]
    pub pause_refresh: Duration,
    /// Rate (messages/s) a provider without a configured rate is held to when its
    /// replies put it in backoff mode.
    pub backoff_rate_per_sec: f64,
    /// Lowest share of its rate backoff mode slows a provider to.
    pub backoff_min_factor: f64,
    /// Time without a rate-limit reply after which a provider's backoff factor doubles
    /// (back to full speed).
    #[serde(with = "sendmill_platform::config::duration")]
    pub backoff_recovery: Duration,
    /// Named pools of source IPs; empty: one implicit pool `default` of `source_ip`.
    pub pools: Vec<PoolConfig>,
    /// Which pool a message leaves from.
    pub routing: RoutingConfig,
    /// Providers: recipient domains grouped by their MX hosts. A domain no rule matches is
    /// its own provider.
    pub providers: Vec<ProviderConfig>,
    /// Limits per (source IP or pool, provider); the first rule naming the provider wins,
    /// then the first with provider `*`. No rule: unlimited.
    pub shaping: Vec<ShapingRule>,
    /// Daily caps of new IPs, per provider, growing by schedule.
    pub warmup: Vec<WarmupConfig>,
    /// How replies are classified, first match wins; replaces the built-in table when
    /// given. A reply no rule matches is temporary for 4xx and permanent for 5xx, category
    /// `other`.
    pub classify: Vec<ClassifyRule>,
}

/// `[[dispatcher.pools]]`: a named set of source IPs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// The name messages and routing refer to (e.g. `transactional`, `marketing`).
    pub name: String,
    /// Accounts (UUIDs) this pool is dedicated to; empty: any account may use it.
    #[serde(default)]
    pub accounts: Vec<String>,
    /// The pool's source IPs.
    pub ips: Vec<PoolIp>,
}

/// One source IP of a pool.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolIp {
    /// The address outbound connections bind to (it must be configured on this host).
    pub ip: IpAddr,
    /// Name announced in EHLO from this IP (its PTR name); empty: `helo_name`.
    #[serde(default)]
    pub ehlo: String,
    /// Share of the pool's traffic, relative to the other IPs.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// `[dispatcher.routing]`: the pool of a message is its `ip_pool` hint when the account
/// may use that pool, else the account's default, else its lane's pool.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Pool of transactional mail; empty: the first pool.
    pub transactional_pool: String,
    /// Pool of campaign (bulk) mail; empty: the transactional pool.
    pub bulk_pool: String,
    /// Default pool per account: `{ "<account uuid>" = "pool" }`.
    pub accounts: std::collections::BTreeMap<String, String>,
}

/// `[[dispatcher.providers]]`: domains that share a receiving infrastructure.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The provider's name in shaping rules, events and dashboards (e.g. `google`).
    pub name: String,
    /// MX host name suffixes that identify the provider (e.g. `google.com` matches
    /// `aspmx.l.google.com`); a domain with any such MX host belongs to it.
    #[serde(default)]
    pub mx_suffixes: Vec<String>,
    /// Recipient domains that belong to the provider whatever their MX.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Refuse to deliver without STARTTLS (temporary failure, category `tls_required`).
    #[serde(default)]
    pub require_tls: bool,
}

/// Where a shaping rule's buckets are kept.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ShapingScope {
    /// One bucket per (source IP, provider).
    #[default]
    Ip,
    /// One bucket per (pool, provider), shared by the pool's IPs.
    Pool,
}

/// `[[dispatcher.shaping]]`: limits for one provider (or `*`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapingRule {
    /// Provider name, or `*` for every provider without a rule of its own.
    pub provider: String,
    /// Whether the limits apply per source IP or per pool.
    #[serde(default)]
    pub per: ShapingScope,
    /// Messages per second (a token bucket holding one second of tokens); 0: unlimited.
    #[serde(default)]
    pub messages_per_sec: f64,
    /// Messages per clock hour (Redis' clock); 0: unlimited.
    #[serde(default)]
    pub messages_per_hour: u64,
    /// Connections open at once per (source IP, provider) in each dispatcher process;
    /// 0: unlimited.
    #[serde(default)]
    pub max_connections: usize,
    /// Messages sent over one connection before it is closed; 0: unlimited.
    #[serde(default)]
    pub messages_per_connection: u32,
}

/// `[[dispatcher.warmup]]`: a new IP's ramp.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupConfig {
    /// The IP being warmed up.
    pub ip: IpAddr,
    /// Provider the caps apply to, or `*` for each provider separately.
    #[serde(default = "any_provider")]
    pub provider: String,
    /// The first day (UTC) of the ramp, `YYYY-MM-DD`.
    #[serde(deserialize_with = "iso_date")]
    pub start: Date,
    /// Messages per UTC day for day 1, 2, …; past the end the IP is warm (no cap).
    pub daily_caps: Vec<u64>,
}

fn iso_date<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Date, D::Error> {
    let text = String::deserialize(deserializer)?;
    let format = time::format_description::parse_borrowed::<2>("[year]-[month]-[day]")
        .expect("valid format");
    Date::parse(&text, &format)
        .map_err(|_| serde::de::Error::custom(format!("{text:?} is not a YYYY-MM-DD date")))
}

fn any_provider() -> String {
    "*".into()
}

impl Default for Config {
    fn default() -> Self {
        Self {
            group_id: "sendmill-dispatcher".into(),
            retry_group_id: "sendmill-retry".into(),
            concurrency: 256,
            queue_capacity: 4096,
            ops_listen: "127.0.0.1:9103".into(),
            helo_name: String::new(),
            smtp_port: 25,
            source_ip: String::new(),
            nameservers: Vec::new(),
            dns_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(120),
            data_timeout: Duration::from_secs(600),
            mta_sts: crate::mta_sts::MtaStsConfig::default(),
            max_idle_per_host: 16,
            idle_timeout: Duration::from_secs(30),
            max_retry_age: Duration::from_secs(24 * 3600),
            retry_delays: RetryTier::ALL.map(|t| t.delay()),
            terminal_ttl: Duration::from_secs(7 * 24 * 3600),
            journal_dir: "/var/lib/sendmill/dispatcher".into(),
            journal_segment_entries: 250_000,
            journal_segments: 4,
            max_lease: 32,
            lease: Duration::from_millis(1000),
            pause_refresh: Duration::from_millis(1000),
            backoff_rate_per_sec: 20.0,
            backoff_min_factor: 0.05,
            backoff_recovery: Duration::from_secs(60),
            pools: Vec::new(),
            routing: RoutingConfig::default(),
            providers: Vec::new(),
            shaping: Vec::new(),
            warmup: Vec::new(),
            classify: crate::outcome::default_rules(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid dispatcher config: {0}")]
    Config(String),
    #[error("cannot build the DNS resolver: {0}")]
    Dns(String),
    #[error("MTA-STS: {0}")]
    MtaSts(String),
    #[error("dedupe journal: {0}")]
    Journal(#[from] std::io::Error),
    #[error(transparent)]
    Kafka(#[from] sendmill_platform::kafka::KafkaError),
}

impl Config {
    pub fn apply_env(&mut self) {
        sendmill_platform::config::override_string(&mut self.ops_listen, "DISPATCH_OPS_LISTEN");
        if let Some(servers) = sendmill_platform::config::env_override("DNS_NAMESERVERS") {
            self.nameservers = servers.split(',').map(|s| s.trim().to_owned()).collect();
        }
    }

    /// Checks what serde cannot: addresses parse, names are unique and refer to
    /// something, numbers are usable.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        self.nameserver_addrs()?;
        self.source_addr()?;
        let pools = self.pools();
        let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        for (i, pool) in pools.iter().enumerate() {
            if names[..i].contains(&pool.name.as_str()) {
                return bad(format!("pools: {:?} is defined twice", pool.name));
            }
            if pool.ips.is_empty() || pool.ips.iter().all(|ip| ip.weight == 0) {
                return bad(format!("pools.{}: needs an IP with weight > 0", pool.name));
            }
            for account in &pool.accounts {
                if account.parse::<uuid::Uuid>().is_err() {
                    return bad(format!(
                        "pools.{}.accounts: {account:?} is not a UUID",
                        pool.name
                    ));
                }
            }
        }
        let known = |name: &str| name.is_empty() || names.contains(&name);
        for (field, pool) in [
            ("transactional_pool", &self.routing.transactional_pool),
            ("bulk_pool", &self.routing.bulk_pool),
        ] {
            if !known(pool) {
                return bad(format!("routing.{field}: no pool is named {pool:?}"));
            }
        }
        for (account, pool) in &self.routing.accounts {
            if account.parse::<uuid::Uuid>().is_err() {
                return bad(format!("routing.accounts: {account:?} is not a UUID"));
            }
            if !known(pool) {
                return bad(format!(
                    "routing.accounts.{account}: no pool is named {pool:?}"
                ));
            }
        }
        for rule in &self.shaping {
            if rule.messages_per_sec < 0.0 || !rule.messages_per_sec.is_finite() {
                return bad(format!(
                    "shaping.{}: messages_per_sec must be >= 0",
                    rule.provider
                ));
            }
        }
        for w in &self.warmup {
            if w.daily_caps.is_empty() {
                return bad(format!("warmup.{}: daily_caps is empty", w.ip));
            }
        }
        if self.retry_delays.contains(&Duration::ZERO) {
            return bad("retry_delays: a delay of 0 would retry at once".into());
        }
        if !(0.0..=1.0).contains(&self.backoff_min_factor) || self.backoff_min_factor == 0.0 {
            return bad("backoff_min_factor: must be in (0, 1]".into());
        }
        if self.max_lease == 0 || self.journal_segments == 0 || self.journal_segment_entries == 0 {
            return bad(
                "max_lease, journal_segments and journal_segment_entries must be > 0".into(),
            );
        }
        for rule in &self.classify {
            rule.validate().map_err(Error::Config)?;
        }
        Ok(())
    }

    pub(crate) fn nameserver_addrs(&self) -> Result<Vec<SocketAddr>, Error> {
        sendmill_platform::dns::parse_nameservers(&self.nameservers).map_err(Error::Config)
    }

    fn source_addr(&self) -> Result<Option<IpAddr>, Error> {
        if self.source_ip.is_empty() {
            return Ok(None);
        }
        self.source_ip
            .parse()
            .map(Some)
            .map_err(|_| Error::Config(format!("source_ip: {:?} is not an IP", self.source_ip)))
    }

    /// The configured pools, or the implicit `default` pool.
    pub(crate) fn pools(&self) -> Vec<PoolConfig> {
        if !self.pools.is_empty() {
            return self.pools.clone();
        }
        vec![PoolConfig {
            name: "default".into(),
            accounts: Vec::new(),
            ips: vec![PoolIp {
                // Unspecified: bind to nothing, the system chooses.
                ip: self
                    .source_addr()
                    .ok()
                    .flatten()
                    .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
                ehlo: String::new(),
                weight: 1,
            }],
        }]
    }

    pub(crate) fn helo(&self) -> String {
        if !self.helo_name.is_empty() {
            return self.helo_name.clone();
        }
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into())
    }

    /// The delay before retry number `attempts` (1-based) and its tier's index.
    pub(crate) fn retry_delay(&self, attempts: u32) -> (usize, Duration) {
        let tier = (attempts.max(1) as usize - 1).min(self.retry_delays.len() - 1);
        (tier, self.retry_delays[tier])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_walk_1m_5m_15m_then_hourly_by_default() {
        let config = Config::default();
        let delays: Vec<(usize, u64)> = (1..=6)
            .map(|attempt| {
                let (tier, delay) = config.retry_delay(attempt);
                (tier, delay.as_secs())
            })
            .collect();
        assert_eq!(
            delays,
            [(0, 60), (1, 300), (2, 900), (3, 3600), (3, 3600), (3, 3600)]
        );
    }
}
