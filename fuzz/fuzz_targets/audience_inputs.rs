//! What the audiences take from anyone: segment expressions and import files. Any text
//! through the segment parser and compiler, and any bytes through the CSV and NDJSON
//! row parsers, in chunks cut anywhere. None may panic; a parse error points inside the
//! text; a compiled condition holds no text of the user's (only placeholders and its
//! own fixed literals); a file gives the same rows however it is cut, every row's
//! address in its canonical form and lines in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sendmill_audiences::{
    contacts::normalise_email,
    rows::{CsvRows, NdjsonRows, Parsed},
    segments::{compile, parse},
};

fn expression(text: &str) {
    match parse(text) {
        Ok(expr) => {
            let compiled = compile::compile(&expr, &compile::Resolved::default());
            let mut clause = compiled.clause.clone();
            for fixed in ["'subscribed'", "'number'", "'string'", "\"C\""] {
                clause = clause.replace(fixed, "");
            }
            assert!(
                !clause.contains('\'') && !clause.contains('"'),
                "user text in SQL: {}",
                compiled.clause
            );
        }
        Err(e) => assert!(
            e.position >= 1 && e.position <= text.chars().count() + 1,
            "{e} for {text:?}"
        ),
    }
}

fn rows(file: &[u8], cut: usize, csv: bool) -> Vec<Parsed> {
    let mut out = Vec::new();
    let (a, b) = file.split_at(cut.min(file.len()));
    if csv {
        let mut parser = CsvRows::new(256);
        let mut emit = |p| out.push(p);
        // A refused header ends the file (nothing was emitted for it).
        if parser.feed(a, &mut emit).is_ok() && parser.feed(b, &mut emit).is_ok() {
            let _ = parser.finish(&mut emit);
        }
    } else {
        let mut parser = NdjsonRows::new(256);
        let mut emit = |p| out.push(p);
        parser.feed(a, &mut emit);
        parser.feed(b, &mut emit);
        parser.finish(&mut emit);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                expression(text);
            }
        }
        mode => {
            let csv = mode == 1;
            let whole = rows(rest, rest.len(), csv);
            let cut = rows(rest, usize::from(selector) * 7 % (rest.len() + 1), csv);
            assert_eq!(whole, cut, "the rows depend on where the file was cut");
            let mut last = 0;
            for parsed in whole {
                let line = match parsed {
                    Parsed::Row(row) => {
                        assert_eq!(normalise_email(&row.email).as_deref(), Ok(row.email.as_str()));
                        row.line
                    }
                    Parsed::Skip { line, .. } => line,
                };
                assert!(line > last, "lines in order");
                last = line;
            }
        }
    }
});
