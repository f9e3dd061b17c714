//! The campaigns page of the account's web app (`/app/campaigns`): the campaign list
//! with states and progress and the actions each state allows, an editor (audience,
//! content, schedule, throttle, A/B test), a preview rendered for a chosen contact, and
//! the report (funnel, per-minute timeline, variants, links). One static page and a
//! script (`assets/campaigns.html`, `assets/campaigns.js`) over `/app/api/v1/campaigns…`,
//! with the audiences app's session, sign-in and hardening.

use axum::{
    extract::{FromRef, State},
    http::HeaderMap,
    response::Response,
    routing::get,
};
use sendmill_audiences::Audiences;

static PAGE: &str = include_str!("../assets/campaigns.html");
static SCRIPT: &str = include_str!("../assets/campaigns.js");

/// `GET /app/campaigns`: the page, or the sign-in form without a session.
pub async fn page(State(state): State<Audiences>, headers: HeaderMap) -> Response {
    sendmill_audiences::app::page_for(&state, &headers, PAGE).await
}

/// `GET /app/assets/campaigns.js`.
pub async fn script() -> Response {
    sendmill_audiences::app::script_response(SCRIPT)
}

/// The page and its script, for the host's router.
pub fn router<S>() -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
    Audiences: FromRef<S>,
{
    axum::Router::new()
        .route("/app/campaigns", get(page))
        .route("/app/assets/campaigns.js", get(script))
}
