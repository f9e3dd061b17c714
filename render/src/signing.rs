//! DKIM signing per sending domain. A signer is built from the domain's PKCS#8 key once
//! and cached; lookups that find no domain are not cached, so a domain added after a
//! failure is picked up at once.

use crate::message::{RenderError, Unsigned};
use mail_auth::{
    common::{
        crypto::{RsaKey, Sha256},
        headers::HeaderWriter,
    },
    dkim::{Canonicalization, DkimSigner, Done},
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use sendmill_store::{Store, StoreError};
use sendmill_wire::{AccountId, ReadyV1};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Headers covered by the signature: what receivers check, and what must not be added
/// in transit.
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

pub struct DomainSigner {
    signer: DkimSigner<RsaKey<Sha256>, Done>,
}

impl DomainSigner {
    pub fn new(domain: &str, selector: &str, pkcs8: &[u8]) -> Result<Self, RenderError> {
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8));
        let key =
            RsaKey::<Sha256>::from_key_der(der).map_err(|e| RenderError::Signing(e.to_string()))?;
        let signer = DkimSigner::from_key(key)
            .domain(domain)
            .selector(selector)
            .headers(SIGNED_HEADERS.iter().copied())
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        Ok(Self { signer })
    }

    /// Signs and returns the `ready` record: the signature header, then the message.
    pub fn sign(&self, unsigned: Unsigned) -> Result<ReadyV1, RenderError> {
        let signature = self
            .signer
            .sign(&unsigned.bytes)
            .map_err(|e| RenderError::Signing(e.to_string()))?;
        let header = signature.to_header();
        let mut message = Vec::with_capacity(header.len() + unsigned.bytes.len());
        message.extend_from_slice(header.as_bytes());
        message.extend_from_slice(&unsigned.bytes);
        let request = unsigned.request;
        Ok(ReadyV1 {
            message_id: request.message_id,
            account_id: request.account_id,
            lane: request.lane,
            accepted_at: request.accepted_at,
            envelope_from: unsigned.envelope_from,
            recipient: request.to.email,
            context: request.context,
            attempts: 0,
            message,
        })
    }
}

type CacheKey = (AccountId, String);

pub struct SignerCache {
    store: Store,
    ttl: Duration,
    cache: Mutex<HashMap<CacheKey, (Arc<DomainSigner>, Instant)>>,
}

impl SignerCache {
    pub fn new(store: Store, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            cache: Mutex::default(),
        }
    }

    /// The signer for the account's sending domain, `None` when it has no such domain.
    pub async fn get(
        &self,
        account: AccountId,
        domain: &str,
    ) -> Result<Option<Arc<DomainSigner>>, StoreError> {
        let key = (account, domain.to_owned());
        if let Some((signer, at)) = self.cache.lock().expect("not poisoned").get(&key) {
            if at.elapsed() < self.ttl {
                return Ok(Some(signer.clone()));
            }
        }
        let Some(sending) = self.store.sending_domain(account, domain).await? else {
            return Ok(None);
        };
        let signer = match DomainSigner::new(
            &sending.domain,
            &sending.dkim_selector,
            &sending.dkim_private_key_pkcs8,
        ) {
            Ok(signer) => Arc::new(signer),
            Err(error) => {
                tracing::error!(%domain, %error, "stored DKIM key is unusable");
                return Ok(None);
            }
        };
        self.cache
            .lock()
            .expect("not poisoned")
            .insert(key, (signer.clone(), Instant::now()));
        Ok(Some(signer))
    }
}
