//! The signed links of the public pages ([`sendmill_platform::tracking::LinkSigner::seal`],
//! under the tracking secret, one purpose each so a link for one page never opens
//! another): a contact's preferences page (no expiry, like an unsubscribe link: it sits
//! in mail people keep) and a double opt-in confirmation (expires after
//! `confirmation_ttl`).

use crate::Audiences;
use sendmill_wire::AccountId;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

pub const PREFERENCES: &str = "audiences.preferences";
pub const CONFIRM: &str = "audiences.confirm";

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferencesClaims {
    #[serde(rename = "a")]
    pub account: AccountId,
    #[serde(rename = "c")]
    pub contact: Uuid,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmClaims {
    #[serde(rename = "a")]
    pub account: AccountId,
    #[serde(rename = "l")]
    pub list: Uuid,
    #[serde(rename = "c")]
    pub contact: Uuid,
    /// Unix seconds after which the link no longer confirms.
    #[serde(rename = "x")]
    pub expires: i64,
}

/// The contact's preferences page; `None` without a tracking secret.
pub fn preferences_url(state: &Audiences, account: AccountId, contact: Uuid) -> Option<String> {
    let signer = state.links.as_ref()?;
    let token = signer.seal(PREFERENCES, &PreferencesClaims { account, contact });
    Some(format!("{}/p/{token}", state.public_base_url))
}

/// A confirmation link for `contact` on `list`, valid for `confirmation_ttl`.
pub fn confirm_url(
    state: &Audiences,
    account: AccountId,
    list: Uuid,
    contact: Uuid,
) -> Option<String> {
    let signer = state.links.as_ref()?;
    let expires =
        OffsetDateTime::now_utc().unix_timestamp() + state.config.confirmation_ttl.as_secs() as i64;
    let token = signer.seal(
        CONFIRM,
        &ConfirmClaims {
            account,
            list,
            contact,
            expires,
        },
    );
    Some(format!("{}/confirm/{token}", state.public_base_url))
}
