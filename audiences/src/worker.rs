//! The import worker: takes a queued job (or one whose worker stopped renewing its
//! lease), reads its chunks in order through [`crate::rows`] and writes the rows in
//! batches of `import_batch_rows`, each batch one transaction with the job's progress.
//!
//! **Resuming.** `rows_read` only moves in the transaction that wrote those rows, so a
//! worker that dies mid-import leaves a job whose committed rows are exactly the first
//! `rows_read` records; the next worker parses from the start and skips that many.
//! Writing is an upsert keyed by (account, address), so even a whole re-run (a second
//! job with the same file) adds no contact twice. Within one job, a second row with an
//! address an earlier row had is skipped as a duplicate: each row stamps its contact with
//! the job id, and the upsert leaves a contact the same job already stamped alone.

use crate::{
    rows::{CsvRows, NdjsonRows, Parsed, Row},
    Audiences,
};
use sendmill_platform::CancellationToken;
use sqlx::Row as _;
use std::{collections::HashMap, time::Duration};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Another worker took the job over (this one was too slow to renew its lease).
    #[error("lost the lease")]
    LostLease,
    #[error("shut down")]
    ShutDown,
}

struct Job {
    id: Uuid,
    account: Uuid,
    list: Uuid,
    ndjson: bool,
    chunks: i32,
    /// Records already committed.
    done: i64,
    skipped: i64,
    lease: Uuid,
}

/// Runs jobs until `shutdown`; a job cut off by shutdown is resumed by the next worker.
pub async fn run(state: Audiences, shutdown: CancellationToken) {
    let poll = state.config.import_poll;
    let mut last_cleanup = tokio::time::Instant::now() - Duration::from_secs(3600);
    while !shutdown.is_cancelled() {
        if last_cleanup.elapsed() >= Duration::from_secs(3600) {
            last_cleanup = tokio::time::Instant::now();
            // Uploads abandoned by a crash, and the files of jobs that ended (a crash
            // between the end and the removal, or a failure) are removed.
            for cleanup in [
                "DELETE FROM import_jobs WHERE state = 'receiving' AND created_at < now() - interval '1 day'",
                "DELETE FROM import_chunks WHERE job_id IN
                     (SELECT id FROM import_jobs WHERE state IN ('completed', 'failed'))",
            ] {
                if let Err(error) = sqlx::query(cleanup).execute(state.store.pool()).await {
                    tracing::warn!(%error, "removing abandoned import files");
                }
            }
        }
        match claim(&state).await {
            Ok(Some(job)) => {
                let id = job.id;
                let lease = job.lease;
                match run_job(&state, job, &shutdown).await {
                    Ok(()) => tracing::info!(job = %id, "import completed"),
                    Err(JobError::ShutDown) => {}
                    // PostgreSQL refused the data itself (SQLSTATE class 22, data
                    // exception): running it again would fail again.
                    Err(JobError::Database(sqlx::Error::Database(e)))
                        if e.code().is_some_and(|c| c.starts_with("22")) =>
                    {
                        tracing::error!(job = %id, error = %e, "import refused by the database");
                        let failed = sqlx::query(
                            "UPDATE import_jobs SET state = 'failed', error = $3,
                                 finished_at = now(), updated_at = now()
                             WHERE id = $1 AND lease = $2",
                        )
                        .bind(id)
                        .bind(lease)
                        .bind(format!("the database refused a row: {}", e.message()))
                        .execute(state.store.pool())
                        .await;
                        if let Err(error) = failed {
                            tracing::warn!(job = %id, %error, "marking the import failed");
                        } else if let Err(error) = remove_file(&state, id).await {
                            tracing::warn!(job = %id, %error, "removing a failed import's file");
                        }
                    }
                    Err(error) => tracing::warn!(job = %id, %error, "import interrupted"),
                }
                continue;
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "looking for import jobs"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = state.wake_imports.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

async fn claim(state: &Audiences) -> Result<Option<Job>, sqlx::Error> {
    let lease = Uuid::now_v7();
    let row = sqlx::query(
        "UPDATE import_jobs SET state = 'running', lease = $1,
             lease_until = now() + make_interval(secs => $2), updated_at = now()
         WHERE id = (SELECT id FROM import_jobs
                     WHERE state = 'queued' OR (state = 'running' AND lease_until < now())
                     ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING id, account_id, list_id, format, chunks, rows_read, skipped",
    )
    .bind(lease)
    .bind(state.config.import_lease.as_secs_f64())
    .fetch_optional(state.store.pool())
    .await?;
    Ok(row.map(|r| Job {
        id: r.get("id"),
        account: r.get("account_id"),
        list: r.get("list_id"),
        ndjson: r.get::<&str, _>("format") == "ndjson",
        chunks: r.get("chunks"),
        done: r.get("rows_read"),
        skipped: r.get("skipped"),
        lease,
    }))
}

enum Parser {
    /// Boxed: csv-core's reader holds its whole state machine inline.
    Csv(Box<CsvRows>),
    Ndjson(NdjsonRows),
}

async fn run_job(
    state: &Audiences,
    mut job: Job,
    shutdown: &CancellationToken,
) -> Result<(), JobError> {
    let batch_rows = state.config.import_batch_rows.max(1);
    let mut parser = if job.ndjson {
        Parser::Ndjson(NdjsonRows::new(state.config.max_row_bytes))
    } else {
        Parser::Csv(Box::new(CsvRows::new(state.config.max_row_bytes)))
    };
    // Records parsed so far (those up to `job.done` were written by an earlier worker).
    let mut seen = 0i64;
    let mut batch = Vec::with_capacity(batch_rows);
    for seq in 0..=job.chunks {
        if shutdown.is_cancelled() {
            return Err(JobError::ShutDown);
        }
        let mut parsed = Vec::new();
        let mut emit = |p: Parsed| parsed.push(p);
        let outcome = if seq < job.chunks {
            let data: Vec<u8> =
                sqlx::query_scalar("SELECT data FROM import_chunks WHERE job_id = $1 AND seq = $2")
                    .bind(job.id)
                    .bind(seq)
                    .fetch_one(state.store.pool())
                    .await?;
            match &mut parser {
                Parser::Csv(p) => p.feed(&data, &mut emit),
                Parser::Ndjson(p) => {
                    p.feed(&data, &mut emit);
                    Ok(())
                }
            }
        } else {
            match &mut parser {
                Parser::Csv(p) => p.finish(&mut emit),
                Parser::Ndjson(p) => {
                    p.finish(&mut emit);
                    Ok(())
                }
            }
        };
        if let Err(error) = outcome {
            // The upload checked the header; only a file changed since can get here.
            return fail(state, &job, &error.to_string()).await;
        }
        // Still re-reading what an earlier worker wrote: nothing is written meanwhile, so
        // the lease is renewed here, or a long re-read would lose it to another worker.
        if seen < job.done {
            renew(state, &job).await?;
        }
        for p in parsed {
            seen += 1;
            if seen <= job.done {
                continue;
            }
            batch.push(p);
            if batch.len() == batch_rows {
                // Stopping leaves the lease to run out; the next worker resumes after
                // the last committed batch.
                if shutdown.is_cancelled() {
                    return Err(JobError::ShutDown);
                }
                write_batch(state, &mut job, std::mem::take(&mut batch)).await?;
            }
        }
    }
    if !batch.is_empty() {
        write_batch(state, &mut job, batch).await?;
    }
    let done = sqlx::query(
        "UPDATE import_jobs SET state = 'completed', finished_at = now(), updated_at = now(),
             lease = NULL, lease_until = NULL
         WHERE id = $1 AND lease = $2",
    )
    .bind(job.id)
    .bind(job.lease)
    .execute(state.store.pool())
    .await?;
    if done.rows_affected() == 0 {
        return Err(JobError::LostLease);
    }
    if job.done >= ANALYZE_AFTER_ROWS {
        // A large import changes the tables' shape at once; until autovacuum notices,
        // the planner would plan audience queries (segment counts, a campaign's start)
        // for the tables as they were: a nested loop over 100,000 contacts that ran for
        // minutes in `bench campaign`.
        for table in ["contacts", "list_members"] {
            if let Err(error) = sqlx::query(&format!("ANALYZE {table}"))
                .execute(state.store.pool())
                .await
            {
                tracing::warn!(%error, table, "ANALYZE after a large import");
            }
        }
    }
    remove_file(state, job.id).await
}

/// Rows after which a finished import refreshes the planner's statistics.
const ANALYZE_AFTER_ROWS: i64 = 10_000;

async fn renew(state: &Audiences, job: &Job) -> Result<(), JobError> {
    let renewed = sqlx::query(
        "UPDATE import_jobs SET lease_until = now() + make_interval(secs => $3), updated_at = now()
         WHERE id = $1 AND lease = $2",
    )
    .bind(job.id)
    .bind(job.lease)
    .bind(state.config.import_lease.as_secs_f64())
    .execute(state.store.pool())
    .await?;
    if renewed.rows_affected() == 0 {
        return Err(JobError::LostLease);
    }
    Ok(())
}

async fn fail(state: &Audiences, job: &Job, error: &str) -> Result<(), JobError> {
    sqlx::query(
        "UPDATE import_jobs SET state = 'failed', error = $3, finished_at = now(), updated_at = now()
         WHERE id = $1 AND lease = $2",
    )
    .bind(job.id)
    .bind(job.lease)
    .bind(error)
    .execute(state.store.pool())
    .await?;
    remove_file(state, job.id).await
}

/// The job's file, once it ended.
async fn remove_file(state: &Audiences, job: Uuid) -> Result<(), JobError> {
    sqlx::query("DELETE FROM import_chunks WHERE job_id = $1")
        .bind(job)
        .execute(state.store.pool())
        .await?;
    Ok(())
}

/// Writes one batch and the job's progress in one transaction.
async fn write_batch(state: &Audiences, job: &mut Job, batch: Vec<Parsed>) -> Result<(), JobError> {
    let records = batch.len() as i64;
    let mut skips: Vec<(i64, String)> = Vec::new();
    let mut rows: Vec<Row> = Vec::with_capacity(batch.len());
    let mut lines_by_email: HashMap<String, u64> = HashMap::new();
    for p in batch {
        match p {
            Parsed::Skip { line, reason } => skips.push((line as i64, reason)),
            Parsed::Row(row) => match lines_by_email.get(&row.email) {
                Some(first) => skips.push((
                    row.line as i64,
                    format!("duplicate of line {first}: the address is already in this file"),
                )),
                None => {
                    lines_by_email.insert(row.email.clone(), row.line);
                    rows.push(row);
                }
            },
        }
    }
    let mut tx = state.store.pool().begin().await?;
    let emails: Vec<&str> = rows.iter().map(|r| r.email.as_str()).collect();
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r.name.as_deref().unwrap_or(""))
        .collect();
    let attributes: Vec<sqlx::types::Json<&serde_json::Map<String, serde_json::Value>>> = rows
        .iter()
        .map(|r| sqlx::types::Json(&r.attributes))
        .collect();
    let written = sqlx::query(&format!(
        "WITH input AS (
             SELECT * FROM unnest($3::text[], $4::text[], $5::jsonb[]) AS i(email, name, attributes)
         ), up AS (
             INSERT INTO contacts AS c (id, account_id, email, name, attributes, status, import_job)
             SELECT gen_random_uuid(), $1, i.email, i.name, i.attributes,
                    COALESCE({}, 'active'), $2
             FROM input i
             ON CONFLICT (account_id, email) DO UPDATE
                 SET attributes = c.attributes || EXCLUDED.attributes,
                     name = CASE WHEN EXCLUDED.name <> '' THEN EXCLUDED.name ELSE c.name END,
                     import_job = EXCLUDED.import_job, updated_at = now()
                 WHERE c.import_job IS DISTINCT FROM EXCLUDED.import_job
             RETURNING c.id, c.email, c.status, (xmax = 0) AS inserted
         ), members AS (
             INSERT INTO list_members (account_id, list_id, contact_id, state, source, subscribed_at)
             SELECT $1, $6, up.id, 'subscribed', 'import', now() FROM up WHERE up.status = 'active'
             ON CONFLICT (list_id, contact_id) DO NOTHING
             RETURNING contact_id
         ), logged AS (
             INSERT INTO contact_events (account_id, contact_id, list_id, kind, source)
             SELECT $1, contact_id, $6, 'subscribed', 'import' FROM members
         )
         SELECT email, inserted FROM up",
        crate::contacts::suppressed_status_sql("$1", "i.email")
    ))
    .bind(job.account)
    .bind(job.id)
    .bind(&emails)
    .bind(&names)
    .bind(&attributes)
    .bind(job.list)
    .fetch_all(&mut *tx)
    .await?;
    let mut created = 0i64;
    let mut touched = std::collections::HashSet::with_capacity(written.len());
    for r in &written {
        if r.get::<bool, _>("inserted") {
            created += 1;
        }
        touched.insert(r.get::<String, _>("email"));
    }
    let updated = written.len() as i64 - created;
    // Rows the upsert left alone: an earlier batch of this job had the address.
    for row in &rows {
        if !touched.contains(&row.email) {
            skips.push((
                row.line as i64,
                "duplicate: the address is on an earlier line of this file".into(),
            ));
        }
    }
    let room = (state.config.max_reported_errors - job.skipped).max(0) as usize;
    if room > 0 && !skips.is_empty() {
        skips.sort_by_key(|(line, _)| *line);
        let kept = &skips[..skips.len().min(room)];
        let lines: Vec<i64> = kept.iter().map(|(l, _)| *l).collect();
        let reasons: Vec<&str> = kept.iter().map(|(_, r)| r.as_str()).collect();
        sqlx::query(
            "INSERT INTO import_errors (job_id, line, reason)
             SELECT $1, line, reason FROM unnest($2::bigint[], $3::text[]) AS e(line, reason)
             ON CONFLICT DO NOTHING",
        )
        .bind(job.id)
        .bind(&lines)
        .bind(&reasons)
        .execute(&mut *tx)
        .await?;
    }
    let skipped = skips.len() as i64;
    let progress = sqlx::query(
        "UPDATE import_jobs SET rows_read = rows_read + $3, created = created + $4,
             updated = updated + $5, skipped = skipped + $6, updated_at = now(),
             lease_until = now() + make_interval(secs => $7)
         WHERE id = $1 AND lease = $2",
    )
    .bind(job.id)
    .bind(job.lease)
    .bind(records)
    .bind(created)
    .bind(updated)
    .bind(skipped)
    .bind(state.config.import_lease.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    if progress.rows_affected() == 0 {
        return Err(JobError::LostLease);
    }
    tx.commit().await?;
    job.done += records;
    job.skipped += skipped;
    metrics::counter!(crate::metric::IMPORT_ROWS_TOTAL, "outcome" => "created")
        .increment(created as u64);
    metrics::counter!(crate::metric::IMPORT_ROWS_TOTAL, "outcome" => "updated")
        .increment(updated as u64);
    metrics::counter!(crate::metric::IMPORT_ROWS_TOTAL, "outcome" => "skipped")
        .increment(skipped as u64);
    Ok(())
}
