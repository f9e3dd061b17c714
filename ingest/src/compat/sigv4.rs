//! Verifying AWS Signature Version 4 (the `Authorization: AWS4-HMAC-SHA256 …` header AWS
//! SDKs send), so the SES v2 drop-in ([`super::ses`]) takes requests from `boto3` and the
//! other official SDKs unchanged.
//!
//! In: the method, path, query, headers and body of a request. Out: the access key id
//! it names once [`Signed::verify`] found the signature right for that key's secret.
//!
//! The mapping: the **access key id** is a Sendmill API key's id (its UUID without
//! dashes, [`access_key_id`]) and the **secret access key** is the API key itself
//! (`sm_…`). SigV4 proves possession with an HMAC keyed by the secret, so the server needs
//! the secret, not a hash: only keys created with `aws_sigv4` keep a copy, sealed under
//! the KEK (`sendmill_store::secrets`).
//!
//! The algorithm is AWS's published one (docs.aws.amazon.com, "Create a signed AWS API
//! request"): canonical request → string to sign → a signing key derived from the
//! secret, the date, the region and the service → HMAC-SHA256. HMAC and SHA-256 are
//! aws-lc-rs's; only the canonical forms are written here, because AWS's own Rust crate
//! (`aws-sigv4`) signs requests but does not verify one, and its SDK runtime is not
//! worth pulling into the API server for forty lines of canonicalisation. The tests
//! check it against a signature from AWS's documentation, and the drop-in test against
//! `boto3`'s own signatures.

use aws_lc_rs::{constant_time, digest, hmac};
use time::{OffsetDateTime, PrimitiveDateTime};

/// How far a request's `X-Amz-Date` may be from now (AWS allows 15 minutes).
pub const MAX_SKEW: time::Duration = time::Duration::minutes(15);

/// The access key id SDKs are given for API key `key_id`.
pub fn access_key_id(key_id: uuid::Uuid) -> String {
    key_id.simple().to_string()
}

/// Why a request is not authenticated.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Sigv4Error {
    #[error("missing Authorization header")]
    Missing,
    #[error("the Authorization header is not AWS4-HMAC-SHA256 with Credential, SignedHeaders and Signature")]
    Malformed,
    #[error("missing or malformed X-Amz-Date header")]
    Date,
    #[error("the request's X-Amz-Date is more than 15 minutes from the server's time")]
    Expired,
    #[error("the credential scope's date is not the date of X-Amz-Date")]
    Scope,
    #[error("the signed headers must include host and x-amz-date")]
    Unsigned,
    #[error("the body does not match X-Amz-Content-Sha256")]
    PayloadHash,
    #[error("the request signature does not match")]
    Mismatch,
    #[error("the credential scope names service {0:?}; this endpoint is {1:?}")]
    Service(String, &'static str),
}

/// A parsed `Authorization` header with what the signature covers.
#[derive(Debug)]
pub struct Signed {
    /// The access key id of the credential.
    pub access_key_id: String,
    date: String,
    region: String,
    service: String,
    signature: Vec<u8>,
    amz_date: String,
    canonical_request: String,
}

/// Lowercase hex of the SHA-256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, bytes))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
}

/// RFC 3986 percent-encoding as SigV4 wants it: everything but unreserved characters.
fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (and `+` is left alone, as SigV4 does).
fn uri_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            let hex = [bytes[i + 1], bytes[i + 2]];
            let hex = std::str::from_utf8(&hex).expect("ASCII hex digits");
            out.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The canonical query string: each name and value decoded then encoded, sorted.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&uri_decode(name), false),
                uri_encode(&uri_decode(value), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A header value as signed: trimmed, runs of spaces made one.
fn canonical_value(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

impl Signed {
    /// Reads the `Authorization` header and builds the canonical request for `method`,
    /// `path` (as sent, percent-encoded), `query` (without `?`), `headers` and `body`.
    /// Errors: no header, a malformed one, a missing `X-Amz-Date`, signed headers that
    /// leave out `host` or `x-amz-date`, or a body that does not match a given
    /// `X-Amz-Content-Sha256`.
    pub fn parse(
        method: &str,
        path: &str,
        query: &str,
        headers: &axum::http::HeaderMap,
        body: &[u8],
    ) -> Result<Self, Sigv4Error> {
        let authorization = headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or(Sigv4Error::Missing)?
            .to_str()
            .map_err(|_| Sigv4Error::Malformed)?;
        let rest = authorization
            .strip_prefix("AWS4-HMAC-SHA256 ")
            .ok_or(Sigv4Error::Malformed)?;
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let (name, value) = part.trim().split_once('=').ok_or(Sigv4Error::Malformed)?;
            match name {
                "Credential" => credential = Some(value),
                "SignedHeaders" => signed = Some(value),
                "Signature" => signature = Some(value),
                _ => return Err(Sigv4Error::Malformed),
            }
        }
        let (credential, signed, signature) = (
            credential.ok_or(Sigv4Error::Malformed)?,
            signed.ok_or(Sigv4Error::Malformed)?,
            signature.ok_or(Sigv4Error::Malformed)?,
        );
        let scope: Vec<&str> = credential.split('/').collect();
        let [access_key_id, date, region, service, "aws4_request"] = scope[..] else {
            return Err(Sigv4Error::Malformed);
        };
        let signature = hex::decode(signature).map_err(|_| Sigv4Error::Malformed)?;
        let signed_headers: Vec<String> = signed.split(';').map(str::to_owned).collect();
        if !signed_headers.iter().any(|h| h == "host")
            || !signed_headers.iter().any(|h| h == "x-amz-date")
        {
            return Err(Sigv4Error::Unsigned);
        }
        let amz_date = headers
            .get("x-amz-date")
            .and_then(|v| v.to_str().ok())
            .ok_or(Sigv4Error::Date)?
            .to_owned();
        if amz_date.len() != 16 || !amz_date.is_ascii() {
            return Err(Sigv4Error::Date);
        }
        if date.len() != 8 || date != &amz_date[..8] {
            return Err(Sigv4Error::Scope);
        }
        let payload_hash = sha256_hex(body);
        if let Some(given) = headers.get("x-amz-content-sha256") {
            if given.as_bytes() != payload_hash.as_bytes()
                && given.as_bytes() != b"UNSIGNED-PAYLOAD"
            {
                return Err(Sigv4Error::PayloadHash);
            }
        }
        let mut canonical_headers = String::new();
        for name in &signed_headers {
            let values: Vec<String> = headers
                .get_all(name.as_str())
                .iter()
                .map(|v| canonical_value(v.as_bytes()))
                .collect();
            canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
        }
        // Non-S3 services encode each path segment once more (AWS's "double encoding").
        let canonical_path = if path.is_empty() {
            "/".to_owned()
        } else {
            uri_encode(path, true)
        };
        let canonical_request = format!(
            "{method}\n{canonical_path}\n{}\n{canonical_headers}\n{signed}\n{payload_hash}",
            canonical_query(query)
        );
        Ok(Signed {
            access_key_id: access_key_id.to_owned(),
            date: date.to_owned(),
            region: region.to_owned(),
            service: service.to_owned(),
            signature,
            amz_date,
            canonical_request,
        })
    }

    /// Whether the credential scope names `service` (`ses` for SES): a signature made
    /// for another AWS service is not one for this endpoint.
    pub fn require_service(&self, service: &'static str) -> Result<(), Sigv4Error> {
        if self.service == service {
            Ok(())
        } else {
            Err(Sigv4Error::Service(self.service.clone(), service))
        }
    }

    /// Checks the signature with `secret` (the secret access key) and the request's time
    /// against `now` ([`MAX_SKEW`]).
    pub fn verify(&self, secret: &str, now: OffsetDateTime) -> Result<(), Sigv4Error> {
        let format = time::format_description::parse_borrowed::<2>(
            "[year][month][day]T[hour][minute][second]Z",
        )
        .expect("a valid format");
        let at = PrimitiveDateTime::parse(&self.amz_date, &format)
            .map_err(|_| Sigv4Error::Date)?
            .assume_utc();
        if (now - at).abs() > MAX_SKEW {
            return Err(Sigv4Error::Expired);
        }
        let scope = format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        );
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
            self.amz_date,
            sha256_hex(self.canonical_request.as_bytes())
        );
        let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), self.date.as_bytes());
        let k_region = hmac_sha256(k_date.as_ref(), self.region.as_bytes());
        let k_service = hmac_sha256(k_region.as_ref(), self.service.as_bytes());
        let k_signing = hmac_sha256(k_service.as_ref(), b"aws4_request");
        let expected = hmac_sha256(k_signing.as_ref(), string_to_sign.as_bytes());
        constant_time::verify_slices_are_equal(expected.as_ref(), &self.signature)
            .map_err(|_| Sigv4Error::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    /// AWS's documented example ("Examples of the complete Signature Version 4 signing
    /// process", IAM ListUsers, GET with a query): secret
    /// `wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY`, 2015-08-30T12:36:00Z, us-east-1, iam.
    #[test]
    fn the_documented_example_verifies() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        headers.insert("host", HeaderValue::from_static("iam.amazonaws.com"));
        headers.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        headers.insert(
            "authorization",
            HeaderValue::from_static(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
            ),
        );
        let signed = Signed::parse(
            "GET",
            "/",
            "Action=ListUsers&Version=2010-05-08",
            &headers,
            b"",
        )
        .unwrap();
        assert_eq!(signed.access_key_id, "AKIDEXAMPLE");
        let at = OffsetDateTime::from_unix_timestamp(1_440_938_160).unwrap();
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        assert_eq!(signed.verify(secret, at), Ok(()));
        assert_eq!(
            signed.verify("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEZ", at),
            Err(Sigv4Error::Mismatch)
        );
        assert_eq!(
            signed.verify(secret, at + time::Duration::minutes(16)),
            Err(Sigv4Error::Expired)
        );
        // A changed query is another request.
        let other = Signed::parse(
            "GET",
            "/",
            "Action=DeleteUsers&Version=2010-05-08",
            &headers,
            b"",
        )
        .unwrap();
        assert_eq!(other.verify(secret, at), Err(Sigv4Error::Mismatch));
    }

    #[test]
    fn percent_escapes_decode_by_bytes_and_never_panic() {
        assert_eq!(uri_decode("a%41%2f"), "aA/");
        assert_eq!(uri_decode("%+1%4"), "%+1%4");
        assert_eq!(uri_decode("%aé%é"), "%aé%é");
        assert_eq!(canonical_query("b=2&a=%41 x"), "a=A%20x&b=2");
    }

    #[test]
    fn malformed_headers_are_refused() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            Signed::parse("POST", "/", "", &headers, b"").unwrap_err(),
            Sigv4Error::Missing
        );
        headers.insert("authorization", HeaderValue::from_static("Bearer x"));
        assert_eq!(
            Signed::parse("POST", "/", "", &headers, b"").unwrap_err(),
            Sigv4Error::Malformed
        );
        headers.insert(
            "authorization",
            HeaderValue::from_static(
                "AWS4-HMAC-SHA256 Credential=A/20150830/us-east-1/ses/aws4_request, SignedHeaders=content-type, Signature=00",
            ),
        );
        assert_eq!(
            Signed::parse("POST", "/", "", &headers, b"").unwrap_err(),
            Sigv4Error::Unsigned
        );
    }
}
