//! The endpoints recipients reach from a message: the open pixel (`GET /t/o/{token}`),
//! tracked clicks (`GET /t/c/{token}` → 302 to the original link) and unsubscribe
//! (`GET /u/{token}` shows a confirmation page; `POST /u/{token}` unsubscribes, which is
//! also RFC 8058's one-click POST that mailbox providers send). Each valid request writes
//! exactly one event (`opened`, `clicked`, `unsubscribed`); a token that does not verify
//! gets a 4xx and writes nothing, and the click endpoint redirects only to a URL that
//! was signed into the message (no open redirect). No cookies, no scripts.

use crate::AppState;
use axum::{
    extract::{Path, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{Html, IntoResponse, Redirect, Response},
};
use sendmill_platform::tracking::{Claims, LinkKind};
use sendmill_store::SuppressionReason;
use sendmill_wire::{EventType, EventV1, MessageContext};

/// A transparent 1×1 GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// User agents of machines that fetch images or follow links on a person's behalf, or
/// instead of one: privacy proxies that prefetch every image (Apple Mail Privacy
/// Protection sends a bare `Mozilla/5.0`), and security scanners that follow every link.
const MACHINE_MARKERS: &[&str] = &[
    "bot",
    "spider",
    "crawler",
    "scanner",
    "preview",
    "python",
    "curl",
    "wget",
    "go-http",
    "java/",
    "libwww",
    "okhttp",
    "headless",
    "phantomjs",
    "barracuda",
    "proofpoint",
    "mimecast",
    "symantec",
    "forcepoint",
    "trendmicro",
    "sophos",
    "safelinks",
    "microsoft office",
    "ms-office",
    "bingpreview",
];

/// Whether an open or click with this user agent is most likely not a person.
pub fn is_machine(user_agent: &str) -> bool {
    let ua = user_agent.trim();
    if ua.is_empty() || ua == "Mozilla/5.0" {
        return true;
    }
    let lower = ua.to_ascii_lowercase();
    MACHINE_MARKERS.iter().any(|m| lower.contains(m))
}

fn user_agent(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(512).collect())
        .unwrap_or_default()
}

fn verify(state: &AppState, token: &str, kind: LinkKind) -> Option<Claims> {
    let signer = state.links.as_ref()?;
    match signer.verify(token, kind) {
        Ok(claims) => Some(claims),
        Err(error) => {
            metrics::counter!(crate::metric::TRACKING_REJECTED_TOTAL, "kind" => format!("{kind:?}"))
                .increment(1);
            tracing::info!(%error, ?kind, "rejected link token");
            None
        }
    }
}

fn invalid_link() -> Response {
    (
        StatusCode::BAD_REQUEST,
        Html(page(
            "Link not valid",
            "This link is not valid. It may have been changed or cut short.",
        )),
    )
        .into_response()
}

async fn emit(
    state: &AppState,
    claims: &Claims,
    event_type: EventType,
    ua: &str,
    url: Option<String>,
) -> bool {
    let context = MessageContext {
        campaign_id: claims.campaign_id.clone(),
        metadata: claims
            .variant
            .iter()
            .map(|v| ("variant".to_owned(), v.clone()))
            .collect(),
        ..Default::default()
    };
    let mut event = EventV1::new(
        event_type,
        "analytics",
        claims.message_id,
        claims.account_id,
        &claims.recipient,
        &context,
    );
    event.user_agent = (!ua.is_empty()).then(|| ua.to_owned());
    event.machine = event_type != EventType::Unsubscribed && is_machine(ua);
    event.url = url;
    let key = claims.message_id.to_string();
    match state
        .producer
        .send(&state.topics.events(), &key, &event)
        .await
    {
        Ok(()) => {
            metrics::counter!(crate::metric::ENGAGEMENT_EVENTS_TOTAL, "type" => event_type.as_str())
                .increment(1);
            true
        }
        Err(error) => {
            tracing::error!(%error, message_id = %claims.message_id, "engagement event not written");
            false
        }
    }
}

pub async fn open(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(claims) = verify(&state, &token, LinkKind::Open) else {
        return invalid_link();
    };
    emit(
        &state,
        &claims,
        EventType::Opened,
        &user_agent(&headers),
        None,
    )
    .await;
    let mut response = (StatusCode::OK, PIXEL).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/gif"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, max-age=0"),
    );
    response
}

pub async fn click(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(claims) = verify(&state, &token, LinkKind::Click) else {
        return invalid_link();
    };
    let Some(url) = claims
        .url
        .clone()
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
    else {
        return invalid_link();
    };
    // The person gets where they wanted to go even if the event cannot be written.
    emit(
        &state,
        &claims,
        EventType::Clicked,
        &user_agent(&headers),
        Some(url.clone()),
    )
    .await;
    let mut response = Redirect::to(&url).into_response();
    *response.status_mut() = StatusCode::FOUND;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub async fn unsubscribe_page(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Response {
    if verify(&state, &token, LinkKind::Unsubscribe).is_none() {
        return invalid_link();
    }
    // A GET only asks: link scanners follow links, and must not unsubscribe anyone.
    let body = page(
        "Unsubscribe",
        &format!(
            "<form method=\"post\" action=\"{token}\"><p>Stop receiving these emails?</p>\
             <button type=\"submit\">Unsubscribe</button></form>"
        ),
    );
    (StatusCode::OK, Html(body)).into_response()
}

pub async fn unsubscribe(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(claims) = verify(&state, &token, LinkKind::Unsubscribe) else {
        return invalid_link();
    };
    let source = claims.message_id.to_string();
    if let Err(error) = state
        .suppressions
        .add_if_absent(
            claims.account_id,
            &claims.recipient,
            SuppressionReason::Unsubscribe,
            Some(&source),
        )
        .await
    {
        tracing::error!(%error, "cannot record an unsubscribe");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "30")],
            Html(page(
                "Please try again",
                "We could not record your request just now. Please try again in a minute.",
            )),
        )
            .into_response();
    }
    emit(
        &state,
        &claims,
        EventType::Unsubscribed,
        &user_agent(&headers),
        None,
    )
    .await;
    (
        StatusCode::OK,
        Html(page(
            "Unsubscribed",
            "You will not receive these emails any more.",
        )),
    )
        .into_response()
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width\"><title>{title}</title></head><body style=\"font-family:\
         sans-serif;max-width:32em;margin:4em auto\"><h1>{title}</h1>{body}</body></html>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_are_told_from_people() {
        for machine in [
            "",
            "Mozilla/5.0",
            "python-requests/2.31",
            "Mozilla/5.0 (compatible; Barracuda Sentinel)",
            "curl/8.0",
            "Mozilla/5.0 HeadlessChrome/120",
        ] {
            assert!(is_machine(machine), "{machine}");
        }
        for person in [
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
        ] {
            assert!(!is_machine(person), "{person}");
        }
    }
}
