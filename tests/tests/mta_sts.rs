//! MTA-STS (RFC 8461) end to end: policies served over HTTPS by this test (certificate
//! from the local CA, which the dispatcher trusts as an extra root), TXT records in
//! dnsmasq, MX hosts that do (postfix at mx.tls.test) and do not (the accepting sink)
//! offer STARTTLS. `enforce` refuses a host without TLS and a host the policy does not
//! name; `testing` delivers and reports; a verified host gets the mail. TLS-RPT
//! (RFC 8460) counters on /metrics say what happened per domain.

use sendmill::Stage;
use sendmill_tests::*;
use serde_json::{json, Value};
use std::{path::Path, sync::Arc, time::Duration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(60);

/// The policy each test domain publishes.
fn policy_for(host: &str) -> Option<&'static str> {
    Some(match host {
        "mta-sts.sts-enforce.test" => {
            "version: STSv1\r\nmode: enforce\r\nmx: mx.ok.test\r\nmax_age: 86400\r\n"
        }
        "mta-sts.sts-testing.test" => {
            "version: STSv1\r\nmode: testing\r\nmx: mx.ok.test\r\nmax_age: 86400\r\n"
        }
        "mta-sts.sts-tls.test" => {
            "version: STSv1\r\nmode: enforce\r\nmx: *.tls.test\r\nmax_age: 86400\r\n"
        }
        "mta-sts.sts-mismatch.test" => {
            "version: STSv1\r\nmode: enforce\r\nmx: *.elsewhere.test\r\nmax_age: 86400\r\n"
        }
        "mta-sts.sts-badcert.test" => {
            "version: STSv1\r\nmode: enforce\r\nmx: *.tls.test\r\nmax_age: 86400\r\n"
        }
        _ => return None,
    })
}

/// An HTTPS server on 127.0.0.23 (where dnsmasq puts every mta-sts.* host of the test
/// domains) answering `/.well-known/mta-sts.txt` by the Host header. Returns its port.
async fn serve_policies() -> u16 {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let ca = local_dir().join("ca");
    let pem = |name: &str| ca.join(name);
    assert!(
        Path::new(&pem("mta-sts.pem")).exists(),
        "{} is missing: run deploy/local/start-services.sh",
        pem("mta-sts.pem").display()
    );
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pem("mta-sts.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(pem("mta-sts.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.23:0")
        .await
        .expect("127.0.0.23 is a loopback address");
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&request);
                let host = request
                    .lines()
                    .find_map(|l| l.strip_prefix("host: ").or(l.strip_prefix("Host: ")))
                    .map(|h| h.split(':').next().unwrap_or(h).trim().to_owned())
                    .unwrap_or_default();
                let path_ok = request.starts_with("GET /.well-known/mta-sts.txt ");
                let response = match policy_for(&host).filter(|_| path_ok) {
                    Some(policy) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{policy}",
                        policy.len()
                    ),
                    None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
                };
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

/// Waits for message `id` to be deferred as `tls_required` with `phrase` in its reason.
async fn deferred_for_tls(p: &TestPipeline, id: &str, phrase: &str) {
    let timeline = p.wait_for_status(id, "deferred", LIMIT).await;
    let deferred = event(&timeline, "deferred");
    assert_eq!(deferred["bounce_category"], "tls_required", "{deferred}");
    assert!(
        deferred["reason"]
            .as_str()
            .is_some_and(|r| r.contains(phrase)),
        "{phrase:?} not in {deferred}"
    );
}

fn event<'a>(timeline: &'a Value, kind: &str) -> &'a Value {
    timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} event in {timeline}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mta_sts_policies_are_enforced_tested_and_reported() {
    let port = serve_policies().await;
    let ca = local_dir().join("ca/ca.pem").to_string_lossy().into_owned();
    let p = TestPipeline::start_configured(&Stage::ALL, |c| {
        c.dispatcher.mta_sts.policy_port = port;
        c.dispatcher.mta_sts.extra_roots = vec![ca];
        // The policy hosts are on loopback here.
        c.dispatcher.mta_sts.allow_internal_policy_hosts = true;
    })
    .await;
    let (status, body) = p
        .send(&message_to(
            &p,
            json!([
                "a@sts-enforce.test",
                "b@sts-mismatch.test",
                "c@sts-testing.test",
                "d@sts-tls.test",
                "e@sts-badcert.test"
            ]),
        ))
        .await;
    assert_eq!(status, 202, "{body}");
    let ids = message_ids(&body);

    // enforce, MX without STARTTLS: not sent, deferred as tls_required.
    deferred_for_tls(&p, &ids[0], "MTA-STS").await;
    deferred_for_tls(&p, &ids[0], "STARTTLS").await;
    assert!(dumped_message(&ids[0]).is_none());

    // enforce, MX the policy does not name: not even a connection.
    deferred_for_tls(&p, &ids[1], "names none of its MX hosts").await;

    // testing: delivered in the clear, reported.
    p.wait_for_status(&ids[2], "delivered", LIMIT).await;
    assert!(dumped_message(&ids[2]).is_some());

    // enforce, MX with a certificate from a trusted root naming it: delivered over TLS
    // (postfix relays it to the sink with a Received header saying so).
    p.wait_for_status(&ids[3], "delivered", LIMIT).await;
    let dump = poll_until(LIMIT, || async { dumped_message(&ids[3]) })
        .await
        .expect("postfix relayed the message to the sink");
    let text = std::fs::read_to_string(&dump).unwrap();
    assert!(
        text.contains("(using TLS"),
        "not received over TLS:\n{text}"
    );

    // enforce, MX offering STARTTLS with a certificate that does not name it: refused
    // after the handshake, before any mail command.
    deferred_for_tls(&p, &ids[4], "does not name the MX host").await;

    let metrics = p.metrics().await;
    for line in [
        r#"sendmill_tls_rpt_sessions_total{domain="sts-enforce.test",result="starttls-not-supported",mode="enforce"}"#,
        r#"sendmill_tls_rpt_sessions_total{domain="sts-mismatch.test",result="validation-failure",mode="enforce"}"#,
        r#"sendmill_tls_rpt_sessions_total{domain="sts-testing.test",result="starttls-not-supported",mode="testing"}"#,
        r#"sendmill_tls_rpt_sessions_total{domain="sts-tls.test",result="success",mode="enforce"}"#,
        r#"sendmill_tls_rpt_sessions_total{domain="sts-badcert.test",result="certificate-host-mismatch",mode="enforce"}"#,
    ] {
        assert!(
            metrics.contains(line),
            "/metrics lacks {line}:\n{}",
            metrics
                .lines()
                .filter(|l| l.contains("tls_rpt"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    p.stop().await;
}
