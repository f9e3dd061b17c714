//! A campaign's report, live while it sends: release progress from PostgreSQL, and the
//! funnel from ClickHouse's `campaign_stats` rollup (`deploy/clickhouse/0005_campaign_stats.sql`).
//! Every figure counts distinct messages (exact sets in the rollup), so a redelivered
//! event changes nothing and the report equals a direct count over `events FINAL`.
//! Opens and clicks are people's unless marked `machine` (privacy-proxy prefetches,
//! link scanners).

use crate::{
    api::load,
    model::{Campaign, Metric},
    Campaigns,
};
use axum::{
    extract::{Path, State},
    Json,
};
use clickhouse::Row;
use sendmill_audiences::contacts::{db_error, path_id};
use sendmill_platform::api::ApiError;
use sendmill_store::Scope;
use sendmill_tenancy::auth::Caller;
use sendmill_wire::AccountId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One A/B variant's figures over its test share.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VariantFigures {
    pub variant: String,
    pub released: i64,
    pub delivered: u64,
    /// Distinct messages opened by a person.
    pub unique_opens: u64,
    /// Distinct messages with a person's click.
    pub unique_clicks: u64,
    /// `unique_opens / released` (0 before any release).
    pub open_rate: f64,
    pub click_rate: f64,
}

#[derive(Debug, Row, Deserialize)]
struct CellRow {
    event_type: String,
    variant: String,
    bounce_category: String,
    machine: u8,
    messages: u64,
}

#[derive(Debug, Row, Deserialize)]
struct LinkRow {
    url: String,
    messages: u64,
    events: u64,
}

#[derive(Debug, Row, Deserialize)]
struct MinuteRow {
    minute: u32,
    event_type: String,
    messages: u64,
}

fn unavailable(error: clickhouse::error::Error) -> ApiError {
    tracing::error!(%error, "campaign stats");
    ApiError::unavailable("the analytics store")
}

async fn cells(
    state: &Campaigns,
    account: AccountId,
    campaign: &Campaign,
) -> Result<Vec<CellRow>, ApiError> {
    state
        .clickhouse
        .query(
            "SELECT event_type, variant, bounce_category, machine,
                    uniqExactMerge(messages) AS messages
             FROM campaign_stats WHERE account_id = toUUID(?) AND campaign_id = ?
             GROUP BY event_type, variant, bounce_category, machine",
        )
        .bind(account.to_string())
        .bind(campaign.id.to_string())
        .fetch_all::<CellRow>()
        .await
        .map_err(unavailable)
}

/// Each variant's figures over its test share (released from PostgreSQL, the rest
/// from ClickHouse), in variant order.
pub async fn variant_figures(
    state: &Campaigns,
    account: AccountId,
    campaign: &Campaign,
) -> Result<Vec<VariantFigures>, ApiError> {
    if campaign.input.ab_test.is_none() {
        return Ok(Vec::new());
    }
    let cells = cells(state, account, campaign).await?;
    figures_of(state, campaign, &cells).await
}

/// [`variant_figures`] from the campaign's rollup `cells`, already read.
async fn figures_of(
    state: &Campaigns,
    campaign: &Campaign,
    cells: &[CellRow],
) -> Result<Vec<VariantFigures>, ApiError> {
    let Some(ab) = &campaign.input.ab_test else {
        return Ok(Vec::new());
    };
    let released: Vec<(String, i64)> = sqlx::query_as(
        "SELECT variant, count(*) FROM campaign_recipients
         WHERE campaign_id = $1 AND variant IS NOT NULL AND outcome = 'released'
         GROUP BY variant",
    )
    .bind(campaign.id)
    .fetch_all(state.store.pool())
    .await
    .map_err(db_error)?;
    Ok(ab
        .variants
        .iter()
        .map(|v| {
            let released = released
                .iter()
                .find(|(name, _)| *name == v.name)
                .map_or(0, |(_, n)| *n);
            let count = |event: &str| -> u64 {
                cells
                    .iter()
                    .filter(|c| c.variant == v.name && c.event_type == event && c.machine == 0)
                    .map(|c| c.messages)
                    .sum()
            };
            let rate = |n: u64| {
                if released > 0 {
                    n as f64 / released as f64
                } else {
                    0.0
                }
            };
            let (opens, clicks) = (count("opened"), count("clicked"));
            VariantFigures {
                variant: v.name.clone(),
                released,
                delivered: count("delivered"),
                unique_opens: opens,
                unique_clicks: clicks,
                open_rate: rate(opens),
                click_rate: rate(clicks),
            }
        })
        .collect())
}

/// The variant with the highest rate by `metric`, and whether others had the same
/// (then the first of them); `None` for `manual`.
pub fn best(figures: &[VariantFigures], metric: Metric) -> Option<(String, bool)> {
    let key = |f: &VariantFigures| match metric {
        Metric::Opens => f.open_rate,
        Metric::Clicks => f.click_rate,
        Metric::Manual => 0.0,
    };
    if metric == Metric::Manual {
        return None;
    }
    let best = figures
        .iter()
        .fold(None::<&VariantFigures>, |b, f| match b {
            Some(b) if key(f) <= key(b) => Some(b),
            _ => Some(f),
        })?;
    let tie = figures.iter().filter(|f| key(f) == key(best)).count() > 1;
    Some((best.variant.clone(), tie))
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Unique {
    /// Distinct messages a person opened (clicked).
    pub unique: u64,
    /// Distinct messages a machine opened (clicked): privacy proxies, link scanners.
    pub machine: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Bounced {
    pub total: u64,
    /// By category (`bad_mailbox`, `bad_domain`, `policy`, …).
    pub by_category: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Link {
    pub url: String,
    /// Distinct messages whose recipient clicked it.
    pub unique_clicks: u64,
    pub clicks: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Minute {
    /// Unix seconds of the minute's start.
    pub minute: u32,
    pub delivered: u64,
    pub opened: u64,
    pub clicked: u64,
    pub bounced: u64,
}

/// `GET /v1/campaigns/{id}/stats`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stats {
    pub campaign_id: uuid::Uuid,
    pub state: crate::model::State,
    #[serde(flatten)]
    pub progress: crate::model::Progress,
    /// Distinct messages with each event.
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: Bounced,
    /// Bounces that came back after delivery (DSNs to the return path).
    pub async_bounced: u64,
    pub dropped: u64,
    pub failed: u64,
    pub opened: Unique,
    pub clicked: Unique,
    pub unsubscribed: u64,
    pub complained: u64,
    pub variants: Vec<VariantFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub winner: Option<String>,
    /// The 20 links most clicked by people.
    pub links: Vec<Link>,
    /// The funnel per minute (people's opens and clicks).
    pub timeline: Vec<Minute>,
}

/// `GET /v1/campaigns/{id}/stats` (scope `campaigns`): see [`Stats`]. Errors: 404, 503
/// when PostgreSQL or ClickHouse does not answer.
pub async fn get(
    State(state): State<Campaigns>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Stats>, ApiError> {
    caller.require(Scope::Campaigns)?;
    let account = caller.0.account_id;
    let campaign = load(&state, account, path_id(&id, "campaign")?).await?;
    let cells = cells(&state, account, &campaign).await?;
    let total = |event: &str, machine: u8| -> u64 {
        cells
            .iter()
            .filter(|c| c.event_type == event && c.machine == machine)
            .map(|c| c.messages)
            .sum()
    };
    let mut bounced = Bounced::default();
    for c in cells.iter().filter(|c| c.event_type == "bounced") {
        bounced.total += c.messages;
        *bounced
            .by_category
            .entry(if c.bounce_category.is_empty() {
                "unknown".into()
            } else {
                c.bounce_category.clone()
            })
            .or_default() += c.messages;
    }
    let links = state
        .clickhouse
        .query(
            "SELECT url, uniqExactMerge(messages) AS messages, uniqExactMerge(events) AS events
             FROM campaign_stats
             WHERE account_id = toUUID(?) AND campaign_id = ? AND event_type = 'clicked'
               AND machine = 0
             GROUP BY url ORDER BY messages DESC, url LIMIT 20",
        )
        .bind(account.to_string())
        .bind(campaign.id.to_string())
        .fetch_all::<LinkRow>()
        .await
        .map_err(unavailable)?;
    let minutes = state
        .clickhouse
        .query(
            "SELECT toUInt32(minute) AS minute, event_type, uniqExactMerge(messages) AS messages
             FROM campaign_stats
             WHERE account_id = toUUID(?) AND campaign_id = ? AND machine = 0
               AND event_type IN ('delivered', 'opened', 'clicked', 'bounced')
             GROUP BY minute, event_type ORDER BY minute",
        )
        .bind(account.to_string())
        .bind(campaign.id.to_string())
        .fetch_all::<MinuteRow>()
        .await
        .map_err(unavailable)?;
    let mut timeline: Vec<Minute> = Vec::new();
    for m in minutes {
        if timeline.last().is_none_or(|t| t.minute != m.minute) {
            timeline.push(Minute {
                minute: m.minute,
                ..Minute::default()
            });
        }
        let t = timeline.last_mut().expect("pushed above");
        match m.event_type.as_str() {
            "delivered" => t.delivered = m.messages,
            "opened" => t.opened = m.messages,
            "clicked" => t.clicked = m.messages,
            _ => t.bounced = m.messages,
        }
    }
    Ok(Json(Stats {
        campaign_id: campaign.id,
        state: campaign.state,
        delivered: total("delivered", 0),
        deferred: total("deferred", 0),
        bounced,
        async_bounced: total("async_bounced", 0),
        dropped: total("dropped", 0),
        failed: total("failed", 0),
        opened: Unique {
            unique: total("opened", 0),
            machine: total("opened", 1),
        },
        clicked: Unique {
            unique: total("clicked", 0),
            machine: total("clicked", 1),
        },
        unsubscribed: total("unsubscribed", 0),
        complained: total("complained", 0),
        variants: figures_of(&state, &campaign, &cells).await?,
        winner: campaign.winner.clone(),
        links: links
            .into_iter()
            .map(|l| Link {
                url: l.url,
                unique_clicks: l.messages,
                clicks: l.events,
            })
            .collect(),
        timeline,
        progress: campaign.progress,
    }))
}
