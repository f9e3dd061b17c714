//! `/v1/keys` (an account's API keys, `admin` scope) and `/v1/accounts` (tenants,
//! operators only). A key's secret is in the creation answer and nowhere else: the
//! database keeps its SHA-256; listings show the prefix.

use crate::{body::JsonBody, AppState};
use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use sendmill_platform::api::ApiError;
use sendmill_store::{AccountInfo, AccountLimits, ApiKeyInfo, Scope};
use sendmill_tenancy::auth::Caller;
use sendmill_wire::AccountId;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    pub scopes: Vec<Scope>,
    /// The key may also sign AWS Signature V4 requests (the SES v2 drop-in,
    /// [`crate::compat::ses`]): a copy is then kept sealed under the KEK, which must be
    /// configured.
    #[serde(default)]
    pub aws_sigv4: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CreatedKey {
    pub id: uuid::Uuid,
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<Scope>,
    /// The secret: shown only here, once.
    pub key: String,
    /// With `aws_sigv4`: the access key id to give AWS SDKs (their secret access key is
    /// `key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_access_key_id: Option<String>,
}

#[derive(Serialize)]
pub struct List<T> {
    pub data: Vec<T>,
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name",
            "must be 1 to 100 characters without control characters",
        ));
    }
    Ok(())
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<CreateKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    caller.require(Scope::Admin)?;
    let input = body.value;
    check_name(&input.name)?;
    if input.scopes.is_empty() {
        return Err(ApiError::invalid("scopes", "give at least one scope"));
    }
    let created = state
        .store
        .create_api_key(
            caller.0.account_id,
            &input.name,
            &input.scopes,
            input.aws_sigv4,
        )
        .await
        .map_err(|error| match error {
            sendmill_store::StoreError::Secret(sendmill_store::secrets::SecretError::NoKeyring) => {
                ApiError {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    ..ApiError::invalid(
                        "aws_sigv4",
                        "SigV4 keys are kept sealed under a key-encryption key, and none is configured ([secrets])",
                    )
                }
            }
            error => ApiError::from(error),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            id: created.id,
            name: input.name,
            prefix: created.prefix,
            scopes: input.scopes,
            key: created.plaintext,
            aws_access_key_id: input
                .aws_sigv4
                .then(|| crate::compat::sigv4::access_key_id(created.id)),
        }),
    ))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<List<ApiKeyInfo>>, ApiError> {
    caller.require(Scope::Admin)?;
    let keys = state
        .store
        .api_keys(caller.0.account_id)
        .await
        .map_err(ApiError::from)?;
    Ok(Json(List { data: keys }))
}

pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Admin)?;
    let id: uuid::Uuid = id.parse().map_err(|_| ApiError::not_found("API key"))?;
    if state
        .store
        .revoke_api_key(caller.0.account_id, id)
        .await
        .map_err(ApiError::from)?
    {
        state.auth.forget_key(id);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("API key"))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    pub name: String,
    #[serde(default)]
    pub limits: AccountLimits,
}

#[derive(Serialize)]
pub struct CreatedAccount {
    pub account: AccountInfo,
    /// An `admin` key for the new tenant: shown only here, once.
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateAccount {
    pub limits: AccountLimits,
}

/// The caller's own account.
pub async fn me(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<AccountInfo>, ApiError> {
    Ok(Json(account_info(&state, caller.0.account_id).await?))
}

pub async fn create_account(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<CreateAccount>,
) -> Result<(StatusCode, Json<CreatedAccount>), ApiError> {
    caller.require_operator()?;
    let input = body.value;
    check_name(&input.name)?;
    let id = state
        .store
        .create_account(&input.name)
        .await
        .map_err(ApiError::from)?;
    state
        .store
        .set_limits(id, input.limits)
        .await
        .map_err(ApiError::from)?;
    let key = state
        .store
        .create_api_key(id, "admin", &[Scope::Admin], false)
        .await
        .map_err(ApiError::from)?;
    let account = account_info(&state, id).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedAccount {
            account,
            key: key.plaintext,
        }),
    ))
}

pub async fn list_accounts(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<List<AccountInfo>>, ApiError> {
    caller.require_operator()?;
    let accounts = state.store.accounts().await.map_err(ApiError::from)?;
    Ok(Json(List { data: accounts }))
}

pub async fn update_account(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody<UpdateAccount>,
) -> Result<Json<AccountInfo>, ApiError> {
    caller.require_operator()?;
    let id = AccountId(id.parse().map_err(|_| ApiError::not_found("account"))?);
    if !state
        .store
        .set_limits(id, body.value.limits)
        .await
        .map_err(ApiError::from)?
    {
        return Err(ApiError::not_found("account"));
    }
    Ok(Json(account_info(&state, id).await?))
}

async fn account_info(state: &AppState, id: AccountId) -> Result<AccountInfo, ApiError> {
    state
        .store
        .account(id)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found("account"))
}
