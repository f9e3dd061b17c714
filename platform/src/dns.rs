//! One way to build a DNS resolver, for MX routing (dispatcher) and for checking the
//! records tenants publish (domain verification): given servers over UDP and TCP, or the
//! system's resolv.conf.

pub use hickory_resolver::TokioResolver;
use hickory_resolver::{
    config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts},
    net::{runtime::TokioRuntimeProvider, DnsError, NetError},
    proto::op::ResponseCode,
};
use std::{net::SocketAddr, time::Duration};

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
