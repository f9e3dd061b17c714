//! MTA-STS (RFC 8461): a recipient domain's published promise that its MX hosts take
//! mail over authenticated TLS. What flows through here is a recipient domain in, its
//! policy (or none) out; the dispatcher then keeps to MX hosts the policy names and, in
//! `enforce` mode, sends only over TLS whose certificate is valid for the MX host
//! (a temporary failure, `tls_required`, otherwise); `testing` mode delivers as usual
//! and only reports. Results are counted per domain in RFC 8460 (TLS-RPT) terms on
//! `/metrics` ([`crate::metric::TLS_RPT_SESSIONS_TOTAL`]).
//!
//! Discovery (§3.1, §5.1): the TXT record `_mta-sts.<domain>` (`v=STSv1; id=…`) is
//! looked up at most once per `recheck` per domain (the resolver caches by TTL
//! besides); a new id fetches the policy from
//! `https://mta-sts.<domain>/.well-known/mta-sts.txt` (§3.3: verified HTTPS, no
//! redirects, `text/plain`, 64 KiB at most), which is cached for its `max_age`. A cached
//! policy outlives a missing TXT record or a failed fetch until it expires; with none
//! cached, a failed fetch means delivery as if the domain had no policy (§3.3, §5.1).
//!
//! The policy text is parsed here: it is a handful of `key: value` lines (§3.2), and no
//! crate parses it that is kept better than these forty lines.

use crate::mx::MxHost;
use hickory_resolver::TokioResolver;
use sendmill_platform::dns::HttpResolver;
use serde::Deserialize;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// `[dispatcher.mta_sts]`: how recipient domains' MTA-STS policies are applied.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MtaStsConfig {
    /// Look up and apply recipient domains' policies. Off: every domain is treated as
    /// having none (opportunistic TLS only).
    pub enabled: bool,
    /// TCP port of the policy hosts' HTTPS: 443 (RFC 8461 §3.3) everywhere but in tests.
    pub policy_port: u16,
    /// How long fetching one policy may take (connect, TLS and body together).
    #[serde(with = "sendmill_platform::config::duration")]
    pub fetch_timeout: Duration,
    /// How long a domain's TXT answer (its policy id, or that it has none) is used
    /// before it is looked up again.
    #[serde(with = "sendmill_platform::config::duration")]
    pub recheck: Duration,
    /// PEM files of trust anchors added to the system's, for policy hosts and MX
    /// certificates alike (a private CA; the local test services use one).
    pub extra_roots: Vec<String>,
    /// Fetch policies from hosts on loopback, private and other internal addresses
    /// (tests, private networks). Off: a recipient domain cannot make the dispatcher
    /// request a URL inside the platform's network.
    pub allow_internal_policy_hosts: bool,
}

impl Default for MtaStsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            policy_port: 443,
            fetch_timeout: Duration::from_secs(10),
            recheck: Duration::from_secs(300),
            extra_roots: Vec::new(),
            allow_internal_policy_hosts: false,
        }
    }
}

/// A policy's mode (RFC 8461 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to matching MX hosts over authenticated TLS.
    Enforce,
    /// Deliver as usual; report what enforcing would have refused.
    Testing,
    /// The domain withdrew its policy.
    None,
}

/// A parsed policy file (RFC 8461 §3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The TXT record's `id` it was fetched for.
    pub id: String,
    pub mode: Mode,
    /// MX patterns: a host name, or `*.` and a domain (one leftmost label).
    pub mx: Vec<String>,
    /// How long it may be cached, capped at RFC 8461's 31,557,600 s (a year).
    pub max_age: Duration,
}

/// Why a policy could not be had, in RFC 8460 result-type terms.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// The policy host did not answer with a policy (HTTP, TLS, DNS, timeout).
    #[error("sts-policy-fetch-error: {0}")]
    Fetch(String),
    /// It answered with something that is not a valid policy.
    #[error("sts-policy-invalid: {0}")]
    Invalid(String),
}

impl PolicyError {
    pub fn result_type(&self) -> &'static str {
        match self {
            PolicyError::Fetch(_) => "sts-policy-fetch-error",
            PolicyError::Invalid(_) => "sts-policy-invalid",
        }
    }
}

/// The largest policy file read (RFC 8461 §3.3 suggests 64 KiB).
const MAX_POLICY_BYTES: usize = 64 * 1024;
/// RFC 8461 §3.2: max_age is at most 31,557,600 seconds.
const MAX_AGE_CAP: u64 = 31_557_600;

impl Policy {
    /// Parses a policy file. Errors name the first missing or bad field.
    pub fn parse(text: &str, id: &str) -> Result<Policy, PolicyError> {
        let invalid = |m: &str| Err(PolicyError::Invalid(m.to_owned()));
        let (mut version, mut mode, mut max_age, mut mx) = (None, None, None, Vec::new());
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                return invalid("a line is not key: value");
            };
            let value = value.trim_matches([' ', '\t']);
            match key {
                "version" => version = Some(value.to_owned()),
                "mode" => {
                    mode = Some(match value {
                        "enforce" => Mode::Enforce,
                        "testing" => Mode::Testing,
                        "none" => Mode::None,
                        _ => return invalid("mode is not enforce, testing or none"),
                    })
                }
                "max_age" => {
                    let seconds: u64 = value
                        .parse()
                        .ok()
                        .filter(|_| value.len() <= 10 && value.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| PolicyError::Invalid("max_age is not a number".into()))?;
                    max_age = Some(Duration::from_secs(seconds.min(MAX_AGE_CAP)));
                }
                "mx" => mx.push(value.trim_end_matches('.').to_ascii_lowercase()),
                // Unknown fields are ignored (§3.2: extensions).
                _ => {}
            }
        }
        if version.as_deref() != Some("STSv1") {
            return invalid("version is not STSv1");
        }
        let Some(mode) = mode else {
            return invalid("mode is missing");
        };
        let Some(max_age) = max_age else {
            return invalid("max_age is missing");
        };
        if mx.is_empty() && mode != Mode::None {
            return invalid("no mx pattern");
        }
        Ok(Policy {
            id: id.to_owned(),
            mode,
            mx,
            max_age,
        })
    }

    /// Whether MX host `host` matches one of the policy's patterns (§4.1): equal, or a
    /// `*.` pattern standing for exactly one leftmost label. Case-insensitive.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => *pattern == host,
            })
    }
}

/// The `id` of a domain's `_mta-sts` TXT records: `None` unless exactly one of them is
/// an STSv1 record (§3.1) with a valid id.
fn txt_id(records: &[String]) -> Option<String> {
    // `v=STSv1` is a whole field: `v=STSv10` is another version.
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| {
            r.strip_prefix("v=STSv1")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([';', ' ', '\t']))
        })
        .collect();
    let [record] = sts.as_slice() else {
        return None;
    };
    let mut id = None;
    for field in record.split(';') {
        let field = field.trim();
        if let Some(value) = field.strip_prefix("id=") {
            let ok = !value.is_empty()
                && value.len() <= 32
                && value.bytes().all(|b| b.is_ascii_alphanumeric());
            id = ok.then(|| value.to_owned());
        }
    }
    id
}

struct Entry {
    /// When the TXT record was last looked up.
    checked: Instant,
    /// How long after `checked` the answer is used without asking again: `recheck`, or
    /// a short while after a DNS failure.
    fresh_for: Duration,
    /// The cached policy and when it expires: `max_age` after it was fetched (§3.2),
    /// never moved by a later TXT lookup.
    policy: Option<(Arc<Policy>, Instant)>,
}

/// Domains whose answer is cached at most (a bound on memory, not a tuning knob): when
/// full, answers without a live policy are dropped; live policies are never dropped for
/// room (that would open a downgrade window), a new answer is then not cached.
const MAX_ENTRIES: usize = 100_000;

/// How long a DNS failure is remembered before the TXT record is asked for again.
const DNS_FAILURE_BACKOFF: Duration = Duration::from_secs(30);

/// Distinct `domain` label values of [`crate::metric::TLS_RPT_SESSIONS_TOTAL`] at most;
/// later domains are counted under `other` (anyone who can make us mail random
/// subdomains of a wildcard domain could otherwise grow the series without end).
const MAX_LABELLED_DOMAINS: usize = 1_000;

/// The entry's policy while it has not expired.
fn live(entry: &Entry, now: Instant) -> Option<Arc<Policy>> {
    entry
        .policy
        .as_ref()
        .filter(|(_, expires)| *expires > now)
        .map(|(p, _)| p.clone())
}

/// Policies by recipient domain, fetched and cached as the module doc says.
pub struct MtaSts {
    config: MtaStsConfig,
    resolver: TokioResolver,
    http: reqwest::Client,
    cache: Mutex<HashMap<String, Entry>>,
    /// One lookup per domain at a time: messages for a domain whose answer is being
    /// fetched wait for it instead of fetching it again (the first burst to a large
    /// domain would otherwise fetch its policy once per message).
    lookups: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Domains that have their own `domain` label on the TLS-RPT counters.
    labelled: Mutex<std::collections::HashSet<String>>,
}

/// Errors of [`MtaSts::new`].
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read extra root {path}: {error}")]
    Root { path: String, error: String },
    #[error("cannot build the policy HTTPS client: {0}")]
    Client(String),
}

impl MtaSts {
    pub fn new(config: MtaStsConfig, resolver: TokioResolver) -> Result<Self, SetupError> {
        let mut roots = Vec::new();
        for path in &config.extra_roots {
            let pem = std::fs::read(path).map_err(|e| SetupError::Root {
                path: path.clone(),
                error: e.to_string(),
            })?;
            roots.extend(reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                SetupError::Root {
                    path: path.clone(),
                    error: e.to_string(),
                }
            })?);
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // Straight to the destination: a proxy from the environment would resolve the
            // name itself, around the internal-address check.
            .no_proxy()
            .timeout(config.fetch_timeout)
            // The dispatcher's resolver finds policy hosts where it finds MX hosts; a
            // recipient domain must not point us at our own network (SSRF).
            .dns_resolver(Arc::new(HttpResolver::new(
                resolver.clone(),
                config.allow_internal_policy_hosts,
            )))
            .tls_certs_merge(roots)
            .user_agent(concat!(
                "sendmill/",
                env!("CARGO_PKG_VERSION"),
                " (MTA-STS)"
            ))
            .build()
            .map_err(|e| SetupError::Client(e.to_string()))?;
        Ok(Self {
            config,
            resolver,
            http,
            cache: Mutex::new(HashMap::new()),
            lookups: Mutex::new(HashMap::new()),
            labelled: Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// The policy that applies to mail for `domain` now, if any (mode `none` included:
    /// callers treat it as no policy).
    pub async fn policy(&self, domain: &str) -> Option<Arc<Policy>> {
        if !self.config.enabled {
            return None;
        }
        if let Some(fresh) = self.fresh(domain) {
            return fresh;
        }
        let lock = self
            .lookups
            .lock()
            .expect("not poisoned")
            .entry(domain.to_owned())
            .or_default()
            .clone();
        let answer = {
            let _one_at_a_time = lock.lock().await;
            // Another message may have looked it up while this one waited.
            match self.fresh(domain) {
                Some(fresh) => fresh,
                None => self.look_up(domain).await,
            }
        };
        let mut lookups = self.lookups.lock().expect("not poisoned");
        // Ours and the map's are the only references left: nobody waits, the entry goes.
        if lookups
            .get(domain)
            .is_some_and(|held| Arc::ptr_eq(held, &lock) && Arc::strong_count(&lock) == 2)
        {
            lookups.remove(domain);
        }
        answer
    }

    /// The `domain` label for TLS-RPT counters (see [`MAX_LABELLED_DOMAINS`]).
    pub fn label(&self, domain: &str) -> String {
        let mut labelled = self.labelled.lock().expect("not poisoned");
        if labelled.contains(domain) || labelled.len() < MAX_LABELLED_DOMAINS {
            labelled.insert(domain.to_owned());
            return domain.to_owned();
        }
        "other".to_owned()
    }

    /// The cached answer while it is fresh.
    fn fresh(&self, domain: &str) -> Option<Option<Arc<Policy>>> {
        let cache = self.cache.lock().expect("not poisoned");
        let entry = cache.get(domain)?;
        (entry.checked.elapsed() < entry.fresh_for).then(|| live(entry, Instant::now()))
    }

    /// Looks the domain's TXT record up again, and fetches its policy when the id is new
    /// or the cached one has less than half its `max_age` left (§5.1: refreshed before
    /// it expires).
    async fn look_up(&self, domain: &str) -> Option<Arc<Policy>> {
        let now = Instant::now();
        let cached: Option<(Arc<Policy>, Instant)> = self
            .cache
            .lock()
            .expect("not poisoned")
            .get(domain)
            .and_then(|e| e.policy.clone())
            .filter(|(_, expires)| *expires > now);
        let keep = |policy: Option<(Arc<Policy>, Instant)>, fresh_for: Duration| {
            let mut cache = self.cache.lock().expect("not poisoned");
            let known = cache.contains_key(domain);
            if cache.len() >= MAX_ENTRIES && !known {
                cache.retain(|_, e| e.policy.as_ref().is_some_and(|(_, x)| *x > now));
            }
            if known || cache.len() < MAX_ENTRIES {
                let entry = Entry {
                    checked: now,
                    fresh_for,
                    policy: policy.clone(),
                };
                cache.insert(domain.to_owned(), entry);
            }
            policy.map(|(p, _)| p)
        };
        let recheck = self.config.recheck;
        let id = match self.lookup_txt(domain).await {
            Ok(id) => id,
            // DNS failing: what was known stays; asked again after a short while.
            Err(()) => return keep(cached, DNS_FAILURE_BACKOFF.min(recheck)),
        };
        let Some(id) = id else {
            // No record: a cached policy is used until it expires (§5.1).
            return keep(cached, recheck);
        };
        if let Some((policy, expires)) = &cached {
            let half_left = *expires > now + policy.max_age / 2;
            if policy.id == id && half_left {
                return keep(cached, recheck);
            }
        }
        match self.fetch(domain, &id).await {
            Ok(policy) => {
                let expires = now + policy.max_age;
                keep(Some((Arc::new(policy), expires)), recheck)
            }
            Err(error) => {
                tracing::warn!(%domain, %error, "MTA-STS policy not fetched");
                metrics::counter!(crate::metric::TLS_RPT_SESSIONS_TOTAL, "domain" => self.label(domain), "result" => error.result_type()).increment(1);
                keep(cached, recheck)
            }
        }
    }

    /// `Ok(Some(id))`, `Ok(None)` (no valid record), or `Err` on a DNS failure.
    async fn lookup_txt(&self, domain: &str) -> Result<Option<String>, ()> {
        let name = format!("_mta-sts.{}.", domain.trim_end_matches('.'));
        match sendmill_platform::dns::txt_records(&self.resolver, &name).await {
            Ok(records) => Ok(txt_id(&records)),
            Err(error) => {
                tracing::debug!(%domain, %error, "MTA-STS TXT lookup failed");
                Err(())
            }
        }
    }

    async fn fetch(&self, domain: &str, id: &str) -> Result<Policy, PolicyError> {
        let url = format!(
            "https://mta-sts.{}:{}/.well-known/mta-sts.txt",
            domain.trim_end_matches('.'),
            self.config.policy_port
        );
        let fetch_error = |e: reqwest::Error| PolicyError::Fetch(e.to_string());
        let mut response = self.http.get(&url).send().await.map_err(fetch_error)?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(PolicyError::Fetch(format!(
                "{url} answered {}",
                response.status()
            )));
        }
        let text_plain = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let media_type = v.split(';').next().unwrap_or("").trim();
                media_type.eq_ignore_ascii_case("text/plain")
            });
        if !text_plain {
            return Err(PolicyError::Invalid("the policy is not text/plain".into()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(fetch_error)? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_POLICY_BYTES {
                return Err(PolicyError::Invalid("the policy exceeds 64 KiB".into()));
            }
        }
        let text = String::from_utf8(body)
            .map_err(|_| PolicyError::Invalid("the policy is not UTF-8".into()))?;
        Policy::parse(&text, id)
    }
}

/// The MX hosts a policy allows, most preferred first (all of them without a policy or
/// in `testing` mode, which only reports).
pub fn allowed_hosts(policy: Option<&Policy>, hosts: Vec<MxHost>) -> Vec<MxHost> {
    match policy {
        Some(p) if p.mode == Mode::Enforce => {
            hosts.into_iter().filter(|h| p.matches(&h.name)).collect()
        }
        _ => hosts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_rfc_example_and_refuses_broken_policies() {
        // RFC 8461 §3.2's example, CRLF line ends.
        let text = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n";
        let policy = Policy::parse(text, "20160831085700Z").unwrap();
        assert_eq!(policy.mode, Mode::Enforce);
        assert_eq!(policy.max_age, Duration::from_secs(604_800));
        assert_eq!(
            policy.mx,
            ["mail.example.com", "*.example.net", "backupmx.example.com"]
        );
        assert!(policy.matches("MAIL.example.com."));
        assert!(policy.matches("mx1.example.net"));
        assert!(!policy.matches("a.b.example.net"), "one label only");
        assert!(!policy.matches("example.net"));
        assert!(!policy.matches("mail.example.org"));
        // LF line ends, unknown fields, a huge max_age capped at a year.
        let lf = "version: STSv1\nmode: testing\nmx: mx.test\nmax_age: 999999999\nextension: x\n";
        let policy = Policy::parse(lf, "1").unwrap();
        assert_eq!(
            (policy.mode, policy.max_age),
            (Mode::Testing, Duration::from_secs(MAX_AGE_CAP))
        );
        assert_eq!(
            Policy::parse("version: STSv1\nmode: none\nmax_age: 1\n", "1")
                .unwrap()
                .mode,
            Mode::None
        );
        for bad in [
            "",
            "mode: enforce\nmx: a.test\nmax_age: 1\n",
            "version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n",
            "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx: a.test\n",
            "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n",
            "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 99999999999\n",
            "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: +5\n",
            "version STSv1\n",
        ] {
            assert!(
                matches!(Policy::parse(bad, "1"), Err(PolicyError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn reads_the_txt_record_id() {
        let one = |r: &str| txt_id(&[r.to_owned()]);
        assert_eq!(
            one("v=STSv1; id=20160831085700Z;"),
            Some("20160831085700Z".into())
        );
        assert_eq!(one("v=STSv1;id=abc"), Some("abc".into()));
        assert_eq!(one("v=STSv1; id=bad-char"), None);
        assert_eq!(one("v=STSv10; id=abc"), None);
        assert_eq!(one("v=STSv1;"), None);
        assert_eq!(one("v=spf1 -all"), None);
        assert_eq!(
            txt_id(&["v=STSv1; id=a".into(), "v=STSv1; id=b".into()]),
            None,
            "two records: none (§3.1)"
        );
    }

    #[test]
    fn enforce_keeps_only_matching_hosts() {
        let host = |name: &str| MxHost {
            name: name.into(),
            preference: 10,
            addrs: Vec::new(),
        };
        let policy = Policy::parse(
            "version: STSv1\nmode: enforce\nmx: *.good.test\nmax_age: 60\n",
            "1",
        )
        .unwrap();
        let hosts = vec![host("mx.good.test"), host("mx.evil.test")];
        let kept = allowed_hosts(Some(&policy), hosts.clone());
        assert_eq!(kept, [host("mx.good.test")]);
        let testing = Policy {
            mode: Mode::Testing,
            ..policy
        };
        assert_eq!(allowed_hosts(Some(&testing), hosts.clone()).len(), 2);
        assert_eq!(allowed_hosts(None, hosts).len(), 2);
    }
}
