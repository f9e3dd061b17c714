//! # sendmill-render
//!
//! Consumes `requested` records and produces `ready` ones: the exact bytes a mailbox
//! provider will judge. For each recipient it renders the Handlebars subject, HTML and
//! text with the recipient's data, builds the MIME message with lettre (Message-ID on
//! the sending domain, Date, the caller's headers), and signs it with the sending
//! domain's DKIM key (`relaxed/relaxed`, RSA-2048 through aws-lc).
//!
//! A template that does not render, or a sending domain whose key is gone, ends the
//! message with a `render_failed` event (terminal). A record that cannot be decoded goes
//! to the DLQ. Offsets are stored only once the `ready` record (or the event) is written.
//!
//! ## Layout
//! - [`message`]: templates + MIME, pure and deterministic for a given clock.
//! - [`templates`]: compiled-once Handlebars with helpers, lenient or strict.
//! - [`text`]: a text part from an HTML part.
//! - [`links`]: click tracking, open pixel, one-click unsubscribe headers.
//! - [`encoding`]: body transfer encodings in one pass.
//! - [`dkim`]: the DKIM signer (relaxed/relaxed, RSA-SHA256 and Ed25519-SHA256).
//! - [`submitted`]: messages submitted over SMTP, kept as they came.
//! - [`signing`]: each sending domain's signers and return-path domain, cached.
//! - [`metric`]: the names of the metrics it records, each with what it counts.

pub mod dkim;
pub mod encoding;
pub mod links;
pub mod message;
pub mod metric;
pub mod signing;
pub mod submitted;
pub mod templates;
pub mod text;

use sendmill_platform::{
    backoff,
    kafka::{self, consumer::decode, ConsumerSpec, Handled, HandlerError, KafkaConnection, Record},
    CancellationToken,
};
use sendmill_store::Store;
use sendmill_wire::{EventType, EventV1, Lane, RequestedV1};
use serde::Deserialize;
use std::{sync::Arc, time::Duration};

/// `[render]`: the renderer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kafka consumer group of the render stage.
    pub group_id: String,
    /// Records held at once per process and lane (rendering, or waiting to produce).
    pub concurrency: usize,
    /// Threads that render (templates, MIME, DKIM: CPU work) at once, off the async
    /// runtime so that other stages' I/O in the same process (`sendmill all`) is never
    /// starved by it. 0: one per core.
    pub cpu_threads: usize,
    /// Address of `/healthz` and `/metrics` when render runs as its own process.
    /// Env: `SENDMILL_RENDER_OPS_LISTEN`.
    pub ops_listen: String,
    /// How long a sending domain's DKIM key is cached before it is read again.
    #[serde(with = "sendmill_platform::config::duration")]
    pub key_cache: Duration,
    /// How long an account's template partials are cached before they are read again.
    #[serde(with = "sendmill_platform::config::duration")]
    pub template_cache: Duration,
    /// Bytes of requests' shared parts (templates, attachments, submitted messages read
    /// from the blobs topic) kept per process, so that a request's recipients read them
    /// once; the oldest go first. At least the last one read is kept, whatever its size.
    pub blob_cache_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            group_id: "sendmill-render".into(),
            concurrency: 64,
            cpu_threads: 0,
            ops_listen: "127.0.0.1:9102".into(),
            key_cache: Duration::from_secs(300),
            template_cache: Duration::from_secs(30),
            blob_cache_bytes: 256 * 1024 * 1024,
        }
    }
}

impl Config {
    pub fn apply_env(&mut self) {
        sendmill_platform::config::override_string(&mut self.ops_listen, "RENDER_OPS_LISTEN");
    }
}

/// What the render stage needs from outside, built once by the binary.
pub struct Deps {
    /// The cluster it consumes `requested` from and produces `ready` and events to.
    pub kafka: KafkaConnection,
    /// Tenant data: DKIM keys, template partials.
    pub store: Store,
    /// Tracking and unsubscribe links; `None` without `tracking.secret` (none added).
    pub links: Option<Arc<links::Links>>,
}

/// Why the render stage stopped before shutdown.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaError),
}

/// Consumes both lanes' `requested` topics until `shutdown`: renders each record and
/// produces it to its lane's `ready` topic (or a `render_failed` event). Returns
/// `Err` only when the Kafka clients cannot be created or consuming fails for good.
pub async fn run(config: Config, deps: Deps, shutdown: CancellationToken) -> Result<(), Error> {
    let Deps {
        kafka,
        store,
        links,
    } = deps;
    let cpu_threads = match config.cpu_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let stage = Arc::new(Stage {
        links,
        cpu: tokio::sync::Semaphore::new(cpu_threads),
        bulk_slots: tokio::sync::Semaphore::new(cpu_threads),
        producer: kafka.producer()?,
        identities: signing::IdentityCache::new(store.clone(), config.key_cache),
        templates: templates::AccountTemplates::new(store.clone(), config.template_cache),
        blobs: kafka::blobs::BlobReader::new(&kafka, config.blob_cache_bytes)?,
        kafka: kafka.clone(),
        // Records already taken are finished for up to the drain grace after shutdown.
        shutdown: sendmill_platform::shutdown::after_grace(&shutdown, kafka.config.drain_grace),
    });
    // One loop per lane, each with its own capacity, so bulk records held at the CPU
    // pool never stop transactional ones from being fetched; and bulk renders queue for
    // the CPU pool only `cpu_threads` at a time (see `Stage::bulk_slots`).
    let lane = |lane: Lane| {
        let spec = ConsumerSpec {
            stage: "render",
            group_id: config.group_id.clone(),
            topics: vec![kafka.topics.requested(lane)],
            concurrency: config.concurrency,
        };
        kafka::consumer::run_shared(
            &kafka,
            spec,
            stage.clone(),
            |stage, record| async move { stage.handle(record).await },
            shutdown.clone(),
        )
    };
    // A lane whose loop fails stops the stage (and the other lane) as any failure does.
    tokio::try_join!(lane(Lane::Transactional), lane(Lane::Bulk))?;
    Ok(())
}

struct Stage {
    links: Option<Arc<links::Links>>,
    /// At most this many renders at once on blocking threads (`cpu_threads`).
    cpu: tokio::sync::Semaphore,
    /// Bulk renders take one of these (`cpu_threads`) before queueing for `cpu`, so a
    /// transactional render waits behind at most `cpu_threads` bulk ones however many
    /// bulk records are held: the transactional lane first (DESIGN.md §4).
    bulk_slots: tokio::sync::Semaphore,
    producer: kafka::Producer,
    identities: signing::IdentityCache,
    templates: templates::AccountTemplates,
    /// The large parts of records that point to the blobs topic.
    blobs: kafka::blobs::BlobReader,
    kafka: KafkaConnection,
    shutdown: CancellationToken,
}

impl Stage {
    async fn handle(&self, record: Record) -> Result<Handled, HandlerError> {
        let mut request: RequestedV1 = decode(&record)?;
        let key = request.message_id.to_string();
        let domain = sendmill_wire::payload::domain_of(&request.from.email);
        let templates = backoff::until_ok("load partials", &self.shutdown, || {
            self.templates.get(request.account_id)
        })
        .await?;
        let identity = backoff::until_ok("load DKIM key", &self.shutdown, || {
            self.identities.get(request.account_id, &domain)
        })
        .await?;
        // A record whose large parts are on the blobs topic reads them first (shared, from
        // the cache); parts that are gone end the message (retention removed them, or the
        // topic was replaced). They are copied into the record only on the CPU pool, so
        // at most `cpu_threads` copies exist however many records are held.
        let parts = match request.shared.clone() {
            None => Ok(None),
            Some(reference) => {
                let blob = backoff::until_ok("read shared parts", &self.shutdown, || {
                    self.blobs.get(&reference)
                })
                .await?;
                match blob {
                    kafka::blobs::Blob::Found(parts) => Ok(Some(parts)),
                    kafka::blobs::Blob::Gone(why) => Err(message::RenderError::SharedParts(why)),
                }
            }
        };
        let now = time::OffsetDateTime::now_utc();
        let rendered = match (parts, identity, templates) {
            (Err(error), _, _) => Err(error),
            (Ok(_), _, Err(partial)) => Err(message::RenderError::Template {
                part: "partials",
                reason: partial,
            }),
            (Ok(shared), Some(identity), Ok(templates)) => {
                // Templates, MIME and the RSA signature are CPU work: on the CPU pool, so
                // that they never hold a runtime thread another stage's I/O needs.
                let _bulk = match request.lane {
                    Lane::Bulk => Some(
                        self.bulk_slots
                            .acquire()
                            .await
                            .expect("the bulk slots are never closed"),
                    ),
                    Lane::Transactional => None,
                };
                let _slot = self
                    .cpu
                    .acquire()
                    .await
                    .expect("the CPU pool is never closed");
                let links = self.links.clone();
                let (rendered, back) = match tokio::task::spawn_blocking(move || {
                    let decorations = message::Decorations {
                        links: links.as_deref(),
                        return_path_domain: identity.return_path_domain(),
                    };
                    let filled = match &shared {
                        Some(parts) => parts
                            .fill(&mut request)
                            .map_err(|e| message::RenderError::SharedParts(e.to_string())),
                        None => Ok(()),
                    };
                    let rendered = filled
                        .and_then(|()| message::build(&templates, decorations, &request, now))
                        .and_then(|unsigned| {
                            let paths = links.as_deref().map(crate::links::Links::return_paths);
                            identity.seal(&unsigned, &request, now, paths)
                        });
                    if shared.is_some() {
                        // The copy is done with: the record goes on holding its head only.
                        drop(sendmill_wire::SharedParts::take_from(&mut request));
                    }
                    (rendered, request)
                })
                .await
                {
                    Ok(done) => done,
                    Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                    // Cancelled: the runtime is shutting down before the render ran. The
                    // record is not committed and is rendered again after the restart.
                    Err(_) => return Err(HandlerError::Interrupted),
                };
                request = back;
                rendered
            }
            (Ok(_), None, Ok(_)) => Err(message::RenderError::NoSigningKey(domain)),
        };
        match rendered {
            Ok(ready) => {
                let topic = self.kafka.topics.ready(request.lane);
                backoff::until_ok("produce ready", &self.shutdown, || {
                    self.producer.send(&topic, &key, &ready)
                })
                .await?;
                metrics::counter!(crate::metric::RENDERED_TOTAL).increment(1);
            }
            Err(error) => {
                tracing::info!(message_id = %request.message_id, %error, "render failed");
                metrics::counter!(crate::metric::RENDER_FAILED_TOTAL).increment(1);
                let mut event = EventV1::new(
                    EventType::RenderFailed,
                    "render",
                    request.message_id,
                    request.account_id,
                    request.recipient(),
                    &request.context,
                );
                event.reason = Some(error.to_string());
                let topic = self.kafka.topics.events();
                backoff::until_ok("produce render_failed", &self.shutdown, || {
                    self.producer.send(&topic, &key, &event)
                })
                .await?;
            }
        }
        Ok(Handled::Done)
    }
}
