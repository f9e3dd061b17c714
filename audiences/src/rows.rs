//! Import files into contact rows, fed in chunks of any size: CSV (RFC 4180: a header
//! row naming `email` and optionally `name`, every other column an attribute; quoted
//! fields may hold commas, quotes and line breaks; UTF-8 with or without a BOM) or
//! NDJSON (one `{"email", "name", "attributes"}` object per line).
//!
//! Each record becomes a [`Parsed::Row`] or a [`Parsed::Skip`] with its line and a
//! reason (a bad address, a wrong number of fields, invalid UTF-8, a record longer than
//! `max_row_bytes`, a bad attribute), so a job reports every bad line and goes on. A
//! record is never held beyond `max_row_bytes`: csv-core (BurntSushi's push parser, the
//! one under the `csv` crate) writes into a fixed buffer and a longer record is skipped
//! while it streams past, so a 50 MB line costs 64 KiB, not 50 MB. Only a bad header
//! refuses the whole file ([`HeaderError`]).
//!
//! CSV values are typed the way a spreadsheet export means them: an integer or decimal
//! without leading zeros is a number, `true`/`false` a boolean, an empty cell leaves the
//! attribute as it is, and anything else (`"01234"`, dates) is a string.

use crate::contacts::{check_attribute_name, normalise_email, MAX_NAME_BYTES};
use csv_core::{ReadRecordResult, Reader};
use serde_json::{Map, Number, Value};

/// Most columns a CSV header may have.
pub const MAX_COLUMNS: usize = 256;
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One record of the file.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed {
    Row(Row),
    Skip { line: u64, reason: String },
}

/// A valid record: a normalised address, maybe a name, the attributes it sets.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The physical line the record starts on (the header is line 1).
    pub line: u64,
    pub email: String,
    pub name: Option<String>,
    pub attributes: Map<String, Value>,
}

/// Why a file is refused whole.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("the file is empty")]
    Empty,
    #[error("the header row is longer than the row limit")]
    TooLong,
    #[error("the header row is not UTF-8")]
    NotUtf8,
    #[error("the header row has no email column")]
    NoEmail,
    #[error("the header row has more than 256 columns")]
    TooManyColumns,
    #[error("header column {column}: {reason}")]
    Column { column: usize, reason: String },
}

/// A CSV value as an attribute (see the module doc).
pub fn typed_value(raw: &str) -> Value {
    match raw {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let plain_int = !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && (int == "0" || !int.starts_with('0'));
    let plain_frac =
        frac.bytes().all(|b| b.is_ascii_digit()) && !(digits.contains('.') && frac.is_empty());
    if plain_int && plain_frac && raw.len() <= 20 {
        let number = if frac.is_empty() {
            raw.parse::<i64>().ok().map(Number::from)
        } else {
            raw.parse::<f64>().ok().and_then(Number::from_f64)
        };
        if let Some(n) = number {
            return Value::Number(n);
        }
    }
    Value::String(raw.to_owned())
}

#[derive(Debug)]
struct Header {
    email: usize,
    name: Option<usize>,
    /// Every other column: its attribute name.
    attributes: Vec<(usize, String)>,
    columns: usize,
}

fn header(fields: &[&[u8]]) -> Result<Header, HeaderError> {
    if fields.len() > MAX_COLUMNS {
        return Err(HeaderError::TooManyColumns);
    }
    let mut email = None;
    let mut name = None;
    let mut attributes = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, raw) in fields.iter().enumerate() {
        let text = std::str::from_utf8(raw).map_err(|_| HeaderError::NotUtf8)?;
        let column = text.trim();
        let lower = column.to_ascii_lowercase();
        if !seen.insert(lower.clone()) {
            return Err(HeaderError::Column {
                column: i + 1,
                reason: format!("{column:?} appears twice"),
            });
        }
        match lower.as_str() {
            "email" => email = Some(i),
            "name" => name = Some(i),
            // An export's own columns: the status and membership are not the file's to set.
            "status" | "state" => {}
            _ => {
                check_attribute_name(column).map_err(|m| HeaderError::Column {
                    column: i + 1,
                    reason: m.to_owned(),
                })?;
                attributes.push((i, column.to_owned()));
            }
        }
    }
    Ok(Header {
        email: email.ok_or(HeaderError::NoEmail)?,
        name,
        attributes,
        columns: fields.len(),
    })
}

/// Strips a UTF-8 byte order mark from the start of a stream fed in chunks of any size
/// (one cut inside the mark included).
#[derive(Default)]
struct BomStrip {
    prefix: Vec<u8>,
    done: bool,
}

impl BomStrip {
    /// What to parse of `chunk`: the held-back start once it is known not to be a mark
    /// (else nothing), then the rest of the chunk.
    fn pass<'a>(&mut self, chunk: &'a [u8]) -> (Vec<u8>, &'a [u8]) {
        if self.done {
            return (Vec::new(), chunk);
        }
        let take = (BOM.len() - self.prefix.len()).min(chunk.len());
        self.prefix.extend_from_slice(&chunk[..take]);
        let rest = &chunk[take..];
        if self.prefix.len() < BOM.len() && BOM.starts_with(&self.prefix) {
            return (Vec::new(), rest);
        }
        self.done = true;
        let prefix = std::mem::take(&mut self.prefix);
        (if prefix == BOM { Vec::new() } else { prefix }, rest)
    }

    /// At the end of the stream: whatever was held back.
    fn end(&mut self) -> Vec<u8> {
        self.done = true;
        std::mem::take(&mut self.prefix)
    }
}

/// A CSV file, fed in chunks.
pub struct CsvRows {
    reader: Reader,
    /// The record being read, unescaped; its length is the row limit.
    out: Vec<u8>,
    out_len: usize,
    ends: Vec<usize>,
    ends_len: usize,
    /// Why the record being read is already lost (too long, too many fields).
    overflow: Option<&'static str>,
    header: Option<Header>,
    bom: BomStrip,
    /// Line breaks taken so far (CRLF, LF or a lone CR: csv-core ends records at each).
    newlines: u64,
    /// The last byte taken was a CR (a LF right after it is the same break).
    after_cr: bool,
    /// The line the record being read started on.
    record_line: u64,
    in_record: bool,
}

impl CsvRows {
    /// A parser whose records are at most `max_row_bytes` (unescaped) and 256 fields.
    pub fn new(max_row_bytes: usize) -> Self {
        Self {
            reader: Reader::new(),
            out: vec![0; max_row_bytes],
            out_len: 0,
            ends: vec![0; MAX_COLUMNS + 1],
            ends_len: 0,
            overflow: None,
            header: None,
            bom: BomStrip::default(),
            newlines: 0,
            after_cr: false,
            record_line: 1,
            in_record: false,
        }
    }

    /// Parses `chunk`, calling `emit` for every record it completes. Errors: the header
    /// row is bad (nothing was emitted then).
    pub fn feed(&mut self, chunk: &[u8], emit: &mut impl FnMut(Parsed)) -> Result<(), HeaderError> {
        let (head, rest) = self.bom.pass(chunk);
        // An empty input would tell csv-core the file ended.
        for part in [&head[..], rest] {
            if !part.is_empty() {
                self.run(part, emit)?;
            }
        }
        Ok(())
    }

    /// Whether the header row was read (and found good).
    pub fn has_header(&self) -> bool {
        self.header.is_some()
    }

    /// Ends the file: the last record may lack its line break.
    pub fn finish(&mut self, emit: &mut impl FnMut(Parsed)) -> Result<(), HeaderError> {
        let held = self.bom.end();
        if !held.is_empty() {
            self.run(&held, emit)?;
        }
        self.run(&[], emit)?;
        if self.header.is_none() {
            return Err(HeaderError::Empty);
        }
        Ok(())
    }

    fn run(&mut self, mut input: &[u8], emit: &mut impl FnMut(Parsed)) -> Result<(), HeaderError> {
        loop {
            let (result, nin, nout, nend) = self.reader.read_record(
                input,
                &mut self.out[self.out_len..],
                &mut self.ends[self.ends_len..],
            );
            // Lines are counted here, from the bytes csv-core took: a record starts at
            // its first byte that is not a line break (csv-core skips blank lines, and
            // may take the previous record's line feed with the next call).
            let taken = &input[..nin];
            let mut lead = 0;
            if !self.in_record {
                lead = taken
                    .iter()
                    .take_while(|&&b| b == b'\n' || b == b'\r')
                    .count();
                if lead < taken.len() {
                    self.newlines += self.breaks(&taken[..lead]);
                    self.record_line = self.newlines + 1;
                    self.in_record = true;
                } else {
                    lead = 0;
                }
            }
            self.newlines += self.breaks(&taken[lead..]);
            input = &input[nin..];
            self.out_len += nout;
            self.ends_len += nend;
            match result {
                ReadRecordResult::InputEmpty => return Ok(()),
                ReadRecordResult::End => return Ok(()),
                ReadRecordResult::OutputFull => {
                    self.overflow = Some("the row is longer than the row limit");
                    self.out_len = 0;
                    if self.header.is_none() {
                        return Err(HeaderError::TooLong);
                    }
                }
                ReadRecordResult::OutputEndsFull => {
                    self.overflow
                        .get_or_insert("the row has more than 256 fields");
                    self.ends_len = 0;
                    if self.header.is_none() {
                        return Err(HeaderError::TooManyColumns);
                    }
                }
                ReadRecordResult::Record => {
                    self.record(emit)?;
                    self.out_len = 0;
                    self.ends_len = 0;
                    self.overflow = None;
                    self.in_record = false;
                }
            }
        }
    }

    /// The line breaks in `bytes`, the stream's next bytes: CRLF counts once, as do a
    /// lone CR and a lone LF, a CRLF cut between two calls included.
    fn breaks(&mut self, bytes: &[u8]) -> u64 {
        let mut n = 0;
        for &b in bytes {
            match b {
                b'\r' => {
                    n += 1;
                    self.after_cr = true;
                }
                b'\n' => {
                    if !self.after_cr {
                        n += 1;
                    }
                    self.after_cr = false;
                }
                _ => self.after_cr = false,
            }
        }
        n
    }

    fn record(&mut self, emit: &mut impl FnMut(Parsed)) -> Result<(), HeaderError> {
        let line = self.record_line;
        if let Some(reason) = self.overflow {
            emit(Parsed::Skip {
                line,
                reason: reason.to_owned(),
            });
            return Ok(());
        }
        let mut fields = Vec::with_capacity(self.ends_len);
        let mut start = 0;
        for &end in &self.ends[..self.ends_len] {
            fields.push(&self.out[start..end]);
            start = end;
        }
        let Some(header) = &self.header else {
            self.header = Some(header(&fields)?);
            return Ok(());
        };
        emit(csv_row(header, line, &fields));
        Ok(())
    }
}

fn csv_row(header: &Header, line: u64, fields: &[&[u8]]) -> Parsed {
    let skip = |reason: String| Parsed::Skip { line, reason };
    if fields.len() != header.columns {
        return skip(format!(
            "the row has {} fields, the header has {}",
            fields.len(),
            header.columns
        ));
    }
    let mut text = Vec::with_capacity(fields.len());
    for (i, raw) in fields.iter().enumerate() {
        match std::str::from_utf8(raw) {
            // PostgreSQL text cannot hold NUL.
            Ok(t) if t.contains('\0') => {
                return skip(format!("field {} holds a NUL character", i + 1))
            }
            Ok(t) => text.push(t),
            Err(_) => return skip(format!("field {} is not UTF-8", i + 1)),
        }
    }
    let email = match normalise_email(text[header.email]) {
        Ok(email) => email,
        Err(m) => return skip(format!("email: {m}")),
    };
    let name = header
        .name
        .map(|i| text[i].trim().to_owned())
        .filter(|n| !n.is_empty());
    if let Some(reason) = name.as_deref().and_then(bad_name) {
        return skip(reason);
    }
    let mut attributes = Map::new();
    for (i, attribute) in &header.attributes {
        let value = text[*i];
        if !value.is_empty() {
            attributes.insert(attribute.clone(), typed_value(value));
        }
    }
    Parsed::Row(Row {
        line,
        email,
        name,
        attributes,
    })
}

fn bad_name(name: &str) -> Option<String> {
    if name.len() > MAX_NAME_BYTES {
        Some("name: is longer than 256 bytes".into())
    } else if name.chars().any(char::is_control) {
        Some("name: holds control characters".into())
    } else {
        None
    }
}

/// An NDJSON file, fed in chunks.
pub struct NdjsonRows {
    max_row_bytes: usize,
    line: Vec<u8>,
    /// The line being read is longer than the limit (its bytes are dropped).
    overflow: bool,
    line_number: u64,
    bom: BomStrip,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRow {
    email: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    attributes: Map<String, Value>,
}

impl NdjsonRows {
    pub fn new(max_row_bytes: usize) -> Self {
        Self {
            max_row_bytes,
            line: Vec::new(),
            overflow: false,
            line_number: 0,
            bom: BomStrip::default(),
        }
    }

    /// Parses `chunk`, calling `emit` for every line it completes.
    pub fn feed(&mut self, chunk: &[u8], emit: &mut impl FnMut(Parsed)) {
        let (head, rest) = self.bom.pass(chunk);
        self.lines(&head, emit);
        self.lines(rest, emit);
    }

    fn lines(&mut self, mut chunk: &[u8], emit: &mut impl FnMut(Parsed)) {
        while !chunk.is_empty() {
            let (part, rest, complete) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                None => (chunk, &[][..], false),
            };
            if !self.overflow {
                if self.line.len() + part.len() > self.max_row_bytes {
                    self.overflow = true;
                    self.line = Vec::new();
                } else {
                    self.line.extend_from_slice(part);
                }
            }
            if complete {
                self.end_line(emit);
            }
            chunk = rest;
        }
    }

    /// Ends the file: the last line may lack its line break.
    pub fn finish(&mut self, emit: &mut impl FnMut(Parsed)) {
        let held = self.bom.end();
        self.lines(&held, emit);
        if !self.line.is_empty() || self.overflow {
            self.end_line(emit);
        }
    }

    fn end_line(&mut self, emit: &mut impl FnMut(Parsed)) {
        self.line_number += 1;
        let line = self.line_number;
        let bytes = std::mem::take(&mut self.line);
        if std::mem::take(&mut self.overflow) {
            emit(Parsed::Skip {
                line,
                reason: "the row is longer than the row limit".into(),
            });
            return;
        }
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(&bytes);
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        emit(json_row(line, bytes));
    }
}

fn json_row(line: u64, bytes: &[u8]) -> Parsed {
    let skip = |reason: String| Parsed::Skip { line, reason };
    if std::str::from_utf8(bytes).is_err() {
        return skip("the line is not UTF-8".into());
    }
    let parsed: JsonRow = match sendmill_platform::body::parse(bytes) {
        Ok(row) => row,
        Err(e) if e.field.is_empty() => return skip(e.message),
        Err(e) => return skip(format!("{}: {}", e.field, e.message)),
    };
    let email = match normalise_email(&parsed.email) {
        Ok(email) => email,
        Err(m) => return skip(format!("email: {m}")),
    };
    let name = parsed
        .name
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty());
    if let Some(reason) = name.as_deref().and_then(bad_name) {
        return skip(reason);
    }
    if let Err((field, m)) = crate::contacts::check_attributes(&parsed.attributes) {
        return skip(format!("{field}: {m}"));
    }
    // A null leaves the attribute as it is, as an empty CSV cell does.
    let mut attributes = parsed.attributes;
    attributes.retain(|_, v| !v.is_null());
    Parsed::Row(Row {
        line,
        email,
        name,
        attributes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn csv(chunks: &[&[u8]], max: usize) -> Result<Vec<Parsed>, HeaderError> {
        let mut rows = CsvRows::new(max);
        let mut out = Vec::new();
        for chunk in chunks {
            rows.feed(chunk, &mut |p| out.push(p))?;
        }
        rows.finish(&mut |p| out.push(p))?;
        Ok(out)
    }

    fn row(line: u64, email: &str, name: Option<&str>, attributes: Value) -> Parsed {
        Parsed::Row(Row {
            line,
            email: email.into(),
            name: name.map(Into::into),
            attributes: attributes.as_object().unwrap().clone(),
        })
    }

    fn skip(line: u64, reason: &str) -> Parsed {
        Parsed::Skip {
            line,
            reason: reason.into(),
        }
    }

    #[test]
    fn rfc4180_quoting_bom_and_types() {
        let file = "\u{feff}Email,name,plan,seats,zip,vip,note\r\n\
                    Ada@Example.TEST,\"Lovelace, Ada\",pro,12,01234,true,\"say \"\"hi\"\"\"\r\n\
                    \r\n\
                    bob@example.test,,free,,,false,\"two\nlines\"\r\n\
                    carol@example.test,Carol,basic,1.5,9,x,last";
        let got = csv(&[file.as_bytes()], 1024).unwrap();
        assert_eq!(
            got,
            vec![
                row(
                    2,
                    "ada@example.test",
                    Some("Lovelace, Ada"),
                    json!({"plan": "pro", "seats": 12, "zip": "01234", "vip": true, "note": "say \"hi\""})
                ),
                row(
                    4,
                    "bob@example.test",
                    None,
                    json!({"plan": "free", "vip": false, "note": "two\nlines"})
                ),
                row(
                    6,
                    "carol@example.test",
                    Some("Carol"),
                    json!({"plan": "basic", "seats": 1.5, "zip": 9, "vip": "x", "note": "last"})
                ),
            ]
        );
    }

    #[test]
    fn the_same_file_in_any_chunks_gives_the_same_rows() {
        let file = b"email,a\nx@ok.test,\"q,\"\"1\"\"\"\ny@ok.test,2\n";
        let whole = csv(&[file], 1024).unwrap();
        for cut in 1..file.len() {
            let (a, b) = file.split_at(cut);
            assert_eq!(csv(&[a, b], 1024).unwrap(), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = file.chunks(1).collect();
        assert_eq!(csv(&bytes, 1024).unwrap(), whole);
        // Records ended by a lone CR are lines of their own too.
        let cr = b"email\ra@ok.test\rb@ok.test\r\nc@ok.test";
        let lines: Vec<u64> = csv(&[cr], 1024)
            .unwrap()
            .iter()
            .map(|p| match p {
                Parsed::Row(r) => r.line,
                Parsed::Skip { line, .. } => *line,
            })
            .collect();
        assert_eq!(lines, [2, 3, 4]);
        for cut in 1..cr.len() {
            let (a, b) = cr.split_at(cut);
            assert_eq!(
                csv(&[a, b], 1024).unwrap(),
                csv(&[cr], 1024).unwrap(),
                "cut at {cut}"
            );
        }
        // A byte order mark cut in two, and blank lines cut anywhere.
        let marked = b"\xEF\xBB\xBFemail\r\n\r\n\r\na@ok.test\r\n\nb@ok.test";
        let whole = csv(&[marked], 1024).unwrap();
        assert_eq!(
            whole,
            vec![
                row(4, "a@ok.test", None, json!({})),
                row(6, "b@ok.test", None, json!({}))
            ]
        );
        for cut in 1..marked.len() {
            let (a, b) = marked.split_at(cut);
            assert_eq!(csv(&[a, b], 1024).unwrap(), whole, "cut at {cut}");
        }
    }

    #[test]
    fn bad_lines_are_reported_and_the_rest_imported() {
        let long = "z".repeat(5_000);
        let file = format!(
            "email,plan\nnot-an-address,pro\nok@ok.test,pro,extra\nbad\u{0}@ok.test\n{long}@ok.test,x\n"
        );
        let mut bytes = file.into_bytes();
        bytes.extend_from_slice(b"inv\xffalid@ok.test,pro\nnul@ok.test,a\x00b\nfine@ok.test,pro\n");
        let got = csv(&[&bytes], 1024).unwrap();
        assert_eq!(got[0], skip(2, "email: address has no @"));
        assert_eq!(got[1], skip(3, "the row has 3 fields, the header has 2"));
        assert_eq!(got[2], skip(4, "the row has 1 fields, the header has 2"));
        assert_eq!(got[3], skip(5, "the row is longer than the row limit"));
        assert_eq!(got[4], skip(6, "field 1 is not UTF-8"));
        assert_eq!(got[5], skip(7, "field 2 holds a NUL character"));
        assert_eq!(got[6], row(8, "fine@ok.test", None, json!({"plan": "pro"})));
        assert_eq!(got.len(), 7);
    }

    #[test]
    fn a_huge_line_streams_past_in_bounded_memory() {
        let mut rows = CsvRows::new(64 * 1024);
        let mut out = Vec::new();
        rows.feed(b"email,note\na@ok.test,\"", &mut |p| out.push(p))
            .unwrap();
        let block = vec![b'x'; 1 << 20];
        for _ in 0..50 {
            rows.feed(&block, &mut |p| out.push(p)).unwrap();
        }
        rows.feed(b"\"\nb@ok.test,fine\n", &mut |p| out.push(p))
            .unwrap();
        rows.finish(&mut |p| out.push(p)).unwrap();
        assert_eq!(
            out,
            vec![
                skip(2, "the row is longer than the row limit"),
                row(3, "b@ok.test", None, json!({"note": "fine"}))
            ]
        );
        assert_eq!(rows.out.len(), 64 * 1024);
    }

    #[test]
    fn bad_headers_refuse_the_file() {
        assert_eq!(csv(&[b"name,plan\nx,y\n"], 1024), Err(HeaderError::NoEmail));
        assert_eq!(csv(&[b""], 1024), Err(HeaderError::Empty));
        assert!(matches!(
            csv(&[b"email,a.b\n"], 1024),
            Err(HeaderError::Column { column: 2, .. })
        ));
        assert!(matches!(
            csv(&[b"email,Email\n"], 1024),
            Err(HeaderError::Column { column: 2, .. })
        ));
        assert_eq!(csv(&[b"email,\xff\n"], 1024), Err(HeaderError::NotUtf8));
    }

    #[test]
    fn ndjson_lines() {
        let mut rows = NdjsonRows::new(100);
        let mut out = Vec::new();
        let file = format!(
            "{{\"email\":\"A@ok.test\",\"attributes\":{{\"n\":1}}}}\n\n{{\"email\":\"b@ok.test\",\"plan\":1}}\n{}\n{{\"email\":\"c@ok.test\",\"name\":\"C\"}}",
            "x".repeat(200)
        );
        for chunk in file.as_bytes().chunks(7) {
            rows.feed(chunk, &mut |p| out.push(p));
        }
        rows.finish(&mut |p| out.push(p));
        assert_eq!(out[0], row(1, "a@ok.test", None, json!({"n": 1})));
        assert!(
            matches!(&out[1], Parsed::Skip { line: 3, reason } if reason.contains("plan")),
            "{:?}",
            out[1]
        );
        assert_eq!(out[2], skip(4, "the row is longer than the row limit"));
        assert_eq!(out[3], row(5, "c@ok.test", Some("C"), json!({})));
    }

    #[test]
    fn values_are_typed_like_a_spreadsheet_means_them() {
        assert_eq!(typed_value("42"), json!(42));
        assert_eq!(typed_value("-3.25"), json!(-3.25));
        assert_eq!(typed_value("0"), json!(0));
        for text in [
            "007",
            "1.",
            ".5",
            "1e5",
            "12345678901234567890123",
            "TRUE",
            "x",
        ] {
            assert_eq!(typed_value(text), json!(text), "{text}");
        }
    }
}
