//! What several fuzz targets share (included with `#[path]`; not a target itself).

use sendmill_store::{AccountLimits, AccountSettings, Principal, Scope};
use sendmill_wire::AccountId;
use std::sync::OnceLock;

/// The caller every planned request is planned for: an account with the `send` scope
/// and open and click tracking on.
pub fn principal() -> &'static Principal {
    static PRINCIPAL: OnceLock<Principal> = OnceLock::new();
    PRINCIPAL.get_or_init(|| Principal {
        account_id: AccountId::generate(),
        key_id: uuid::Uuid::nil(),
        key_prefix: "sm_fuzz".into(),
        scopes: vec![Scope::Send],
        settings: AccountSettings {
            track_opens: true,
            track_clicks: true,
        },
        operator: false,
        limits: AccountLimits::default(),
    })
}
