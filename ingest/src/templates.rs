//! `/v1/templates`: stored templates with immutable versions. Every part is compiled
//! before it is saved, and a syntax error names the part, line and column; `preview`
//! renders a version with sample data exactly as the render stage would (the account's
//! partials, the same helpers, strict or lenient).

use crate::{body::JsonBody, body::QueryParams, validate, AppState};
use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use sendmill_platform::api::ApiError;
use sendmill_render::templates::{check_syntax, Part, Templates};
use sendmill_store::{
    templates::{Template, TemplateContent, TemplateVersion},
    Scope, StoreError,
};
use sendmill_tenancy::auth::Caller;
use sendmill_wire::RequestedV1;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTemplate {
    pub name: String,
    pub subject: String,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewVersion {
    pub subject: String,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    #[serde(default)]
    pub data: Map<String, Value>,
    #[serde(default)]
    pub version: Option<i32>,
    /// A variable missing from `data` is an error instead of empty.
    #[serde(default)]
    pub strict: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Preview {
    pub version: i32,
    pub subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    pub limit: Option<u32>,
    #[serde(default)]
    pub cursor: Option<String>,
}

#[derive(Serialize)]
pub struct TemplateDetail {
    #[serde(flatten)]
    pub template: Template,
    /// The latest version's content.
    pub latest: TemplateVersion,
    /// Every version number, newest first.
    pub versions: Vec<i32>,
}

#[derive(Serialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

fn template_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found("template"))
}

/// Checks a version's parts: non-empty subject, one body at least, each compiling.
fn check_content(
    subject: &str,
    html: &Option<String>,
    text: &Option<String>,
) -> Result<TemplateContent, ApiError> {
    if subject.trim().is_empty() {
        return Err(ApiError::invalid("subject", "subject is required"));
    }
    if subject.contains(['\r', '\n']) {
        return Err(ApiError::invalid("subject", "subject must be one line"));
    }
    let html = html.clone().filter(|h| !h.is_empty());
    let text = text.clone().filter(|t| !t.is_empty());
    if html.is_none() && text.is_none() {
        return Err(ApiError::invalid("html", "give html, text or both"));
    }
    for (field, source) in [
        ("subject", Some(subject)),
        ("html", html.as_deref()),
        ("text", text.as_deref()),
    ] {
        if let Some(source) = source {
            check_syntax(source).map_err(|error| ApiError {
                field: Some(field.into()),
                ..ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "template_syntax",
                    format!("{field}: {error}"),
                )
            })?;
        }
    }
    Ok(TemplateContent {
        subject: subject.to_owned(),
        html,
        text,
    })
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<CreateTemplate>,
) -> Result<(StatusCode, Json<TemplateDetail>), ApiError> {
    caller.require(Scope::Templates)?;
    let input = body.value;
    validate::label(&input.name).map_err(|m| ApiError::invalid("name", m))?;
    let content = check_content(&input.subject, &input.html, &input.text)?;
    let template = match state
        .store
        .create_template(caller.0.account_id, &input.name, &content)
        .await
    {
        Ok(t) => t,
        Err(StoreError::Conflict(what)) => {
            return Err(ApiError {
                field: Some("name".into()),
                ..ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!("{what} already exists"),
                )
            })
        }
        Err(e) => return Err(e.into()),
    };
    let latest = state
        .store
        .template_version(caller.0.account_id, template.id, Some(1))
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found("template"))?;
    Ok((
        StatusCode::CREATED,
        Json(TemplateDetail {
            template,
            latest,
            versions: vec![1],
        }),
    ))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<Page<Template>>, ApiError> {
    caller.require(Scope::Templates)?;
    let limit = query.limit.unwrap_or(50).clamp(1, 200);
    let templates = state
        .store
        .templates(caller.0.account_id, query.cursor.as_deref(), limit)
        .await
        .map_err(ApiError::from)?;
    let next_cursor = (templates.len() == limit as usize)
        .then(|| templates.last().map(|t| t.name.clone()))
        .flatten();
    Ok(Json(Page {
        data: templates,
        next_cursor,
    }))
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TemplateDetail>, ApiError> {
    caller.require(Scope::Templates)?;
    let id = template_id(&id)?;
    let account = caller.0.account_id;
    let template = state
        .store
        .template(account, id)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found("template"))?;
    let versions = state
        .store
        .template_versions(account, id)
        .await
        .map_err(ApiError::from)?;
    let numbers = versions.iter().map(|v| v.version).collect();
    let latest = versions
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found("template"))?;
    Ok(Json(TemplateDetail {
        template,
        latest,
        versions: numbers,
    }))
}

pub async fn add_version(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody<NewVersion>,
) -> Result<(StatusCode, Json<TemplateVersion>), ApiError> {
    caller.require(Scope::Templates)?;
    let id = template_id(&id)?;
    let input = body.value;
    let content = check_content(&input.subject, &input.html, &input.text)?;
    let version = state
        .store
        .add_template_version(caller.0.account_id, id, &content)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found("template"))?;
    Ok((StatusCode::CREATED, Json(version)))
}

pub async fn get_version(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, version)): Path<(String, String)>,
) -> Result<Json<TemplateVersion>, ApiError> {
    caller.require(Scope::Templates)?;
    let id = template_id(&id)?;
    let version: i32 = version
        .parse()
        .map_err(|_| ApiError::not_found("template version"))?;
    let found = state
        .store
        .template_version(caller.0.account_id, id, Some(version))
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found("template version"))?;
    Ok(Json(found))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Templates)?;
    let id = template_id(&id)?;
    if state
        .store
        .delete_template(caller.0.account_id, id)
        .await
        .map_err(ApiError::from)?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("template"))
    }
}

pub async fn preview(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody<PreviewRequest>,
) -> Result<Json<Preview>, ApiError> {
    caller.require(Scope::Templates)?;
    let id = template_id(&id)?;
    let input = body.value;
    let version = state
        .store
        .template_version(caller.0.account_id, id, input.version)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found("template version"))?;
    let set = state
        .templates
        .get(caller.0.account_id)
        .await
        .map_err(ApiError::from)?
        .map_err(|partials| render_failed(format!("partials: {partials}")))?;
    let data = Value::Object(input.data);
    let render = |part, source: &str| {
        set.render(part, source, &data, input.strict)
            .map_err(|reason| render_failed(format!("{}: {reason}", part_name(part))))
    };
    let subject = render(Part::Subject, &version.content.subject)?;
    let html = version
        .content
        .html
        .as_deref()
        .map(|s| render(Part::Html, s))
        .transpose()?;
    let text = version
        .content
        .text
        .as_deref()
        .map(|s| render(Part::Text, s))
        .transpose()?;
    Ok(Json(Preview {
        version: version.version,
        subject,
        html,
        text,
    }))
}

fn part_name(part: Part) -> &'static str {
    part.name()
}

fn render_failed(message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "render_failed", message)
}

/// Renders a record's subject and bodies as the render stage would (sandbox sends).
pub fn render_parts(set: &Templates, record: &RequestedV1) -> Result<(), String> {
    let data = Value::Object(record.data.clone());
    let strict = record.options.strict;
    set.render(Part::Subject, &record.subject, &data, strict)
        .map_err(|e| format!("subject: {e}"))?;
    if let Some(html) = &record.html {
        set.render(Part::Html, html, &data, strict)
            .map_err(|e| format!("html: {e}"))?;
    }
    if let Some(text) = &record.text {
        set.render(Part::Text, text, &data, strict)
            .map_err(|e| format!("text: {e}"))?;
    }
    Ok(())
}
