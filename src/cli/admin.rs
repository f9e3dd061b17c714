//! `sendmill admin …` and `sendmill seed`: tenants, keys, domains and pauses from the
//! command line.

use anyhow::{bail, Context};
use clap::Subcommand;
use sendmill::SendmillConfig;
use sendmill_store::{Scope, Store};
use sendmill_wire::AccountId;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum Admin {
    /// Creates an account and prints its id.
    CreateAccount {
        #[arg(long)]
        name: String,
        /// An operator account: manages tenants and the global suppression list.
        #[arg(long)]
        operator: bool,
    },
    /// Creates an API key and prints it (the only time it is shown).
    CreateKey {
        #[arg(long)]
        account: AccountId,
        #[arg(long, default_value = "default")]
        name: String,
        /// Comma-separated scopes: send, templates, domains, suppressions, stats,
        /// webhooks, contacts, admin.
        #[arg(long, value_delimiter = ',', default_value = "send,stats")]
        scopes: Vec<Scope>,
    },
    /// Creates or replaces a Handlebars partial (or layout) of an account.
    PutPartial {
        #[arg(long)]
        account: AccountId,
        #[arg(long)]
        name: String,
        /// File holding the partial's source.
        #[arg(long)]
        file: PathBuf,
    },
    /// Sets an account's tracking defaults (a message may override them).
    Tracking {
        #[arg(long)]
        account: AccountId,
        /// Add an open pixel to HTML messages.
        #[arg(long, action = clap::ArgAction::Set)]
        opens: bool,
        /// Route HTML links through the click endpoint.
        #[arg(long, action = clap::ArgAction::Set)]
        clicks: bool,
    },
    /// Turns Ed25519 + RSA dual DKIM signing of a sending domain on or off.
    DualSign {
        #[arg(long)]
        account: AccountId,
        #[arg(long)]
        domain: String,
        #[arg(long, action = clap::ArgAction::Set)]
        on: bool,
    },
    /// Pauses a source IP or an IP pool on every dispatcher: no new connections, no new
    /// messages from it until `resume`.
    Pause {
        /// A source IP of a pool.
        #[arg(long, conflicts_with = "pool", required_unless_present = "pool")]
        ip: Option<std::net::IpAddr>,
        /// A pool name.
        #[arg(long)]
        pool: Option<String>,
        /// Why, shown by `paused`.
        #[arg(long, default_value = "paused by ops")]
        reason: String,
    },
    /// Lifts a pause set by `pause` (or by the reputation monitor).
    Resume {
        #[arg(long, conflicts_with = "pool", required_unless_present = "pool")]
        ip: Option<std::net::IpAddr>,
        #[arg(long)]
        pool: Option<String>,
    },
    /// Lists paused IPs and pools with their reasons.
    Paused,
    /// Adds a sending domain with a new DKIM key and prints the DNS record to publish.
    AddDomain {
        #[arg(long)]
        account: AccountId,
        #[arg(long)]
        domain: String,
        #[arg(long, default_value = "s1")]
        selector: String,
    },
    /// Rotates a sending domain's RSA DKIM key in two steps. Without `--activate`:
    /// stages a new key under `--selector` and prints its TXT record to publish (the
    /// domain keeps signing with its current key). With `--activate`: checks that the
    /// staged key's record is published (through `ingest.domains.nameservers`) and makes
    /// it the signing key; keep the old selector's record published for a few days.
    RotateDkim {
        #[arg(long)]
        account: AccountId,
        #[arg(long)]
        domain: String,
        /// The new key's selector (a DNS label not in use by the domain).
        #[arg(long, required_unless_present = "activate")]
        selector: Option<String>,
        /// Make the staged key the signing key.
        #[arg(long, conflicts_with = "selector")]
        activate: bool,
        /// Activate without looking the record up (it is published where the configured
        /// resolvers cannot see it).
        #[arg(long, requires = "activate")]
        skip_dns_check: bool,
    },
    /// Prints a new key-encryption key as a keyring entry (`ID:base64`), to put first in
    /// `[secrets] kek_file` or `SENDMILL_KEKS`.
    GenerateKek {
        /// The new KEK's id (letters, digits, - and _), e.g. the date.
        #[arg(long)]
        id: String,
    },
    /// Seals every DKIM private key and webhook secret under the keyring's current KEK:
    /// rows from before a KEK was configured, and rows under an older KEK (after a new
    /// one was put first; then the old one can be dropped). Run it once every process
    /// has the keyring. Safe while the platform runs; prints how many rows it resealed
    /// and each row that did not open.
    RotateKek,
}

async fn connect_store(config: &SendmillConfig) -> anyhow::Result<Store> {
    let store = crate::pipeline::connect_store(config, 2).await?;
    store.migrate().await.context("PostgreSQL migrations")?;
    Ok(store)
}

/// Runs `admin`, printing what it created or changed.
pub async fn run(config: &SendmillConfig, admin: Admin) -> anyhow::Result<()> {
    use sendmill_tenancy::pauses::{self, Target};
    let target = |ip: Option<std::net::IpAddr>, pool: Option<String>| match (ip, pool) {
        (Some(ip), _) => Target::Ip(ip),
        (None, Some(pool)) => Target::Pool(pool),
        (None, None) => unreachable!("clap requires one"),
    };
    let prefix = &config.redis.key_prefix;
    match admin {
        Admin::Pause { ip, pool, reason } => {
            let mut redis = sendmill_platform::clients::redis(&config.redis).await?;
            let target = target(ip, pool);
            pauses::pause(&mut redis, prefix, &target, &reason).await?;
            println!("paused {}", target.member());
            return Ok(());
        }
        Admin::Resume { ip, pool } => {
            let mut redis = sendmill_platform::clients::redis(&config.redis).await?;
            let target = target(ip, pool);
            let was = pauses::resume(&mut redis, prefix, &target).await?;
            println!(
                "{} {}",
                if was { "resumed" } else { "was not paused:" },
                target.member()
            );
            return Ok(());
        }
        Admin::Paused => {
            let mut redis = sendmill_platform::clients::redis(&config.redis).await?;
            for (member, reason) in pauses::list(&mut redis, prefix).await? {
                println!("{member}\t{reason}");
            }
            return Ok(());
        }
        Admin::GenerateKek { id } => {
            let entry = format!("{id}:{}", sendmill_store::secrets::Keyring::generate_key()?);
            // Checked as the keyring will read it.
            sendmill_store::secrets::Keyring::parse(&entry)?;
            println!("{entry}");
            return Ok(());
        }
        _ => {}
    }
    let store = connect_store(config).await?;
    match admin {
        Admin::Pause { .. } | Admin::Resume { .. } | Admin::Paused | Admin::GenerateKek { .. } => {
            unreachable!("handled above")
        }
        Admin::RotateKek => {
            let Some(keyring) = config.keyring()? else {
                anyhow::bail!(
                    "no key-encryption key is configured ([secrets] kek_file, SENDMILL_KEKS)"
                );
            };
            let resealed = store.reseal_secrets().await?;
            println!(
                "resealed under KEK {}: {} sending domains, {} webhook endpoints, {} SigV4 API keys",
                keyring.current(),
                resealed.sending_domains,
                resealed.webhook_endpoints,
                resealed.api_keys
            );
            for failed in &resealed.failed {
                println!("not resealed: {failed}");
            }
            if !resealed.failed.is_empty() {
                anyhow::bail!(
                    "{} rows did not open; the rest are resealed",
                    resealed.failed.len()
                );
            }
        }
        Admin::CreateAccount { name, operator } => {
            let id = store.create_account(&name).await?;
            if operator {
                store.set_operator(id, true).await?;
            }
            println!("{id}");
        }
        Admin::CreateKey {
            account,
            name,
            scopes,
        } => println!(
            "{}",
            store
                .create_api_key(account, &name, &scopes, false)
                .await?
                .plaintext
        ),
        Admin::AddDomain {
            account,
            domain,
            selector,
        } => {
            // Stored as A-labels, as the API stores it (IDNA2008).
            let domain = sendmill_wire::address::domain_name(&domain)
                .map_err(|e| anyhow::anyhow!("domain {domain:?}: {e}"))?;
            let added = store
                .add_sending_domain(account, &domain, &selector)
                .await?;
            println!("Publish these DNS records, then send from any address @{domain}:");
            for (name, value) in added.dkim_records() {
                println!("{name} TXT \"{value}\"");
            }
        }
        Admin::PutPartial {
            account,
            name,
            file,
        } => {
            let source = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            sendmill_render::templates::Templates::with_partials(&[(name.clone(), source.clone())])
                .map_err(|e| anyhow::anyhow!("the partial does not compile: {e}"))?;
            store.put_partial(account, &name, &source).await?;
            println!("partial {name} saved");
        }
        Admin::Tracking {
            account,
            opens,
            clicks,
        } => {
            let settings = sendmill_store::AccountSettings {
                track_opens: opens,
                track_clicks: clicks,
            };
            store.set_tracking_defaults(account, &settings).await?;
            println!("tracking defaults: opens {opens}, clicks {clicks}");
        }
        Admin::RotateDkim {
            account,
            domain,
            selector,
            activate,
            skip_dns_check,
        } => {
            let domain = sendmill_wire::address::domain_name(&domain).unwrap_or(domain);
            match selector {
                Some(selector) if !activate => {
                    let staged = store.stage_dkim_key(account, &domain, &selector).await?;
                    let next = staged.next_dkim.as_ref().expect("just staged");
                    let (name, value) = next.dkim_record(&domain);
                    println!("Publish this DNS record, then run again with --activate:");
                    println!("{name} TXT \"{value}\"");
                }
                _ => {
                    let Some(sending) = store.sending_domain(account, &domain).await? else {
                        bail!("the account has no sending domain {domain}");
                    };
                    let Some(next) = &sending.next_dkim else {
                        bail!("{domain} has no staged key: stage one with --selector first");
                    };
                    let (name, _) = next.dkim_record(&domain);
                    if !skip_dns_check {
                        let nameservers = sendmill_platform::dns::parse_nameservers(
                            &config.ingest.domains.nameservers,
                        )
                        .map_err(|e| anyhow::anyhow!("ingest.domains.nameservers: {e}"))?;
                        let resolver = sendmill_platform::dns::resolver(
                            &nameservers,
                            config.ingest.domains.dns_timeout,
                            0,
                        )
                        .map_err(|e| anyhow::anyhow!("DNS resolver: {e}"))?;
                        let found =
                            sendmill_platform::dns::txt_records(&resolver, &format!("{name}."))
                                .await
                                .unwrap_or_else(|e| vec![format!("(lookup failed: {e})")]);
                        let published = found
                            .iter()
                            .any(|txt| sendmill_store::dkim::publishes_key(txt, &next.public_key));
                        if !published {
                            bail!(
                                "{name} does not publish the staged key yet (found {found:?}); \
                                 receivers would fail its signatures"
                            );
                        }
                    }
                    let active = store.activate_dkim_key(account, &domain).await?;
                    println!(
                        "{domain} signs with selector {} now (within render.key_cache); keep \
                         the old selector's record published for a few days",
                        active.dkim_selector
                    );
                }
            }
        }
        Admin::DualSign {
            account,
            domain,
            on,
        } => {
            let domain = sendmill_wire::address::domain_name(&domain).unwrap_or(domain);
            if !store.set_dual_sign(account, &domain, on).await? {
                bail!("the account has no sending domain {domain} with an Ed25519 key");
            }
            println!(
                "dual signing of {domain}: {}",
                if on { "on" } else { "off" }
            );
        }
    }
    Ok(())
}

/// Sets up the `dev` tenant (see `sendmill seed --help`).
pub async fn seed(
    config: &SendmillConfig,
    domain: &str,
    dnsmasq_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let store = connect_store(config).await?;
    let account = match store.account_by_name("dev").await? {
        Some(id) => id,
        None => store.create_account("dev").await?,
    };
    let sending = match store.sending_domain(account, domain).await? {
        Some(existing) => existing,
        None => store.add_sending_domain(account, domain, "s1").await?,
    };
    if let Some(dir) = dnsmasq_dir {
        let (name, value) = sending.dkim_record();
        // A TXT string holds at most 255 bytes; verifiers join the pieces.
        let pieces: Vec<String> = value
            .as_bytes()
            .chunks(255)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        let file = dir.join(format!("dkim-{domain}.conf"));
        std::fs::write(&file, format!("txt-record={name},{}\n", pieces.join(",")))
            .with_context(|| format!("writing {}", file.display()))?;
        eprintln!("wrote the DKIM record for {domain} to {}", file.display());
    }
    let key = store
        .create_api_key(account, "seed", &Scope::ALL, false)
        .await?;
    eprintln!("account dev ({account}), sending domain {domain}, new API key:");
    println!("{}", key.plaintext);
    Ok(())
}
