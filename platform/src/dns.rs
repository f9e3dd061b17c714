//! One way to build a DNS resolver, for MX routing (dispatcher) and for checking the
//! records tenants publish (domain verification): given servers over UDP and TCP, or the
//! system's resolv.conf. The same resolver answers reqwest's lookups ([`HttpResolver`])
//! for HTTP clients whose destinations tenants or recipient domains choose (webhooks,
//! MTA-STS policy hosts), refusing internal addresses at connect time: a name checked
//! when it was saved may point elsewhere by the time it is used (DNS rebinding).

pub use hickory_resolver::TokioResolver;
use hickory_resolver::{
    config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts},
    net::{runtime::TokioRuntimeProvider, DnsError, NetError},
    proto::op::ResponseCode,
};
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

/// A resolver asking `nameservers` (or resolv.conf's when empty), caching up to
/// `cache_size` answers for their TTL.
pub fn resolver(
    nameservers: &[SocketAddr],
    timeout: Duration,
    cache_size: u64,
) -> Result<TokioResolver, NetError> {
    let mut options = ResolverOpts::default();
    options.timeout = timeout;
    options.attempts = 2;
    options.cache_size = cache_size;
    let builder = if nameservers.is_empty() {
        TokioResolver::builder_tokio()?
    } else {
        let servers = nameservers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                server.connections = vec![udp, tcp];
                server
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], servers),
            TokioRuntimeProvider::default(),
        )
    };
    builder.with_options(options).build()
}

/// `Some(response code)` when the error says the name has no records of the type asked
/// (NXDOMAIN or an empty answer), `None` for failures worth retrying.
pub fn no_records(error: &NetError) -> Option<ResponseCode> {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(no)) => Some(no.response_code),
        _ => None,
    }
}

/// The TXT records at `name` (absolute, with its trailing dot), each record's
/// character-strings joined as SPF and DKIM read them (RFC 7208 §3.3, RFC 6376
/// §3.6.2.2): empty when the name has none (NXDOMAIN or no TXT), `Err` when the lookup
/// failed.
pub async fn txt_records(resolver: &TokioResolver, name: &str) -> Result<Vec<String>, NetError> {
    match resolver.txt_lookup(name).await {
        Ok(lookup) => Ok(lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                hickory_resolver::proto::rr::RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|part| String::from_utf8_lossy(part))
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect()),
        Err(e) if no_records(&e).is_some() => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Parses `ip:port` strings.
pub fn parse_nameservers(servers: &[String]) -> Result<Vec<SocketAddr>, String> {
    servers
        .iter()
        .map(|s| {
            s.parse()
                .map_err(|_| format!("nameservers: {s:?} is not ip:port"))
        })
        .collect()
}

/// Whether `ip` is an address a destination chosen by a tenant or a recipient domain must
/// never reach: loopback, private (RFC 1918, RFC 4193 unique local), link-local (cloud
/// metadata at 169.254.169.254), shared address space (RFC 6598, some clouds' metadata),
/// unspecified, broadcast, multicast, documentation, benchmarking (RFC 2544) and
/// reserved ranges; an IPv6 address that carries an IPv4 one (mapped, compatible, NAT64,
/// 6to4) is judged as that IPv4 address too.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, c, _] = ip.octets();
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_multicast()
                || ip.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240
        }
        IpAddr::V6(ip) => {
            let s = ip.segments();
            let embedded = |hi: u16, lo: u16| {
                is_internal(IpAddr::V4(std::net::Ipv4Addr::from(
                    (u32::from(hi) << 16) | u32::from(lo),
                )))
            };
            ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || s[0] == 0x2001 && s[1] == 0x0db8
                // Site-local (deprecated, still routed inside some networks), Teredo,
                // and the local-use NAT64 prefix (RFC 8215), which reaches whatever the
                // operator's translator maps.
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x2001 && s[1] == 0)
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
                // SIIT (::ffff:0:a.b.c.d, RFC 6052 §2.1's translated form).
                || (s[..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0 && embedded(s[6], s[7]))
                // IPv4-mapped and IPv4-compatible (::a.b.c.d) forms.
                || ip.to_ipv4().is_some_and(|v4| is_internal(IpAddr::V4(v4)))
                // NAT64 (RFC 6052, 64:ff9b::/96) and 6to4 (RFC 3056, 2002::/16) reach
                // the IPv4 address they embed.
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] && embedded(s[6], s[7]))
                || (s[0] == 0x2002 && embedded(s[1], s[2]))
        }
    }
}

/// A name that resolved to no public address: only internal ones ([`is_internal`]), or
/// none at all. One message for both, so that a tenant cannot tell an internal name
/// from a missing one (the answer would map the platform's private DNS).
#[derive(Debug, thiserror::Error)]
#[error("{0} does not resolve to a public address")]
pub struct InternalDestination(pub String);

/// Resolves host names for reqwest with a [`TokioResolver`] (the configured servers,
/// not the system's), and unless `allow_internal`, drops internal addresses from the
/// answer, failing with [`InternalDestination`] when none is left. reqwest does not
/// resolve IP literals: callers check those with [`is_internal`] themselves.
#[derive(Clone)]
pub struct HttpResolver {
    resolver: TokioResolver,
    allow_internal: bool,
}

impl HttpResolver {
    pub fn new(resolver: TokioResolver, allow_internal: bool) -> Self {
        Self {
            resolver,
            allow_internal,
        }
    }
}

impl reqwest::dns::Resolve for HttpResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (resolver, allow_internal) = (self.resolver.clone(), self.allow_internal);
        Box::pin(async move {
            let ips = match resolver.lookup_ip(name.as_str()).await {
                Ok(ips) => ips,
                Err(error) if allow_internal => return Err(Box::new(error) as _),
                Err(_) => return Err(Box::new(InternalDestination(name.as_str().to_owned())) as _),
            };
            let addrs: Vec<SocketAddr> = ips
                .iter()
                .filter(|ip| allow_internal || !is_internal(*ip))
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(InternalDestination(name.as_str().to_owned()))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.10",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "fec0::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "64:ff9b:1::a00:1",
            "::ffff:0:7f00:1",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }
}
