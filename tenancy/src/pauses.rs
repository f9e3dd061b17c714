//! Pause flags for source IPs, IP pools and accounts, kept in Redis so that ops (`sendmill admin
//! pause`) and the reputation monitor can stop traffic on every dispatcher at once. The
//! flags are one set of `ip:<address>`, `pool:<name>` and `account:<id>` members, plus the reason for
//! each in a hash, so a dispatcher reads all of them in one call.

use redis::aio::ConnectionManager;
use std::collections::{BTreeMap, HashSet};

/// What can be paused.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Ip(std::net::IpAddr),
    Pool(String),
    /// All sending of one account (the reputation monitor, or ops).
    Account(sendmill_wire::AccountId),
}

impl Target {
    pub fn member(&self) -> String {
        match self {
            Target::Ip(ip) => format!("ip:{ip}"),
            Target::Pool(name) => format!("pool:{name}"),
            Target::Account(id) => format!("account:{id}"),
        }
    }
}

fn set_key(prefix: &str) -> String {
    format!("{prefix}paused")
}

fn reasons_key(prefix: &str) -> String {
    format!("{prefix}paused:why")
}

/// Pauses `target` on every dispatcher sharing this Redis and key prefix; whether it was
/// not paused before.
pub async fn pause(
    redis: &mut ConnectionManager,
    prefix: &str,
    target: &Target,
    reason: &str,
) -> redis::RedisResult<bool> {
    let (added, _): (u32, u32) = redis::pipe()
        .atomic()
        .sadd(set_key(prefix), target.member())
        .hset(reasons_key(prefix), target.member(), reason)
        .query_async(redis)
        .await?;
    Ok(added > 0)
}

/// Lifts a pause; whether there was one. The target's reputation window starts afresh,
/// so the monitor judges it on what it sends from now on, not on what paused it.
pub async fn resume(
    redis: &mut ConnectionManager,
    prefix: &str,
    target: &Target,
) -> redis::RedisResult<bool> {
    let (removed, _, _): (u32, u32, u32) = redis::pipe()
        .atomic()
        .srem(set_key(prefix), target.member())
        .hdel(reasons_key(prefix), target.member())
        .del(reputation_key(prefix, target))
        .query_async(redis)
        .await?;
    Ok(removed > 0)
}

/// The hash where the reputation monitor counts `target`'s recent outcomes.
pub fn reputation_key(prefix: &str, target: &Target) -> String {
    format!("{prefix}rep:{}", target.member())
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
