//! The reply-classification table: which bounce category a negative SMTP reply means,
//! whether it is permanent, and whether it suppresses the recipient. The dispatcher
//! classifies the replies it gets; the inbound stage classifies the diagnostics that
//! delivery status notifications carry (RFC 3464 `Diagnostic-Code`, `Status`), so a
//! bounce is put in the same category whichever way it reached us. The rules are data
//! (`default_classify.toml`, or `[[dispatcher.classify]]` in the config).

use sendmill_wire::{BounceCategory, SmtpReply};
use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permanence {
    Temporary,
    Permanent,
}

/// `[[dispatcher.classify]]`: one row of the reply-classification table. Every given
/// condition must hold; an empty one holds for any reply.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyRule {
    /// Basic reply codes: exact (`550`) or with `x` for any digit (`55x`, `4xx`).
    #[serde(default)]
    pub codes: Vec<String>,
    /// Enhanced status codes (RFC 3463): exact (`5.1.1`) or a prefix ending in a dot
    /// (`5.7.`).
    #[serde(default)]
    pub enhanced: Vec<String>,
    /// Case-insensitive phrases, any of which in the reply text matches.
    #[serde(default)]
    pub text: Vec<String>,
    /// The bounce category of a matching reply.
    pub category: BounceCategory,
    /// Overrides the reply's code class (4xx temporary, 5xx permanent).
    #[serde(default)]
    pub outcome: Option<Permanence>,
    /// Whether a permanent failure adds the recipient to the account's suppression list.
    #[serde(default)]
    pub suppress: bool,
}

impl ClassifyRule {
    pub fn validate(&self) -> Result<(), String> {
        for code in &self.codes {
            let ok = code.len() == 3
                && code.bytes().enumerate().all(|(i, b)| {
                    b == b'x' || (b.is_ascii_digit() && (i > 0 || matches!(b, b'2'..=b'5')))
                });
            if !ok {
                return Err(format!(
                    "classify: code pattern {code:?} is not like 550 or 5xx"
                ));
            }
        }
        for enhanced in &self.enhanced {
            if !enhanced.starts_with(['4', '5'])
                || enhanced.contains(|c: char| !c.is_ascii_digit() && c != '.')
            {
                return Err(format!(
                    "classify: enhanced code {enhanced:?} is not like 5.1.1 or 5.7."
                ));
            }
        }
        if self.codes.is_empty() && self.enhanced.is_empty() && self.text.is_empty() {
            return Err(format!(
                "classify: a rule for {:?} matches every reply",
                self.category
            ));
        }
        Ok(())
    }

    fn matches(&self, reply: &SmtpReply, lowered_text: &str) -> bool {
        let code = reply.code.to_string();
        let code_ok = self.codes.is_empty()
            || self.codes.iter().any(|pattern| {
                pattern
                    .bytes()
                    .zip(code.bytes())
                    .all(|(p, c)| p == b'x' || p == c)
            });
        let enhanced_ok = self.enhanced.is_empty()
            || reply.enhanced.as_deref().is_some_and(|e| {
                self.enhanced.iter().any(|pattern| {
                    if pattern.ends_with('.') {
                        e.starts_with(pattern.as_str())
                    } else {
                        e == pattern
                    }
                })
            });
        let text_ok = self.text.is_empty()
            || self
                .text
                .iter()
                .any(|phrase| lowered_text.contains(&phrase.to_ascii_lowercase()));
        code_ok && enhanced_ok && text_ok
    }
}

/// What the table makes of a negative reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub category: BounceCategory,
    pub permanent: bool,
    pub suppress: bool,
}

/// The index of the first rule in `rules` that matches `reply`, if any.
impl ClassifyRule {
    /// Whether the rule says more than a class of codes: it has phrases, or names an
    /// exact enhanced code (`5.2.2`, not `5.2.`).
    pub fn is_specific(&self) -> bool {
        !self.text.is_empty() || self.enhanced.iter().any(|e| !e.ends_with('.'))
    }
}

pub fn first_match(rules: &[ClassifyRule], reply: &SmtpReply) -> Option<usize> {
    let text = reply.text.to_ascii_lowercase();
    rules.iter().position(|r| r.matches(reply, &text))
}

/// Classifies a negative reply by the first matching rule; without one, by code class.
pub fn classify(rules: &[ClassifyRule], reply: &SmtpReply) -> Verdict {
    let by_code = reply.code >= 500;
    match first_match(rules, reply).map(|i| &rules[i]) {
        Some(rule) => {
            let permanent = match rule.outcome {
                Some(p) => p == Permanence::Permanent,
                None => by_code,
            };
            Verdict {
                category: rule.category,
                permanent,
                suppress: permanent && rule.suppress,
            }
        }
        None => Verdict {
            category: BounceCategory::Other,
            permanent: by_code,
            suppress: false,
        },
    }
}

/// The built-in table (`default_classify.toml`), used when the config gives none.
pub fn default_rules() -> Vec<ClassifyRule> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Table {
        classify: Vec<ClassifyRule>,
    }
    let table: Table =
        toml::from_str(include_str!("default_classify.toml")).expect("the built-in table parses");
    table.classify
}
