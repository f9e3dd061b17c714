//! Which mailbox provider a recipient domain belongs to. Providers throttle by their
//! infrastructure, not by domain: every Google-hosted domain shares Gmail's limits. So a
//! domain belongs to the first configured provider that lists it or whose MX suffix one of
//! its MX hosts has; any other domain is a provider of its own.

use crate::config::ProviderConfig;
use crate::mx::MxHost;

/// A provider and the policy attached to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provider {
    pub name: String,
    pub require_tls: bool,
}

pub struct Providers {
    rules: Vec<ProviderConfig>,
}

impl Providers {
    pub fn new(rules: &[ProviderConfig]) -> Self {
        let rules = rules
            .iter()
            .map(|r| ProviderConfig {
                mx_suffixes: r
                    .mx_suffixes
                    .iter()
                    .map(|s| s.trim_start_matches('.').to_ascii_lowercase())
                    .collect(),
                domains: r.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
                ..r.clone()
            })
            .collect();
        Self { rules }
    }

    /// The provider of `domain` (lower-case) given its MX hosts.
    pub fn classify(&self, domain: &str, hosts: &[MxHost]) -> Provider {
        let by_mx = |rule: &ProviderConfig| {
            hosts.iter().any(|h| {
                rule.mx_suffixes
                    .iter()
                    .any(|suffix| has_label_suffix(&h.name, suffix))
            })
        };
        match self
            .rules
            .iter()
            .find(|r| r.domains.iter().any(|d| d == domain) || by_mx(r))
        {
            Some(rule) => Provider {
                name: rule.name.clone(),
                require_tls: rule.require_tls,
            },
            None => Provider {
                name: domain.to_owned(),
                require_tls: false,
            },
        }
    }
}

/// Whether `host` is `suffix` or ends with `.suffix`, ignoring ASCII case (`suffix` is
/// lower-case); no allocation, as this runs for every message.
fn has_label_suffix(host: &str, suffix: &str) -> bool {
    let (host, suffix) = (host.as_bytes(), suffix.as_bytes());
    if host.len() < suffix.len() || !host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    {
        return false;
    }
    host.len() == suffix.len() || host[host.len() - suffix.len() - 1] == b'.'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> MxHost {
        MxHost {
            name: name.into(),
            preference: 10,
            addrs: Vec::new(),
        }
    }

    #[test]
    fn groups_domains_by_mx_suffix_and_list() {
        let providers = Providers::new(&[ProviderConfig {
            name: "google".into(),
            mx_suffixes: vec!["google.com".into(), ".googlemail.com".into()],
            domains: vec!["Gmail.com".into()],
            require_tls: true,
        }]);
        let google = providers.classify("acme.example", &[host("ASPMX.L.GOOGLE.COM")]);
        assert_eq!(google.name, "google");
        assert!(google.require_tls);
        assert_eq!(providers.classify("gmail.com", &[]).name, "google");
        assert_eq!(
            providers
                .classify("x.test", &[host("alt1.googlemail.com")])
                .name,
            "google"
        );
        // A suffix matches whole labels only.
        let other = providers.classify("x.test", &[host("mx.notgoogle.com")]);
        assert_eq!(other.name, "x.test");
        assert!(!other.require_tls);
    }
}
