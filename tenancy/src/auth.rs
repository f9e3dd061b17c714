//! Who the caller of an API is: bearer API keys resolved to principals (account, scopes,
//! limits) with a short-lived cache in front of PostgreSQL, and the [`Caller`] extractor
//! every handler takes.

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{header, request::Parts, StatusCode},
};
use sendmill_platform::api::ApiError;
use sendmill_store::{Principal, Scope, Store};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The SHA-256 of an API key.
type KeyHash = [u8; 32];

/// Resolves bearer keys to principals, caching answers for `ttl` (so a revoked key
/// keeps working for at most that long). The cache is keyed by the key's SHA-256, as
/// the database is: no plaintext key outlives its request.
#[derive(Clone)]
pub struct Authenticator {
    store: Store,
    ttl: Duration,
    cache: Arc<Mutex<HashMap<KeyHash, (Principal, Instant)>>>,
}

impl Authenticator {
    pub fn new(store: Store, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            cache: Arc::default(),
        }
    }

    pub async fn authenticate(&self, key: &str) -> Result<Principal, ApiError> {
        let hash = sendmill_store::keys::hash(key);
        if let Some((principal, at)) = self.cache.lock().expect("not poisoned").get(&hash) {
            if at.elapsed() < self.ttl {
                return Ok(principal.clone());
            }
        }
        let principal = self
            .store
            .authenticate(key)
            .await
            .map_err(|error| {
                tracing::error!(%error, "API key lookup failed");
                ApiError::unavailable("authentication")
            })?
            .ok_or_else(ApiError::unauthorized)?;
        let mut cache = self.cache.lock().expect("not poisoned");
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(hash, (principal.clone(), Instant::now()));
        Ok(principal)
    }
}

impl Authenticator {
    /// Drops a revoked key from this process's cache at once (other processes notice
    /// within their cache TTL).
    pub fn forget_key(&self, key_id: uuid::Uuid) {
        self.cache
            .lock()
            .expect("not poisoned")
            .retain(|_, (principal, _)| principal.key_id != key_id);
    }
}

/// The authenticated caller of a request.
pub struct Caller(pub Principal);

impl Caller {
    /// Operators (an operator account's key with the `admin` scope) only.
    pub fn require_operator(&self) -> Result<(), ApiError> {
        if self.0.operator && self.0.has(Scope::Admin) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only an operator's admin key may do this",
            ))
        }
    }

    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.0.has(scope) {
            Ok(())
        } else {
            Err(ApiError::forbidden(scope))
        }
    }
}

/// A principal a front end already authenticated (the account web app's session
/// cookie), put in the request's extensions for [`Caller`] to take instead of a bearer
/// key.
#[derive(Clone, Debug)]
pub struct Authenticated(pub Principal);

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    Authenticator: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // A front end that authenticated the request itself (the account web app's
        // session) leaves the principal here; only server code can.
        if let Some(Authenticated(principal)) = parts.extensions.get::<Authenticated>() {
            return Ok(Caller(principal.clone()));
        }
        let key = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(ApiError::unauthorized)?;
        let principal = Authenticator::from_ref(state).authenticate(key).await?;
        tracing::Span::current().record("key", principal.key_prefix.as_str());
        Ok(Caller(principal))
    }
}
