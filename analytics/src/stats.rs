//! `GET /v1/stats`: counts and rates over time, for the caller's account (operators may
//! look at one account or all), grouped by provider, recipient domain, IP pool, source
//! IP, campaign or tag, and filtered by any of them.
//!
//! Counting reads the cheapest table that can answer: the per-minute rollup when only
//! provider, pool and IP are involved, the campaign rollup for campaigns, and `events`
//! itself for domains and tags. All three count distinct event ids, so a redelivered
//! event never counts twice and the answers agree with each other.

use crate::{messages::time_param, AppState};
use axum::{extract::State, Json};
use clickhouse::Row;
use sendmill_platform::{api::ApiError, body::QueryParams};
use sendmill_store::Scope;
use sendmill_tenancy::auth::Caller;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

/// Points a series may hold; a wider window needs a coarser interval.
const MAX_POINTS: i64 = 2_000;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// RFC 3339; default: 24 hours before `to`.
    pub from: Option<String>,
    /// RFC 3339; default: now.
    pub to: Option<String>,
    /// `minute`, `hour` or `day`; default: the finest that keeps the series short.
    pub interval: Option<String>,
    /// `provider`, `domain`, `pool`, `ip`, `campaign` or `tag`; default: no grouping.
    pub group_by: Option<String>,
    pub provider: Option<String>,
    pub domain: Option<String>,
    pub pool: Option<String>,
    pub ip: Option<String>,
    pub campaign_id: Option<String>,
    pub tag: Option<String>,
    /// Operators only: one account's figures (default: every account's).
    pub account_id: Option<String>,
}

/// A dimension stats can be grouped or filtered by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dimension {
    Provider,
    Domain,
    Pool,
    Ip,
    Campaign,
    Tag,
}

impl Dimension {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "provider" => Self::Provider,
            "domain" => Self::Domain,
            "pool" => Self::Pool,
            "ip" => Self::Ip,
            "campaign" => Self::Campaign,
            "tag" => Self::Tag,
            _ => return None,
        })
    }

    /// The column in `events`; tags are an array, unrolled when grouping.
    fn column(self) -> &'static str {
        match self {
            Self::Provider => "provider",
            Self::Domain => "recipient_domain",
            Self::Pool => "ip_pool",
            Self::Ip => "source_ip",
            Self::Campaign => "campaign_id",
            Self::Tag => "tags",
        }
    }
}

/// Which table answers, and how it counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    EventsMinute,
    CampaignMinute,
    Events,
}

impl Source {
    fn pick(dimensions: &[Dimension]) -> Self {
        use Dimension::*;
        if dimensions.iter().all(|d| matches!(d, Provider | Pool | Ip)) {
            Source::EventsMinute
        } else if dimensions.iter().all(|d| *d == Campaign) {
            Source::CampaignMinute
        } else {
            Source::Events
        }
    }
}

#[derive(Debug, Row, Deserialize)]
struct CountRow {
    bucket: u32,
    key: String,
    event_type: String,
    events: u64,
    messages: u64,
}

/// Counts by event type; `unique_opened` and `unique_clicked` count messages, the rest
/// count events.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub accepted: u64,
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
    pub expired: u64,
    pub dropped: u64,
    pub failed: u64,
    pub render_failed: u64,
    pub complained: u64,
    /// Bounces that came back by mail after delivery (see `sendmill_wire::EventType::AsyncBounced`).
    #[serde(default)]
    pub async_bounced: u64,
    /// Automatic replies (out of office, challenge-response).
    #[serde(default)]
    pub auto_replied: u64,
    pub opened: u64,
    pub clicked: u64,
    pub unsubscribed: u64,
    pub unique_opened: u64,
    pub unique_clicked: u64,
}

impl Counts {
    fn add(&mut self, event_type: &str, events: u64, messages: u64) {
        let slot = match event_type {
            "accepted" => &mut self.accepted,
            "delivered" => &mut self.delivered,
            "deferred" => &mut self.deferred,
            "bounced" => &mut self.bounced,
            "expired" => &mut self.expired,
            "dropped" => &mut self.dropped,
            "failed" => &mut self.failed,
            "render_failed" => &mut self.render_failed,
            "complained" => &mut self.complained,
            "async_bounced" => &mut self.async_bounced,
            "auto_replied" => &mut self.auto_replied,
            "opened" => {
                self.unique_opened += messages;
                &mut self.opened
            }
            "clicked" => {
                self.unique_clicked += messages;
                &mut self.clicked
            }
            "unsubscribed" => &mut self.unsubscribed,
            _ => return,
        };
        *slot += events;
    }

    /// Messages whose delivery ended at a receiver or by giving up: the denominator of
    /// the delivery and bounce rates.
    pub fn sent(&self) -> u64 {
        self.delivered + self.bounced + self.expired
    }

    /// Rates over [`Counts::sent`]. A message that bounced asynchronously was counted
    /// delivered at its 250 and is moved to the bounce rate here, so delivery and bounce
    /// rates still add up to at most 1.
    pub fn rates(&self) -> Rates {
        let ratio = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
        let async_bounced = self.async_bounced.min(self.delivered);
        Rates {
            delivery: ratio(self.delivered - async_bounced, self.sent()),
            bounce: ratio(self.bounced + async_bounced, self.sent()),
            deferral: ratio(self.deferred, self.deferred + self.sent()),
            complaint: ratio(self.complained, self.delivered),
            open: ratio(self.unique_opened, self.delivered),
            click: ratio(self.unique_clicked, self.delivered),
        }
    }
}

/// Ratios in 0..=1 (0 when the denominator is 0).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    /// delivered / sent (sent = delivered + bounced + expired).
    pub delivery: f64,
    /// bounced / sent.
    pub bounce: f64,
    /// deferred attempts / (deferred attempts + sent).
    pub deferral: f64,
    /// complained / delivered.
    pub complaint: f64,
    /// messages opened / delivered.
    pub open: f64,
    /// messages clicked / delivered.
    pub click: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Point {
    /// Start of the interval, RFC 3339.
    pub t: String,
    pub counts: Counts,
    pub rates: Rates,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Group {
    /// The group's value (`""` when not grouped, or when the dimension was unknown, such
    /// as the provider of a message never sent).
    pub key: String,
    pub counts: Counts,
    pub rates: Rates,
    pub series: Vec<Point>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatsReport {
    pub from: String,
    pub to: String,
    pub interval: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub group_by: Option<String>,
    /// Every group, largest volume first.
    pub groups: Vec<Group>,
    /// All groups together.
    pub totals: Counts,
    pub rates: Rates,
}

/// Whose events a query may see.
#[derive(Clone, Copy, Debug)]
pub enum Visibility {
    Account(uuid::Uuid),
    Everyone,
}

impl Visibility {
    /// The caller's account; an operator may name one account or see them all.
    pub fn of(caller: &Caller, requested: Option<&str>) -> Result<Self, ApiError> {
        let operator = caller.0.operator && caller.0.has(Scope::Admin);
        match requested {
            None if operator => Ok(Self::Everyone),
            None => Ok(Self::Account(caller.0.account_id.0)),
            Some(_) if !operator => Err(ApiError::invalid(
                "account_id",
                "only operators may name an account",
            )),
            requested => Self::for_operator(requested),
        }
    }

    /// What an operator asked for: one account, or every account.
    pub fn for_operator(requested: Option<&str>) -> Result<Self, ApiError> {
        match requested {
            None => Ok(Self::Everyone),
            Some(id) => id
                .parse()
                .map(Self::Account)
                .map_err(|_| ApiError::invalid("account_id", "not an account id")),
        }
    }
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<QueryParams<StatsQuery>, ApiError>,
) -> Result<Json<StatsReport>, ApiError> {
    caller.require(Scope::Stats)?;
    let QueryParams(query) = query?;
    let visibility = Visibility::of(&caller, query.account_id.as_deref())?;
    report(&state.clickhouse, visibility, &query)
        .await
        .map(Json)
}

/// `?account_id=` of `GET /v1/stats/pending` (operators only).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingQuery {
    pub account_id: Option<String>,
}

/// `GET /v1/stats/pending`: the caller's accepted messages without an outcome, in flight
/// and overdue, by lane and stage (see [`crate::outcomes`]).
pub async fn pending(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<QueryParams<PendingQuery>, ApiError>,
) -> Result<Json<crate::outcomes::PendingReport>, ApiError> {
    caller.require(Scope::Stats)?;
    let QueryParams(query) = query?;
    let visibility = Visibility::of(&caller, query.account_id.as_deref())?;
    let rows = crate::outcomes::pending(
        &state.clickhouse,
        visibility,
        &state.outcomes,
        OffsetDateTime::now_utc(),
    )
    .await
    .map_err(|error| {
        tracing::warn!(%error, "ClickHouse cannot count messages without an outcome");
        ApiError::unavailable("the event store")
    })?;
    Ok(Json(crate::outcomes::PendingReport::new(
        rows,
        &state.outcomes,
    )))
}

fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// The validated shape of a query.
struct Plan {
    from: i64,
    to: i64,
    interval_name: &'static str,
    interval_secs: i64,
    group_by: Option<Dimension>,
    filters: Vec<(Dimension, String)>,
}

fn plan(query: &StatsQuery) -> Result<Plan, ApiError> {
    let to = time_param("to", query.to.as_deref())?.unwrap_or_else(OffsetDateTime::now_utc);
    let from = time_param("from", query.from.as_deref())?.unwrap_or(to - time::Duration::DAY);
    let (from, to) = (from.unix_timestamp(), to.unix_timestamp());
    if from >= to {
        return Err(ApiError::invalid("from", "must be before `to`"));
    }
    let span = to - from;
    let (interval_name, interval_secs) = match query.interval.as_deref() {
        Some("minute") => ("minute", 60),
        Some("hour") => ("hour", 3_600),
        Some("day") => ("day", 86_400),
        Some(_) => return Err(ApiError::invalid("interval", "must be minute, hour or day")),
        None if span <= 6 * 3_600 => ("minute", 60),
        None if span <= 60 * 86_400 => ("hour", 3_600),
        None => ("day", 86_400),
    };
    if span / interval_secs > MAX_POINTS {
        return Err(ApiError::invalid(
            "interval",
            format!("the window holds more than {MAX_POINTS} intervals; choose a coarser one"),
        ));
    }
    let group_by = query
        .group_by
        .as_deref()
        .map(|g| {
            Dimension::parse(g).ok_or_else(|| {
                ApiError::invalid(
                    "group_by",
                    "must be provider, domain, pool, ip, campaign or tag",
                )
            })
        })
        .transpose()?;
    let filters = [
        (Dimension::Provider, &query.provider),
        (Dimension::Domain, &query.domain),
        (Dimension::Pool, &query.pool),
        (Dimension::Ip, &query.ip),
        (Dimension::Campaign, &query.campaign_id),
        (Dimension::Tag, &query.tag),
    ]
    .into_iter()
    .filter_map(|(d, v)| v.as_ref().map(|v| (d, v.clone())))
    .collect();
    Ok(Plan {
        from,
        to,
        interval_name,
        interval_secs,
        group_by,
        filters,
    })
}

/// The report for one visibility; shared by the API and the dashboards.
pub async fn report(
    client: &clickhouse::Client,
    visibility: Visibility,
    query: &StatsQuery,
) -> Result<StatsReport, ApiError> {
    let plan = plan(query)?;
    let series = count(client, visibility, &plan, Some(plan.interval_secs)).await?;
    // Totals are counted again over the whole window: distinct messages (unique opens)
    // do not add up across intervals.
    let totals = count(client, visibility, &plan, None).await?;

    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for row in &totals {
        let group = groups.entry(row.key.clone()).or_insert_with(|| Group {
            key: row.key.clone(),
            counts: Counts::default(),
            rates: Rates::default(),
            series: Vec::new(),
        });
        group.counts.add(&row.event_type, row.events, row.messages);
    }
    let mut points: BTreeMap<(String, u32), Counts> = BTreeMap::new();
    for row in &series {
        points
            .entry((row.key.clone(), row.bucket))
            .or_default()
            .add(&row.event_type, row.events, row.messages);
    }
    for ((key, bucket), counts) in points {
        if let Some(group) = groups.get_mut(&key) {
            group.series.push(Point {
                t: rfc3339(i64::from(bucket)),
                rates: counts.rates(),
                counts,
            });
        }
    }
    let mut groups: Vec<Group> = groups
        .into_values()
        .map(|mut g| {
            g.rates = g.counts.rates();
            g
        })
        .collect();
    groups.sort_by(|a, b| {
        (b.counts.accepted + b.counts.sent())
            .cmp(&(a.counts.accepted + a.counts.sent()))
            .then_with(|| a.key.cmp(&b.key))
    });
    // A message with two tags is in two groups; the totals count it once.
    let total_rows = if plan.group_by == Some(Dimension::Tag) {
        let ungrouped = Plan {
            group_by: None,
            filters: plan.filters.clone(),
            ..plan
        };
        count(client, visibility, &ungrouped, None).await?
    } else {
        totals
    };
    let mut all = Counts::default();
    for row in &total_rows {
        all.add(&row.event_type, row.events, row.messages);
    }
    Ok(StatsReport {
        from: rfc3339(plan.from),
        to: rfc3339(plan.to),
        interval: plan.interval_name.to_owned(),
        group_by: query.group_by.clone(),
        rates: all.rates(),
        totals: all,
        groups,
    })
}

/// One query: distinct events and messages per (bucket, group key, event type). With no
/// `bucket_secs`, the whole window is one bucket (0).
async fn count(
    client: &clickhouse::Client,
    visibility: Visibility,
    plan: &Plan,
    bucket_secs: Option<i64>,
) -> Result<Vec<CountRow>, ApiError> {
    let mut dimensions: Vec<Dimension> = plan.filters.iter().map(|(d, _)| *d).collect();
    dimensions.extend(plan.group_by);
    let source = Source::pick(&dimensions);
    let (table, time_column, events_expr, messages_expr) = match source {
        Source::EventsMinute => (
            "events_minute",
            "minute",
            "uniqExactMerge(events)",
            "uniqExactMerge(messages)",
        ),
        Source::CampaignMinute => (
            "campaign_minute",
            "minute",
            "uniqExactMerge(events)",
            "uniqExactMerge(messages)",
        ),
        Source::Events => (
            "events",
            "occurred_at",
            "uniqExact(event_id)",
            "uniqExact(message_id)",
        ),
    };
    let bucket = match bucket_secs {
        Some(secs) => format!("toUInt32(intDiv(toUInt32({time_column}), {secs}) * {secs})"),
        None => "toUInt32(0)".to_owned(),
    };
    let key = match plan.group_by {
        None => "''".to_owned(),
        Some(Dimension::Tag) => "arrayJoin(tags)".to_owned(),
        Some(d) => d.column().to_owned(),
    };
    let mut conditions = vec![format!(
        "{time_column} >= toDateTime(?) AND {time_column} < toDateTime(?)"
    )];
    if let Visibility::Account(_) = visibility {
        conditions.push("account_id = toUUID(?)".into());
    }
    for (dimension, _) in &plan.filters {
        conditions.push(match dimension {
            Dimension::Tag => "has(tags, ?)".to_owned(),
            d => format!("{} = ?", d.column()),
        });
    }
    // Aliases differ from column names: 18.16 would substitute them into WHERE.
    let sql = format!(
        "SELECT {bucket} AS bucket, {key} AS key, event_type, \
                {events_expr} AS events, {messages_expr} AS messages \
         FROM {table} WHERE {conditions} \
         GROUP BY bucket, key, event_type ORDER BY bucket, key",
        conditions = conditions.join(" AND "),
    );
    let mut q = client.query(&sql).bind(plan.from).bind(plan.to);
    if let Visibility::Account(id) = visibility {
        q = q.bind(id.to_string());
    }
    for (_, value) in &plan.filters {
        q = q.bind(value.as_str());
    }
    q.fetch_all().await.map_err(|error| {
        tracing::error!(%error, "stats query failed");
        ApiError::unavailable("the event store")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cheapest_table_that_can_answer_is_read() {
        use Dimension::*;
        assert_eq!(Source::pick(&[]), Source::EventsMinute);
        assert_eq!(Source::pick(&[Provider, Ip]), Source::EventsMinute);
        assert_eq!(Source::pick(&[Campaign]), Source::CampaignMinute);
        assert_eq!(Source::pick(&[Campaign, Provider]), Source::Events);
        assert_eq!(Source::pick(&[Domain]), Source::Events);
        assert_eq!(Source::pick(&[Tag]), Source::Events);
    }

    #[test]
    fn rates_divide_by_what_was_sent_and_never_by_zero() {
        let mut c = Counts::default();
        assert_eq!(c.rates(), Rates::default());
        c.add("delivered", 8, 8);
        c.add("bounced", 1, 1);
        c.add("expired", 1, 1);
        c.add("deferred", 10, 4);
        c.add("opened", 9, 4);
        c.add("complained", 2, 2);
        let r = c.rates();
        assert_eq!(r.delivery, 0.8);
        assert_eq!(r.bounce, 0.1);
        assert_eq!(r.deferral, 0.5);
        assert_eq!(r.open, 0.5);
        assert_eq!(r.complaint, 0.25);
        assert_eq!(c.opened, 9);
    }

    #[test]
    fn windows_too_long_for_the_interval_are_refused() {
        let query = StatsQuery {
            from: Some("2026-01-01T00:00:00Z".into()),
            to: Some("2026-03-01T00:00:00Z".into()),
            interval: Some("minute".into()),
            ..StatsQuery::default()
        };
        assert!(plan(&query).is_err());
        let auto = StatsQuery {
            interval: None,
            ..query
        };
        assert_eq!(plan(&auto).unwrap().interval_name, "hour");
    }
}
