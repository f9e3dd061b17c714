//! `bench import`: contacts imported per second and the importing process's peak RSS,
//! then how long a segment count takes over them. One `sendmill analytics` child process
//! (the stage that serves the audiences and runs the import worker, so its CPU and memory
//! are its own, read from /proc) takes a generated CSV of `rows` contacts with 10
//! attribute columns (~170 bytes a row) through `POST /v1/lists/{id}/imports`; the time
//! runs from the upload's first byte to the job's `completed`. Each run imports new
//! addresses into a new list, so every row is a created contact. Then a saved segment
//! over all of them (attributes, list membership and an engagement lookup) is counted
//! `count_runs` times. Needs PostgreSQL, Redis, Kafka and ClickHouse; the run's topics
//! are deleted afterwards, its contacts stay in its own bench account.

use super::{
    cpu_seconds, median,
    pipeline::{peak_rss_mib, Run},
    BenchTopics,
};
use crate::SendmillConfig;
use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
pub struct ImportReport {
    pub rows: usize,
    pub attribute_columns: usize,
    pub file_bytes: usize,
    pub runs: usize,
    /// Medians of the runs: rows per second from upload to `completed`.
    pub rows_per_sec: f64,
    pub rows_per_sec_runs: Vec<f64>,
    pub seconds_runs: Vec<f64>,
    /// CPU-seconds of the analytics process per 10,000 rows (median).
    pub analytics_cpu_s_per_10k: f64,
    /// The analytics process's resident set before the first import and its peak after
    /// the last, MiB.
    pub rss_before_mib: f64,
    pub peak_rss_mib: f64,
    /// Contacts the segments are counted over.
    pub contacts: usize,
    /// Median milliseconds of `GET /v1/segments/{id}/count`, per expression.
    pub segment_count_ms: Vec<(String, f64, i64)>,
}

fn csv_file(run: usize, rows: usize) -> Vec<u8> {
    let plans = ["free", "basic", "pro", "team", "enterprise"];
    let cities = ["Paris", "Lyon", "Berlin", "Oslo", "Lisbon", "Porto", "Rome"];
    let mut out = String::with_capacity(rows * 180);
    out.push_str("email,name,plan,seats,city,country,signup,score,vip,referrer,locale,tier\n");
    for i in 0..rows {
        out.push_str(&format!(
            "r{run}-c{i}@bench-import.test,Contact {i},{},{},{},FR,2025-{:02}-{:02},{}.{},{},site-{},fr-FR,{}\n",
            plans[i % plans.len()],
            i % 50,
            cities[i % cities.len()],
            i % 12 + 1,
            i % 28 + 1,
            i % 100,
            i % 10,
            i % 9 == 0,
            i % 17,
            i % 3
        ));
    }
    out.into_bytes()
}

/// Runs the bench (see the module doc).
pub async fn import(
    base: &SendmillConfig,
    runs: usize,
    rows: usize,
    count_runs: usize,
) -> anyhow::Result<ImportReport> {
    let store = super::migrated_store(base).await?;
    let run = Run::new(base)?;
    sendmill_analytics::schema::migrate(&run.config.clickhouse)
        .await
        .context("ClickHouse migrations")?;
    let broker = BenchTopics::create(&run.config).await?;
    let account = store
        .create_account(&format!("bench-import-{}", run.id))
        .await?;
    let key = store
        .create_api_key(account, "bench", &[sendmill_store::Scope::Contacts], false)
        .await?
        .plaintext;
    let config_file = run.write_config()?;
    let mut analytics = run.spawn("analytics", "analytics", &config_file)?;
    let base_url = format!("http://{}", run.analytics);
    let http = reqwest::Client::new();
    let started = Instant::now();
    while http
        .get(format!("{base_url}/healthz"))
        .send()
        .await
        .is_err()
    {
        analytics.check_alive()?;
        if started.elapsed() > Duration::from_secs(60) {
            bail!("analytics did not listen at {base_url} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let request = http
            .request(method, format!("{base_url}{path}"))
            .bearer_auth(&key);
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        async move {
            let response = request.send().await?;
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                bail!("{status}: {body}");
            }
            Ok::<_, anyhow::Error>(body)
        }
    };
    let rss_before = peak_rss_mib(&analytics.pid()).unwrap_or(0.0);
    let (mut rates, mut seconds, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    let mut file_bytes = 0;
    let mut list_ids = Vec::new();
    for index in 0..runs {
        let list = call(
            reqwest::Method::POST,
            "/v1/lists".into(),
            Some(json!({"name": format!("bench-{index}"), "opt_in": "single"})),
        )
        .await?;
        let list_id = list["id"].as_str().context("a list id")?.to_owned();
        let file = csv_file(index, rows);
        file_bytes = file.len();
        let cpu_before = cpu_seconds(&analytics.pid()).unwrap_or(0.0);
        let started = Instant::now();
        let response = http
            .post(format!("{base_url}/v1/lists/{list_id}/imports"))
            .bearer_auth(&key)
            .header("content-type", "text/csv")
            .body(file)
            .send()
            .await?;
        if response.status() != reqwest::StatusCode::ACCEPTED {
            bail!("upload: {} {}", response.status(), response.text().await?);
        }
        let job: Value = response.json().await?;
        let job_id = job["id"].as_str().context("a job id")?.to_owned();
        let done = loop {
            analytics.check_alive()?;
            let job = call(reqwest::Method::GET, format!("/v1/imports/{job_id}"), None).await?;
            match job["state"].as_str() {
                Some("completed") => break job,
                Some("failed") => bail!("the import failed: {job}"),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let elapsed = started.elapsed().as_secs_f64();
        let used = cpu_seconds(&analytics.pid()).unwrap_or(0.0) - cpu_before;
        if done["created"].as_u64() != Some(rows as u64) {
            bail!("expected {rows} created contacts: {done}");
        }
        rates.push(rows as f64 / elapsed);
        seconds.push(elapsed);
        cpu.push(used / rows as f64 * 10_000.0);
        list_ids.push(list_id);
    }
    let peak = peak_rss_mib(&analytics.pid()).unwrap_or(0.0);

    let expressions = [
        "attributes.plan = \"pro\"".to_owned(),
        "attributes.plan = \"pro\" and attributes.seats > 20 and in_list(\"bench-0\") and not attributes.city = \"Oslo\"".to_owned(),
        "attributes.vip = true or opened_within(30d)".to_owned(),
        "email ends_with \"7@bench-import.test\"".to_owned(),
    ];
    let mut segment_count_ms = Vec::new();
    for (i, expression) in expressions.iter().enumerate() {
        let segment = call(
            reqwest::Method::POST,
            "/v1/segments".into(),
            Some(json!({"name": format!("bench-{i}"), "expression": expression})),
        )
        .await?;
        let id = segment["id"].as_str().context("a segment id")?.to_owned();
        let mut times = Vec::new();
        let mut count = 0;
        for _ in 0..count_runs.max(1) {
            let started = Instant::now();
            let answer = call(
                reqwest::Method::GET,
                format!("/v1/segments/{id}/count"),
                None,
            )
            .await?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            count = answer["count"].as_i64().unwrap_or(-1);
        }
        segment_count_ms.push((expression.clone(), median(times), count));
    }
    drop(analytics);
    broker.delete().await;
    let _ = std::fs::remove_dir_all(&run.dir);
    Ok(ImportReport {
        rows,
        attribute_columns: 10,
        file_bytes,
        runs,
        rows_per_sec: median(rates.clone()),
        rows_per_sec_runs: rates,
        seconds_runs: seconds,
        analytics_cpu_s_per_10k: median(cpu),
        rss_before_mib: rss_before,
        peak_rss_mib: peak,
        contacts: rows * runs,
        segment_count_ms,
    })
}
