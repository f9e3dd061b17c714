//! Events into ClickHouse in batches, at least once. Each consumed event waits until the
//! batch holding it is written; only then does the consumer loop store its offset. A
//! failed insert is retried whole (ClickHouse deduplicates by event id), so an outage of
//! ClickHouse stalls the stage rather than losing events.

use crate::row::EventRow;
use sendmill_platform::{backoff, CancellationToken};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

#[derive(Clone)]
pub struct BatchInserter {
    queue: mpsc::Sender<(EventRow, oneshot::Sender<()>)>,
}

#[derive(Debug, thiserror::Error)]
#[error("the inserter has stopped")]
pub struct Stopped;

impl BatchInserter {
    /// Starts the writer task: a batch is written when it holds `max_rows` or its first
    /// row has waited `max_wait`.
    pub fn start(
        client: clickhouse::Client,
        table: &'static str,
        max_rows: usize,
        max_wait: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        let (queue, mut incoming) = mpsc::channel::<(EventRow, oneshot::Sender<()>)>(max_rows * 2);
        tokio::spawn(async move {
            while let Some(first) = incoming.recv().await {
                let mut batch = vec![first];
                let deadline = tokio::time::sleep(max_wait);
                tokio::pin!(deadline);
                while batch.len() < max_rows {
                    tokio::select! {
                        next = incoming.recv() => match next {
                            Some(item) => batch.push(item),
                            None => break,
                        },
                        _ = &mut deadline => break,
                    }
                }
                let rows: Vec<&EventRow> = batch.iter().map(|(row, _)| row).collect();
                let written = backoff::until_ok("clickhouse insert", &shutdown, || {
                    write(&client, table, &rows)
                })
                .await;
                if written.is_err() {
                    // Shutdown: the waiting handlers see their acks dropped and store no
                    // offsets; the events come again after restart.
                    return;
                }
                metrics::counter!(crate::metric::ANALYTICS_ROWS_WRITTEN_TOTAL)
                    .increment(batch.len() as u64);
                for (_, ack) in batch {
                    let _ = ack.send(());
                }
            }
        });
        Self { queue }
    }

    /// Resolves once `row` is written.
    pub async fn add(&self, row: EventRow) -> Result<(), Stopped> {
        let (ack, written) = oneshot::channel();
        self.queue.send((row, ack)).await.map_err(|_| Stopped)?;
        written.await.map_err(|_| Stopped)
    }
}

async fn write(
    client: &clickhouse::Client,
    table: &str,
    rows: &[&EventRow],
) -> Result<(), clickhouse::error::Error> {
    let mut insert = client.insert::<EventRow>(table).await?;
    for row in rows {
        insert.write(*row).await?;
    }
    insert.end().await
}
