//! A sending domain's identity on the wire: its DKIM signers (RSA-2048, plus Ed25519 when
//! dual signing is on) and its VERP return-path domain. Built from the stored keys once
//! and cached per (account, domain); lookups that find no domain are not cached, so a
//! domain added after a failure is used at once.

use crate::{dkim::DkimSigner, message::RenderError};
use sendmill_platform::return_path::ReturnPaths;
use sendmill_store::{SendingDomain, Store, StoreError};
use sendmill_wire::{verp, AccountId, ReadyV1, RequestedV1};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use time::OffsetDateTime;

/// Header fields covered by the signatures: what receivers check, and what must not be
/// added in transit (names absent from a message are signed as absent).
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
];

pub struct SendingIdentity {
    rsa: DkimSigner,
    ed25519: Option<DkimSigner>,
    return_path_domain: String,
}

impl SendingIdentity {
    pub fn new(domain: &SendingDomain) -> Result<Self, RenderError> {
        let signing = |e: crate::dkim::DkimError| RenderError::Signing(e.to_string());
        let rsa = DkimSigner::rsa(
            &domain.domain,
            &domain.dkim_selector,
            &domain.dkim_private_key_pkcs8,
            SIGNED_HEADERS,
        )
        .map_err(signing)?;
        let ed25519 = match (&domain.ed25519, domain.dual_sign) {
            (Some(key), true) => Some(
                DkimSigner::ed25519(
                    &domain.domain,
                    &key.selector,
                    &key.private_pkcs8,
                    SIGNED_HEADERS,
                )
                .map_err(signing)?,
            ),
            _ => None,
        };
        Ok(Self {
            rsa,
            ed25519,
            return_path_domain: domain.return_path_domain.clone(),
        })
    }

    pub fn return_path_domain(&self) -> &str {
        &self.return_path_domain
    }

    /// Signs `unsigned` (the message built for `request`) as of `at` and returns the
    /// `ready` record: signatures, then the message; the envelope sender is the message's
    /// VERP return path, signed when `return_paths` is given (a tracking secret is
    /// configured), so the inbound stage can trust what comes back to it.
    pub fn seal(
        &self,
        unsigned: &[u8],
        request: &RequestedV1,
        at: OffsetDateTime,
        return_paths: Option<&ReturnPaths>,
    ) -> Result<ReadyV1, RenderError> {
        let timestamp = at.unix_timestamp().max(0) as u64;
        let signing = |e: crate::dkim::DkimError| RenderError::Signing(e.to_string());
        let mut headers = self.rsa.sign(unsigned, timestamp).map_err(signing)?;
        if let Some(ed) = &self.ed25519 {
            headers.push_str(&ed.sign(unsigned, timestamp).map_err(signing)?);
        }
        let mut message = Vec::with_capacity(headers.len() + unsigned.len());
        message.extend_from_slice(headers.as_bytes());
        message.extend_from_slice(unsigned);
        Ok(ReadyV1 {
            message_id: request.message_id,
            account_id: request.account_id,
            lane: request.lane,
            accepted_at: request.accepted_at,
            envelope_from: match return_paths {
                Some(paths) => paths.bounce(request.message_id, &self.return_path_domain),
                None => verp::return_path(request.message_id, &self.return_path_domain),
            },
            recipient: request.recipient().to_owned(),
            context: request.context.clone(),
            attempts: 0,
            message,
        })
    }
}

type CacheKey = (AccountId, String);

pub struct IdentityCache {
    store: Store,
    ttl: Duration,
    cache: Mutex<HashMap<CacheKey, (Arc<SendingIdentity>, Instant)>>,
}

impl IdentityCache {
    pub fn new(store: Store, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            cache: Mutex::default(),
        }
    }

    /// The identity of the account's sending domain, `None` when it has no such domain.
    pub async fn get(
        &self,
        account: AccountId,
        domain: &str,
    ) -> Result<Option<Arc<SendingIdentity>>, StoreError> {
        let key = (account, domain.to_owned());
        if let Some((identity, at)) = self.cache.lock().expect("not poisoned").get(&key) {
            if at.elapsed() < self.ttl {
                return Ok(Some(identity.clone()));
            }
        }
        let Some(sending) = self.store.sending_domain(account, domain).await? else {
            return Ok(None);
        };
        let identity = match SendingIdentity::new(&sending) {
            Ok(identity) => Arc::new(identity),
            Err(error) => {
                tracing::error!(%domain, %error, "stored DKIM key is unusable");
                return Ok(None);
            }
        };
        self.cache
            .lock()
            .expect("not poisoned")
            .insert(key, (identity.clone(), Instant::now()));
        Ok(Some(identity))
    }
}
