//! `/v1/domains`: the domains an account sends from. Adding one generates its DKIM keys
//! (RSA-2048 and Ed25519) and answers with every DNS record to publish; `verify` looks
//! them up (hickory-resolver, no cache) and records what it found. Until a domain is
//! verified, mail from it is refused (unless `allow_unverified_domains` is set).
//!
//! The records: DKIM TXT at `<selector>._domainkey.<domain>`; the return path
//! `bounces.<domain>` with an MX to the platform's bounce host and an SPF TXT that
//! includes the platform's SPF record (SPF is checked against the envelope sender, which
//! is the return path, and aligns with the From domain under relaxed DMARC); and a DMARC
//! policy at `_dmarc.<domain>`.

use crate::{body::JsonBody, validate, AppState};
use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use hickory_resolver::proto::rr::RData;
use sendmill_platform::{
    api::ApiError,
    dns::{no_records, TokioResolver},
};
use sendmill_store::{Scope, SendingDomain, StoreError};
use sendmill_tenancy::auth::Caller;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use time::OffsetDateTime;

/// `[ingest.domains]`: what tenants' DNS must point at.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DomainsConfig {
    /// DNS servers `ip:port` used to verify records; empty: the system's resolv.conf.
    pub nameservers: Vec<String>,
    /// The SPF record tenants include (`include:<this>`), listing the sending IPs.
    pub spf_include: String,
    /// The host tenants' return-path domains point their MX at (bounce processing).
    pub return_path_host: String,
    /// DKIM selector of new domains.
    pub dkim_selector: String,
    /// How long each DNS query of a verification may take.
    #[serde(with = "sendmill_platform::config::duration")]
    pub dns_timeout: Duration,
}

impl Default for DomainsConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            spf_include: "_spf.sendmill.invalid".into(),
            return_path_host: "bounces.sendmill.invalid".into(),
            dkim_selector: "sm1".into(),
            dns_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddDomain {
    pub domain: String,
}

/// One DNS record to publish, and what verification found for it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DnsRecord {
    /// `dkim`, `dkim_ed25519`, `dkim_next` (a rotation's staged key), `return_path`, `spf` or
    /// `dmarc`.
    pub purpose: String,
    #[serde(rename = "type")]
    pub record_type: String,
    pub name: String,
    pub value: String,
    /// Whether verification needs it (Ed25519 only when dual signing is on).
    pub required: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Check {
    pub purpose: String,
    pub ok: bool,
    /// What DNS answered (or why it could not).
    pub found: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DomainView {
    /// The domain as stored and used in DNS and DKIM `d=`: lower-case A-labels.
    pub domain: String,
    /// The same domain for people to read (U-labels); equal to `domain` when ASCII.
    pub domain_unicode: String,
    pub verified: bool,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub verified_at: Option<OffsetDateTime>,
    pub dual_sign: bool,
    pub return_path_domain: String,
    pub records: Vec<DnsRecord>,
    /// The last verification's findings, record by record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<Check>>,
}

pub fn records(domain: &SendingDomain, config: &DomainsConfig) -> Vec<DnsRecord> {
    let record = |purpose: &str, kind: &str, name: String, value: String, required| DnsRecord {
        purpose: purpose.into(),
        record_type: kind.into(),
        name,
        value,
        required,
    };
    let (dkim_name, dkim_value) = domain.dkim_record();
    let mut out = vec![record("dkim", "TXT", dkim_name, dkim_value, true)];
    if let Some((name, value)) = domain.dkim_records().into_iter().nth(1) {
        out.push(record("dkim_ed25519", "TXT", name, value, domain.dual_sign));
    }
    // A rotation's staged key: publish it before it is activated (not yet required).
    if let Some(next) = &domain.next_dkim {
        let (name, value) = next.dkim_record(&domain.domain);
        out.push(record("dkim_next", "TXT", name, value, false));
    }
    out.push(record(
        "return_path",
        "MX",
        domain.return_path_domain.clone(),
        format!("10 {}", config.return_path_host),
        true,
    ));
    out.push(record(
        "spf",
        "TXT",
        domain.return_path_domain.clone(),
        format!("v=spf1 include:{} ~all", config.spf_include),
        true,
    ));
    out.push(record(
        "dmarc",
        "TXT",
        format!("_dmarc.{}", domain.domain),
        format!("v=DMARC1; p=none; rua=mailto:dmarc@{}", domain.domain),
        true,
    ));
    out
}

fn view(domain: &SendingDomain, config: &DomainsConfig) -> DomainView {
    DomainView {
        domain: domain.domain.clone(),
        domain_unicode: validate::domain_unicode(&domain.domain),
        verified: domain.verified_at.is_some(),
        verified_at: domain.verified_at,
        dual_sign: domain.dual_sign,
        return_path_domain: domain.return_path_domain.clone(),
        records: records(domain, config),
        checks: domain
            .verification
            .clone()
            .and_then(|v| serde_json::from_value(v).ok()),
    }
}

pub async fn add(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<AddDomain>,
) -> Result<(StatusCode, Json<DomainView>), ApiError> {
    caller.require(Scope::Domains)?;
    // A U-label domain is accepted and stored as A-labels, the form DNS, DKIM `d=` and
    // the From header use; views show the Unicode form beside it.
    let name =
        validate::domain_name(&body.value.domain).map_err(|m| ApiError::invalid("domain", m))?;
    let config = &state.config.domains;
    let domain = match state
        .store
        .add_sending_domain(caller.0.account_id, &name, &config.dkim_selector)
        .await
    {
        Ok(d) => d,
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError {
                field: Some("domain".into()),
                ..ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!("{name} is already a sending domain of this account"),
                )
            })
        }
        Err(e) => return Err(e.into()),
    };
    Ok((StatusCode::CREATED, Json(view(&domain, config))))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<crate::keys::List<DomainView>>, ApiError> {
    caller.require(Scope::Domains)?;
    let domains = state
        .store
        .sending_domains(caller.0.account_id)
        .await
        .map_err(ApiError::from)?;
    Ok(Json(crate::keys::List {
        data: domains
            .iter()
            .map(|d| view(d, &state.config.domains))
            .collect(),
    }))
}

async fn find(state: &AppState, caller: &Caller, name: &str) -> Result<SendingDomain, ApiError> {
    state
        .store
        .sending_domain(caller.0.account_id, name)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found("sending domain"))
}

/// A domain named in a URL path, in either form: the stored A-label form when it is
/// a valid domain, otherwise as given (then it is not found).
fn path_domain(name: &str) -> String {
    validate::domain_name(name).unwrap_or_else(|_| name.to_owned())
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<DomainView>, ApiError> {
    caller.require(Scope::Domains)?;
    let name = path_domain(&name);
    let domain = find(&state, &caller, &name).await?;
    Ok(Json(view(&domain, &state.config.domains)))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Domains)?;
    let name = path_domain(&name);
    if state
        .store
        .delete_sending_domain(caller.0.account_id, &name)
        .await
        .map_err(ApiError::from)?
    {
        state.senders.forget(caller.0.account_id, &name);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("sending domain"))
    }
}

pub async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<DomainView>, ApiError> {
    caller.require(Scope::Domains)?;
    let name = path_domain(&name);
    let mut domain = find(&state, &caller, &name).await?;
    let config = &state.config.domains;
    let expected = records(&domain, config);
    let mut checks = Vec::with_capacity(expected.len());
    for record in &expected {
        checks.push((
            record.required,
            check(&state.resolver, record, config).await,
        ));
    }
    let verified = checks.iter().all(|(required, c)| c.ok || !required);
    let checks: Vec<Check> = checks.into_iter().map(|(_, c)| c).collect();
    let findings = serde_json::to_value(&checks).expect("checks serialize");
    domain.verified_at = state
        .store
        .record_verification(caller.0.account_id, &domain.domain, verified, &findings)
        .await
        .map_err(ApiError::from)?;
    domain.verification = Some(findings);
    Ok(Json(view(&domain, config)))
}

/// Looks one record up and compares it with what should be there.
async fn check(resolver: &TokioResolver, record: &DnsRecord, config: &DomainsConfig) -> Check {
    let name = format!("{}.", record.name.trim_end_matches('.'));
    let found: Result<Vec<String>, String> = if record.record_type == "MX" {
        match resolver.mx_lookup(name.as_str()).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some(format!(
                        "{} {}",
                        mx.preference,
                        mx.exchange.to_string().trim_end_matches('.')
                    )),
                    _ => None,
                })
                .collect()),
            Err(e) if no_records(&e).is_some() => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        }
    } else {
        sendmill_platform::dns::txt_records(resolver, &name)
            .await
            .map_err(|e| e.to_string())
    };
    let found = match found {
        Ok(found) => found,
        Err(error) => {
            return Check {
                purpose: record.purpose.clone(),
                ok: false,
                found: vec![format!("lookup failed: {error}")],
            }
        }
    };
    let compact = |s: &str| s.split_whitespace().collect::<String>();
    let ok = match record.purpose.as_str() {
        "dkim" | "dkim_ed25519" | "dkim_next" => {
            let key = record
                .value
                .split(';')
                .map(str::trim)
                .find_map(|tag| tag.strip_prefix("p="))
                .unwrap_or_default();
            found
                .iter()
                .any(|txt| sendmill_store::dkim::publishes_key(txt, key))
        }
        "return_path" => found.iter().any(|mx| {
            mx.split_whitespace()
                .nth(1)
                .is_some_and(|host| host.eq_ignore_ascii_case(&config.return_path_host))
        }),
        "spf" => found.iter().any(|txt| {
            txt.starts_with("v=spf1")
                && txt.split_whitespace().any(|term| {
                    term.trim_start_matches(['+', '~', '?'])
                        == format!("include:{}", config.spf_include)
                })
        }),
        "dmarc" => found
            .iter()
            .any(|txt| compact(txt).to_ascii_uppercase().starts_with("V=DMARC1")),
        _ => false,
    };
    Check {
        purpose: record.purpose.clone(),
        ok,
        found,
    }
}
