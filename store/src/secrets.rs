//! Secrets at rest: DKIM private keys and webhook signing secrets are sealed with
//! AES-256-GCM (aws-lc-rs, the crypto library everywhere in Sendmill) under a
//! key-encryption key (KEK) before they reach PostgreSQL, and opened when read.
//!
//! - Each row names the KEK that sealed it (`dkim_kek_id`, `secret_kek_id`; NULL: a row
//!   written before a KEK was configured, still in plaintext). A [`Keyring`] holds the
//!   current KEK and older ones, so KEKs rotate without downtime: configure the new one
//!   first in the ring, keep the old ones, run `sendmill admin rotate-kek`
//!   ([`crate::Store::reseal_secrets`]) to re-encrypt every row, then drop the old KEK.
//! - Sealed bytes are a 96-bit random nonce, the ciphertext and the 128-bit tag. The
//!   additional data binds them to their table, column and row id: a sealed value
//!   copied into another row (another tenant's) does not open.
//! - KEKs come from a file or the environment (`[secrets]`, `SENDMILL_KEKS`), never
//!   from the database. Nothing here logs a secret or a KEK.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::{engine::general_purpose::STANDARD, Engine};
use uuid::Uuid;

/// Errors of parsing a keyring.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyringError {
    #[error("KEK entry {0} is not `id:base64-of-32-bytes`")]
    Entry(usize),
    #[error("KEK id {0:?} must be 1 to 32 letters, digits, - or _")]
    Id(String),
    #[error("KEK {0:?} is not 32 bytes of base64")]
    Key(String),
    #[error("KEK id {0:?} is given twice")]
    Duplicate(String),
    #[error("no KEK given")]
    Empty,
}

/// Why a secret could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("a secret is sealed with KEK {0:?}, which the keyring does not hold")]
    UnknownKek(String),
    #[error(
        "a sealed secret does not open with KEK {0:?} (wrong key, or the row was tampered with)"
    )]
    Corrupt(String),
    #[error("a sealed secret was read but no KEK is configured ([secrets], SENDMILL_KEKS)")]
    NoKeyring,
    #[error("the system random generator failed")]
    Random,
}

/// Which secret a sealed value is: part of the additional data.
#[derive(Clone, Copy, Debug)]
pub enum SecretKind {
    DkimRsa,
    DkimEd25519,
    /// A staged RSA key (DKIM key rotation).
    DkimRsaNext,
    WebhookSecret,
    /// The copy of an API key that verifies AWS Signature V4 requests.
    Sigv4Secret,
}

impl SecretKind {
    fn label(self) -> &'static str {
        match self {
            SecretKind::DkimRsa => "sending_domains.dkim_private_key",
            SecretKind::DkimEd25519 => "sending_domains.dkim_ed25519_private_key",
            SecretKind::DkimRsaNext => "sending_domains.dkim_next_private_key",
            SecretKind::WebhookSecret => "webhook_endpoints.secret",
            SecretKind::Sigv4Secret => "api_keys.sigv4_secret",
        }
    }
}

/// The KEKs: the first seals, every one opens.
pub struct Keyring {
    keys: Vec<(String, LessSafeKey)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Keyring").field("ids", &ids).finish()
    }
}

impl Keyring {
    /// Parses `id:base64` entries (32-byte keys) separated by commas or line breaks; the
    /// first is the current KEK. Blank entries and `#` comment lines are skipped.
    pub fn parse(text: &str) -> Result<Keyring, KeyringError> {
        let mut keys: Vec<(String, LessSafeKey)> = Vec::new();
        let entries = text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with('#'));
        for (i, entry) in entries.enumerate() {
            let (id, key) = entry.split_once(':').ok_or(KeyringError::Entry(i + 1))?;
            let (id, key) = (id.trim(), key.trim());
            let id_ok = (1..=32).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !id_ok {
                return Err(KeyringError::Id(id.to_owned()));
            }
            if keys.iter().any(|(known, _)| known == id) {
                return Err(KeyringError::Duplicate(id.to_owned()));
            }
            let bytes = STANDARD
                .decode(key)
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| KeyringError::Key(id.to_owned()))?;
            let unbound = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| KeyringError::Key(id.to_owned()))?;
            keys.push((id.to_owned(), LessSafeKey::new(unbound)));
        }
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        Ok(Keyring { keys })
    }

    /// A new random KEK, base64 (for `id:` + this in the keyring).
    pub fn generate_key() -> Result<String, SecretError> {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| SecretError::Random)?;
        Ok(STANDARD.encode(key))
    }

    /// The id of the KEK that seals.
    pub fn current(&self) -> &str {
        &self.keys[0].0
    }

    fn aad(kind: SecretKind, row: Uuid) -> Vec<u8> {
        format!("sendmill:{}:{row}", kind.label()).into_bytes()
    }

    /// Seals `plaintext` of `kind` for row `row`: (KEK id, nonce ‖ ciphertext ‖ tag).
    pub fn seal(
        &self,
        kind: SecretKind,
        row: Uuid,
        plaintext: &[u8],
    ) -> Result<(String, Vec<u8>), SecretError> {
        let (id, key) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SecretError::Random)?;
        let mut sealed = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(Self::aad(kind, row)),
            &mut sealed,
        )
        .map_err(|_| SecretError::Corrupt(id.clone()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok((id.clone(), out))
    }

    /// Opens what [`Keyring::seal`] sealed with KEK `kek_id`.
    pub fn open(
        &self,
        kind: SecretKind,
        row: Uuid,
        kek_id: &str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, SecretError> {
        let (_, key) = self
            .keys
            .iter()
            .find(|(id, _)| id == kek_id)
            .ok_or_else(|| SecretError::UnknownKek(kek_id.to_owned()))?;
        if sealed.len() < NONCE_LEN {
            return Err(SecretError::Corrupt(kek_id.to_owned()));
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| SecretError::Corrupt(kek_id.to_owned()))?;
        let mut buffer = ciphertext.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(Self::aad(kind, row)), &mut buffer)
            .map_err(|_| SecretError::Corrupt(kek_id.to_owned()))?;
        Ok(plain.to_vec())
    }
}

/// Opens a stored value: plaintext when `kek_id` is NULL (a row from before KEKs).
pub(crate) fn open_stored(
    keyring: Option<&Keyring>,
    kind: SecretKind,
    row: Uuid,
    kek_id: Option<&str>,
    stored: Vec<u8>,
) -> Result<Vec<u8>, SecretError> {
    match (kek_id, keyring) {
        (None, _) => Ok(stored),
        (Some(_), None) => Err(SecretError::NoKeyring),
        (Some(id), Some(ring)) => ring.open(kind, row, id, &stored),
    }
}

/// Seals a value to store: in plaintext (KEK id `None`) without a keyring.
pub(crate) fn seal_stored(
    keyring: Option<&Keyring>,
    kind: SecretKind,
    row: Uuid,
    plaintext: &[u8],
) -> Result<(Option<String>, Vec<u8>), SecretError> {
    match keyring {
        None => Ok((None, plaintext.to_vec())),
        Some(ring) => ring.seal(kind, row, plaintext).map(|(id, s)| (Some(id), s)),
    }
}

/// What [`crate::Store::reseal_secrets`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Rows now sealed under the current KEK.
    pub sending_domains: u64,
    pub webhook_endpoints: u64,
    /// API keys' SigV4 copies.
    pub api_keys: u64,
    /// Rows left as they were because they did not open (`table id: why`); the rest
    /// was resealed all the same.
    pub failed: Vec<String>,
}

/// Rows read per statement.
const RESEAL_BATCH: i64 = 200;

impl crate::Store {
    /// Seals every secret not yet under the keyring's current KEK: plaintext rows (from
    /// before a KEK was configured) and rows under an older KEK. One pass over each
    /// table in id order, so it ends even if another process with another keyring runs
    /// at the same time; a row is rewritten only if its KEK id is still the one it was
    /// read with; a row that does not open is reported and skipped. Run it (`sendmill
    /// admin rotate-kek`) once every process holds the new keyring: a process without
    /// the KEK a row is sealed under cannot open it. Without a keyring it does nothing.
    pub async fn reseal_secrets(&self) -> Result<Resealed, crate::StoreError> {
        use sqlx::Row;
        let Some(ring) = self.keyring() else {
            return Ok(Resealed::default());
        };
        let current = ring.current().to_owned();
        let mut done = Resealed::default();
        let mut after = Uuid::nil();
        loop {
            let rows = sqlx::query(
                "SELECT id, dkim_private_key, dkim_ed25519_private_key, dkim_next_private_key,
                        dkim_kek_id
                 FROM sending_domains WHERE id > $1 AND dkim_kek_id IS DISTINCT FROM $2
                 ORDER BY id LIMIT $3",
            )
            .bind(after)
            .bind(&current)
            .bind(RESEAL_BATCH)
            .fetch_all(self.pool())
            .await?;
            let Some(last) = rows.last() else { break };
            after = last.get("id");
            for r in &rows {
                let id: Uuid = r.get("id");
                let old: Option<String> = r.get("dkim_kek_id");
                // Every key of the row under one KEK: the row has one KEK id.
                let reseal = |kind,
                              stored: Option<Vec<u8>>|
                 -> Result<Option<Vec<u8>>, SecretError> {
                    stored
                        .map(|stored| {
                            let plain = open_stored(Some(ring), kind, id, old.as_deref(), stored)?;
                            Ok(ring.seal(kind, id, &plain)?.1)
                        })
                        .transpose()
                };
                let resealed = (|| {
                    Ok::<_, SecretError>((
                        reseal(SecretKind::DkimRsa, r.get("dkim_private_key"))?,
                        reseal(SecretKind::DkimEd25519, r.get("dkim_ed25519_private_key"))?,
                        reseal(SecretKind::DkimRsaNext, r.get("dkim_next_private_key"))?,
                    ))
                })();
                let (rsa, ed, next) = match resealed {
                    Ok(keys) => keys,
                    Err(e) => {
                        done.failed.push(format!("sending_domains {id}: {e}"));
                        continue;
                    }
                };
                let updated = sqlx::query(
                    "UPDATE sending_domains
                     SET dkim_private_key = $2, dkim_ed25519_private_key = $3,
                         dkim_next_private_key = $4, dkim_kek_id = $5
                     WHERE id = $1 AND dkim_kek_id IS NOT DISTINCT FROM $6",
                )
                .bind(id)
                .bind(rsa)
                .bind(ed)
                .bind(next)
                .bind(&current)
                .bind(&old)
                .execute(self.pool())
                .await?;
                done.sending_domains += updated.rows_affected();
            }
        }
        done.webhook_endpoints = self
            .reseal_column(
                "webhook_endpoints",
                "secret",
                "secret_kek_id",
                &current,
                |id, old, stored: String| {
                    crate::webhooks::open_secret(Some(ring), id, old, stored)
                        .and_then(|plain| crate::webhooks::seal_secret(Some(ring), id, &plain))
                },
                &mut done.failed,
            )
            .await?;
        done.api_keys = self
            .reseal_column(
                "api_keys",
                "sigv4_secret",
                "sigv4_kek_id",
                &current,
                |id, old, stored: Vec<u8>| {
                    let kind = SecretKind::Sigv4Secret;
                    let plain = open_stored(Some(ring), kind, id, old, stored)?;
                    let (kek, sealed) = ring.seal(kind, id, &plain)?;
                    Ok((Some(kek), sealed))
                },
                &mut done.failed,
            )
            .await?;
        Ok(done)
    }

    /// One pass in id order over the rows of `table` whose `value` is set and whose
    /// `kek` column is not `current`: `reseal` opens each value (row id, KEK id, stored)
    /// and seals it again, and the row is rewritten only if its KEK id is still the one
    /// it was read with. A value that does not open is reported in `failed` (`table id:
    /// why`) and left. Returns how many rows were rewritten.
    async fn reseal_column<T>(
        &self,
        table: &str,
        value: &str,
        kek: &str,
        current: &str,
        reseal: impl Fn(Uuid, Option<&str>, T) -> Result<(Option<String>, T), crate::StoreError>,
        failed: &mut Vec<String>,
    ) -> Result<u64, crate::StoreError>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres>
            + for<'q> sqlx::Encode<'q, sqlx::Postgres>
            + sqlx::Type<sqlx::Postgres>
            + Send,
    {
        use sqlx::Row;
        let select = format!(
            "SELECT id, {value} AS value, {kek} AS kek FROM {table}
             WHERE id > $1 AND {value} IS NOT NULL AND {kek} IS DISTINCT FROM $2
             ORDER BY id LIMIT $3"
        );
        let update = format!(
            "UPDATE {table} SET {value} = $2, {kek} = $3
             WHERE id = $1 AND {kek} IS NOT DISTINCT FROM $4"
        );
        let mut rewritten = 0;
        let mut after = Uuid::nil();
        loop {
            let rows = sqlx::query(&select)
                .bind(after)
                .bind(current)
                .bind(RESEAL_BATCH)
                .fetch_all(self.pool())
                .await?;
            let Some(last) = rows.last() else { break };
            after = last.get("id");
            for r in &rows {
                let id: Uuid = r.get("id");
                let old: Option<String> = r.get("kek");
                let (new_kek, sealed) = match reseal(id, old.as_deref(), r.get("value")) {
                    Ok(sealed) => sealed,
                    Err(e) => {
                        failed.push(format!("{table} {id}: {e}"));
                        continue;
                    }
                };
                let updated = sqlx::query(&update)
                    .bind(id)
                    .bind(sealed)
                    .bind(new_kek)
                    .bind(&old)
                    .execute(self.pool())
                    .await?;
                rewritten += updated.rows_affected();
            }
        }
        Ok(rewritten)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(text: &str) -> Keyring {
        Keyring::parse(text).unwrap()
    }

    #[test]
    fn seals_opens_and_binds_to_the_row() {
        let k1 = Keyring::generate_key().unwrap();
        let k2 = Keyring::generate_key().unwrap();
        let old = ring(&format!("k1:{k1}"));
        let rotated = ring(&format!("k2:{k2}\nk1:{k1}"));
        let row = Uuid::now_v7();
        let secret = b"-----BEGIN PRIVATE KEY----- not really";
        let (id, sealed) = old.seal(SecretKind::DkimRsa, row, secret).unwrap();
        assert_eq!(id, "k1");
        assert!(!sealed.windows(secret.len()).any(|w| w == secret));
        // Two seals of one secret differ (random nonces).
        assert_ne!(
            sealed,
            old.seal(SecretKind::DkimRsa, row, secret).unwrap().1
        );
        assert_eq!(
            old.open(SecretKind::DkimRsa, row, "k1", &sealed).unwrap(),
            secret
        );
        // The rotated ring still opens k1 and seals with k2.
        assert_eq!(
            rotated
                .open(SecretKind::DkimRsa, row, "k1", &sealed)
                .unwrap(),
            secret
        );
        assert_eq!(rotated.current(), "k2");
        // Another row, another column, a flipped bit, an unknown KEK: nothing opens.
        assert!(old
            .open(SecretKind::DkimRsa, Uuid::now_v7(), "k1", &sealed)
            .is_err());
        assert!(old
            .open(SecretKind::DkimEd25519, row, "k1", &sealed)
            .is_err());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(old.open(SecretKind::DkimRsa, row, "k1", &flipped).is_err());
        assert!(matches!(
            ring(&format!("k2:{k2}")).open(SecretKind::DkimRsa, row, "k1", &sealed),
            Err(SecretError::UnknownKek(_))
        ));
        assert!(old
            .open(SecretKind::DkimRsa, row, "k1", &sealed[..5])
            .is_err());
    }

    #[test]
    fn keyrings_are_parsed_strictly() {
        let k = Keyring::generate_key().unwrap();
        assert_eq!(
            ring(&format!(" # comment\n a:{k} , b:{k}\n")).current(),
            "a"
        );
        for (text, error) in [
            (String::new(), KeyringError::Empty),
            ("nocolon".into(), KeyringError::Entry(1)),
            (format!("bad id:{k}"), KeyringError::Id("bad id".into())),
            ("a:c2hvcnQ=".into(), KeyringError::Key("a".into())),
            (format!("a:{k},a:{k}"), KeyringError::Duplicate("a".into())),
        ] {
            assert_eq!(Keyring::parse(&text).unwrap_err(), error, "{text:?}");
        }
        // Debug output names the ids, never the keys.
        assert!(!format!("{:?}", ring(&format!("a:{k}"))).contains(&k));
    }
}
