//! SMTP clients of the tests: Python's smtplib through `deploy/local/smtp-submit.py`
//! (the submission and inbound tests' client).

use crate::repo_root;
use serde_json::Value;
use std::process::Command;

/// One smtplib session (deploy/local/smtp-submit.py): what the server answered.
pub fn smtplib(spec: Value) -> Value {
    use std::io::Write;
    let mut child = Command::new("/usr/bin/python3")
        .arg(repo_root().join("deploy/local/smtp-submit.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is required");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "smtp-submit.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("smtp-submit.py prints JSON")
}
