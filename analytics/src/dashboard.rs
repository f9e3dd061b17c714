//! The operations dashboard at `/dashboard`: volume and delivery, deferral, bounce and
//! complaint rates over time by provider, IP and pool; top bounce reasons; campaign
//! funnels; stage throughput and accept-to-delivery latency; paused IPs and accounts
//! with a resume button. Charts are drawn by uPlot (vendored from npm) from the JSON
//! endpoints under `/dashboard/api/`.
//!
//! Only operators get in: the login form takes an operator API key (an operator
//! account's key with the `admin` scope) and sets a session cookie holding the key's id
//! and an expiry, signed with HMAC-SHA256. Every request re-checks that the key is still
//! an unrevoked operator key. The cookie is `HttpOnly` and `SameSite=Strict`, and
//! changing requests also need the `X-Sendmill-Dashboard` header, which no other site's
//! page can send, so a forged cross-site form cannot resume anything.

use crate::{
    stats::{self, StatsQuery, Visibility},
    AppState,
};
use aws_lc_rs::{constant_time, hmac};
use axum::{
    body::Bytes,
    extract::{FromRequestParts, State},
    http::{header, request::Parts, StatusCode},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
    Json, Router,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use clickhouse::Row;
use sendmill_platform::{api::ApiError, body::QueryParams};
use sendmill_tenancy::pauses::{self, Target};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

const COOKIE: &str = "sendmill_dashboard";
const SESSION_HOURS: i64 = 8;
const CSRF_HEADER: &str = "x-sendmill-dashboard";

static PAGE: &str = include_str!("../assets/dashboard.html");
static SCRIPT: &str = include_str!("../assets/dashboard.js");
static UPLOT_JS: &str = include_str!("../assets/vendor/uplot/uPlot.iife.min.js");
static ICON: &str = include_str!("../assets/icon.svg");
static UPLOT_CSS: &str = include_str!("../assets/vendor/uplot/uPlot.min.css");

/// Signs and checks session cookies.
#[derive(Clone)]
pub struct Sessions {
    key: hmac::Key,
}

impl Sessions {
    /// `secret` empty: a random key (sessions end when the process does, and each
    /// analytics process has its own).
    pub fn new(secret: &str) -> Self {
        let key = if secret.is_empty() {
            let random: [u8; 32] = rand::random();
            hmac::Key::new(hmac::HMAC_SHA256, &random)
        } else {
            hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())
        };
        Self { key }
    }

    fn issue(&self, key_id: uuid::Uuid, now: OffsetDateTime) -> String {
        let expires = (now + time::Duration::hours(SESSION_HOURS)).unix_timestamp();
        let claims = format!("{key_id}.{expires}");
        let tag = hmac::sign(&self.key, claims.as_bytes());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&claims),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// The key id of a valid, unexpired session token.
    fn check(&self, token: &str, now: OffsetDateTime) -> Option<uuid::Uuid> {
        let (claims, tag) = token.split_once('.')?;
        let claims = URL_SAFE_NO_PAD.decode(claims).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let expected = hmac::sign(&self.key, &claims);
        constant_time::verify_slices_are_equal(expected.as_ref(), &tag).ok()?;
        let claims = String::from_utf8(claims).ok()?;
        let (key_id, expires) = claims.split_once('.')?;
        (expires.parse::<i64>().ok()? > now.unix_timestamp()).then_some(())?;
        key_id.parse().ok()
    }
}

/// An operator with a valid dashboard session.
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let token = sendmill_platform::http::cookie(&parts.headers, COOKIE);
        let key_id = token.and_then(|t| state.sessions.check(&t, OffsetDateTime::now_utc()));
        let allowed = match key_id {
            Some(id) => state.store.operator_key_active(id).await.map_err(|error| {
                tracing::error!(%error, "dashboard session check failed");
                ApiError::unavailable("the tenant database").into_response()
            })?,
            None => false,
        };
        if !allowed {
            return Err(if parts.uri.path().starts_with("/dashboard/api/") {
                ApiError::unauthorized().into_response()
            } else {
                Redirect::to("/dashboard/login").into_response()
            });
        }
        if parts.method != axum::http::Method::GET && !parts.headers.contains_key(CSRF_HEADER) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "changes need the X-Sendmill-Dashboard header",
            )
            .into_response());
        }
        Ok(Operator)
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/login", get(login_form).post(login))
        .route("/dashboard/logout", post(logout))
        .route(
            "/dashboard/assets/dashboard.js",
            get(|| asset(SCRIPT, "text/javascript")),
        )
        .route(
            "/dashboard/assets/uplot.js",
            get(|| asset(UPLOT_JS, "text/javascript")),
        )
        .route(
            "/dashboard/assets/uplot.css",
            get(|| asset(UPLOT_CSS, "text/css")),
        )
        .route(
            "/dashboard/assets/icon.svg",
            get(|| asset(ICON, "image/svg+xml")),
        )
        .route("/dashboard/api/stats", get(api_stats))
        .route("/dashboard/api/bounces", get(api_bounces))
        .route("/dashboard/api/campaigns", get(api_campaigns))
        .route("/dashboard/api/inbound", get(api_inbound))
        .route("/dashboard/api/pipeline", get(api_pipeline))
        .route("/dashboard/api/pending", get(api_pending))
        .route("/dashboard/api/paused", get(api_paused))
        .route("/dashboard/api/resume", post(api_resume))
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

fn secure_headers() -> [(header::HeaderName, &'static str); 3] {
    [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ]
}

async fn page(_: Operator) -> Response {
    (secure_headers(), Html(PAGE)).into_response()
}

async fn login_form() -> Response {
    let form = r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sendmill · sign in</title><link rel="icon" href="/dashboard/assets/icon.svg">
<style>body{font:15px system-ui,sans-serif;background:#f4f5f7;display:grid;place-items:center;height:100vh;margin:0}
form{background:#fff;padding:2rem;border-radius:8px;box-shadow:0 1px 4px #0002;width:22rem}
input{width:100%;box-sizing:border-box;padding:.5rem;margin:.5rem 0 1rem;font:inherit}
button{padding:.5rem 1rem;font:inherit;background:#2457c5;color:#fff;border:0;border-radius:4px}</style></head>
<body><form method="post" action="/dashboard/login"><h1>Sendmill operations</h1>
<label for="key">Operator API key</label><input id="key" name="key" type="password" autocomplete="off" required>
<button type="submit">Sign in</button></form></body></html>"#;
    (secure_headers(), Html(form)).into_response()
}

async fn login(State(state): State<AppState>, body: Bytes) -> Response {
    let key = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "key")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let principal = match state.auth.authenticate(key.trim()).await {
        Ok(p) if p.operator && p.has(sendmill_store::Scope::Admin) => p,
        Ok(_) | Err(_) => {
            return (
                StatusCode::UNAUTHORIZED,
                secure_headers(),
                Html("<p>Not an operator key. <a href=\"/dashboard/login\">Try again</a></p>"),
            )
                .into_response()
        }
    };
    let token = state
        .sessions
        .issue(principal.key_id, OffsetDateTime::now_utc());
    let cookie = format!(
        "{COOKIE}={token}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_HOURS * 3600
    );
    tracing::info!(key = %principal.key_prefix, "dashboard sign-in");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/dashboard")).into_response()
}

async fn logout() -> Response {
    let cookie = format!("{COOKIE}=; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=0");
    (
        [(header::SET_COOKIE, cookie)],
        Redirect::to("/dashboard/login"),
    )
        .into_response()
}

async fn api_stats(
    _: Operator,
    State(state): State<AppState>,
    query: Result<QueryParams<StatsQuery>, ApiError>,
) -> Result<Json<stats::StatsReport>, ApiError> {
    let QueryParams(query) = query?;
    let visibility = Visibility::for_operator(query.account_id.as_deref())?;
    stats::report(&state.clickhouse, visibility, &query)
        .await
        .map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Window {
    /// Minutes back from now (default 60).
    minutes: Option<u32>,
}

impl Window {
    fn since(&self) -> i64 {
        let minutes = i64::from(self.minutes.unwrap_or(60).clamp(1, 60 * 24 * 31));
        OffsetDateTime::now_utc().unix_timestamp() - minutes * 60
    }
}

fn unavailable(error: clickhouse::error::Error) -> ApiError {
    tracing::error!(%error, "dashboard query failed");
    ApiError::unavailable("the event store")
}

#[derive(Debug, Row, Serialize, Deserialize)]
struct BounceReason {
    bounce_category: String,
    smtp_code: u16,
    smtp_enhanced: String,
    example: String,
    count: u64,
}

async fn api_bounces(
    _: Operator,
    State(state): State<AppState>,
    QueryParams(window): QueryParams<Window>,
) -> Result<Json<Vec<BounceReason>>, ApiError> {
    state
        .clickhouse
        .query(
            "SELECT bounce_category, smtp_code, smtp_enhanced, any(smtp_reply) AS example,
                    uniqExact(event_id) AS count
             FROM events WHERE event_type IN ('bounced', 'async_bounced') AND occurred_at >= toDateTime(?)
             GROUP BY bounce_category, smtp_code, smtp_enhanced
             ORDER BY count DESC LIMIT 10",
        )
        .bind(window.since())
        .fetch_all()
        .await
        .map(Json)
        .map_err(unavailable)
}

/// Returned mail the inbound stage turned into events, by kind and bounce category.
#[derive(Debug, Row, Serialize, Deserialize)]
struct InboundKind {
    event_type: String,
    bounce_category: String,
    count: u64,
}

async fn api_inbound(
    _: Operator,
    State(state): State<AppState>,
    QueryParams(window): QueryParams<Window>,
) -> Result<Json<Vec<InboundKind>>, ApiError> {
    state
        .clickhouse
        .query(
            "SELECT event_type, bounce_category, uniqExact(event_id) AS count
             FROM events WHERE stage = 'inbound' AND occurred_at >= toDateTime(?)
             GROUP BY event_type, bounce_category
             ORDER BY count DESC LIMIT 50",
        )
        .bind(window.since())
        .fetch_all()
        .await
        .map(Json)
        .map_err(unavailable)
}

#[derive(Debug, Row, Serialize, Deserialize)]
struct Funnel {
    campaign_id: String,
    accepted: u64,
    delivered: u64,
    bounced: u64,
    opened: u64,
    clicked: u64,
    unsubscribed: u64,
    complained: u64,
}

async fn api_campaigns(
    _: Operator,
    State(state): State<AppState>,
    QueryParams(window): QueryParams<Window>,
) -> Result<Json<Vec<Funnel>>, ApiError> {
    // Distinct messages at each step: a message opened twice counts once.
    state
        .clickhouse
        .query(
            "SELECT campaign_id,
                    uniqExactMergeIf(messages, event_type = 'accepted') AS accepted,
                    uniqExactMergeIf(messages, event_type = 'delivered') AS delivered,
                    uniqExactMergeIf(messages, event_type IN ('bounced', 'async_bounced')) AS bounced,
                    uniqExactMergeIf(messages, event_type = 'opened') AS opened,
                    uniqExactMergeIf(messages, event_type = 'clicked') AS clicked,
                    uniqExactMergeIf(messages, event_type = 'unsubscribed') AS unsubscribed,
                    uniqExactMergeIf(messages, event_type = 'complained') AS complained
             FROM campaign_minute WHERE minute >= toDateTime(?)
             GROUP BY campaign_id ORDER BY accepted DESC LIMIT 20",
        )
        .bind(window.since())
        .fetch_all()
        .await
        .map(Json)
        .map_err(unavailable)
}

#[derive(Debug, Row, Serialize, Deserialize)]
struct StageMinute {
    minute: u32,
    stage: String,
    events: u64,
}

#[derive(Debug, Row, Serialize, Deserialize)]
struct LatencyMinute {
    minute: u32,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct PipelineView {
    throughput: Vec<StageMinute>,
    latency: Vec<LatencyMinute>,
}

async fn api_pipeline(
    _: Operator,
    State(state): State<AppState>,
    QueryParams(window): QueryParams<Window>,
) -> Result<Json<PipelineView>, ApiError> {
    let since = window.since();
    let throughput = state
        .clickhouse
        .query(
            "SELECT toUInt32(intDiv(toUInt32(occurred_at), 60) * 60) AS minute, stage,
                    uniqExact(event_id) AS events
             FROM events WHERE occurred_at >= toDateTime(?)
             GROUP BY minute, stage ORDER BY minute",
        )
        .bind(since)
        .fetch_all()
        .await
        .map_err(unavailable)?;
    // Accept-to-outcome time of the messages whose outcome came in each minute.
    let latency = state
        .clickhouse
        .query(
            "SELECT toUInt32(intDiv(intDiv(ended, 1000), 60) * 60) AS minute,
                    quantile(0.5)(ended - started) AS p50_ms,
                    quantile(0.95)(ended - started) AS p95_ms,
                    quantile(0.99)(ended - started) AS p99_ms
             FROM (
                 SELECT message_id,
                        minIf(occurred_at_ms, event_type = 'accepted') AS started,
                        minIf(occurred_at_ms, event_type IN ('delivered', 'bounced', 'expired')) AS ended
                 FROM events WHERE occurred_at >= toDateTime(?)
                 GROUP BY message_id
                 HAVING started > 0 AND ended >= started)
             GROUP BY minute ORDER BY minute",
        )
        .bind(since)
        .fetch_all()
        .await
        .map_err(unavailable)?;
    Ok(Json(PipelineView {
        throughput,
        latency,
    }))
}

/// Accepted messages without an outcome, every account (see [`crate::outcomes`]).
async fn api_pending(
    _: Operator,
    State(state): State<AppState>,
) -> Result<Json<crate::outcomes::PendingReport>, ApiError> {
    let rows = crate::outcomes::pending(
        &state.clickhouse,
        crate::stats::Visibility::Everyone,
        &state.outcomes,
        OffsetDateTime::now_utc(),
    )
    .await
    .map_err(unavailable)?;
    Ok(Json(crate::outcomes::PendingReport::new(
        rows,
        &state.outcomes,
    )))
}

#[derive(Debug, Serialize)]
struct PausedView {
    paused: Vec<PausedTarget>,
    alerts: Vec<sendmill_store::alerts::Alert>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PausedTarget {
    member: String,
    reason: String,
}

async fn api_paused(
    _: Operator,
    State(state): State<AppState>,
) -> Result<Json<PausedView>, ApiError> {
    let mut redis = state.redis.clone();
    let paused = pauses::list(&mut redis, &state.redis_prefix)
        .await
        .map_err(|error| {
            tracing::error!(%error, "cannot read pause flags");
            ApiError::unavailable("Redis")
        })?
        .into_iter()
        .map(|(member, reason)| PausedTarget { member, reason })
        .collect();
    let alerts = state.store.alerts(20).await.map_err(ApiError::from)?;
    Ok(Json(PausedView { paused, alerts }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeRequest {
    /// `ip:<address>`, `pool:<name>` or `account:<id>`.
    member: String,
}

fn target(member: &str) -> Option<(Target, &'static str, String)> {
    let (kind, value) = member.split_once(':')?;
    match kind {
        "ip" => Some((Target::Ip(value.parse().ok()?), "ip", value.to_owned())),
        "pool" if !value.is_empty() => {
            Some((Target::Pool(value.to_owned()), "pool", value.to_owned()))
        }
        "account" => Some((
            Target::Account(value.parse().ok()?),
            "account",
            value.to_owned(),
        )),
        _ => None,
    }
}

async fn api_resume(
    _: Operator,
    State(state): State<AppState>,
    body: sendmill_platform::body::JsonBody<ResumeRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (target, kind, subject) = target(&body.value.member).ok_or_else(|| {
        ApiError::invalid(
            "member",
            "must be ip:<address>, pool:<name> or account:<id>",
        )
    })?;
    let mut redis = state.redis.clone();
    let was_paused = pauses::resume(&mut redis, &state.redis_prefix, &target)
        .await
        .map_err(|error| {
            tracing::error!(%error, "cannot resume");
            ApiError::unavailable("Redis")
        })?;
    state
        .store
        .resolve_alerts(kind, &subject)
        .await
        .map_err(ApiError::from)?;
    tracing::info!(member = %body.value.member, "resumed from the dashboard");
    Ok(Json(serde_json::json!({"resumed": was_paused})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_signed_and_expire() {
        let sessions = Sessions::new("a secret for tests");
        let id = uuid::Uuid::now_v7();
        let now = OffsetDateTime::now_utc();
        let token = sessions.issue(id, now);
        assert_eq!(sessions.check(&token, now), Some(id));
        assert_eq!(sessions.check(&token, now + time::Duration::hours(9)), None);
        assert_eq!(Sessions::new("another").check(&token, now), None);
        let (claims, tag) = token.split_once('.').unwrap();
        let forged = format!(
            "{}.{tag}",
            URL_SAFE_NO_PAD.encode(format!("{}.{}", uuid::Uuid::now_v7(), i64::MAX))
        );
        assert_eq!(sessions.check(&forged, now), None);
        assert!(sessions.check(&format!("{claims}."), now).is_none());
    }

    #[test]
    fn resume_targets_parse_strictly() {
        assert!(matches!(
            target("ip:127.0.0.9"),
            Some((Target::Ip(_), "ip", _))
        ));
        assert!(target("ip:not-an-ip").is_none());
        assert!(target("pool:").is_none());
        assert!(target("colour:blue").is_none());
    }
}
