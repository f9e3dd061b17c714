//! The dispatcher at production depth, on real smtp-sink MX hosts, dnsmasq and Redis:
//! pools and source IPs, pause flags, retry tiers to expiry, backoff on 421 storms, MX failover, the local delay queue, and — with
//! the `sendmill` binary as separate processes — a shared rate limit and a kill -9.
#![allow(
    clippy::print_stdout,
    reason = "tests report the figures they measured"
)]

use sendmill::{SendmillConfig, Stage};
use sendmill_dispatcher::config::{
    PoolConfig, PoolIp, ProviderConfig, ShapingRule, ShapingScope, WarmupConfig,
};
use sendmill_platform::kafka::{
    lag::{GroupTopics, LagProbe},
    KafkaConnection,
};
use sendmill_tenancy::pauses::{self, Target};
use sendmill_tests::*;
use sendmill_wire::{BounceCategory, EventType, EventV1, Lane, ReadyV1, RetryTier};
use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};
use time::OffsetDateTime;

const LIMIT: Duration = Duration::from_secs(90);

async fn preload(p: &TestPipeline, recipients: &[String]) -> Vec<ReadyV1> {
    let producer = p.producer();
    let topic = p.topics.ready(Lane::Transactional);
    let mut records = Vec::with_capacity(recipients.len());
    for recipient in recipients {
        let ready = handmade_ready(p, recipient, OffsetDateTime::now_utc());
        producer
            .send(&topic, &ready.message_id.to_string(), &ready)
            .await
            .expect("produce ready");
        records.push(ready);
    }
    records
}

/// Terminal events per message id, once every id in `ids` has at least one.
async fn terminal_events(p: &TestPipeline, ids: &HashSet<String>) -> HashMap<String, Vec<EventV1>> {
    poll_until(LIMIT * 2, || async {
        let mut by_id: HashMap<String, Vec<EventV1>> = HashMap::new();
        for e in p.events() {
            let terminal = matches!(
                e.event_type,
                EventType::Delivered | EventType::Bounced | EventType::Expired | EventType::Dropped
            );
            let id = e.message_id.to_string();
            if terminal && ids.contains(&id) {
                by_id.entry(id).or_default().push(e);
            }
        }
        (by_id.len() == ids.len()).then_some(by_id)
    })
    .await
    .unwrap_or_else(|| panic!("not every one of {} messages ended", ids.len()))
}

fn sink_provider(name: &str) -> ProviderConfig {
    ProviderConfig {
        name: name.into(),
        mx_suffixes: vec!["ok.test".into()],
        domains: vec![],
        require_tls: false,
    }
}

fn limit(provider: &str, per_sec: f64) -> ShapingRule {
    ShapingRule {
        provider: provider.into(),
        per: ShapingScope::Pool,
        messages_per_sec: per_sec,
        messages_per_hour: 0,
        max_connections: 4,
        messages_per_connection: 50,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_leave_from_pool_ips_and_a_paused_ip_gets_no_new_connections() {
    let p = TestPipeline::start_configured(&[Stage::Dispatch], |c| {
        c.dispatcher.pools = vec![PoolConfig {
            name: "tx".into(),
            accounts: vec![],
            ips: ["127.0.0.7", "127.0.0.8"]
                .iter()
                .map(|ip| PoolIp {
                    ip: ip.parse().unwrap(),
                    ehlo: format!("mta-{ip}.sendmill.test"),
                    weight: 1,
                })
                .collect(),
        }];
        // Every message reads the flags, so a pause counts from the next message.
        c.dispatcher.pause_refresh = std::time::Duration::from_millis(0);
    })
    .await;
    let recipients: Vec<String> = (0..20).map(|i| format!("pool{i}@ok.test")).collect();
    let first = preload(&p, &recipients).await;
    let ids: HashSet<String> = first.iter().map(|r| r.message_id.to_string()).collect();
    let ended = terminal_events(&p, &ids).await;
    let dumps = dumps_for_domain(&p.domain);
    let mut sources = HashSet::new();
    for id in &ids {
        assert_eq!(ended[id][0].event_type, EventType::Delivered);
        assert_eq!(ended[id][0].context.ip_pool.as_deref(), Some("tx"));
        let headers = &dumps[id][0];
        let get = |name: &str| headers.iter().find(|(k, _)| k == name).unwrap().1.clone();
        // The receiving side saw the chosen IP, announcing that IP's own EHLO name.
        let addr = get("X-Client-Addr");
        assert_eq!(get("X-Helo-Args"), format!("mta-{addr}.sendmill.test"));
        assert_eq!(ended[id][0].source_ip.as_deref(), Some(addr.as_str()));
        sources.insert(addr);
    }
    assert_eq!(sources.len(), 2, "both IPs carry traffic: {sources:?}");

    let mut redis = p.redis().await;
    let paused_ip = Target::Ip("127.0.0.7".parse().unwrap());
    pauses::pause(&mut redis, &p.config.redis.key_prefix, &paused_ip, "test")
        .await
        .unwrap();
    let recipients: Vec<String> = (0..20).map(|i| format!("paused{i}@ok.test")).collect();
    let second = preload(&p, &recipients).await;
    let ids: HashSet<String> = second.iter().map(|r| r.message_id.to_string()).collect();
    terminal_events(&p, &ids).await;
    let dumps = dumps_for_domain(&p.domain);
    for id in &ids {
        let addr = &dumps[id][0]
            .iter()
            .find(|(k, _)| k == "X-Client-Addr")
            .unwrap()
            .1;
        assert_eq!(addr, "127.0.0.8", "a message left from the paused IP");
    }

    // With the whole pool paused, nothing leaves: the message is deferred.
    pauses::pause(
        &mut redis,
        &p.config.redis.key_prefix,
        &Target::Pool("tx".into()),
        "test",
    )
    .await
    .unwrap();
    let held = preload(&p, &["held@ok.test".to_owned()]).await;
    let id = held[0].message_id.to_string();
    let deferred = poll_until(LIMIT, || async {
        p.events()
            .into_iter()
            .find(|e| e.message_id.to_string() == id && e.event_type == EventType::Deferred)
    })
    .await
    .expect("deferred while paused");
    assert!(deferred.reason.unwrap().contains("paused"));
    assert!(!dumps_for_domain(&p.domain).contains_key(&id));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warming_ip_stops_at_its_daily_cap_and_the_pool_carries_on() {
    let p = TestPipeline::start_configured(&[Stage::Dispatch], |c| {
        c.dispatcher.pools = vec![PoolConfig {
            name: "warm".into(),
            accounts: vec![],
            ips: ["127.0.0.9", "127.0.0.10"]
                .iter()
                .map(|ip| PoolIp {
                    ip: ip.parse().unwrap(),
                    ehlo: String::new(),
                    weight: 1,
                })
                .collect(),
        }];
        c.dispatcher.providers = vec![sink_provider("warm-sink")];
        c.dispatcher.warmup = vec![WarmupConfig {
            ip: "127.0.0.9".parse().unwrap(),
            provider: "warm-sink".into(),
            start: OffsetDateTime::now_utc().date(),
            daily_caps: vec![3, 1000],
        }];
    })
    .await;
    let recipients: Vec<String> = (0..20).map(|i| format!("warm{i}@ok.test")).collect();
    let records = preload(&p, &recipients).await;
    let ids: HashSet<String> = records.iter().map(|r| r.message_id.to_string()).collect();
    let ended = terminal_events(&p, &ids).await;
    assert!(ended
        .values()
        .all(|e| e[0].event_type == EventType::Delivered));
    let from_warming = ended
        .values()
        .filter(|e| e[0].source_ip.as_deref() == Some("127.0.0.9"))
        .count();
    // The IP stopped at its cap: today's quota in Redis is used up to it exactly. It may
    // have sent fewer: a lease of quota that expires unused (a task descheduled past
    // `lease_for` on a busy machine) still counts against the day, by design of the
    // lease (the quota is never exceeded, only under-used).
    let used: Option<u64> = redis::cmd("HGET")
        .arg(format!(
            "{}warmup:127.0.0.9:warm-sink",
            p.config.redis.key_prefix
        ))
        .arg("used")
        .query_async(&mut p.redis().await)
        .await
        .unwrap();
    assert_eq!(used, Some(3), "day one's quota of the warming IP");
    assert!(
        (1..=3).contains(&from_warming),
        "day one's cap of the warming IP: {from_warming} sent from it"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_requires_tls_is_not_sent_to_in_the_clear() {
    let p = TestPipeline::start_configured(&[Stage::Dispatch], |c| {
        c.dispatcher.providers = vec![ProviderConfig {
            require_tls: true,
            ..sink_provider("tls-only")
        }];
    })
    .await;
    let records = preload(&p, &["secret@ok.test".to_owned()]).await;
    let id = records[0].message_id.to_string();
    let deferred = poll_until(LIMIT, || async {
        p.events()
            .into_iter()
            .find(|e| e.message_id.to_string() == id && e.event_type == EventType::Deferred)
    })
    .await
    .expect("deferred");
    // smtp-sink offers no STARTTLS.
    assert_eq!(deferred.bounce_category, Some(BounceCategory::TlsRequired));
    assert_eq!(deferred.provider.as_deref(), Some("tls-only"));
    assert!(!dumps_for_domain(&p.domain).contains_key(&id));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_is_used_when_the_receiver_offers_it() {
    let p = TestPipeline::start_configured(&[Stage::Dispatch], |_| {}).await;
    // postfix on mx.tls.test offers STARTTLS with a self-signed certificate, then relays to
    // the accepting sink with its own Received header.
    let records = preload(&p, &["private@tls.test".to_owned()]).await;
    let id = records[0].message_id.to_string();
    let ended = terminal_events(&p, &HashSet::from([id.clone()])).await;
    assert_eq!(
        ended[&id][0].event_type,
        EventType::Delivered,
        "{:?}",
        ended[&id]
    );
    assert_eq!(ended[&id][0].mx_host.as_deref(), Some("mx.tls.test"));
    let dump = poll_until(LIMIT, || async { dumped_message(&id) })
        .await
        .expect("postfix relayed the message to the sink");
    let text = std::fs::read_to_string(dump).unwrap();
    assert!(
        text.contains("(using TLSv1.3") || text.contains("(using TLSv1.2"),
        "postfix did not see an encrypted session:\n{text}"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_walks_every_retry_tier_and_expires_with_the_last_reply() {
    let p = TestPipeline::start_configured(&[Stage::Dispatch], |c| {
        c.dispatcher.retry_delays = [std::time::Duration::from_secs(1); 4];
        c.dispatcher.max_retry_age = std::time::Duration::from_secs(20);
    })
    .await;
    let ready = preload(&p, &["walker@defer.test".to_owned()]).await;
    let id = ready[0].message_id.to_string();
    let ids = HashSet::from([id.clone()]);
    let ended = terminal_events(&p, &ids).await;
    let expired = &ended[&id][0];
    assert_eq!(expired.event_type, EventType::Expired);
    assert_eq!(expired.bounce_category, Some(BounceCategory::Expired));
    assert_eq!(expired.smtp.as_ref().unwrap().code, 451, "the last reply");
    let deferrals: Vec<EventV1> = p
        .events()
        .into_iter()
        .filter(|e| e.message_id.to_string() == id && e.event_type == EventType::Deferred)
        .collect();
    assert!(deferrals.len() >= 4, "{} deferrals", deferrals.len());
    assert!(
        deferrals
            .iter()
            .all(|e| e.bounce_category == Some(BounceCategory::Policy)),
        "{deferrals:?}"
    );
    // Each tier's topic carried the message once it was reached.
    for tier in RetryTier::ALL {
        let on_tier = p
            .read_topic(&p.topics.retry(Lane::Transactional, tier))
            .iter()
            .filter(|b| {
                sendmill_wire::decode::<sendmill_wire::RetryV1>(b)
                    .is_ok_and(|r| r.ready.message_id.to_string() == id)
            })
            .count();
        assert!(on_tier >= 1, "nothing on the {} tier", tier.as_str());
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_421_storm_puts_the_provider_in_backoff() {
    let p = TestPipeline::start_configured(&[Stage::Dispatch], |c| {
        c.dispatcher.backoff_recovery = std::time::Duration::from_secs(3600);
    })
    .await;
    let recipients: Vec<String> = (0..10)
        .map(|i| format!("storm{i}@ratelimited.test"))
        .collect();
    let records = preload(&p, &recipients).await;
    let ids: HashSet<String> = records.iter().map(|r| r.message_id.to_string()).collect();
    let deferred = poll_until(LIMIT, || async {
        let deferred: Vec<EventV1> = p
            .events()
            .into_iter()
            .filter(|e| {
                ids.contains(&e.message_id.to_string()) && e.event_type == EventType::Deferred
            })
            .collect();
        (deferred.len() == ids.len()).then_some(deferred)
    })
    .await
    .expect("every message deferred");
    assert!(
        deferred
            .iter()
            .all(|e| e.bounce_category == Some(BounceCategory::RateLimited)
                && e.smtp.as_ref().is_some_and(|r| r.code == 421)),
        "{deferred:?}"
    );
    // The provider's bucket (every dispatcher's) is slowed down.
    let mut redis = p.redis().await;
    let key = format!(
        "{}shape:ip:0.0.0.0:ratelimited.test",
        p.config.redis.key_prefix
    );
    let factor: Option<String> = redis::cmd("HGET")
        .arg(&key)
        .arg("factor")
        .query_async(&mut redis)
        .await
        .unwrap();
    let factor: f64 = factor.expect("a backoff factor is stored").parse().unwrap();
    assert!(factor <= 0.5, "factor {factor}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_failover_reaches_the_second_mx_when_the_first_refuses() {
    let p = TestPipeline::start_configured(&[Stage::Dispatch], |_| {}).await;
    let records = preload(&p, &["fail@failover.test".to_owned()]).await;
    let id = records[0].message_id.to_string();
    let ended = terminal_events(&p, &HashSet::from([id.clone()])).await;
    assert_eq!(ended[&id][0].event_type, EventType::Delivered);
    assert_eq!(ended[&id][0].mx_host.as_deref(), Some("mx2.failover.test"));
    assert_eq!(ended[&id][0].provider.as_deref(), Some("failover.test"));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_delay_queue_pauses_the_partitions_and_resumes_them() {
    let p = TestPipeline::start_configured(&[Stage::Ingest, Stage::Dispatch], |c| {
        c.dispatcher.queue_capacity = 8;
        c.dispatcher.concurrency = 4;
        c.dispatcher.providers = vec![sink_provider("queue-sink")];
        // Slow enough that the full queue goes longer than the consumer's grace
        // without a slot freeing.
        c.dispatcher.shaping = vec![limit("queue-sink", 2.0)];
    })
    .await;
    let recipients: Vec<String> = (0..14).map(|i| format!("q{i}@ok.test")).collect();
    let records = preload(&p, &recipients).await;
    let ids: HashSet<String> = records.iter().map(|r| r.message_id.to_string()).collect();
    let ended = terminal_events(&p, &ids).await;
    assert!(ended
        .values()
        .all(|e| e.len() == 1 && e[0].event_type == EventType::Delivered));
    let metrics = p.metrics().await;
    let count = |name: &str| metric_sum(&metrics, name, "stage=\"dispatcher\"");
    assert!(
        count("sendmill_consumer_capacity_pauses_total") >= 1.0,
        "{metrics}"
    );
    assert!(
        count("sendmill_consumer_capacity_resumes_total") >= 1.0,
        "{metrics}"
    );
    p.stop().await;
}

/// A `sendmill dispatch` process of the test's installation.
struct DispatcherProcess;

impl DispatcherProcess {
    fn start(p: &TestPipeline, config: &SendmillConfig, name: &str, extra: &str) -> StageProcess {
        StageProcess::start(
            p,
            config,
            "dispatch",
            name,
            &Self::section(config, name, extra),
        )
    }

    fn section(config: &SendmillConfig, name: &str, extra: &str) -> String {
        format!(
            "[dispatcher]\nnameservers = [\"127.0.0.1:5353\"]\nhelo_name = \"{name}.sendmill.test\"\n\
             ops_listen = \"127.0.0.1:0\"\njournal_dir = {journal:?}\n{extra}\n",
            journal = format!("{}-{name}", config.dispatcher.journal_dir),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_limit_holds_within_ten_percent_across_two_dispatcher_processes() {
    let p = TestPipeline::start_configured(&[], |_| {}).await;
    let rate = 40.0;
    let shaping = format!(
        "[[dispatcher.providers]]\nname = \"shared-sink\"\nmx_suffixes = [\"ok.test\"]\n\
         [[dispatcher.shaping]]\nprovider = \"shared-sink\"\nmessages_per_sec = {rate}\n"
    );
    // 45 s of traffic at the limit: more than the 30 s measured.
    let recipients: Vec<String> = (0..1800).map(|i| format!("rate{i}@ok.test")).collect();
    let records = preload(&p, &recipients).await;
    let a = DispatcherProcess::start(&p, &p.config, "a", &shaping);
    let b = DispatcherProcess::start(&p, &p.config, "b", &shaping);
    let ids: HashSet<String> = records.iter().map(|r| r.message_id.to_string()).collect();
    let delivered = poll_until(LIMIT, || async {
        let mut at: Vec<OffsetDateTime> = p
            .events()
            .into_iter()
            .filter(|e| {
                e.event_type == EventType::Delivered && ids.contains(&e.message_id.to_string())
            })
            .map(|e| e.occurred_at)
            .collect();
        at.sort();
        // 5 s to settle (the bucket starts full, the group forms), then 30 s.
        let span = at.first().zip(at.last()).map(|(f, l)| *l - *f);
        span.is_some_and(|s| s >= time::Duration::seconds(36))
            .then_some(at)
    })
    .await
    .expect("36 s of deliveries");
    // The rate over the 30 s after 5 s of settling, as the slope of the cumulative count
    // (least squares): a stall of this shared machine that delays some completions into
    // the next second moves the count at the window's edges, hardly the slope.
    let start = delivered[0] + time::Duration::seconds(5);
    let end = start + time::Duration::seconds(30);
    let times: Vec<f64> = delivered
        .iter()
        .filter(|t| **t >= start && **t < end)
        .map(|t| (*t - start).as_seconds_f64())
        .collect();
    let n = times.len() as f64;
    let mean_t = times.iter().sum::<f64>() / n;
    let mean_i = (n - 1.0) / 2.0;
    let covariance: f64 = times
        .iter()
        .enumerate()
        .map(|(i, t)| (t - mean_t) * (i as f64 - mean_i))
        .sum();
    let variance: f64 = times.iter().map(|t| (t - mean_t).powi(2)).sum();
    let measured = covariance / variance;
    println!(
        "limit {rate}/s, measured {measured:.2}/s over 30 s across two processes ({} deliveries in the window)",
        times.len()
    );
    assert!(
        (measured - rate).abs() <= rate * 0.10,
        "measured {measured:.2}/s against a limit of {rate}/s"
    );
    // Both processes sent (each announces its own EHLO name).
    let dumps = dumps_for_domain(&p.domain);
    let helos: HashSet<String> = dumps
        .values()
        .flat_map(|d| d.iter())
        .filter_map(|h| {
            h.iter()
                .find(|(k, _)| k == "X-Helo-Args")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert!(
        helos.contains("a.sendmill.test") && helos.contains("b.sendmill.test"),
        "{helos:?}"
    );
    drop((a, b));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_killed_mid_send_delivers_every_message_exactly_once_after_restart() {
    let p = TestPipeline::start_configured(&[], |_| {}).await;
    let recipients: Vec<String> = (0..5000).map(|i| format!("crash{i}@ok.test")).collect();
    let records = preload(&p, &recipients).await;
    let ids: HashSet<String> = records.iter().map(|r| r.message_id.to_string()).collect();
    let first = DispatcherProcess::start(&p, &p.config, "crash", "");
    // Kill it once a good part, not all, is out (counting dump files is cheap; other
    // tests' dumps only make the kill come a little earlier).
    let baseline = dump_file_count();
    poll_until(LIMIT, || async {
        (dump_file_count() >= baseline + 1000).then_some(())
    })
    .await
    .expect("deliveries started");
    first.kill();
    let before_restart = dumps_for_domain(&p.domain).len();
    assert!(
        before_restart < ids.len(),
        "killed after everything was sent"
    );
    let second = DispatcherProcess::start(&p, &p.config, "crash", "");
    let ended = terminal_events(&p, &ids).await;
    drop(second);
    assert!(ended
        .values()
        .all(|e| e[0].event_type == EventType::Delivered));
    let dumps = dumps_for_domain(&p.domain);
    let missing = ids.iter().filter(|id| !dumps.contains_key(*id)).count();
    let twice: Vec<&String> = dumps
        .iter()
        .filter(|(_, d)| d.len() > 1)
        .map(|(id, _)| id)
        .collect();
    println!(
        "killed with {before_restart} of {} at the sink; after restart: {missing} missing, {} twice",
        ids.len(),
        twice.len()
    );
    assert_eq!(missing, 0, "messages never reached the sink");
    // Only a message whose final write had returned but whose journal append had not run
    // when the kill landed may go twice (README, "No duplicates"): at most one in
    // practice; a broken journal would resend every message in flight (up to 256).
    assert!(twice.len() <= 1, "messages delivered twice: {twice:?}");
    p.stop().await;
}

/// SIGTERM under load: the dispatcher stops fetching, finishes every record it holds,
/// commits their offsets and exits 0, so the group's committed offsets account for
/// exactly the messages already at the sink (nothing left for redelivery to repeat);
/// a new dispatcher then delivers the rest, each once. Its `/readyz` answered 200 with
/// the group joined and every dependency reachable while it ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_drained_by_sigterm_leaves_nothing_to_redeliver_and_loses_nothing() {
    let p = TestPipeline::start_configured(&[], |_| {}).await;
    let recipients: Vec<String> = (0..3000).map(|i| format!("drain{i}@ok.test")).collect();
    let records = preload(&p, &recipients).await;
    let ids: HashSet<String> = records.iter().map(|r| r.message_id.to_string()).collect();
    let log = std::env::temp_dir().join(format!("{}drain.log", p.config.kafka.topic_prefix));
    // Load: a provider limit keeps the dispatcher busy for ~10 s, holding up to 500
    // records (some waiting for tokens) when SIGTERM comes. The default drain grace
    // (20 s) applies: the process's config sets no other.
    let shaping = "queue_capacity = 500\n\
                   [[dispatcher.providers]]\nname = \"drain-sink\"\nmx_suffixes = [\"ok.test\"]\n\
                   [[dispatcher.shaping]]\nprovider = \"drain-sink\"\nmessages_per_sec = 300.0\n";
    let section = DispatcherProcess::section(&p.config, "drain", shaping);
    let first =
        StageProcess::start_logged(&p, &p.config, "dispatch", "drain", &section, &log, "info");
    let ops = logged_address(&log, "ops endpoints");
    let ready = poll_until(LIMIT, || async {
        let response = p
            .http
            .get(format!("http://{ops}/readyz"))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.ok()?;
        (status == 200).then_some(body)
    })
    .await
    .expect("/readyz answers 200 once the group is joined");
    let checks = ready["checks"].as_object().unwrap();
    for name in ["kafka", "postgresql", "redis"] {
        assert_eq!(checks[name], "ok", "{ready}");
    }
    assert!(
        checks.keys().any(|k| k.starts_with("kafka consumer")),
        "{ready}"
    );
    let live = p
        .http
        .get(format!("http://{ops}/livez"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status().as_u16(), 200);

    // Deliveries under way, by the dispatcher's own count (its /metrics answers at once;
    // a scan of the sink's dumps of the day can take longer than the whole send).
    poll_until(LIMIT, || async {
        let metrics = p
            .http
            .get(format!("http://{ops}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let delivered = metric_sum(
            &metrics,
            "sendmill_dispatch_events_total{",
            "type=\"delivered\"",
        );
        (delivered >= 600.0).then_some(())
    })
    .await
    .expect("deliveries started");
    let status = tokio::task::spawn_blocking(move || first.terminate(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("consumer stopped"), "{text}");
    let at_sink = dumps_for_domain(&p.domain).len();
    assert!(
        at_sink < ids.len(),
        "SIGTERM came after everything was sent"
    );

    // Committed = records whose handling finished; every one of them is at the sink, and
    // nothing at the sink is uncommitted (which a restart would handle again).
    let kafka = KafkaConnection::new(p.config.kafka.brokers.clone(), p.config.kafka.clone());
    let group = GroupTopics {
        group_id: p.config.dispatcher.group_id.clone(),
        topics: vec![p.topics.ready(Lane::Transactional)],
    };
    let lag = tokio::task::spawn_blocking(move || {
        LagProbe::new(&kafka, vec![group], Duration::from_secs(10))
            .and_then(|probe| probe.sample())
            .expect("the broker answers")[0]
            .1
    })
    .await
    .unwrap();
    let committed = ids.len() - lag as usize;
    println!(
        "SIGTERM with {at_sink} of {} at the sink; {committed} committed",
        ids.len()
    );
    assert_eq!(
        committed, at_sink,
        "handled records and committed offsets differ"
    );

    let second = DispatcherProcess::start(&p, &p.config, "drain", "");
    let ended = terminal_events(&p, &ids).await;
    drop(second);
    assert!(ended
        .values()
        .all(|e| e.len() == 1 && e[0].event_type == EventType::Delivered));
    let dumps = dumps_for_domain(&p.domain);
    assert_eq!(dumps.len(), ids.len(), "messages never reached the sink");
    assert!(
        dumps.values().all(|d| d.len() == 1),
        "a message was delivered twice"
    );
    p.stop().await;
}

/// The sum of the samples in Prometheus text `metrics` whose line starts with `name` and
/// carries `label` (`key="value"`).
fn metric_sum(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn dump_file_count() -> usize {
    sink_dump_files().len()
}
