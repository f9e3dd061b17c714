//! Where a recipient domain's mail goes: its MX hosts by preference with their
//! addresses, the domain itself when it has no MX (RFC 5321 §5.1 implicit MX), and
//! nowhere for a null MX (RFC 7505) or a domain that does not exist. Answers are cached
//! by the resolver for their TTL.

use hickory_resolver::{
    net::NetError,
    proto::{
        op::ResponseCode,
        rr::{Name, RData},
    },
    TokioResolver,
};
use std::{net::IpAddr, net::SocketAddr, time::Duration};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    pub name: String,
    pub preference: u16,
    pub addrs: Vec<IpAddr>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("domain does not exist")]
    NoSuchDomain,
    #[error("domain publishes a null MX")]
    NullMx,
    #[error("{0}")]
    Temporary(String),
}

pub struct MxResolver {
    resolver: TokioResolver,
}

impl MxResolver {
    /// Uses `nameservers` (UDP and TCP), or the system's resolv.conf when empty.
    pub fn new(nameservers: &[SocketAddr], timeout: Duration) -> Result<Self, NetError> {
        Ok(Self {
            resolver: sendmill_platform::dns::resolver(nameservers, timeout, 16_384)?,
        })
    }

    /// The resolver itself, for other lookups of the same servers (MTA-STS).
    pub fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }

    /// The hosts to try for `domain`, most preferred first.
    pub async fn route(&self, domain: &str) -> Result<Vec<MxHost>, RouteError> {
        let fqdn = fqdn(domain)?;
        let exchanges: Vec<(u16, Name)> = match self.resolver.mx_lookup(fqdn.clone()).await {
            Ok(lookup) => {
                let mut mx: Vec<(u16, Name)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some((mx.preference, mx.exchange.clone())),
                        _ => None,
                    })
                    .collect();
                if mx.len() == 1 && mx[0].1.is_root() {
                    return Err(RouteError::NullMx);
                }
                mx.retain(|(_, name)| !name.is_root());
                mx.sort_by_key(|(preference, _)| *preference);
                mx
            }
            Err(error) => match no_records(&error) {
                Some(ResponseCode::NXDomain) => return Err(RouteError::NoSuchDomain),
                // The domain exists without MX: it is its own mail host.
                Some(_) => vec![(0, fqdn)],
                None => return Err(RouteError::Temporary(error.to_string())),
            },
        };

        let mut hosts = Vec::with_capacity(exchanges.len());
        let mut last_error = None;
        for (preference, name) in exchanges {
            match self.resolver.lookup_ip(name.clone()).await {
                Ok(ips) => hosts.push(MxHost {
                    name: name.to_string().trim_end_matches('.').to_owned(),
                    preference,
                    addrs: ips.iter().collect(),
                }),
                Err(error) => last_error = Some((no_records(&error).is_some(), error.to_string())),
            }
        }
        match (hosts.is_empty(), last_error) {
            (false, _) => Ok(hosts),
            // Every host name exists nowhere: as permanent as a missing domain.
            (true, Some((true, _))) => Err(RouteError::NoSuchDomain),
            (true, Some((false, error))) => Err(RouteError::Temporary(error)),
            (true, None) => Err(RouteError::NoSuchDomain),
        }
    }
}

fn fqdn(domain: &str) -> Result<Name, RouteError> {
    let absolute = format!("{}.", domain.trim_end_matches('.'));
    Name::from_ascii(&absolute).map_err(|_| RouteError::NoSuchDomain)
}

use sendmill_platform::dns::no_records;
