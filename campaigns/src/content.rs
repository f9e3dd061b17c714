//! What one recipient of a campaign gets: the campaign's content (or its A/B variant's)
//! and the contact's data, as a `requested` record for the bulk lane. The sender, the
//! test send and the preview all build it here, so a test send renders exactly what
//! recipients will get.
//!
//! A template sees the contact's attributes at the top level, plus `email`, `name`,
//! `contact_id` and `preferences_url` (the contact's preferences page; empty without a
//! tracking secret).

use crate::{
    model::{AbTest, Campaign},
    Campaigns,
};
use sendmill_audiences::contacts::store_error;
use sendmill_platform::api::ApiError;
use sendmill_render::templates::{Part, Templates};
use sendmill_wire::{
    AccountId, BatchId, EmailAddress, Header, Lane, MessageContext, MessageId, RenderOptions,
    RequestedV1,
};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

/// The tag every campaign message carries, and the one a test send adds.
pub const CAMPAIGN_TAG: &str = "sendmill:campaign";
pub const TEST_TAG: &str = "sendmill:test";

/// Subject, bodies and sender name of one variant (or of the campaign without a test).
#[derive(Clone, Debug, PartialEq)]
pub struct Content {
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
    pub from_name: Option<String>,
}

/// The campaign's base content: its stored template version (the campaign's subject
/// over the template's), or its inline parts. Errors: 422 when the template or its
/// pinned version is gone, 503 when PostgreSQL does not answer.
pub async fn base(
    state: &Campaigns,
    account: AccountId,
    campaign: &Campaign,
) -> Result<Content, ApiError> {
    let input = &campaign.input;
    if input.template_id.is_none() && input.template_version.is_some() {
        // The template was deleted (its id set to NULL, the pinned version kept).
        return Err(crate::model::unprocessable(
            "template_id",
            "template_gone",
            "the campaign's template was deleted",
        ));
    }
    let (subject, html, text) = match input.template_id {
        Some(template) => {
            let version = state
                .store
                .template_version(account, template, input.template_version)
                .await
                .map_err(store_error)?
                .ok_or_else(|| {
                    crate::model::unprocessable(
                        "template_id",
                        "template_gone",
                        "the campaign's template version no longer exists",
                    )
                })?;
            let c = version.content;
            (input.subject.clone().unwrap_or(c.subject), c.html, c.text)
        }
        None => (
            input.subject.clone().unwrap_or_default(),
            input.html.clone(),
            input.text.clone(),
        ),
    };
    Ok(Content {
        subject,
        html,
        text,
        from_name: input.from.name.clone(),
    })
}

/// `base` as variant `name` of `ab` changes it; `None` (no test, or the rest of the
/// audience after the test: then `name` is the winner) as it is.
pub fn variant(base: &Content, ab: Option<&AbTest>, name: Option<&str>) -> Content {
    let Some(v) = ab
        .zip(name)
        .and_then(|(ab, name)| ab.variants.iter().find(|v| v.name == name))
    else {
        return base.clone();
    };
    Content {
        subject: v.subject.clone().unwrap_or_else(|| base.subject.clone()),
        html: v.html.clone().or_else(|| base.html.clone()),
        text: v.text.clone().or_else(|| base.text.clone()),
        from_name: v.from_name.clone().or_else(|| base.from_name.clone()),
    }
}

/// A contact as a campaign addresses it.
#[derive(Clone, Debug)]
pub struct Recipient {
    pub contact_id: Uuid,
    pub email: String,
    pub name: String,
    pub attributes: Map<String, Value>,
}

/// The preferences link a test send carries instead of the contact's own (a seed
/// address must not be able to change a real contact's subscriptions).
pub const TEST_PREFERENCES_URL: &str = "about:blank#preferences-link-of-the-recipient";

/// The template data for `r`.
pub fn data(state: &Campaigns, account: AccountId, r: &Recipient) -> Map<String, Value> {
    let mut data = r.attributes.clone();
    data.insert("email".into(), r.email.clone().into());
    data.insert("name".into(), r.name.clone().into());
    data.insert("contact_id".into(), r.contact_id.to_string().into());
    let preferences =
        sendmill_audiences::tokens::preferences_url(&state.audiences, account, r.contact_id)
            .unwrap_or_default();
    data.insert("preferences_url".into(), preferences.into());
    data
}

/// Where a record goes and what it is marked as.
pub enum Addressing<'a> {
    /// A release: the contact, `variant` as the message's `variant` metadata.
    Release { variant: Option<&'a str> },
    /// A test send to a seed address, rendered with the contact's data, on the
    /// transactional lane, not counted in the campaign's report.
    Test { to: &'a str },
}

/// The `requested` record of `campaign` for `r` with `content`.
pub fn record(
    state: &Campaigns,
    account: AccountId,
    campaign: &Campaign,
    content: &Content,
    r: &Recipient,
    message_id: MessageId,
    addressing: Addressing<'_>,
) -> RequestedV1 {
    let input = &campaign.input;
    let mut tags = input.tags.clone();
    tags.push(CAMPAIGN_TAG.into());
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert("contact_id".to_owned(), r.contact_id.to_string());
    let mut headers = Vec::new();
    let (to, lane, campaign_id) = match addressing {
        Addressing::Release { variant } => {
            if let Some(v) = variant {
                metadata.insert("variant".to_owned(), v.to_owned());
            }
            (
                EmailAddress {
                    email: r.email.clone(),
                    name: (!r.name.is_empty()).then(|| r.name.clone()),
                },
                Lane::Bulk,
                Some(campaign.id.to_string()),
            )
        }
        Addressing::Test { to } => {
            tags.push(TEST_TAG.into());
            metadata.insert("test_of_campaign".to_owned(), campaign.id.to_string());
            headers.push(Header {
                name: "X-Sendmill-Test".into(),
                value: format!("campaign {}", campaign.id),
            });
            (
                EmailAddress {
                    email: to.to_owned(),
                    name: None,
                },
                Lane::Transactional,
                None,
            )
        }
    };
    RequestedV1 {
        message_id,
        account_id: account,
        batch_id: BatchId(campaign.id),
        lane,
        accepted_at: OffsetDateTime::now_utc(),
        from: EmailAddress {
            email: input.from.email.clone(),
            name: content.from_name.clone(),
        },
        to,
        to_list: Vec::new(),
        cc: Vec::new(),
        envelope_to: None,
        reply_to: input
            .reply_to
            .clone()
            .map(|email| EmailAddress { email, name: None }),
        subject: content.subject.clone(),
        html: content.html.clone(),
        text: content.text.clone(),
        headers,
        data: {
            let mut data = data(state, account, r);
            if lane == Lane::Transactional {
                data.insert("preferences_url".into(), TEST_PREFERENCES_URL.into());
            }
            data
        },
        context: MessageContext {
            tags,
            metadata,
            campaign_id,
            ip_pool: input.ip_pool.clone(),
            requested_confirmation: false,
        },
        options: RenderOptions {
            strict: false,
            track_opens: input.tracking.opens,
            track_clicks: input.tracking.clicks,
            list_unsubscribe: input.list_unsubscribe,
        },
        attachments: Vec::new(),
        mime: None,
        shared: None,
    }
}

/// A preview: the three parts rendered for one contact, as render renders them.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Rendered {
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
}

/// The account's template set (its partials compiled): `Err(String)` when a partial
/// does not compile; 503 when PostgreSQL does not answer.
pub async fn template_set(
    state: &Campaigns,
    account: AccountId,
) -> Result<Result<std::sync::Arc<Templates>, String>, ApiError> {
    Ok(state
        .templates
        .get(account)
        .await
        .map_err(store_error)?
        .map_err(|e| format!("partials: {e}")))
}

/// Renders `content` with `data` in `set`, as render renders a message. `strict`: a
/// missing variable is an error. Errors: the part and the reason. CPU work: call it off
/// the async runtime for many contacts.
pub fn render_with(
    set: &Templates,
    content: &Content,
    data: &Map<String, Value>,
    strict: bool,
) -> Result<Rendered, String> {
    let data = Value::Object(data.clone());
    let part = |part: Part, source: &str| {
        set.render(part, source, &data, strict)
            .map_err(|reason| format!("{}: {reason}", part.name()))
    };
    let subject = part(Part::Subject, &content.subject)?;
    let html = content
        .html
        .as_deref()
        .map(|s| part(Part::Html, s))
        .transpose()?;
    let text = match (&content.text, &html) {
        (Some(s), _) => Some(part(Part::Text, s)?),
        (None, Some(html)) => Some(sendmill_render::text::from_html(html)),
        (None, None) => None,
    };
    Ok(Rendered {
        subject,
        html,
        text,
    })
}

/// [`template_set`] and [`render_with`] for one contact (a preview).
pub async fn render(
    state: &Campaigns,
    account: AccountId,
    content: &Content,
    data: &Map<String, Value>,
    strict: bool,
) -> Result<Result<Rendered, String>, ApiError> {
    Ok(template_set(state, account)
        .await?
        .and_then(|set| render_with(&set, content, data, strict)))
}
