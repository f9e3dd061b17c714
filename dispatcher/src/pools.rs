//! IP pools: which pool a message leaves from and which of its source IPs sends it.
//!
//! The pool is the message's `ip_pool` hint when the account may use that pool, else the
//! account's default pool, else its lane's (transactional or bulk). Within the pool an IP
//! is drawn by weight among those not paused and not out of warm-up quota for the
//! provider today.

use crate::config::{Config, PoolConfig};
use rand::Rng;
use sendmill_wire::{AccountId, Lane};
use std::{collections::HashMap, net::IpAddr};

pub struct Pools {
    pools: Vec<PoolConfig>,
    accounts: HashMap<AccountId, String>,
    transactional: String,
    bulk: String,
    helo: String,
}

/// A chosen source.
#[derive(Debug, Clone)]
pub struct Source {
    pub ip: IpAddr,
    pub helo: String,
}

impl Pools {
    /// From a validated config.
    pub fn new(config: &Config) -> Self {
        let pools = config.pools();
        let transactional = match config.routing.transactional_pool.as_str() {
            "" => pools[0].name.clone(),
            name => name.to_owned(),
        };
        let bulk = match config.routing.bulk_pool.as_str() {
            "" => transactional.clone(),
            name => name.to_owned(),
        };
        let accounts = config
            .routing
            .accounts
            .iter()
            .filter_map(|(a, pool)| Some((a.parse().ok()?, pool.clone())))
            .collect();
        Self {
            pools,
            accounts,
            transactional,
            bulk,
            helo: config.helo(),
        }
    }

    fn get(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }

    fn allowed(pool: &PoolConfig, account: AccountId) -> bool {
        pool.accounts.is_empty()
            || pool
                .accounts
                .iter()
                .any(|a| a.parse::<AccountId>().is_ok_and(|a| a == account))
    }

    /// The pool a message leaves from.
    pub fn choose(&self, account: AccountId, lane: Lane, hint: Option<&str>) -> &PoolConfig {
        let hinted = hint
            .and_then(|h| self.get(h))
            .filter(|p| Self::allowed(p, account));
        if hint.is_some() && hinted.is_none() {
            metrics::counter!(crate::metric::DISPATCH_POOL_HINT_IGNORED_TOTAL).increment(1);
        }
        hinted
            .or_else(|| self.accounts.get(&account).and_then(|p| self.get(p)))
            .or_else(|| {
                let lane_pool = match lane {
                    Lane::Transactional => &self.transactional,
                    Lane::Bulk => &self.bulk,
                };
                self.get(lane_pool)
            })
            .unwrap_or(&self.pools[0])
    }

    /// An IP of `pool` by weight, skipping those `excluded` says to.
    pub fn pick(&self, pool: &PoolConfig, excluded: impl Fn(IpAddr) -> bool) -> Option<Source> {
        let candidates: Vec<_> = pool
            .ips
            .iter()
            .filter(|ip| ip.weight > 0 && !excluded(ip.ip))
            .collect();
        let total: u32 = candidates.iter().map(|ip| ip.weight).sum();
        if total == 0 {
            return None;
        }
        let mut draw = rand::thread_rng().gen_range(0..total);
        let chosen = candidates.iter().find(|ip| {
            if draw < ip.weight {
                true
            } else {
                draw -= ip.weight;
                false
            }
        })?;
        Some(Source {
            ip: chosen.ip,
            helo: if chosen.ehlo.is_empty() {
                self.helo.clone()
            } else {
                chosen.ehlo.clone()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolIp;

    fn config() -> Config {
        let account = "0190a0e4-0000-7000-8000-000000000001";
        let ip = |s: &str, weight| PoolIp {
            ip: s.parse().unwrap(),
            ehlo: format!("mta-{s}.test"),
            weight,
        };
        Config {
            pools: vec![
                PoolConfig {
                    name: "tx".into(),
                    accounts: vec![],
                    ips: vec![ip("127.0.0.2", 3), ip("127.0.0.3", 1)],
                },
                PoolConfig {
                    name: "bulk".into(),
                    accounts: vec![],
                    ips: vec![ip("127.0.0.4", 1)],
                },
                PoolConfig {
                    name: "acme".into(),
                    accounts: vec![account.into()],
                    ips: vec![ip("127.0.0.5", 1)],
                },
            ],
            routing: crate::config::RoutingConfig {
                transactional_pool: "tx".into(),
                bulk_pool: "bulk".into(),
                accounts: [(account.to_owned(), "acme".to_owned())].into(),
            },
            ..Config::default()
        }
    }

    #[test]
    fn chooses_by_hint_account_and_lane() {
        let config = config();
        config.validate().unwrap();
        let pools = Pools::new(&config);
        let acme: AccountId = "0190a0e4-0000-7000-8000-000000000001".parse().unwrap();
        let other = AccountId::generate();
        assert_eq!(pools.choose(other, Lane::Transactional, None).name, "tx");
        assert_eq!(pools.choose(other, Lane::Bulk, None).name, "bulk");
        assert_eq!(pools.choose(acme, Lane::Bulk, None).name, "acme");
        assert_eq!(pools.choose(acme, Lane::Bulk, Some("tx")).name, "tx");
        // A dedicated pool is not for others, whatever they ask.
        assert_eq!(
            pools.choose(other, Lane::Transactional, Some("acme")).name,
            "tx"
        );
        assert_eq!(
            pools.choose(other, Lane::Transactional, Some("nope")).name,
            "tx"
        );
    }

    #[test]
    fn picks_by_weight_and_skips_excluded_ips() {
        let config = config();
        let pools = Pools::new(&config);
        let tx = pools.choose(AccountId::generate(), Lane::Transactional, None);
        let mut heavy = 0;
        for _ in 0..4000 {
            if pools.pick(tx, |_| false).unwrap().ip.to_string() == "127.0.0.2" {
                heavy += 1;
            }
        }
        assert!(
            (2700..3300).contains(&heavy),
            "{heavy} of 4000 on the weight-3 IP"
        );
        let only = pools.pick(tx, |ip| ip.to_string() == "127.0.0.2").unwrap();
        assert_eq!(only.ip.to_string(), "127.0.0.3");
        assert_eq!(only.helo, "mta-127.0.0.3.test");
        assert!(pools.pick(tx, |_| true).is_none());
    }
}
