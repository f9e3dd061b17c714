//! The Grafana dashboard under `deploy/grafana/` reads only metrics the code records.

use sendmill_tests::repo_root;
use std::{collections::BTreeSet, path::Path};

fn sources(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() && !path.ends_with("target") && !path.ends_with(".git") {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn every_metric_the_grafana_dashboard_queries_is_recorded_somewhere() {
    let text = std::fs::read_to_string(repo_root().join("deploy/grafana/sendmill.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    let mut code = String::new();
    for crate_dir in [
        "dispatcher",
        "platform",
        "analytics",
        "ingest",
        "render",
        "inbound",
        "src",
    ] {
        sources(&repo_root().join(crate_dir), &mut code);
    }
    let mut metrics = BTreeSet::new();
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(name) = word.strip_prefix("sendmill_") {
                    let base = ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or(name);
                    metrics.insert(format!("sendmill_{base}"));
                }
            }
        }
    }
    assert!(metrics.len() >= 10, "{metrics:?}");
    for metric in metrics {
        assert!(
            code.contains(&format!("\"{metric}\"")),
            "the dashboard queries {metric}, which no code records"
        );
    }
}
