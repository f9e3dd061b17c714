//! Sending domains: the domains an account sends from, each with its DKIM keys (RSA-2048,
//! optionally Ed25519 for dual signing), return-path domain and the result of the last
//! DNS verification. Every query takes the account id. Private keys are sealed at rest
//! (`secrets`) when a keyring is configured, all of a row's under one KEK.
//!
//! DKIM key rotation (RFC 6376 §3.1: a new key goes under a new selector) is two steps:
//! [`Store::stage_dkim_key`] makes the next RSA key under a new selector, whose record
//! the tenant publishes; [`Store::activate_dkim_key`] makes it the signing key. The old
//! selector's record should stay published for a few days, for mail signed with it.

use crate::{
    dkim,
    secrets::{open_stored, seal_stored, SecretKind},
    Store, StoreError,
};
use sendmill_wire::AccountId;
use sqlx::Row;
use std::fmt;
use time::OffsetDateTime;
use uuid::Uuid;

/// A domain an account sends from, with its DKIM keys.
#[derive(Clone)]
pub struct SendingDomain {
    pub id: Uuid,
    pub account_id: AccountId,
    pub domain: String,
    pub dkim_selector: String,
    pub dkim_private_key_pkcs8: Vec<u8>,
    pub dkim_public_key: String,
    /// The Ed25519 key, for domains created since dual signing exists.
    pub ed25519: Option<Ed25519DkimKey>,
    /// Sign with the Ed25519 key too (receivers that know it prefer it; RSA stays for
    /// the rest).
    pub dual_sign: bool,
    /// The domain of VERP return paths, where asynchronous bounces come back.
    pub return_path_domain: String,
    /// The next RSA key, staged by a rotation until it is activated.
    pub next_dkim: Option<StagedDkimKey>,
    /// When its DNS records were last found in place; `None`: never (or no longer).
    pub verified_at: Option<OffsetDateTime>,
    /// What the last verification found, record by record.
    pub verification: Option<serde_json::Value>,
}

/// An RSA-2048 key staged under its own selector (DKIM key rotation).
#[derive(Clone)]
pub struct StagedDkimKey {
    pub selector: String,
    pub private_pkcs8: Vec<u8>,
    pub public_key: String,
}

impl StagedDkimKey {
    /// Its DKIM TXT record, to publish before activating it: `(name, value)`.
    pub fn dkim_record(&self, domain: &str) -> (String, String) {
        dkim::txt_record(domain, &self.selector, &self.public_key)
    }
}

/// Why a key rotation step was refused.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("the account has no sending domain {0}")]
    NoDomain(String),
    #[error("selector {0:?} is in use by the domain; a new key needs a new selector")]
    SelectorInUse(String),
    #[error("selector {0:?} is not a DNS label (letters, digits, hyphens; at most 63)")]
    BadSelector(String),
    #[error("{0} has no staged key: stage one first")]
    NothingStaged(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct Ed25519DkimKey {
    pub selector: String,
    pub private_pkcs8: Vec<u8>,
    pub public_key: String,
}

impl fmt::Debug for SendingDomain {
    // The private key never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendingDomain")
            .field("id", &self.id)
            .field("account_id", &self.account_id)
            .field("domain", &self.domain)
            .field("dkim_selector", &self.dkim_selector)
            .finish_non_exhaustive()
    }
}

impl SendingDomain {
    /// The RSA key's DKIM TXT record: `(name, value)`.
    pub fn dkim_record(&self) -> (String, String) {
        dkim::txt_record(&self.domain, &self.dkim_selector, &self.dkim_public_key)
    }

    /// Every DKIM TXT record to publish (RSA, and Ed25519 when the domain has one).
    pub fn dkim_records(&self) -> Vec<(String, String)> {
        let mut records = vec![self.dkim_record()];
        if let Some(ed) = &self.ed25519 {
            records.push(dkim::ed25519_txt_record(
                &self.domain,
                &ed.selector,
                &ed.public_key,
            ));
        }
        records
    }
}

impl Store {
    /// Registers `domain` for the account with a fresh RSA-2048 DKIM key.
    pub async fn add_sending_domain(
        &self,
        account_id: AccountId,
        domain: &str,
        selector: &str,
    ) -> Result<SendingDomain, StoreError> {
        let key = dkim::generate_rsa_2048().map_err(|_| StoreError::KeyGeneration)?;
        let ed = dkim::generate_ed25519().map_err(|_| StoreError::KeyGeneration)?;
        let domain = domain.to_ascii_lowercase();
        let sending = SendingDomain {
            id: Uuid::now_v7(),
            account_id,
            return_path_domain: format!("bounces.{domain}"),
            domain,
            dkim_selector: selector.to_owned(),
            dkim_private_key_pkcs8: key.private_pkcs8,
            dkim_public_key: key.public_spki_base64,
            ed25519: Some(Ed25519DkimKey {
                selector: format!("{selector}e"),
                private_pkcs8: ed.private_pkcs8,
                public_key: ed.public_base64,
            }),
            dual_sign: false,
            next_dkim: None,
            verified_at: None,
            verification: None,
        };
        let ed = sending.ed25519.as_ref().expect("just generated");
        let keyring = self.keyring();
        let (kek_id, rsa_stored) = seal_stored(
            keyring,
            SecretKind::DkimRsa,
            sending.id,
            &sending.dkim_private_key_pkcs8,
        )?;
        // One KEK per row: both keys are sealed in one go, so they share it.
        let (_, ed_stored) = seal_stored(
            keyring,
            SecretKind::DkimEd25519,
            sending.id,
            &ed.private_pkcs8,
        )?;
        let inserted = sqlx::query(
            "INSERT INTO sending_domains
               (id, account_id, domain, dkim_selector, dkim_private_key, dkim_public_key,
                dkim_ed25519_selector, dkim_ed25519_private_key, dkim_ed25519_public_key,
                return_path_domain, dkim_kek_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (account_id, domain) DO NOTHING",
        )
        .bind(sending.id)
        .bind(account_id.0)
        .bind(&sending.domain)
        .bind(&sending.dkim_selector)
        .bind(&rsa_stored)
        .bind(&sending.dkim_public_key)
        .bind(&ed.selector)
        .bind(&ed_stored)
        .bind(&ed.public_key)
        .bind(&sending.return_path_domain)
        .bind(kek_id)
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict("sending domain"));
        }
        Ok(sending)
    }

    pub async fn sending_domain(
        &self,
        account_id: AccountId,
        domain: &str,
    ) -> Result<Option<SendingDomain>, StoreError> {
        let row = sqlx::query(
            "SELECT id, domain, dkim_selector, dkim_private_key, dkim_public_key,
                    dkim_ed25519_selector, dkim_ed25519_private_key, dkim_ed25519_public_key,
                    dkim_next_selector, dkim_next_private_key, dkim_next_public_key,
                    dual_sign, return_path_domain, verified_at, verification, dkim_kek_id
             FROM sending_domains WHERE account_id = $1 AND domain = $2",
        )
        .bind(account_id.0)
        .bind(domain.to_ascii_lowercase())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| self.sending_domain_from_row(account_id, &r))
            .transpose()
    }

    /// The account's sending domains, by name.
    pub async fn sending_domains(
        &self,
        account_id: AccountId,
    ) -> Result<Vec<SendingDomain>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, domain, dkim_selector, dkim_private_key, dkim_public_key,
                    dkim_ed25519_selector, dkim_ed25519_private_key, dkim_ed25519_public_key,
                    dkim_next_selector, dkim_next_private_key, dkim_next_public_key,
                    dual_sign, return_path_domain, verified_at, verification, dkim_kek_id
             FROM sending_domains WHERE account_id = $1 ORDER BY domain",
        )
        .bind(account_id.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| self.sending_domain_from_row(account_id, r))
            .collect()
    }

    /// Removes the domain (and its keys); `false` when the account has no such domain.
    pub async fn delete_sending_domain(
        &self,
        account_id: AccountId,
        domain: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM sending_domains WHERE account_id = $1 AND domain = $2")
            .bind(account_id.0)
            .bind(domain.to_ascii_lowercase())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Stores a verification's findings; `verified` sets or clears `verified_at`.
    pub async fn record_verification(
        &self,
        account_id: AccountId,
        domain: &str,
        verified: bool,
        findings: &serde_json::Value,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        let verified_at: Option<Option<OffsetDateTime>> = sqlx::query_scalar(
            "UPDATE sending_domains
             SET verification = $3,
                 verified_at = CASE WHEN $4 THEN COALESCE(verified_at, now()) ELSE NULL END
             WHERE account_id = $1 AND domain = $2
             RETURNING verified_at",
        )
        .bind(account_id.0)
        .bind(domain.to_ascii_lowercase())
        .bind(sqlx::types::Json(findings))
        .bind(verified)
        .fetch_optional(&self.pool)
        .await?;
        Ok(verified_at.flatten())
    }

    /// Marks a domain verified without looking at DNS (operators, local development).
    pub async fn force_verified(
        &self,
        account_id: AccountId,
        domain: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sending_domains SET verified_at = COALESCE(verified_at, now())
             WHERE account_id = $1 AND domain = $2",
        )
        .bind(account_id.0)
        .bind(domain.to_ascii_lowercase())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Turns signing with the domain's Ed25519 key on or off; `false` when the account
    /// has no such domain or the domain has no Ed25519 key.
    pub async fn set_dual_sign(
        &self,
        account_id: AccountId,
        domain: &str,
        on: bool,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sending_domains SET dual_sign = $3
             WHERE account_id = $1 AND domain = $2 AND dkim_ed25519_private_key IS NOT NULL",
        )
        .bind(account_id.0)
        .bind(domain.to_ascii_lowercase())
        .bind(on)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

impl Store {
    /// Stages a new RSA-2048 key for `domain` under `selector` (DKIM key rotation, step
    /// one); a key staged before is replaced. The domain keeps signing with its current
    /// key until [`Store::activate_dkim_key`]. Returns the domain with
    /// [`SendingDomain::next_dkim`] set. Errors: no such domain; `selector` is the current
    /// RSA or Ed25519 selector, or not a DNS label.
    pub async fn stage_dkim_key(
        &self,
        account_id: AccountId,
        domain: &str,
        selector: &str,
    ) -> Result<SendingDomain, RotationError> {
        let valid = !selector.is_empty()
            && selector.len() <= 63
            && selector
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !selector.starts_with('-')
            && !selector.ends_with('-');
        if !valid {
            return Err(RotationError::BadSelector(selector.to_owned()));
        }
        let mut sending = self
            .sending_domain(account_id, domain)
            .await?
            .ok_or_else(|| RotationError::NoDomain(domain.to_owned()))?;
        let in_use = selector.eq_ignore_ascii_case(&sending.dkim_selector)
            || sending
                .ed25519
                .as_ref()
                .is_some_and(|ed| selector.eq_ignore_ascii_case(&ed.selector));
        if in_use {
            return Err(RotationError::SelectorInUse(selector.to_owned()));
        }
        let key = dkim::generate_rsa_2048().map_err(|_| StoreError::KeyGeneration)?;
        sending.next_dkim = Some(StagedDkimKey {
            selector: selector.to_ascii_lowercase(),
            private_pkcs8: key.private_pkcs8,
            public_key: key.public_spki_base64,
        });
        self.write_dkim_keys(&sending).await?;
        Ok(sending)
    }

    /// Makes the staged key the domain's signing key (DKIM key rotation, step two): its
    /// selector and keys replace the current RSA ones, and nothing stays staged. Render
    /// processes sign with it once their key cache (`render.key_cache`) expires. Errors:
    /// no such domain, nothing staged.
    pub async fn activate_dkim_key(
        &self,
        account_id: AccountId,
        domain: &str,
    ) -> Result<SendingDomain, RotationError> {
        let mut sending = self
            .sending_domain(account_id, domain)
            .await?
            .ok_or_else(|| RotationError::NoDomain(domain.to_owned()))?;
        let next = sending
            .next_dkim
            .take()
            .ok_or_else(|| RotationError::NothingStaged(domain.to_owned()))?;
        sending.dkim_selector = next.selector;
        sending.dkim_private_key_pkcs8 = next.private_pkcs8;
        sending.dkim_public_key = next.public_key;
        self.write_dkim_keys(&sending).await?;
        Ok(sending)
    }

    /// Writes every DKIM key of `sending` (selectors, public keys, private keys sealed
    /// under the keyring's current KEK, all of the row under it).
    async fn write_dkim_keys(&self, sending: &SendingDomain) -> Result<(), StoreError> {
        let keyring = self.keyring();
        let (kek_id, rsa) = seal_stored(
            keyring,
            SecretKind::DkimRsa,
            sending.id,
            &sending.dkim_private_key_pkcs8,
        )?;
        let ed = sending
            .ed25519
            .as_ref()
            .map(|ed| {
                seal_stored(
                    keyring,
                    SecretKind::DkimEd25519,
                    sending.id,
                    &ed.private_pkcs8,
                )
            })
            .transpose()?
            .map(|(_, stored)| stored);
        let next = sending
            .next_dkim
            .as_ref()
            .map(|n| {
                seal_stored(
                    keyring,
                    SecretKind::DkimRsaNext,
                    sending.id,
                    &n.private_pkcs8,
                )
            })
            .transpose()?
            .map(|(_, stored)| stored);
        sqlx::query(
            "UPDATE sending_domains
             SET dkim_selector = $3, dkim_private_key = $4, dkim_public_key = $5,
                 dkim_ed25519_private_key = $6,
                 dkim_next_selector = $7, dkim_next_private_key = $8, dkim_next_public_key = $9,
                 dkim_kek_id = $10
             WHERE id = $1 AND account_id = $2",
        )
        .bind(sending.id)
        .bind(sending.account_id.0)
        .bind(&sending.dkim_selector)
        .bind(rsa)
        .bind(&sending.dkim_public_key)
        .bind(ed)
        .bind(sending.next_dkim.as_ref().map(|n| &n.selector))
        .bind(next)
        .bind(sending.next_dkim.as_ref().map(|n| &n.public_key))
        .bind(kek_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

impl Store {
    /// A sending domain as stored, its private keys opened.
    fn sending_domain_from_row(
        &self,
        account_id: AccountId,
        r: &sqlx::postgres::PgRow,
    ) -> Result<SendingDomain, StoreError> {
        let id: Uuid = r.get("id");
        let kek_id: Option<String> = r.get("dkim_kek_id");
        let open = |kind, stored: Vec<u8>| {
            open_stored(self.keyring(), kind, id, kek_id.as_deref(), stored)
        };
        let domain: String = r.get("domain");
        // A key kept in three optional columns: selector, sealed private key, public key.
        let optional_key = |columns: [&str; 3], kind| -> Result<_, StoreError> {
            match (
                r.get::<Option<String>, _>(columns[0]),
                r.get::<Option<Vec<u8>>, _>(columns[1]),
                r.get::<Option<String>, _>(columns[2]),
            ) {
                (Some(selector), Some(stored), Some(public_key)) => {
                    Ok(Some((selector, open(kind, stored)?, public_key)))
                }
                _ => Ok(None),
            }
        };
        let ed25519 = optional_key(
            [
                "dkim_ed25519_selector",
                "dkim_ed25519_private_key",
                "dkim_ed25519_public_key",
            ],
            SecretKind::DkimEd25519,
        )?
        .map(|(selector, private_pkcs8, public_key)| Ed25519DkimKey {
            selector,
            private_pkcs8,
            public_key,
        });
        let next_dkim = optional_key(
            [
                "dkim_next_selector",
                "dkim_next_private_key",
                "dkim_next_public_key",
            ],
            SecretKind::DkimRsaNext,
        )?
        .map(|(selector, private_pkcs8, public_key)| StagedDkimKey {
            selector,
            private_pkcs8,
            public_key,
        });
        Ok(SendingDomain {
            id,
            account_id,
            return_path_domain: r
                .get::<Option<String>, _>("return_path_domain")
                .unwrap_or_else(|| format!("bounces.{domain}")),
            domain,
            dkim_selector: r.get("dkim_selector"),
            dkim_private_key_pkcs8: open(SecretKind::DkimRsa, r.get("dkim_private_key"))?,
            dkim_public_key: r.get("dkim_public_key"),
            ed25519,
            next_dkim,
            dual_sign: r.get("dual_sign"),
            verified_at: r.get("verified_at"),
            verification: r
                .get::<Option<sqlx::types::Json<serde_json::Value>>, _>("verification")
                .map(|j| j.0),
        })
    }
}
