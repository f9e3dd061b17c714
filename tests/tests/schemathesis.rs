//! Bad input, generated: schemathesis (PyPI) reads each API's own `/openapi.json`,
//! sends what the schema allows and what it does not, for a tenant key and an operator
//! key, and fails on any 5xx, any response outside the documented status codes and
//! content types, and any response body that does not match its schema. The number of
//! examples per operation is bounded so that CI time stays bounded
//! (`SENDMILL_SCHEMATHESIS_EXAMPLES`, default 25); every run draws new cases and prints
//! the seed that reproduces it.
#![allow(
    clippy::print_stdout,
    reason = "tests report the figures they measured"
)]

use sendmill_tests::*;
use std::process::Command;

fn examples() -> String {
    std::env::var("SENDMILL_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "25".into())
}

/// Runs schemathesis against the OpenAPI document at `base`/openapi.json with `key`.
fn schemathesis(api: &str, base: &str, key: &str) {
    let binary = local_dir().join("venv/bin/schemathesis");
    assert!(
        binary.exists(),
        "schemathesis is required at {} (run deploy/local/install-packages.sh)",
        binary.display()
    );
    let output = Command::new(&binary)
        // It keeps a cache in its working directory; not in the source tree.
        .current_dir(std::env::temp_dir())
        .args([
            "run",
            &format!("{base}/openapi.json"),
            "--header",
            &format!("Authorization: Bearer {key}"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            &examples(),
            // One worker: hypothesis' source introspection is not thread-safe in this
            // release and fails the run with an internal error under several workers.
            "--workers",
            "1",
            "--no-color",
        ])
        .output()
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&output.stdout);
    let summary = report
        .rfind("SUMMARY")
        .map_or(report.as_ref(), |at| &report[at..]);
    println!("{api}: {summary}");
    assert!(
        output.status.success(),
        "schemathesis found problems in the {api} API ({}):\n{report}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        summary.contains("passed") && summary.contains("generated"),
        "schemathesis tested nothing in the {api} API:\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_or_schema_violation_in_either_api() {
    let p = TestPipeline::start().await;
    let operator = p.operator("schemathesis-operator").await;
    let ingest = format!("http://{}", p.ingest);
    let analytics = format!("http://{}", p.analytics.expect("analytics runs"));
    // Blocking child processes, off the runtime the pipeline runs on.
    let keys = [
        ("ingest (tenant)", ingest.clone(), p.api_key.clone()),
        ("ingest (operator)", ingest, operator.api_key.clone()),
        ("analytics (tenant)", analytics.clone(), p.api_key.clone()),
        ("analytics (operator)", analytics, operator.api_key),
    ];
    tokio::task::spawn_blocking(move || {
        for (api, base, key) in keys {
            schemathesis(api, &base, &key);
        }
    })
    .await
    .unwrap();
    p.stop().await;
}
