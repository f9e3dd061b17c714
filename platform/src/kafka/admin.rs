//! Topic administration: what every Sendmill topic must look like, and making a cluster
//! look like that.
//!
//! [`plan`] turns `[kafka]` into one [`TopicSpec`] per topic, by family:
//!
//! | family | topics | `retention.ms` | why |
//! |---|---|---|---|
//! | queue | `requested.*`, `ready.*`, `retry.*.*`, `inbound` | `queue_retention_hours` (≥ 7 days) | accepted mail waits here; it must outlive any outage |
//! | events | `events`, `alerts` | `events_retention_hours` | ClickHouse and the webhook outbox keep events for good; the topic is a buffer and replay window |
//! | dead letters | `dlq` | `dlq_retention_hours` | kept long enough for an operator to look |
//! | blobs | `blobs` | `blobs_retention_hours` | a request's large parts, read by offset until its last recipient is rendered |
//!
//! Every topic: `partitions`, `replication_factor`, `min.insync.replicas` (with the
//! producer's `acks=all`, a record is acknowledged once that many replicas have it),
//! `max.message.bytes` = `max_message_bytes` (the producer's and the consumers' limit
//! too), `cleanup.policy=delete`, `compression.type=producer` (the producer sends lz4 and
//! the broker keeps the batches as they came), and `unclean.leader.election.enable=false`
//! (an out-of-sync replica never becomes leader and drops acknowledged records).
//!
//! [`reconcile`] creates what is missing, grows partition counts (never shrinks them) and
//! alters configs that differ; running it twice changes nothing the second time. [`check`]
//! only reports. A replication factor that differs is reported by both and changed by
//! neither: that takes a partition reassignment, an operator's decision.

use super::KafkaConnection;
use rdkafka::{
    admin::{
        AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier,
        TopicReplication,
    },
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    types::RDKafkaErrorCode,
};
use sendmill_wire::Topics;
use std::{collections::BTreeMap, fmt, time::Duration};

/// What one topic must look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Topic-level configs, as the broker names them.
    pub configs: BTreeMap<&'static str, String>,
}

/// Every topic of the installation `kafka` describes, with its settings.
pub fn plan(kafka: &KafkaConnection) -> Vec<TopicSpec> {
    let c = &kafka.config;
    let hours_ms = |h: u32| (u64::from(h) * 3_600_000).to_string();
    let spec = |name: String, retention_hours: u32| TopicSpec {
        name,
        partitions: c.partitions,
        replication_factor: c.replication_factor,
        configs: BTreeMap::from([
            ("cleanup.policy", "delete".to_owned()),
            ("compression.type", "producer".to_owned()),
            ("max.message.bytes", c.max_message_bytes.to_string()),
            ("min.insync.replicas", c.min_insync_replicas.to_string()),
            ("retention.ms", hours_ms(retention_hours)),
            ("unclean.leader.election.enable", "false".to_owned()),
        ]),
    };
    let topics: &Topics = &kafka.topics;
    let mut specs: Vec<TopicSpec> = topics
        .queues()
        .into_iter()
        .map(|t| spec(t, c.queue_retention_hours))
        .collect();
    // Returned mail answered 250 waits here like accepted mail does in the queues.
    specs.push(spec(topics.inbound(), c.queue_retention_hours));
    specs.push(spec(topics.events(), c.events_retention_hours));
    specs.push(spec(topics.alerts(), c.events_retention_hours));
    specs.push(spec(topics.dlq(), c.dlq_retention_hours));
    specs.push(spec(topics.blobs(), c.blobs_retention_hours));
    specs
}

/// A way the cluster differs from the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    Missing {
        topic: String,
    },
    TooFewPartitions {
        topic: String,
        have: i32,
        want: i32,
    },
    ReplicationFactor {
        topic: String,
        have: i32,
        want: i32,
    },
    Config {
        topic: String,
        key: &'static str,
        have: Option<String>,
        want: String,
    },
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::Missing { topic } => write!(f, "{topic}: missing"),
            Drift::TooFewPartitions { topic, have, want } => {
                write!(f, "{topic}: {have} partitions, want {want}")
            }
            Drift::ReplicationFactor { topic, have, want } => write!(
                f,
                "{topic}: replication factor {have}, want {want} (needs a partition reassignment)"
            ),
            Drift::Config {
                topic,
                key,
                have,
                want,
            } => write!(
                f,
                "{topic}: {key} = {}, want {want}",
                have.as_deref().unwrap_or("(unset)")
            ),
        }
    }
}

/// What [`reconcile`] did.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub created: Vec<String>,
    pub partitions_added: Vec<String>,
    pub configs_altered: Vec<String>,
    /// Drift left for an operator (replication factors).
    pub left: Vec<Drift>,
}

impl Reconciled {
    pub fn changed_nothing(&self) -> bool {
        self.created.is_empty()
            && self.partitions_added.is_empty()
            && self.configs_altered.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach Kafka at {brokers}: {source}")]
    Unreachable {
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error("Kafka refused to {what} {topic}: {code}")]
    Refused {
        what: &'static str,
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error(transparent)]
    Client(#[from] KafkaError),
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn admin(kafka: &KafkaConnection) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    kafka.client_config().create()
}

fn options() -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(TIMEOUT))
        .operation_timeout(Some(TIMEOUT))
}

/// Compares the cluster with `specs`: every difference, in plan order.
pub async fn check(kafka: &KafkaConnection, specs: &[TopicSpec]) -> Result<Vec<Drift>, AdminError> {
    let admin = admin(kafka)?;
    diff(kafka, &admin, specs).await
}

/// Makes the cluster match `specs` (see the module doc); idempotent.
pub async fn reconcile(
    kafka: &KafkaConnection,
    specs: &[TopicSpec],
) -> Result<Reconciled, AdminError> {
    let admin = admin(kafka)?;
    let mut done = Reconciled::default();
    let drift = diff(kafka, &admin, specs).await?;
    let spec_of = |topic: &str| specs.iter().find(|s| s.name == topic).expect("planned");

    let missing: Vec<&TopicSpec> = drift
        .iter()
        .filter_map(|d| match d {
            Drift::Missing { topic } => Some(spec_of(topic)),
            _ => None,
        })
        .collect();
    if !missing.is_empty() {
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|s| {
                s.configs.iter().fold(
                    NewTopic::new(
                        &s.name,
                        s.partitions,
                        TopicReplication::Fixed(s.replication_factor),
                    ),
                    |t, (k, v)| t.set(k, v),
                )
            })
            .collect();
        for result in admin.create_topics(&new, &options()).await? {
            match result {
                // Created meanwhile by another migrate: the next run reconciles it.
                Ok(topic) | Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    done.created.push(topic)
                }
                Err((topic, code)) => {
                    return Err(AdminError::Refused {
                        what: "create",
                        topic,
                        code,
                    })
                }
            }
        }
    }

    if !done.created.is_empty() {
        // Creation is acknowledged by the controller; brokers learn of it a moment later.
        // Return only once the metadata shows every topic, so that a stage started right
        // after `migrate` finds them.
        let started = std::time::Instant::now();
        while diff(kafka, &admin, specs)
            .await?
            .iter()
            .any(|d| matches!(d, Drift::Missing { .. }))
        {
            if started.elapsed() > TIMEOUT {
                return Err(AdminError::Refused {
                    what: "show the created",
                    topic: done.created.join(", "),
                    code: RDKafkaErrorCode::OperationTimedOut,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let grow: Vec<NewPartitions<'_>> = drift
        .iter()
        .filter_map(|d| match d {
            Drift::TooFewPartitions { topic, want, .. } => {
                Some(NewPartitions::new(topic, *want as usize))
            }
            _ => None,
        })
        .collect();
    if !grow.is_empty() {
        for result in admin.create_partitions(&grow, &options()).await? {
            match result {
                Ok(topic) => done.partitions_added.push(topic),
                Err((topic, code)) => {
                    return Err(AdminError::Refused {
                        what: "add partitions to",
                        topic,
                        code,
                    })
                }
            }
        }
    }

    let mut alter_topics: Vec<&str> = drift
        .iter()
        .filter_map(|d| match d {
            Drift::Config { topic, .. } => Some(topic.as_str()),
            _ => None,
        })
        .collect();
    alter_topics.dedup();
    if !alter_topics.is_empty() {
        // AlterConfigs replaces a topic's whole set of dynamic configs: each call names
        // every config of the plan, so nothing planned is reset.
        let alters: Vec<AlterConfig<'_>> = alter_topics
            .iter()
            .map(|topic| {
                spec_of(topic).configs.iter().fold(
                    AlterConfig::new(ResourceSpecifier::Topic(topic)),
                    |a, (k, v)| a.set(k, v),
                )
            })
            .collect();
        for result in admin.alter_configs(&alters, &options()).await? {
            match result {
                Ok(_) => {}
                Err((resource, code)) => {
                    return Err(AdminError::Refused {
                        what: "alter configs of",
                        topic: format!("{resource:?}"),
                        code,
                    })
                }
            }
        }
        done.configs_altered = alter_topics.iter().map(|t| t.to_string()).collect();
    }

    done.left = drift
        .into_iter()
        .filter(|d| matches!(d, Drift::ReplicationFactor { .. }))
        .collect();
    Ok(done)
}

/// Deletes `topics` (tests clean up after themselves); missing ones are no error.
pub async fn delete_topics(kafka: &KafkaConnection, topics: &[String]) -> Result<(), AdminError> {
    let admin = admin(kafka)?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    for result in admin.delete_topics(&names, &options()).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => {
                return Err(AdminError::Refused {
                    what: "delete",
                    topic,
                    code,
                })
            }
        }
    }
    Ok(())
}

/// Partition count and replication factor of every existing topic among `specs`, then
/// the configs of those, compared with the plan.
async fn diff(
    kafka: &KafkaConnection,
    admin: &AdminClient<DefaultClientContext>,
    specs: &[TopicSpec],
) -> Result<Vec<Drift>, AdminError> {
    // Metadata of the whole cluster (one round trip), asked on a blocking thread.
    let config = kafka.client_config();
    let topics =
        tokio::task::spawn_blocking(move || -> Result<Vec<(String, i32, i32)>, KafkaError> {
            let client: BaseConsumer = config.create()?;
            let metadata = client.fetch_metadata(None, TIMEOUT)?;
            Ok(metadata
                .topics()
                .iter()
                .filter(|t| t.error().is_none())
                .map(|t| {
                    let replicas = t
                        .partitions()
                        .iter()
                        .map(|p| p.replicas().len() as i32)
                        .min();
                    (
                        t.name().to_owned(),
                        t.partitions().len() as i32,
                        replicas.unwrap_or(0),
                    )
                })
                .collect())
        })
        .await
        .expect("metadata lookups do not panic")
        .map_err(|source| AdminError::Unreachable {
            brokers: kafka.brokers.clone(),
            source,
        })?;
    let existing: BTreeMap<&str, (i32, i32)> = topics
        .iter()
        .map(|(name, partitions, replicas)| (name.as_str(), (*partitions, *replicas)))
        .collect();

    let mut drift = Vec::new();
    let mut present = Vec::new();
    for spec in specs {
        match existing.get(spec.name.as_str()) {
            None => drift.push(Drift::Missing {
                topic: spec.name.clone(),
            }),
            Some(&(partitions, replicas)) => {
                if partitions < spec.partitions {
                    drift.push(Drift::TooFewPartitions {
                        topic: spec.name.clone(),
                        have: partitions,
                        want: spec.partitions,
                    });
                }
                if replicas != spec.replication_factor {
                    drift.push(Drift::ReplicationFactor {
                        topic: spec.name.clone(),
                        have: replicas,
                        want: spec.replication_factor,
                    });
                }
                present.push(spec);
            }
        }
    }
    if present.is_empty() {
        return Ok(drift);
    }
    let resources: Vec<ResourceSpecifier<'_>> = present
        .iter()
        .map(|s| ResourceSpecifier::Topic(&s.name))
        .collect();
    let described = admin.describe_configs(&resources, &options()).await?;
    for (spec, result) in present.iter().zip(described) {
        let resource = result.map_err(|code| AdminError::Refused {
            what: "describe",
            topic: spec.name.clone(),
            code,
        })?;
        for (key, want) in &spec.configs {
            let have = resource.get(key).and_then(|e| e.value.clone());
            if have.as_deref() != Some(want.as_str()) {
                drift.push(Drift::Config {
                    topic: spec.name.clone(),
                    key,
                    have,
                    want: want.clone(),
                });
            }
        }
    }
    Ok(drift)
}
