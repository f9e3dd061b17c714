//! Stored templates: a name per account and numbered, immutable versions (subject, HTML,
//! text). Saving a new version never changes what an older send rendered; a send names a
//! version or gets the latest. Syntax is checked by the API before anything is saved.

use crate::{Store, StoreError};
use sendmill_wire::AccountId;
use serde::Serialize;
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Clone, Debug, Serialize)]
pub struct Template {
    pub id: Uuid,
    pub name: String,
    pub latest_version: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The content of one version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TemplateContent {
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TemplateVersion {
    pub version: i32,
    #[serde(flatten)]
    pub content: TemplateContent,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

fn template_from_row(r: &sqlx::postgres::PgRow) -> Template {
    Template {
        id: r.get("id"),
        name: r.get("name"),
        latest_version: r.get("latest_version"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    }
}

fn version_from_row(r: &sqlx::postgres::PgRow) -> TemplateVersion {
    TemplateVersion {
        version: r.get("version"),
        content: TemplateContent {
            subject: r.get("subject"),
            html: r.get("html"),
            text: r.get("text"),
        },
        created_at: r.get("created_at"),
    }
}

impl Store {
    /// A new template with `content` as version 1; `Conflict` when the name is taken.
    pub async fn create_template(
        &self,
        account_id: AccountId,
        name: &str,
        content: &TemplateContent,
    ) -> Result<Template, StoreError> {
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(
            "INSERT INTO templates (id, account_id, name, latest_version) VALUES ($1, $2, $3, 1)
             ON CONFLICT (account_id, name) DO NOTHING
             RETURNING id, name, latest_version, created_at, updated_at",
        )
        .bind(Uuid::now_v7())
        .bind(account_id.0)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::Conflict("a template with this name"))?;
        let template = template_from_row(&row);
        insert_version(&mut tx, template.id, 1, content).await?;
        tx.commit().await?;
        Ok(template)
    }

    /// Saves `content` as the template's next version; `None` when the account has no
    /// such template.
    pub async fn add_template_version(
        &self,
        account_id: AccountId,
        id: Uuid,
        content: &TemplateContent,
    ) -> Result<Option<TemplateVersion>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let version: Option<i32> = sqlx::query_scalar(
            "UPDATE templates SET latest_version = latest_version + 1, updated_at = now()
             WHERE id = $1 AND account_id = $2 RETURNING latest_version",
        )
        .bind(id)
        .bind(account_id.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(version) = version else {
            return Ok(None);
        };
        let saved = insert_version(&mut tx, id, version, content).await?;
        tx.commit().await?;
        Ok(Some(saved))
    }

    /// The account's templates by name, after `after`.
    pub async fn templates(
        &self,
        account_id: AccountId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Template>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, latest_version, created_at, updated_at FROM templates
             WHERE account_id = $1 AND ($2::text IS NULL OR name > $2)
             ORDER BY name LIMIT $3",
        )
        .bind(account_id.0)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(template_from_row).collect())
    }

    pub async fn template(
        &self,
        account_id: AccountId,
        id: Uuid,
    ) -> Result<Option<Template>, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, latest_version, created_at, updated_at FROM templates
             WHERE id = $1 AND account_id = $2",
        )
        .bind(id)
        .bind(account_id.0)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(template_from_row))
    }

    /// The account's template named `name` (names are unique per account).
    pub async fn template_by_name(
        &self,
        account_id: AccountId,
        name: &str,
    ) -> Result<Option<Template>, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, latest_version, created_at, updated_at FROM templates
             WHERE account_id = $1 AND name = $2",
        )
        .bind(account_id.0)
        .bind(name)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(template_from_row))
    }

    /// One version (the latest when `version` is `None`) of the account's template.
    pub async fn template_version(
        &self,
        account_id: AccountId,
        id: Uuid,
        version: Option<i32>,
    ) -> Result<Option<TemplateVersion>, StoreError> {
        let row = sqlx::query(
            "SELECT v.version, v.subject, v.html, v.text, v.created_at
             FROM templates t JOIN template_versions v ON v.template_id = t.id
             WHERE t.id = $1 AND t.account_id = $2
               AND v.version = COALESCE($3, t.latest_version)",
        )
        .bind(id)
        .bind(account_id.0)
        .bind(version)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(version_from_row))
    }

    /// Every version of the account's template, newest first.
    pub async fn template_versions(
        &self,
        account_id: AccountId,
        id: Uuid,
    ) -> Result<Vec<TemplateVersion>, StoreError> {
        let rows = sqlx::query(
            "SELECT v.version, v.subject, v.html, v.text, v.created_at
             FROM templates t JOIN template_versions v ON v.template_id = t.id
             WHERE t.id = $1 AND t.account_id = $2 ORDER BY v.version DESC",
        )
        .bind(id)
        .bind(account_id.0)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(version_from_row).collect())
    }

    /// Deletes the template and its versions; `false` when the account has none such.
    pub async fn delete_template(
        &self,
        account_id: AccountId,
        id: Uuid,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM templates WHERE id = $1 AND account_id = $2")
            .bind(id)
            .bind(account_id.0)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

async fn insert_version(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: Uuid,
    version: i32,
    content: &TemplateContent,
) -> Result<TemplateVersion, StoreError> {
    let row = sqlx::query(
        "INSERT INTO template_versions (template_id, version, subject, html, text)
         VALUES ($1, $2, $3, $4, $5)
         RETURNING version, subject, html, text, created_at",
    )
    .bind(id)
    .bind(version)
    .bind(&content.subject)
    .bind(&content.html)
    .bind(&content.text)
    .fetch_one(&mut **tx)
    .await?;
    Ok(version_from_row(&row))
}
