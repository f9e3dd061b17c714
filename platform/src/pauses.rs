//! Pause flags for source IPs and IP pools, kept in Redis so that ops (`sendmill admin
//! pause`) and the reputation monitor can stop traffic on every dispatcher at once. The
//! flags are one set of `ip:<address>` and `pool:<name>` members, plus the reason for
//! each in a hash, so a dispatcher reads all of them in one call.

use redis::aio::ConnectionManager;
use std::collections::{BTreeMap, HashSet};

/// What can be paused.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Ip(std::net::IpAddr),
    Pool(String),
}

impl Target {
    pub fn member(&self) -> String {
        match self {
            Target::Ip(ip) => format!("ip:{ip}"),
            Target::Pool(name) => format!("pool:{name}"),
        }
    }
}

fn set_key(prefix: &str) -> String {
    format!("{prefix}paused")
}

fn reasons_key(prefix: &str) -> String {
    format!("{prefix}paused:why")
}

/// Pauses `target` on every dispatcher sharing this Redis and key prefix.
pub async fn pause(
    redis: &mut ConnectionManager,
    prefix: &str,
    target: &Target,
    reason: &str,
) -> redis::RedisResult<()> {
    redis::pipe()
        .atomic()
        .sadd(set_key(prefix), target.member())
        .hset(reasons_key(prefix), target.member(), reason)
        .query_async(redis)
        .await
}

/// Lifts a pause; whether there was one.
pub async fn resume(
    redis: &mut ConnectionManager,
    prefix: &str,
    target: &Target,
) -> redis::RedisResult<bool> {
    let (removed, _): (u32, u32) = redis::pipe()
        .atomic()
        .srem(set_key(prefix), target.member())
        .hdel(reasons_key(prefix), target.member())
        .query_async(redis)
        .await?;
    Ok(removed > 0)
}

/// Every paused target's member name.
pub async fn paused(
    redis: &mut ConnectionManager,
    prefix: &str,
) -> redis::RedisResult<HashSet<String>> {
    redis::cmd("SMEMBERS")
        .arg(set_key(prefix))
        .query_async(redis)
        .await
}

/// Every paused target with its reason.
pub async fn list(
    redis: &mut ConnectionManager,
    prefix: &str,
) -> redis::RedisResult<BTreeMap<String, String>> {
    let members = paused(redis, prefix).await?;
    let reasons: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(reasons_key(prefix))
        .query_async(redis)
        .await?;
    Ok(members
        .into_iter()
        .map(|m| {
            let why = reasons.get(&m).cloned().unwrap_or_default();
            (m, why)
        })
        .collect())
}

/// Whether any of `targets` is paused right now (one round trip).
pub async fn any_paused(
    redis: &mut ConnectionManager,
    prefix: &str,
    targets: &[Target],
) -> redis::RedisResult<bool> {
    let members: Vec<String> = targets.iter().map(Target::member).collect();
    let flags: Vec<bool> = redis::cmd("SMISMEMBER")
        .arg(set_key(prefix))
        .arg(&members)
        .query_async(redis)
        .await?;
    Ok(flags.into_iter().any(|f| f))
}
