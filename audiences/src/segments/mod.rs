//! Segments: saved filters over an account's contacts, written in a small expression
//! language that compiles to parameterised SQL (user text only ever reaches PostgreSQL
//! as a bound parameter) plus ClickHouse lookups for engagement.
//!
//! ```text
//! attributes.plan = "pro" and opened_within(30d) and not in_list("vip")
//! ```
//!
//! - **Comparisons**: `field op value`. Fields: `email`, `name`, `status`, and
//!   `attributes.<name>[.<name>…]` (nested objects). Operators: `=`, `!=`, `<`, `<=`,
//!   `>`, `>=`, `contains`, `starts_with`, `ends_with`. Values: `"strings"` (with `\"`,
//!   `\\`, `\n`, `\t`), numbers (`42`, `-1.5`), `true`, `false`. An attribute compares
//!   only with a value of its own type: `attributes.seats > 10` is false for a contact
//!   whose `seats` is the string `"12"` or missing; `!=` is true when the attribute is
//!   missing. `status` is one of `active`, `bounced`, `complained`, `unsubscribed`.
//! - **Functions**: `in_list("name")` (subscribed to the list of that name),
//!   `opened_within(30d)`, `clicked_within(12h)`, `delivered_within(7d)` (people only:
//!   machine opens and clicks do not count; `d` days, `h` hours, at most 3650 days),
//!   `has(attributes.x)` (the attribute is set).
//! - **Logic**: `and`, `or`, `not`, parentheses; `not` binds tightest, then `and`, then
//!   `or`. Keywords are case-insensitive.
//!
//! Errors carry the 1-based character position in the expression: the parser's
//! (`expected …`, from pest, the grammar in `grammar.pest`) and the meaning's (an
//! operator a boolean cannot take, a list that does not exist).

pub mod api;
pub mod compile;

use pest::{iterators::Pair, Parser};
use pest_derive::Parser;

#[derive(Parser)]
#[grammar = "segments/grammar.pest"]
struct Grammar;

/// Longest expression, in bytes.
pub const MAX_EXPRESSION: usize = 4_096;
/// Deepest nesting of `not` and parentheses.
const MAX_DEPTH: usize = 32;
/// Longest engagement window, in hours (3650 days).
const MAX_WINDOW_HOURS: u64 = 3_650 * 24;

/// A parsed expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Compare {
        field: Field,
        op: Op,
        value: Literal,
    },
    /// Subscribed to the account's list of this name; `at` for the error when there is
    /// none.
    InList {
        name: String,
        at: usize,
    },
    /// A delivered, opened or clicked event within this many hours.
    Engaged {
        kind: Engagement,
        hours: u64,
    },
    /// The attribute is set.
    Has(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    Email,
    Name,
    Status,
    Attribute(Vec<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Contains,
    StartsWith,
    EndsWith,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    Text(String),
    /// Kept as written (a decimal PostgreSQL compares exactly).
    Number(String),
    Bool(bool),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Engagement {
    Delivered,
    Opened,
    Clicked,
}

impl Engagement {
    /// The event type in ClickHouse's `contact_engagement`.
    pub fn event_type(self) -> &'static str {
        match self {
            Engagement::Delivered => "delivered",
            Engagement::Opened => "opened",
            Engagement::Clicked => "clicked",
        }
    }
}

/// Why an expression is refused, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at position {position}: {message}")]
pub struct ExprError {
    /// 1-based character position in the expression.
    pub position: usize,
    pub message: String,
}

fn error_at(source: &str, byte: usize, message: impl Into<String>) -> ExprError {
    ExprError {
        position: source[..byte.min(source.len())].chars().count() + 1,
        message: message.into(),
    }
}

fn rule_name(rule: &Rule) -> String {
    match rule {
        Rule::EOI => "end of expression",
        Rule::or_op => "or",
        Rule::and_op => "and",
        Rule::not_op => "not",
        Rule::function => "a function",
        Rule::field | Rule::builtin | Rule::attribute => {
            "a field (email, name, status, attributes.<name>)"
        }
        Rule::key => "an attribute name",
        Rule::operator => "an operator (=, !=, <, <=, >, >=, contains, starts_with, ends_with)",
        Rule::string => "a \"string\"",
        Rule::number => "a number",
        Rule::boolean => "true or false",
        Rule::duration => "a duration (30d, 12h)",
        Rule::group => "(",
        Rule::call | Rule::comparison | Rule::unary | Rule::or_expr | Rule::and_expr => {
            "a condition"
        }
        _ => "something else",
    }
    .to_owned()
}

/// Parses `source`. Errors: where it stops making sense and what was expected there.
pub fn parse(source: &str) -> Result<Expr, ExprError> {
    if source.len() > MAX_EXPRESSION {
        return Err(ExprError {
            position: 1,
            message: format!("the expression is longer than {MAX_EXPRESSION} bytes"),
        });
    }
    if source.trim().is_empty() {
        return Err(ExprError {
            position: 1,
            message: "the expression is empty".into(),
        });
    }
    check_nesting(source)?;
    let mut pairs = Grammar::parse(Rule::expression, source).map_err(|e| {
        let byte = match e.location {
            pest::error::InputLocation::Pos(p) => p,
            pest::error::InputLocation::Span((p, _)) => p,
        };
        let e = e.renamed_rules(rule_name);
        let message = match &e.variant {
            pest::error::ErrorVariant::ParsingError { .. } => e.variant.message().into_owned(),
            pest::error::ErrorVariant::CustomError { message } => message.clone(),
        };
        error_at(source, byte, message)
    })?;
    let expression = pairs.next().expect("the grammar's root");
    let or_expr = expression
        .into_inner()
        .next()
        .expect("expression holds or_expr");
    build(source, or_expr)
}

/// Refuses deep nesting before the (recursive) parser sees it: more than 32 open
/// parentheses at once, or more than 32 `not`s in a row, outside strings.
fn check_nesting(source: &str) -> Result<(), ExprError> {
    let (mut depth, mut nots) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    let mut word = String::new();
    let mut word_start = 0;
    for (i, c) in source
        .char_indices()
        .chain(std::iter::once((source.len(), ' ')))
    {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' {
            if word.is_empty() {
                word_start = i;
            }
            word.push(c);
            continue;
        }
        if word.eq_ignore_ascii_case("not") {
            nots += 1;
            if nots > MAX_DEPTH {
                return Err(error_at(
                    source,
                    word_start,
                    "the expression nests too deeply",
                ));
            }
        } else if !word.is_empty() {
            nots = 0;
        }
        word.clear();
        match c {
            '"' => in_string = true,
            '(' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(error_at(source, i, "the expression nests too deeply"));
                }
            }
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn build(source: &str, pair: Pair<Rule>) -> Result<Expr, ExprError> {
    let at = pair.as_span().start();
    match pair.as_rule() {
        Rule::or_expr | Rule::and_expr => {
            let is_or = pair.as_rule() == Rule::or_expr;
            let mut parts = Vec::new();
            for inner in pair.into_inner() {
                if matches!(inner.as_rule(), Rule::or_op | Rule::and_op) {
                    continue;
                }
                parts.push(build(source, inner)?);
            }
            Ok(if parts.len() == 1 {
                parts.pop().expect("one part")
            } else if is_or {
                Expr::Or(parts)
            } else {
                Expr::And(parts)
            })
        }
        Rule::unary => {
            let mut inner = pair.into_inner();
            let first = inner.next().expect("unary has a part");
            if first.as_rule() == Rule::not_op {
                let operand = inner.next().expect("not has an operand");
                Ok(Expr::Not(Box::new(build(source, operand)?)))
            } else {
                build(source, first)
            }
        }
        Rule::group => {
            let inner = pair.into_inner().next().expect("group holds or_expr");
            build(source, inner)
        }
        Rule::call => call(source, pair),
        Rule::comparison => comparison(source, pair),
        other => Err(error_at(
            source,
            at,
            format!("unexpected {}", rule_name(&other)),
        )),
    }
}

fn field(pair: Pair<Rule>) -> Field {
    let inner = pair.into_inner().next().expect("field holds a kind");
    match inner.as_rule() {
        Rule::attribute => Field::Attribute(
            inner
                .into_inner()
                .map(|key| key.as_str().to_owned())
                .collect(),
        ),
        _ => match inner.as_str() {
            "email" => Field::Email,
            "name" => Field::Name,
            _ => Field::Status,
        },
    }
}

fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn string_of(pair: Pair<Rule>) -> String {
    unescape(pair.into_inner().next().map_or("", |inner| inner.as_str()))
}

fn call(source: &str, pair: Pair<Rule>) -> Result<Expr, ExprError> {
    let mut inner = pair.into_inner();
    let function = inner.next().expect("call names a function");
    let argument = inner.next().expect("call has an argument");
    let arg_at = argument.as_span().start();
    let wrong = |expected: &str| {
        error_at(
            source,
            arg_at,
            format!("{}() takes {expected}", function.as_str()),
        )
    };
    match function.as_str() {
        "in_list" => match argument.as_rule() {
            Rule::string => Ok(Expr::InList {
                name: string_of(argument),
                at: arg_at,
            }),
            _ => Err(wrong("a list name in quotes")),
        },
        "has" => match argument.as_rule() {
            Rule::field => match field(argument) {
                Field::Attribute(path) => Ok(Expr::Has(path)),
                _ => Err(wrong("an attribute (attributes.<name>)")),
            },
            _ => Err(wrong("an attribute (attributes.<name>)")),
        },
        name => {
            let kind = match name {
                "opened_within" => Engagement::Opened,
                "clicked_within" => Engagement::Clicked,
                _ => Engagement::Delivered,
            };
            if argument.as_rule() != Rule::duration {
                return Err(wrong("a duration such as 30d or 12h"));
            }
            let text = argument.as_str();
            let (digits, unit) = text.split_at(text.len() - 1);
            let n: u64 = digits.parse().unwrap_or(u64::MAX);
            let hours = if unit == "d" { n.saturating_mul(24) } else { n };
            if hours == 0 || hours > MAX_WINDOW_HOURS {
                return Err(wrong("a duration from 1h to 3650d"));
            }
            Ok(Expr::Engaged { kind, hours })
        }
    }
}

fn comparison(source: &str, pair: Pair<Rule>) -> Result<Expr, ExprError> {
    let mut inner = pair.into_inner();
    let field_pair = inner.next().expect("comparison has a field");
    let op_pair = inner.next().expect("comparison has an operator");
    let value_pair = inner.next().expect("comparison has a value");
    let (op_at, value_at) = (op_pair.as_span().start(), value_pair.as_span().start());
    let field = field(field_pair);
    let op = match op_pair.as_str() {
        "=" => Op::Eq,
        "!=" => Op::Ne,
        "<" => Op::Lt,
        "<=" => Op::Le,
        ">" => Op::Gt,
        ">=" => Op::Ge,
        "contains" => Op::Contains,
        "starts_with" => Op::StartsWith,
        _ => Op::EndsWith,
    };
    let value = match value_pair.as_rule() {
        Rule::string => Literal::Text(string_of(value_pair)),
        Rule::number => Literal::Number(value_pair.as_str().to_owned()),
        _ => Literal::Bool(value_pair.as_str() == "true"),
    };
    let ordering = matches!(op, Op::Lt | Op::Le | Op::Gt | Op::Ge);
    let text_only = matches!(op, Op::Contains | Op::StartsWith | Op::EndsWith);
    match (&field, &value) {
        (Field::Attribute(_), Literal::Bool(_)) if ordering || text_only => Err(error_at(
            source,
            op_at,
            "true and false compare only with = and !=",
        )),
        (Field::Attribute(_), Literal::Number(_)) if text_only => Err(error_at(
            source,
            op_at,
            "contains, starts_with and ends_with take a \"string\"",
        )),
        (Field::Email | Field::Name | Field::Status, Literal::Number(_) | Literal::Bool(_)) => {
            Err(error_at(
                source,
                value_at,
                "email, name and status compare with a \"string\"",
            ))
        }
        (Field::Status, Literal::Text(status)) => {
            if !matches!(op, Op::Eq | Op::Ne) {
                return Err(error_at(
                    source,
                    op_at,
                    "status compares only with = and !=",
                ));
            }
            if crate::contacts::Status::parse(status).is_none() {
                return Err(error_at(
                    source,
                    value_at,
                    "status is active, bounced, complained or unsubscribed",
                ));
            }
            Ok(Expr::Compare { field, op, value })
        }
        _ => Ok(Expr::Compare { field, op, value }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(name: &str) -> Field {
        Field::Attribute(name.split('.').map(Into::into).collect())
    }

    #[test]
    fn the_issue_example_parses() {
        let e = parse(r#"attributes.plan = "pro" and opened_within(30d) and not in_list("vip")"#)
            .unwrap();
        assert_eq!(
            e,
            Expr::And(vec![
                Expr::Compare {
                    field: attr("plan"),
                    op: Op::Eq,
                    value: Literal::Text("pro".into())
                },
                Expr::Engaged {
                    kind: Engagement::Opened,
                    hours: 720
                },
                Expr::Not(Box::new(Expr::InList {
                    name: "vip".into(),
                    at: 63
                })),
            ])
        );
    }

    #[test]
    fn precedence_and_grouping() {
        let e = parse(r#"NOT has(attributes.a) OR attributes.b.c >= -2.5 AND (email ends_with "@x.test" or name contains "a\"b")"#).unwrap();
        let Expr::Or(parts) = e else { panic!("{e:?}") };
        assert_eq!(parts[0], Expr::Not(Box::new(Expr::Has(vec!["a".into()]))));
        let Expr::And(right) = &parts[1] else {
            panic!()
        };
        assert_eq!(
            right[0],
            Expr::Compare {
                field: attr("b.c"),
                op: Op::Ge,
                value: Literal::Number("-2.5".into())
            }
        );
        let Expr::Or(inner) = &right[1] else { panic!() };
        assert_eq!(
            inner[1],
            Expr::Compare {
                field: Field::Name,
                op: Op::Contains,
                value: Literal::Text("a\"b".into())
            }
        );
    }

    #[test]
    fn errors_say_where() {
        let cases: &[(&str, usize, &str)] = &[
            (r#"attributes.plan = "pro" and"#, 28, "expected"),
            (r#"attributes.plan == "pro""#, 18, "expected"),
            (r#"attributes. = 1"#, 12, "expected"),
            (r#"opened_within("x")"#, 15, "duration"),
            (r#"opened_within(4000d)"#, 15, "3650d"),
            (r#"in_list(30d)"#, 9, "list name"),
            (r#"attributes.vip > true"#, 16, "= and !="),
            (r#"status = "gone""#, 10, "status is"),
            (r#"email = 3"#, 9, "string"),
            (r#"attributes.zip = 01234"#, 18, "expected"),
            (r#"(attributes.a = 1"#, 18, "expected"),
            (r#"émoji = 1"#, 1, "expected"),
            (r#"name = "é" and ?"#, 16, "expected"),
            ("", 1, "empty"),
        ];
        for (source, position, message) in cases {
            let e = parse(source).unwrap_err();
            assert_eq!(e.position, *position, "{source}: {e}");
            assert!(e.message.contains(message), "{source}: {e}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("{}attributes.a = 1{}", "(".repeat(100), ")".repeat(100));
        assert!(parse(&deep)
            .unwrap_err()
            .message
            .contains("nests too deeply"));
        assert_eq!(parse(&deep).unwrap_err().position, 33);
        let nots = format!("{}has(attributes.a)", "not ".repeat(100));
        assert!(parse(&nots)
            .unwrap_err()
            .message
            .contains("nests too deeply"));
        // Many `not`s one after another are not nesting.
        let many: Vec<String> = (0..40)
            .map(|i| format!("not has(attributes.a{i})"))
            .collect();
        assert!(parse(&many.join(" and ")).is_ok());
        // Inside a string, parentheses are text.
        assert!(parse(&format!("name = \"{}\"", "(".repeat(100))).is_ok());
    }
}
