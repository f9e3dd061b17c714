//! `sendmill bench campaign`: a 100,000-contact campaign sent unthrottled through the
//! whole pipeline as separate processes (ingest, render, dispatcher, analytics and the
//! campaign sender) on the configured Kafka, into the bench sinks; and, beside it, a
//! steady stream of single-recipient transactional requests to the send API.
//!
//! First the transactional stream runs alone (the baseline), then again while the
//! campaign drains. Reported: the campaign's release rate (contacts released per second
//! from its start to its last chunk), its delivered/s (from its start to its last
//! delivery), and the transactional stream's 202→delivered p50/p99 in both phases: what
//! the priority lanes are for. The contacts, list and memberships are written straight
//! into PostgreSQL (`generate_series`): the import is `bench import`'s subject.

use super::pipeline::{
    drop_database, generate, percentiles, read_events, wait_healthy, Load, Percentiles, Run, Seen,
};
use anyhow::{bail, Context};
use sendmill_platform::kafka::KafkaConnection;
use sendmill_wire::MessageId;
use serde::Serialize;
use serde_json::json;
use std::{
    collections::HashSet,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};
use time::OffsetDateTime;

use crate::SendmillConfig;

#[derive(Clone, Debug)]
pub struct CampaignOptions {
    /// Contacts in the campaign's list.
    pub contacts: usize,
    /// Transactional requests per second (one recipient each), in both phases.
    pub transactional_rate: f64,
    /// Seconds of the transactional stream alone.
    pub baseline_seconds: f64,
    /// Destination domains d1–dN.test the contacts are spread over.
    pub domains: usize,
    /// Seconds to wait for the campaign to be delivered before giving up.
    pub timeout: f64,
}

#[derive(Debug, Serialize)]
pub struct CampaignReport {
    pub contacts: usize,
    pub domains: usize,
    pub html_bytes: usize,
    pub broker: String,
    /// Contacts released per second, from the campaign's start to its last chunk.
    pub release_per_sec: f64,
    pub release_seconds: f64,
    /// Campaign messages delivered, and per second from its start to its last delivery.
    pub delivered: u64,
    pub delivered_per_sec: f64,
    pub delivery_seconds: f64,
    pub transactional_rate: f64,
    /// 202 → delivered of the transactional stream alone, ms.
    pub transactional_alone_ms: Percentiles,
    /// The same while the campaign drained, ms.
    pub transactional_during_campaign_ms: Percentiles,
    /// Transactional messages not delivered by the end (either phase).
    pub transactional_unfinished: u64,
}

pub async fn campaign(
    base: &SendmillConfig,
    options: &CampaignOptions,
) -> anyhow::Result<CampaignReport> {
    use sendmill_store::Scope;
    super::require_bench_sinks(options.domains.clamp(1, 10)).await?;
    let run = Run::new(base)?;
    let config = &run.config;
    let (store, sending, key) = run.prepare().await?;
    let account = sending.account_id;
    let marketer = store
        .create_api_key(
            account,
            "bench-campaigns",
            &[Scope::Campaigns, Scope::Contacts],
            false,
        )
        .await?
        .plaintext;

    eprintln!("bench: writing {} contacts…", options.contacts);
    let list = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO lists (id, account_id, name, opt_in) VALUES ($1, $2, 'bench', 'single')",
    )
    .bind(list)
    .bind(account.0)
    .execute(store.pool())
    .await?;
    sqlx::query(
        "INSERT INTO contacts (id, account_id, email, name, attributes)
         SELECT gen_random_uuid(), $1, 'c' || i || '@d' || (i % $3 + 1) || '.test', 'Person ' || i,
                jsonb_build_object('first_name', 'Person', 'plan', 'pro')
         FROM generate_series(1, $2) AS i",
    )
    .bind(account.0)
    .bind(options.contacts as i64)
    .bind(options.domains.clamp(1, 10) as i64)
    .execute(store.pool())
    .await?;
    sqlx::query(
        "INSERT INTO list_members (account_id, list_id, contact_id, state, source, subscribed_at)
         SELECT $1, $2, id, 'subscribed', 'import', now() FROM contacts WHERE account_id = $1",
    )
    .bind(account.0)
    .bind(list)
    .execute(store.pool())
    .await?;
    // As the import worker does after a large import: plans for the tables as they are.
    sqlx::query("ANALYZE contacts")
        .execute(store.pool())
        .await?;
    sqlx::query("ANALYZE list_members")
        .execute(store.pool())
        .await?;

    let config_file = run.write_config()?;
    let campaigns_ops = super::pipeline::free_addr()?;
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&config_file)?;
        writeln!(file, "[campaigns]\nops_listen = \"{campaigns_ops}\"")?;
    }
    let topics = super::BenchTopics::create(config).await?;
    let mut processes = Vec::new();
    for (name, subcommand) in [
        ("ingest", "ingest"),
        ("render", "render"),
        ("dispatcher", "dispatch"),
        ("analytics", "analytics"),
        ("campaigns", "campaigns"),
    ] {
        processes.push(run.spawn(name, subcommand, &config_file)?);
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    for addr in [
        run.ingest,
        run.analytics,
        run.render_ops,
        run.dispatcher_ops,
        campaigns_ops,
    ] {
        wait_healthy(&http, addr, &mut processes).await?;
    }

    // Every delivery, from the events topic.
    let kafka = KafkaConnection::new(config.kafka.brokers.clone(), config.kafka.clone());
    let seen = Arc::new(Seen::default());
    let reader_stop = sendmill_platform::CancellationToken::new();
    let reader = read_events(&kafka, &run.id, seen.clone(), reader_stop.clone());

    let (html, text) = super::template();
    let url = format!("http://{}/v1/messages", run.ingest);
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(
        (0..64)
            .map(|i| {
                bytes::Bytes::from(super::send_body(
                    &sending.domain,
                    &html,
                    &text,
                    1,
                    i,
                    options.domains,
                ))
            })
            .collect(),
    );
    let stream = |seconds: f64, load: Arc<Load>| {
        let (http, url, key, bodies) = (http.clone(), url.clone(), key.clone(), bodies.clone());
        let rate = options.transactional_rate;
        tokio::spawn(async move {
            generate(
                &http,
                &url,
                &key,
                &bodies,
                &load,
                4,
                Some(rate),
                Instant::now() + Duration::from_secs_f64(seconds),
            )
            .await
        })
    };
    let delivered_of = |load: &Load| -> (Vec<f64>, u64) {
        let accepted = load.accepted_at.lock().expect("not poisoned").clone();
        let delivered = seen.delivered_at.lock().expect("not poisoned");
        let mut latencies = Vec::new();
        let mut missing = 0;
        for (id, at) in accepted {
            match delivered.get(&id) {
                Some(d) => latencies.push(((*d - at).as_seconds_f64() * 1000.0).max(0.0)),
                None => missing += 1,
            }
        }
        (latencies, missing)
    };
    let wait_delivered = |load: Arc<Load>, limit: Duration| {
        let seen = seen.clone();
        async move {
            let deadline = Instant::now() + limit;
            loop {
                let accepted: Vec<MessageId> = load
                    .accepted_at
                    .lock()
                    .expect("not poisoned")
                    .keys()
                    .copied()
                    .collect();
                let all = {
                    let delivered = seen.delivered_at.lock().expect("not poisoned");
                    accepted.iter().all(|id| delivered.contains_key(id))
                };
                if all || Instant::now() > deadline {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };

    // Warm-up, then the transactional stream alone.
    eprintln!("bench: warming up…");
    let warm = Arc::new(Load::default());
    stream(3.0, warm.clone()).await??;
    wait_delivered(warm.clone(), Duration::from_secs(120)).await;
    eprintln!(
        "bench: {} transactional requests/s alone for {} s…",
        options.transactional_rate, options.baseline_seconds
    );
    let alone = Arc::new(Load::default());
    stream(options.baseline_seconds, alone.clone()).await??;
    wait_delivered(alone.clone(), Duration::from_secs(60)).await;
    let (alone_latencies, alone_missing) = delivered_of(&alone);

    // The campaign, and the same stream while it drains.
    let analytics = format!("http://{}", run.analytics);
    let created: serde_json::Value = http
        .post(format!("{analytics}/v1/campaigns"))
        .bearer_auth(&marketer)
        .json(&json!({
            "name": "bench", "from": {"email": format!("news@{}", sending.domain), "name": "Bench"},
            "subject": "Bench {{first_name}}", "html": html, "text": text,
            "audience": {"lists": [list]},
        }))
        .send()
        .await?
        .json()
        .await?;
    let id = created["id"]
        .as_str()
        .with_context(|| format!("campaign not created: {created}"))?
        .to_owned();
    let delivered_before = seen.delivered.load(Ordering::Relaxed);
    let campaign_started = Instant::now();
    let scheduled = http
        .post(format!("{analytics}/v1/campaigns/{id}/schedule"))
        .bearer_auth(&marketer)
        .header("content-type", "application/json")
        .send()
        .await?;
    if !scheduled.status().is_success() {
        bail!("schedule: {}", scheduled.text().await?);
    }
    eprintln!(
        "bench: campaign of {} contacts scheduled; transactional stream beside it…",
        options.contacts
    );
    let during = Arc::new(Load::default());
    let mut stream_task = Some(stream(options.timeout, during.clone()));
    let deadline = campaign_started + Duration::from_secs_f64(options.timeout);
    let campaign = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for p in &mut processes {
            p.check_alive()?;
        }
        let campaign: serde_json::Value = http
            .get(format!("{analytics}/v1/campaigns/{id}"))
            .bearer_auth(&marketer)
            .send()
            .await?
            .json()
            .await?;
        let tx = during.accepted.load(Ordering::Relaxed);
        let delivered = seen.delivered.load(Ordering::Relaxed) - delivered_before;
        let released = campaign["progress"]["released"].as_u64().unwrap_or(0);
        eprintln!(
            "{:>5.0} s  {}  released {released:>7}  delivered {:>7} (campaign and transactional)  transactional accepted {tx}",
            campaign_started.elapsed().as_secs_f64(),
            campaign["state"].as_str().unwrap_or("?"),
            delivered,
        );
        if campaign["state"] == "sent"
            && campaign_deliveries(&seen, &[&warm, &alone, &during]).0 >= released
        {
            break campaign;
        }
        if Instant::now() > deadline {
            eprintln!(
                "bench: the campaign did not finish within {} s",
                options.timeout
            );
            break campaign;
        }
    };
    // The stream stops with the campaign: its figures are "while it drained".
    if let Some(task) = stream_task.take() {
        task.abort();
    }
    wait_delivered(during.clone(), Duration::from_secs(30)).await;
    let (during_latencies, during_missing) = delivered_of(&during);

    let parse = |field: &str| {
        campaign[field].as_str().and_then(|t| {
            OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
    };
    let (started_at, finished_at) = (parse("started_at"), parse("finished_at"));
    let released = campaign["progress"]["released"].as_u64().unwrap_or(0);
    let (delivered, last) = campaign_deliveries(&seen, &[&warm, &alone, &during]);
    let release_seconds = match (started_at, finished_at) {
        (Some(s), Some(f)) => (f - s).as_seconds_f64(),
        _ => f64::NAN,
    };
    let delivery_seconds = match (started_at, last) {
        (Some(s), Some(l)) => (l - s).as_seconds_f64(),
        _ => f64::NAN,
    };
    reader_stop.cancel();
    let _ = reader.await;
    drop(processes);
    drop_database(&run.config).await;
    topics.delete().await;
    let _ = std::fs::remove_dir_all(&run.dir);
    Ok(CampaignReport {
        contacts: options.contacts,
        domains: options.domains,
        html_bytes: html.len(),
        broker: format!("Apache Kafka at {}", config.kafka.brokers),
        release_per_sec: released as f64 / release_seconds,
        release_seconds,
        delivered,
        delivered_per_sec: delivered as f64 / delivery_seconds,
        delivery_seconds,
        transactional_rate: options.transactional_rate,
        transactional_alone_ms: percentiles(alone_latencies),
        transactional_during_campaign_ms: percentiles(during_latencies),
        transactional_unfinished: alone_missing + during_missing,
    })
}

/// Deliveries that are not the transactional streams' (`loads`): how many, and the last.
fn campaign_deliveries(seen: &Seen, loads: &[&Arc<Load>]) -> (u64, Option<OffsetDateTime>) {
    let transactional: HashSet<MessageId> = loads
        .iter()
        .flat_map(|l| {
            l.accepted_at
                .lock()
                .expect("not poisoned")
                .keys()
                .copied()
                .collect::<Vec<_>>()
        })
        .collect();
    let delivered = seen.delivered_at.lock().expect("not poisoned");
    let mut count = 0;
    let mut last = None;
    for (id, at) in delivered.iter() {
        if !transactional.contains(id) {
            count += 1;
            last = last.max(Some(*at));
        }
    }
    (count, last)
}
