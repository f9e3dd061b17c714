//! An [`Expr`] to a SQL condition over `contacts c`: every value the user wrote is a bound
//! parameter (`$2`, `$3`, …; `$1` is always the account id), never SQL text. Names that
//! need a lookup first are [`resolve`]d: list names to the account's list ids (a missing
//! list is an error with its position) and engagement windows to the addresses
//! ClickHouse's `contact_engagement` has for them.

use super::{Engagement, Expr, ExprError, Field, Literal, Op};
use crate::{contacts::like_escape, Audiences};
use sendmill_platform::api::ApiError;
use sendmill_wire::AccountId;
use serde_json::{Map, Value};
use std::collections::HashMap;
use uuid::Uuid;

/// A bound value.
#[derive(Clone, Debug, PartialEq)]
pub enum Param {
    Text(String),
    Texts(Vec<String>),
    Json(Value),
    Uuid(Uuid),
}

/// A condition and its parameters (the first is `$2`).
#[derive(Clone, Debug, PartialEq)]
pub struct Compiled {
    pub clause: String,
    pub params: Vec<Param>,
}

impl Compiled {
    /// The placeholder of the next parameter pushed.
    pub fn next_placeholder(&self) -> usize {
        self.params.len() + 2
    }

    /// Binds `$1` (the account) and the parameters to `query`.
    pub fn bind<'q>(
        &'q self,
        account: AccountId,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let mut query = query.bind(account.0);
        for p in &self.params {
            query = match p {
                Param::Text(t) => query.bind(t),
                Param::Texts(t) => query.bind(t),
                Param::Json(j) => query.bind(sqlx::types::Json(j)),
                Param::Uuid(u) => query.bind(u),
            };
        }
        query
    }
}

/// What the expression's names stand for in one account, now.
#[derive(Debug, Default)]
pub struct Resolved {
    lists: HashMap<String, Uuid>,
    engaged: HashMap<(Engagement, u64), Vec<String>>,
}

/// Why an expression cannot be evaluated.
#[derive(Debug)]
pub enum ResolveError {
    /// The expression names something the account does not have.
    Expr(ExprError),
    /// PostgreSQL or ClickHouse did not answer.
    Unavailable(ApiError),
}

impl From<ResolveError> for ApiError {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::Expr(e) => super::api::expression_error("expression", e),
            ResolveError::Unavailable(e) => e,
        }
    }
}

/// Looks up the lists and engagement windows `expr` names, for `account`. `source` is
/// the expression text (for error positions).
pub async fn resolve(
    state: &Audiences,
    account: AccountId,
    source: &str,
    expr: &Expr,
) -> Result<Resolved, ResolveError> {
    let mut lists = Vec::new();
    let mut windows = Vec::new();
    walk(expr, &mut |e| match e {
        Expr::InList { name, at } => lists.push((name.clone(), *at)),
        Expr::Engaged { kind, hours } => windows.push((*kind, *hours)),
        _ => {}
    });
    let mut resolved = Resolved::default();
    for (name, at) in lists {
        if resolved.lists.contains_key(&name) {
            continue;
        }
        let id: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM lists WHERE account_id = $1 AND name = $2")
                .bind(account.0)
                .bind(&name)
                .fetch_optional(state.store.pool())
                .await
                .map_err(|e| ResolveError::Unavailable(crate::contacts::db_error(e)))?;
        let Some(id) = id else {
            return Err(ResolveError::Expr(super::error_at(
                source,
                at,
                format!("the account has no list named {name:?}"),
            )));
        };
        resolved.lists.insert(name, id);
    }
    for (kind, hours) in windows {
        if resolved.engaged.contains_key(&(kind, hours)) {
            continue;
        }
        let emails = crate::engagement::engaged_within(&state.clickhouse, account, kind, hours)
            .await
            .map_err(|error| {
                tracing::error!(%error, "engagement lookup");
                ResolveError::Unavailable(ApiError::unavailable("the analytics store"))
            })?;
        resolved.engaged.insert((kind, hours), emails);
    }
    Ok(resolved)
}

fn walk(expr: &Expr, visit: &mut impl FnMut(&Expr)) {
    visit(expr);
    match expr {
        Expr::And(parts) | Expr::Or(parts) => parts.iter().for_each(|p| walk(p, visit)),
        Expr::Not(inner) => walk(inner, visit),
        _ => {}
    }
}

/// The SQL condition for `expr` with `resolved`'s lookups.
pub fn compile(expr: &Expr, resolved: &Resolved) -> Compiled {
    let mut out = Compiled {
        clause: String::new(),
        params: Vec::new(),
    };
    let clause = condition(expr, resolved, &mut out.params);
    out.clause = clause;
    out
}

fn push(params: &mut Vec<Param>, p: Param) -> String {
    params.push(p);
    format!("${}", params.len() + 1)
}

fn nested(path: &[String], value: Value) -> Value {
    path.iter().rev().fold(value, |inner, key| {
        let mut object = Map::new();
        object.insert(key.clone(), inner);
        Value::Object(object)
    })
}

fn json_of(literal: &Literal) -> Value {
    match literal {
        Literal::Text(t) => Value::String(t.clone()),
        Literal::Bool(b) => Value::Bool(*b),
        Literal::Number(n) => serde_json::from_str::<serde_json::Number>(n)
            .map(Value::Number)
            .unwrap_or_else(|_| Value::String(n.clone())),
    }
}

fn comparison_sql(op: Op) -> &'static str {
    match op {
        Op::Eq => "=",
        Op::Ne => "<>",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
        Op::Contains | Op::StartsWith | Op::EndsWith => "ILIKE",
    }
}

fn pattern(op: Op, text: &str) -> String {
    let t = like_escape(text);
    match op {
        Op::Contains => format!("%{t}%"),
        Op::StartsWith => format!("{t}%"),
        Op::EndsWith => format!("%{t}"),
        _ => text.to_owned(),
    }
}

fn condition(expr: &Expr, resolved: &Resolved, params: &mut Vec<Param>) -> String {
    match expr {
        Expr::And(parts) | Expr::Or(parts) => {
            let joiner = if matches!(expr, Expr::And(_)) {
                " AND "
            } else {
                " OR "
            };
            let parts: Vec<String> = parts
                .iter()
                .map(|p| condition(p, resolved, params))
                .collect();
            format!("({})", parts.join(joiner))
        }
        Expr::Not(inner) => format!("(NOT {})", condition(inner, resolved, params)),
        Expr::InList { name, .. } => {
            let id = resolved.lists.get(name).copied().unwrap_or_else(Uuid::nil);
            let p = push(params, Param::Uuid(id));
            format!(
                "EXISTS (SELECT 1 FROM list_members m WHERE m.list_id = {p}::uuid
                 AND m.contact_id = c.id AND m.state = 'subscribed')"
            )
        }
        Expr::Engaged { kind, hours } => {
            let emails = resolved
                .engaged
                .get(&(*kind, *hours))
                .cloned()
                .unwrap_or_default();
            let p = push(params, Param::Texts(emails));
            format!("c.email = ANY({p}::text[])")
        }
        Expr::Has(path) => {
            let p = push(params, Param::Texts(path.clone()));
            format!("((c.attributes #> {p}::text[]) IS NOT NULL)")
        }
        Expr::Compare { field, op, value } => compare(field, *op, value, params),
    }
}

fn compare(field: &Field, op: Op, value: &Literal, params: &mut Vec<Param>) -> String {
    let sql_op = comparison_sql(op);
    let text_match = matches!(op, Op::Contains | Op::StartsWith | Op::EndsWith);
    match field {
        Field::Email | Field::Name | Field::Status => {
            let column = match field {
                Field::Email => "c.email",
                Field::Name => "c.name",
                _ => "c.status",
            };
            let Literal::Text(text) = value else {
                return "FALSE".into();
            };
            // Compared with addresses as contacts keep them: a whole address in its
            // canonical form (IDNA A-label domain), lower-cased; a fragment lower-cased.
            let text = match field {
                Field::Email if matches!(op, Op::Eq | Op::Ne) => {
                    crate::contacts::normalise_email(text).unwrap_or_else(|_| text.to_lowercase())
                }
                Field::Email => text.to_lowercase(),
                _ => text.clone(),
            };
            let p = push(params, Param::Text(pattern(op, &text)));
            if text_match {
                format!("({column} ILIKE {p})")
            } else {
                format!("({column} {sql_op} {p} COLLATE \"C\")")
            }
        }
        Field::Attribute(path) => match (op, value) {
            // Numbers compare as exact decimals for every operator (containment would
            // compare a large integer as a float), and only with numbers.
            (Op::Eq | Op::Ne, Literal::Number(n)) => {
                let path_p = push(params, Param::Texts(path.clone()));
                let value_p = push(params, Param::Text(n.clone()));
                let equal = format!(
                    "((CASE WHEN jsonb_typeof(c.attributes #> {path_p}::text[]) = 'number'
                      THEN (c.attributes #>> {path_p}::text[])::numeric = {value_p}::numeric END) IS TRUE)"
                );
                if op == Op::Eq {
                    equal
                } else {
                    format!("(NOT {equal})")
                }
            }
            (Op::Eq, _) => {
                let p = push(params, Param::Json(nested(path, json_of(value))));
                format!("(c.attributes @> {p}::jsonb)")
            }
            (Op::Ne, _) => {
                let p = push(params, Param::Json(nested(path, json_of(value))));
                format!("(NOT (c.attributes @> {p}::jsonb))")
            }
            _ => {
                let path_p = push(params, Param::Texts(path.clone()));
                let (json_type, cast, v) = match value {
                    Literal::Number(n) => ("number", "::numeric", n.clone()),
                    Literal::Text(t) => ("string", " COLLATE \"C\"", pattern(op, t)),
                    Literal::Bool(_) => return "FALSE".into(),
                };
                let value_p = push(params, Param::Text(v));
                let cast = if text_match { "" } else { cast };
                format!(
                    "((CASE WHEN jsonb_typeof(c.attributes #> {path_p}::text[]) = '{json_type}'
                      THEN (c.attributes #>> {path_p}::text[]){cast} {sql_op} {value_p}{cast} END) IS TRUE)"
                )
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segments::parse;

    #[test]
    fn user_text_is_only_ever_a_parameter() {
        let source = r#"attributes.plan = "x'; DROP TABLE contacts; --" or name contains "50%_off" or attributes.n > 3"#;
        let compiled = compile(&parse(source).unwrap(), &Resolved::default());
        assert!(!compiled.clause.contains("DROP"));
        assert!(!compiled.clause.contains("50"));
        assert_eq!(
            compiled.params,
            vec![
                Param::Json(serde_json::json!({"plan": "x'; DROP TABLE contacts; --"})),
                Param::Text("%50\\%\\_off%".into()),
                Param::Texts(vec!["n".into()]),
                Param::Text("3".into()),
            ]
        );
        assert!(compiled.clause.contains("$2") && compiled.clause.contains("$5"));
        assert_eq!(compiled.next_placeholder(), 6);
    }

    #[test]
    fn nested_attributes_compare_by_containment() {
        let compiled = compile(
            &parse("attributes.a.b = true").unwrap(),
            &Resolved::default(),
        );
        assert_eq!(
            compiled.params,
            vec![Param::Json(serde_json::json!({"a": {"b": true}}))]
        );
    }
}
