//! Handlebars for subjects and bodies. Each distinct template source is compiled once and
//! kept, found again by the source itself (see [`Registry`]). There are four registries: HTML parts are
//! escaped, subjects and text parts are not; lenient ones render a missing variable as
//! empty, strict ones fail on it (chosen per message).
//!
//! Helpers beyond Handlebars' built-ins (`if`, `each`, `with`, `eq`, `ne`, `gt`, `lt`,
//! `and`, `or`, `not`, `len`, …):
//! - `{{default value "fallback"}}`: `value` unless it is missing, null, false or empty;
//! - `{{url_encode value}}`: percent-encoding for URLs (RFC 3986 unreserved kept);
//! - `{{format_number value decimals}}`: `1234567.5` → `1,234,567.50`;
//! - `{{format_date value "%Y-%m-%d"}}`: RFC 3339 text or Unix seconds, strftime-style
//!   `%Y %y %m %d %e %H %M %S %b %B %a %A %%`, UTC;
//! - `{{upper value}}`, `{{lower value}}`.

use handlebars::{
    handlebars_helper, Context, Handlebars, Helper, HelperResult, Output, RenderContext,
    RenderError as HbError, RenderErrorReason,
};
use sendmill_store::{Store, StoreError};
use sendmill_wire::AccountId;
use serde_json::Value;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

/// Compiled templates kept per registry before the cache is emptied and refilled.
const MAX_CACHED: usize = 10_000;
/// Source bytes kept per registry (the key, and about as much again compiled) before the
/// cache is emptied and refilled: bodies may be up to 10 MiB each.
const MAX_CACHED_BYTES: usize = 128 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Subject,
    Html,
    Text,
}

impl Part {
    pub fn name(self) -> &'static str {
        match self {
            Part::Subject => "subject",
            Part::Html => "html",
            Part::Text => "text",
        }
    }
}

/// One Handlebars registry and the sources compiled into it.
struct Registry {
    handlebars: Handlebars<'static>,
    /// Each compiled source and the name it is registered under. Keyed by the source
    /// itself: std's randomly keyed SipHash finds the entry and full equality confirms
    /// it. It replaced a SHA-256 of the source per render, which was 37 % of the
    /// instructions of building a message from the bench's 15 KB template (callgrind,
    /// `deploy/local/callgrind.sh`, part `build`) and 7 % of its time here.
    ///
    /// The name is random (`<part>:<UUID v4>`), never derived from the source or a
    /// counter: Handlebars resolves `{{> name}}` against every registered template, and
    /// accounts without partials share one registry, so a guessable name would let one
    /// tenant include another's cached template in its own message.
    names: HashMap<Box<str>, String>,
    /// Bytes of the sources in `names`.
    bytes: usize,
}

pub struct Templates {
    /// Indexed by [`Templates::slot`]: (escaping HTML, strict).
    registries: [RwLock<Registry>; 4],
    /// What the partials registered in `registries` hash to.
    partials_fingerprint: [u8; 32],
    /// Source bytes a registry caches before it starts over ([`MAX_CACHED_BYTES`]).
    max_cached_bytes: usize,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    pub fn new() -> Self {
        Self::with_partials(&[]).expect("no partials, nothing to fail")
    }

    /// Templates that can use `partials` (name, source): `{{> name}}`, and layouts as
    /// partial blocks, `{{#> layout}}…{{/layout}}` around `{{> @partial-block}}`.
    pub fn with_partials(partials: &[(String, String)]) -> Result<Self, String> {
        let mut registries = [
            registry(false, false),
            registry(false, true),
            registry(true, false),
            registry(true, true),
        ];
        for registry in &mut registries {
            for (name, source) in partials {
                registry
                    .register_partial(name, source)
                    .map_err(|e| format!("partial {name}: {e}"))?;
            }
        }
        Ok(Self {
            registries: registries.map(|handlebars| {
                RwLock::new(Registry {
                    handlebars,
                    names: HashMap::new(),
                    bytes: 0,
                })
            }),
            partials_fingerprint: fingerprint(partials),
            max_cached_bytes: MAX_CACHED_BYTES,
        })
    }

    pub fn partials_fingerprint(&self) -> [u8; 32] {
        self.partials_fingerprint
    }

    fn slot(part: Part, strict: bool) -> usize {
        usize::from(part == Part::Html) * 2 + usize::from(strict)
    }

    /// Renders `source` as `part` with `data`; compiles it on first use.
    pub fn render(
        &self,
        part: Part,
        source: &str,
        data: &Value,
        strict: bool,
    ) -> Result<String, String> {
        let lock = &self.registries[Self::slot(part, strict)];
        {
            let registry = lock.read().expect("not poisoned");
            if let Some(name) = registry.names.get(source) {
                return registry.handlebars.render(name, data).map_err(describe);
            }
        }
        let mut guard = lock.write().expect("not poisoned");
        let registry = &mut *guard;
        // Another render may have compiled it between the two locks.
        if let Some(name) = registry.names.get(source) {
            return registry.handlebars.render(name, data).map_err(describe);
        }
        if registry.names.len() >= MAX_CACHED
            || registry.bytes + source.len() > self.max_cached_bytes
        {
            registry.bytes = 0;
            // Only the cached sources: the account's partials live in the same map.
            for (_, name) in registry.names.drain() {
                registry.handlebars.unregister_template(&name);
            }
        }
        let name = format!("{}:{}", part.name(), uuid::Uuid::new_v4().simple());
        registry
            .handlebars
            .register_template_string(&name, source)
            .map_err(|e| e.to_string())?;
        let rendered = registry.handlebars.render(&name, data).map_err(describe);
        registry.names.insert(source.into(), name);
        registry.bytes += source.len();
        rendered
    }
}

/// Each account's templates with its own partials, reloaded from the store after `ttl`.
/// A reload that finds the same partials keeps the compiled set (and its cache); accounts
/// without partials share one set.
pub struct AccountTemplates {
    store: Store,
    ttl: Duration,
    shared: Arc<Templates>,
    sets: Mutex<HashMap<AccountId, (Arc<Templates>, Instant)>>,
}

/// Accounts whose template sets are kept before the cache starts over.
const MAX_ACCOUNTS: usize = 10_000;

impl AccountTemplates {
    pub fn new(store: Store, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            shared: Arc::new(Templates::new()),
            sets: Mutex::default(),
        }
    }

    /// The account's template set; the inner error is a stored partial that does not
    /// compile (the message fails), the outer one the store being unreachable (retry).
    pub async fn get(
        &self,
        account: AccountId,
    ) -> Result<Result<Arc<Templates>, String>, StoreError> {
        let cached = self
            .sets
            .lock()
            .expect("not poisoned")
            .get(&account)
            .cloned();
        if let Some((set, at)) = &cached {
            if at.elapsed() < self.ttl {
                return Ok(Ok(set.clone()));
            }
        }
        let partials = self.store.partials(account).await?;
        let set = match cached {
            Some((set, _)) if set.partials_fingerprint() == fingerprint(&partials) => set,
            _ if partials.is_empty() => self.shared.clone(),
            _ => match Templates::with_partials(&partials) {
                Ok(set) => Arc::new(set),
                Err(error) => return Ok(Err(error)),
            },
        };
        let mut sets = self.sets.lock().expect("not poisoned");
        if sets.len() >= MAX_ACCOUNTS {
            sets.clear();
        }
        sets.insert(account, (set.clone(), Instant::now()));
        Ok(Ok(set))
    }
}

/// Where a template source fails to compile, for the caller who saved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based, when Handlebars could tell.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub reason: String,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => {
                write!(f, "line {line}, column {column}: {}", self.reason)
            }
            _ => f.write_str(&self.reason),
        }
    }
}

/// Compiles `source` without keeping it: what the template API checks before saving.
pub fn check_syntax(source: &str) -> Result<(), SyntaxError> {
    handlebars::Template::compile(source)
        .map(|_| ())
        .map_err(|error| SyntaxError {
            line: error.pos().map(|(line, _)| line),
            column: error.pos().map(|(_, column)| column),
            reason: error.reason().to_string(),
        })
}

/// A hash of a partial set, to tell whether a reload changed anything.
pub fn fingerprint(partials: &[(String, String)]) -> [u8; 32] {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for (name, source) in partials {
        for field in [name, source] {
            context.update(&(field.len() as u64).to_le_bytes());
            context.update(field.as_bytes());
        }
    }
    context
        .finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

fn describe(error: HbError) -> String {
    error.to_string()
}

fn registry(html: bool, strict: bool) -> Handlebars<'static> {
    let mut h = Handlebars::new();
    h.set_strict_mode(strict);
    if html {
        h.register_escape_fn(escape_html);
    } else {
        h.register_escape_fn(handlebars::no_escape);
    }
    h.register_helper("default", Box::new(default_helper));
    h.register_helper("url_encode", Box::new(url_encode));
    h.register_helper("format_number", Box::new(format_number));
    h.register_helper("format_date", Box::new(format_date));
    h.register_helper("upper", Box::new(upper));
    h.register_helper("lower", Box::new(lower));
    h
}

/// HTML escaping of `{{value}}`: the same characters and entities as Handlebars' own
/// `escape_html` (`< > " & ' \` =`), copying the runs between them in one piece. Handlebars'
/// pushes one `char` at a time into a growing `String`, and was an eighth of building
/// the bench's message (callgrind, `deploy/local/callgrind.sh`, part `build`). Every
/// escaped character is ASCII, so scanning bytes never splits a UTF-8 sequence.
fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    let mut rest = s;
    while let Some(at) = rest
        .bytes()
        .position(|b| matches!(b, b'<' | b'>' | b'"' | b'&' | b'\'' | b'`' | b'='))
    {
        out.push_str(&rest[..at]);
        out.push_str(match rest.as_bytes()[at] {
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            b'&' => "&amp;",
            b'\'' => "&#x27;",
            b'`' => "&#x60;",
            _ => "&#x3D;",
        });
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
    out
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(_) => false,
    }
}

fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn default_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let value = h.param(0).map(|p| p.value().clone()).unwrap_or(Value::Null);
    let fallback = h.param(1).map(|p| p.value().clone()).unwrap_or(Value::Null);
    let chosen = if is_empty(&value) { fallback } else { value };
    out.write(&as_text(&chosen))?;
    Ok(())
}

handlebars_helper!(url_encode: |value: Value| {
    let text = as_text(&value);
    let mut encoded = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    encoded
});

handlebars_helper!(upper: |value: Value| as_text(&value).to_uppercase());
handlebars_helper!(lower: |value: Value| as_text(&value).to_lowercase());

fn format_number(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let value = h.param(0).map(|p| p.value().clone()).unwrap_or(Value::Null);
    let number = match &value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| RenderErrorReason::Other(format!("format_number: {value} is not a number")))?;
    let decimals = h
        .param(1)
        .and_then(|p| p.value().as_u64())
        .unwrap_or(0)
        .min(10) as usize;
    out.write(&group_thousands(&format!("{number:.decimals$}")))?;
    Ok(())
}

fn group_thousands(formatted: &str) -> String {
    let (sign, digits) = formatted
        .strip_prefix('-')
        .map_or(("", formatted), |d| ("-", d));
    let (int, frac) = digits
        .split_once('.')
        .map_or((digits, None), |(i, f)| (i, Some(f)));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

fn format_date(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let value = h.param(0).map(|p| p.value().clone()).unwrap_or(Value::Null);
    let date = match &value {
        Value::Number(n) => n
            .as_i64()
            .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok()),
        Value::String(s) => OffsetDateTime::parse(s, &Rfc3339).ok(),
        _ => None,
    }
    .ok_or_else(|| RenderErrorReason::Other(format!("format_date: {value} is not a date")))?;
    let pattern = h
        .param(1)
        .and_then(|p| p.value().as_str())
        .unwrap_or("%Y-%m-%d");
    out.write(&strftime(date.to_offset(time::UtcOffset::UTC), pattern))?;
    Ok(())
}

fn strftime(date: OffsetDateTime, pattern: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let month = MONTHS[u8::from(date.month()) as usize - 1];
    let day = DAYS[date.weekday().number_days_from_monday() as usize];
    let mut out = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&date.year().to_string()),
            Some('y') => out.push_str(&format!("{:02}", date.year().rem_euclid(100))),
            Some('m') => out.push_str(&format!("{:02}", u8::from(date.month()))),
            Some('d') => out.push_str(&format!("{:02}", date.day())),
            Some('e') => out.push_str(&date.day().to_string()),
            Some('H') => out.push_str(&format!("{:02}", date.hour())),
            Some('M') => out.push_str(&format!("{:02}", date.minute())),
            Some('S') => out.push_str(&format!("{:02}", date.second())),
            Some('B') => out.push_str(month),
            Some('b') => out.push_str(&month[..3]),
            Some('A') => out.push_str(day),
            Some('a') => out.push_str(&day[..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_say_where() {
        assert_eq!(check_syntax("Hello {{name}}"), Ok(()));
        let error = check_syntax("line one\n<p>{{#if x}}open").unwrap_err();
        assert!(error.line.is_some() && error.column.is_some(), "{error:?}");
        assert!(error.to_string().starts_with("line "), "{error}");
        let error = check_syntax("{{name").unwrap_err();
        assert_eq!(error.line, Some(1), "{error:?}");
    }
    use serde_json::json;

    fn render(source: &str, data: Value) -> Result<String, String> {
        Templates::new().render(Part::Text, source, &data, false)
    }

    #[test]
    fn helpers_format_what_users_expect() {
        let data = json!({"n": 1234567.456, "d": "2026-11-22T09:05:00Z", "t": 1795348800, "q": "a b&c/é", "name": "", "tier": "pro"});
        let cases = [
            ("{{format_number n 2}}", "1,234,567.46"),
            ("{{format_number -1000}}", "-1,000"),
            (
                "{{format_date d \"%a %e %b %Y %H:%M\"}}",
                "Sun 22 Nov 2026 09:05",
            ),
            ("{{format_date t}}", "2026-11-22"),
            ("{{url_encode q}}", "a%20b%26c%2F%C3%A9"),
            ("{{default name \"friend\"}}", "friend"),
            ("{{default tier \"free\"}}", "pro"),
            ("{{#if (eq tier \"pro\")}}P{{else}}F{{/if}}", "P"),
            ("{{upper tier}}", "PRO"),
        ];
        for (template, expected) in cases {
            assert_eq!(
                render(template, data.clone()).unwrap(),
                expected,
                "{template}"
            );
        }
    }

    #[test]
    fn strict_mode_is_per_render() {
        let t = Templates::new();
        assert_eq!(
            t.render(Part::Text, "Hi {{name}}!", &json!({}), false)
                .unwrap(),
            "Hi !"
        );
        let e = t
            .render(Part::Text, "Hi {{name}}!", &json!({}), true)
            .unwrap_err();
        assert!(e.contains("name"), "{e}");
    }

    #[test]
    fn bad_input_to_helpers_is_an_error_not_a_panic() {
        assert!(render("{{format_number name}}", json!({"name": "x"})).is_err());
        assert!(render("{{format_date name}}", json!({"name": "x"})).is_err());
        assert!(render("{{#if}}", json!({})).is_err());
    }

    #[test]
    fn partials_and_layouts_render() {
        let partials = vec![
            (
                "base".to_owned(),
                "<html><body>{{> @partial-block}}<footer>{{> footer}}</footer></body></html>"
                    .to_owned(),
            ),
            ("footer".to_owned(), "Sent to {{email}}".to_owned()),
        ];
        let t = Templates::with_partials(&partials).unwrap();
        let out = t
            .render(
                Part::Html,
                "{{#> base}}<p>Hi {{name}}</p>{{/base}}",
                &json!({"name": "Ada", "email": "a@b.test"}),
                false,
            )
            .unwrap();
        assert_eq!(
            out,
            "<html><body><p>Hi Ada</p><footer>Sent to a@b.test</footer></body></html>"
        );
        assert!(Templates::new()
            .render(Part::Html, "{{> footer}}", &json!({}), false)
            .is_err());
        assert!(Templates::with_partials(&[("bad".into(), "{{#if}}".into())]).is_err());
        assert_ne!(
            t.partials_fingerprint(),
            Templates::new().partials_fingerprint()
        );
    }

    #[test]
    fn html_escaping_matches_handlebars_own() {
        let alphabet: Vec<char> = "ab<>\"&'`=é€😀 \n/\\{}".chars().collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..3000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let text: String = (0..len)
                .map(|k| alphabet[((seed >> (k % 40)) as usize + k * 5) % alphabet.len()])
                .collect();
            assert_eq!(
                escape_html(&text),
                handlebars::html_escape(&text),
                "{text:?}"
            );
        }
        for c in 0..=0x7fu8 {
            let text = format!("x{}y", c as char);
            assert_eq!(escape_html(&text), handlebars::html_escape(&text));
        }
    }

    #[test]
    fn a_source_is_compiled_once() {
        let t = Templates::new();
        for i in 0..3 {
            t.render(Part::Html, "<b>{{i}}</b>", &json!({"i": i}), false)
                .unwrap();
        }
        t.render(Part::Html, "<i>{{i}}</i>", &json!({"i": 1}), false)
            .unwrap();
        let slot = Templates::slot(Part::Html, false);
        let registry = t.registries[slot].read().unwrap();
        assert_eq!(registry.handlebars.get_templates().len(), 2);
        assert_eq!(registry.names.len(), 2);
    }

    #[test]
    fn a_full_cache_starts_over_and_every_source_still_renders_as_itself() {
        let t = Templates::new();
        let render = |n: usize| {
            t.render(
                Part::Text,
                &format!("{n}:{{{{x}}}}"),
                &json!({"x": "y"}),
                false,
            )
            .unwrap()
        };
        for n in 0..=MAX_CACHED {
            assert_eq!(render(n), format!("{n}:y"));
        }
        let slot = Templates::slot(Part::Text, false);
        assert_eq!(t.registries[slot].read().unwrap().names.len(), 1);
        // Sources compiled before the cache started over.
        for n in [0, 1, MAX_CACHED / 2, MAX_CACHED] {
            assert_eq!(render(n), format!("{n}:y"));
        }
    }

    #[test]
    fn the_cache_starts_over_before_it_holds_more_than_its_byte_limit() {
        // 1 MiB, not 128: compiling 128 MiB of sources unoptimized takes minutes.
        let limit = 1 << 20;
        let t = Templates {
            max_cached_bytes: limit,
            ..Templates::new()
        };
        let big = |c: char| c.to_string().repeat(limit / 3);
        for c in ['a', 'b', 'c'] {
            assert_eq!(
                t.render(Part::Html, &big(c), &json!({}), false).unwrap(),
                big(c)
            );
        }
        let slot = Templates::slot(Part::Html, false);
        let registry = t.registries[slot].read().unwrap();
        assert_eq!(registry.names.len(), 3);
        drop(registry);
        t.render(Part::Html, &big('d'), &json!({}), false).unwrap();
        let registry = t.registries[slot].read().unwrap();
        assert_eq!(registry.names.len(), 1);
        assert_eq!(registry.bytes, limit / 3);
    }

    #[test]
    fn an_accounts_partials_outlive_a_cache_start_over() {
        let t = Templates::with_partials(&[("footer".into(), "-- {{x}}".into())]).unwrap();
        for n in 0..=MAX_CACHED {
            t.render(Part::Text, &format!("{n}"), &json!({}), false)
                .unwrap();
        }
        assert_eq!(
            t.render(Part::Text, "Hi {{> footer}}", &json!({"x": "y"}), false)
                .unwrap(),
            "Hi -- y"
        );
    }

    #[test]
    fn a_template_cannot_include_another_cached_template_by_name() {
        let t = Templates::new();
        let secret = "another tenant's text";
        t.render(Part::Text, secret, &json!({}), false).unwrap();
        let slot = Templates::slot(Part::Text, false);
        let name = t.registries[slot].read().unwrap().names[secret].clone();
        // The name is neither the old counter nor derived from the source.
        assert!(
            name.starts_with("text:") && name.len() == "text:".len() + 32,
            "{name}"
        );
        // Handlebars does resolve a registered template's name as a partial, even one
        // taken from the message's data: the name must not be guessable.
        let probe = r#"{{> (lookup this "n")}}"#;
        let include = |n: &str| t.render(Part::Text, probe, &json!({ "n": n }), false);
        assert_eq!(include(&name).unwrap(), secret);
        for guess in ["text:0", "text:1", "subject:0", "html:0"] {
            assert!(include(guess).is_err(), "{guess} found a template");
        }
        let again = t.render(Part::Text, secret, &json!({}), false).unwrap();
        assert_eq!(again, secret);
        assert_eq!(t.registries[slot].read().unwrap().names[secret], name);
    }
}
