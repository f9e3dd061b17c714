//! The account's web app at `/app`: lists with their counts, a contact search, an import
//! form with live progress and a segment editor with its count, for the marketer. It is
//! one static page and a script (`assets/app.html`, `assets/app.js`) that call the
//! account API under `/app/api/v1/…`, the very handlers of `/v1/…`, so the app can do
//! nothing the key cannot.
//!
//! Sign-in takes one of the account's API keys (it must have the `contacts` scope) and
//! sets a session cookie holding the key's id and an expiry, sealed with the tracking
//! secret under its own purpose; the key itself is never stored in the browser. Every
//! request re-reads the key, so revoking it ends its sessions at once, and the handlers
//! see the key's account and scopes (one account never sees another's data). The cookie
//! is `HttpOnly` and `SameSite=Strict`, changing requests also need the `X-Sendmill-App`
//! header (which no other site's page can send), and the pages allow no framing and no
//! scripts but their own: the operators' dashboard's hardening.

use crate::Audiences;
use axum::{
    body::Bytes,
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::Next,
    response::{Html, IntoResponse, Redirect, Response},
};
use sendmill_platform::api::ApiError;
use sendmill_store::{Principal, Scope};
use sendmill_tenancy::auth::Authenticated;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

const COOKIE: &str = "sendmill_app";
const PURPOSE: &str = "audiences.app-session";
const SESSION_HOURS: i64 = 8;
/// The header every changing request of the app carries.
pub const CSRF_HEADER: &str = "x-sendmill-app";

static PAGE: &str = include_str!("../assets/app.html");
static SCRIPT: &str = include_str!("../assets/app.js");
static ICON: &str = include_str!("../assets/icon.svg");

#[derive(Serialize, Deserialize)]
struct SessionClaims {
    #[serde(rename = "k")]
    key_id: Uuid,
    #[serde(rename = "x")]
    expires: i64,
}

fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The principal of a valid session: sealed, unexpired, its key still unrevoked.
/// `Err` when the store does not answer.
async fn session(state: &Audiences, headers: &HeaderMap) -> Result<Option<Principal>, ApiError> {
    let Some(signer) = &state.links else {
        return Ok(None);
    };
    let Some(claims) = sendmill_platform::http::cookie(headers, COOKIE)
        .and_then(|c| signer.open::<SessionClaims>(PURPOSE, &c).ok())
    else {
        return Ok(None);
    };
    if claims.expires <= OffsetDateTime::now_utc().unix_timestamp() {
        return Ok(None);
    }
    state
        .store
        .principal_by_key_id(claims.key_id)
        .await
        .map_err(crate::contacts::store_error)
}

/// Middleware of `/app/api`: a valid session (401 otherwise) and, for a changing
/// request, the CSRF header (403 otherwise); the handlers then see the key's principal.
pub async fn require_session(
    State(state): State<Audiences>,
    mut request: Request,
    next: Next,
) -> Response {
    let principal = match session(&state, request.headers()).await {
        Ok(Some(principal)) => principal,
        Ok(None) => return ApiError::unauthorized().into_response(),
        Err(error) => return error.into_response(),
    };
    if request.method() != Method::GET && !request.headers().contains_key(CSRF_HEADER) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "changes need the X-Sendmill-App header",
        )
        .into_response();
    }
    request.extensions_mut().insert(Authenticated(principal));
    next.run(request).await
}

/// `GET /app`: the app, or the sign-in form without a session.
pub async fn page(State(state): State<Audiences>, headers: HeaderMap) -> Response {
    page_for(&state, &headers, PAGE).await
}

/// An app page (`html`, static) for a signed-in session, else a redirect to sign-in:
/// the campaigns' page is served this way too.
pub async fn page_for(state: &Audiences, headers: &HeaderMap, html: &'static str) -> Response {
    match session(state, headers).await {
        Ok(Some(_)) => secure(Html(html).into_response()),
        Ok(None) => Redirect::to("/app/login").into_response(),
        Err(error) => error.into_response(),
    }
}

pub async fn script() -> Response {
    script_response(SCRIPT)
}

/// An app script (`source`, static), revalidated on every load.
pub fn script_response(source: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        source,
    )
        .into_response()
}

pub async fn icon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        ICON,
    )
        .into_response()
}

fn login_html(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{e}</p>"))
        .unwrap_or_default();
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sendmill · audiences</title><link rel="icon" href="/app/assets/icon.svg">
<style>body{{font:15px system-ui,sans-serif;background:#f4f5f7;display:grid;place-items:center;height:100vh;margin:0}}
form{{background:#fff;padding:2rem;border-radius:8px;box-shadow:0 1px 4px #0002;width:24rem}}
input{{width:100%;box-sizing:border-box;padding:.5rem;margin:.5rem 0 1rem;font:inherit}}
button{{padding:.5rem 1rem;font:inherit;background:#2457c5;color:#fff;border:0;border-radius:4px}}.error{{color:#b00020}}</style></head>
<body><form method="post" action="/app/login"><h1>Sendmill audiences</h1>{error}
<label for="key">API key (with the contacts scope)</label><input id="key" name="key" type="password" autocomplete="off" required>
<button type="submit">Sign in</button></form></body></html>"#
    )
}

/// `GET /app/login`.
pub async fn login_form() -> Response {
    secure(Html(login_html(None)).into_response())
}

/// `POST /app/login` (`key`): a session for a valid key with the `contacts` scope.
pub async fn login(State(state): State<Audiences>, body: Bytes) -> Response {
    let key = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "key")
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let refuse = |status: StatusCode, message: &str| {
        secure((status, Html(login_html(Some(message)))).into_response())
    };
    let Some(signer) = &state.links else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in needs tracking.secret to be set.",
        );
    };
    let principal = match state.store.authenticate(&key).await {
        Ok(Some(principal)) => principal,
        Ok(None) => return refuse(StatusCode::UNAUTHORIZED, "That key is not valid."),
        Err(error) => {
            tracing::error!(%error, "app sign-in");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again in a minute.",
            );
        }
    };
    if !principal.has(Scope::Contacts) {
        return refuse(StatusCode::FORBIDDEN, "That key lacks the contacts scope.");
    }
    let claims = SessionClaims {
        key_id: principal.key_id,
        expires: (OffsetDateTime::now_utc() + time::Duration::hours(SESSION_HOURS))
            .unix_timestamp(),
    };
    let secure_flag = if state.public_base_url.starts_with("https:") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={}; Path=/app; HttpOnly; SameSite=Strict; Max-Age={}{secure_flag}",
        signer.seal(PURPOSE, &claims),
        SESSION_HOURS * 3600
    );
    let mut response = Redirect::to("/app").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// `POST /app/logout`.
pub async fn logout() -> Response {
    let mut response = Redirect::to("/app/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("sendmill_app=; Path=/app; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}
