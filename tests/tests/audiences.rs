//! Audiences against the real services: contacts, lists, imports, segments and the
//! public subscription pages, each tenant-isolated; the subscription state following
//! bounces and unsubscribes from real messages; double opt-in from the public form to a
//! confirmed membership, with the confirmation message delivered through the pipeline.

use reqwest::Method;
use sendmill::{SendmillConfig, Stage};
use sendmill_tests::{
    call, dumped_message, first_message_id, message_to, poll_until, unique, TestPipeline,
    TRACKING_BASE,
};
use serde_json::{json, Value};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(90);

async fn api(
    p: &TestPipeline,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("http://{}{path}", p.analytics.expect("analytics runs"));
    let (status, body, _) = call(&p.http, key, method, &url, body.as_ref()).await;
    (status, body)
}

async fn created(p: &TestPipeline, path: &str, body: Value) -> Value {
    let (status, answer) = api(p, &p.api_key, Method::POST, path, Some(body)).await;
    assert_eq!(status, 201, "{path}: {answer}");
    answer
}

/// Uploads `file` as `content_type` into `list`; the answer's status and body.
async fn upload(
    p: &TestPipeline,
    key: &str,
    list: &str,
    content_type: &str,
    file: Vec<u8>,
) -> (u16, Value) {
    let r = p
        .http
        .post(format!(
            "http://{}/v1/lists/{list}/imports",
            p.analytics.unwrap()
        ))
        .bearer_auth(key)
        .header("content-type", content_type)
        .body(file)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Polls the job until it is completed (or failed); its last state.
async fn finished(p: &TestPipeline, job: &str) -> Value {
    poll_until(LIMIT, || async {
        let (status, body) = api(
            p,
            &p.api_key,
            Method::GET,
            &format!("/v1/imports/{job}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        matches!(body["state"].as_str(), Some("completed" | "failed")).then_some(body)
    })
    .await
    .unwrap_or_else(|| panic!("import {job} never finished"))
}

async fn contact_by_email(p: &TestPipeline, email: &str) -> Value {
    let (status, page) = api(
        p,
        &p.api_key,
        Method::GET,
        &format!("/v1/contacts?email_prefix={email}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let found = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["email"] == email)
        .unwrap_or_else(|| panic!("no contact {email}: {page}"))
        .clone();
    let (_, one) = api(
        p,
        &p.api_key,
        Method::GET,
        &format!("/v1/contacts/{}", found["id"].as_str().unwrap()),
        None,
    )
    .await;
    one
}

fn membership<'a>(contact: &'a Value, list: &str) -> Option<&'a str> {
    contact["lists"]
        .as_array()?
        .iter()
        .find(|m| m["list_id"] == list)
        .and_then(|m| m["state"].as_str())
}

/// A link the platform signed, pointed at this pipeline's analytics listener.
fn local(p: &TestPipeline, url: &str) -> String {
    url.replace(TRACKING_BASE, &format!("http://{}", p.analytics.unwrap()))
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_audience_resource_is_the_accounts_own_and_bad_input_changes_nothing() {
    let p = TestPipeline::start_stages(&[Stage::Ingest, Stage::Analytics]).await;
    let other = p.tenant("other").await;
    let list = created(
        &p,
        "/v1/lists",
        json!({"name": "News", "opt_in": "single", "tags": ["weekly"]}),
    )
    .await;
    let list_id = list["id"].as_str().unwrap();
    let contact = created(
        &p,
        "/v1/contacts",
        json!({"email": "Ada@Example.TEST", "name": "Ada", "attributes": {"plan": "pro", "seats": 12}, "lists": [list_id]}),
    )
    .await;
    assert_eq!(contact["email"], "ada@example.test");
    assert_eq!(membership(&contact, list_id), Some("subscribed"));
    let contact_id = contact["id"].as_str().unwrap();
    let segment = created(
        &p,
        "/v1/segments",
        json!({"name": "Pros", "expression": "attributes.plan = \"pro\" and in_list(\"News\")"}),
    )
    .await;
    let segment_id = segment["id"].as_str().unwrap();
    let (status, count) = api(
        &p,
        &p.api_key,
        Method::GET,
        &format!("/v1/segments/{segment_id}/count"),
        None,
    )
    .await;
    assert_eq!((status, count["count"].as_i64()), (200, Some(1)), "{count}");
    // The segment's contacts as CSV, in the import's shape.
    let r = p
        .http
        .get(format!(
            "http://{}/v1/segments/{segment_id}/export",
            p.analytics.unwrap()
        ))
        .bearer_auth(&p.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        "email,name,plan,seats,status\nada@example.test,Ada,pro,12,active\n"
    );

    // Another account sees none of it, and cannot change or use it.
    for path in [
        format!("/v1/contacts/{contact_id}"),
        format!("/v1/contacts/{contact_id}/events"),
        format!("/v1/lists/{list_id}"),
        format!("/v1/lists/{list_id}/members"),
        format!("/v1/lists/{list_id}/export"),
        format!("/v1/segments/{segment_id}"),
        format!("/v1/segments/{segment_id}/count"),
        format!("/v1/segments/{segment_id}/contacts"),
    ] {
        let (status, body) = api(&p, &other.api_key, Method::GET, &path, None).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    for (method, path, body) in [
        (
            Method::PATCH,
            format!("/v1/contacts/{contact_id}"),
            Some(json!({"name": "Mallory"})),
        ),
        (Method::DELETE, format!("/v1/contacts/{contact_id}"), None),
        (Method::DELETE, format!("/v1/lists/{list_id}"), None),
        (
            Method::POST,
            format!("/v1/lists/{list_id}/members"),
            Some(json!({"email": "x@ok.test"})),
        ),
        (Method::DELETE, format!("/v1/segments/{segment_id}"), None),
    ] {
        let (status, answer) = api(&p, &other.api_key, method, &path, body).await;
        assert_eq!(status, 404, "{path}: {answer}");
    }
    let (status, answer) = upload(
        &p,
        &other.api_key,
        list_id,
        "text/csv",
        b"email\nx@ok.test\n".to_vec(),
    )
    .await;
    assert_eq!(status, 404, "{answer}");
    let (_, lists) = api(&p, &other.api_key, Method::GET, "/v1/lists", None).await;
    assert_eq!(lists["data"], json!([]));
    let (_, contacts) = api(
        &p,
        &other.api_key,
        Method::GET,
        "/v1/contacts?email_prefix=ada",
        None,
    )
    .await;
    assert_eq!(contacts["data"], json!([]));
    // Its own list of the same name does not leak into its segments either way.
    let (status, answer) = api(
        &p,
        &other.api_key,
        Method::POST,
        "/v1/segments/check",
        Some(json!({"expression": "in_list(\"News\")"})),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["position"], 9, "{answer}");
    let (_, mine) = api(
        &p,
        &p.api_key,
        Method::GET,
        &format!("/v1/contacts/{contact_id}"),
        None,
    )
    .await;
    assert_eq!(mine["name"], "Ada", "unchanged by the other account");

    // Bad input: 4xx naming the field, nothing written.
    for (path, body, field) in [
        ("/v1/contacts", json!({"email": "not-an-address"}), "email"),
        (
            "/v1/contacts",
            json!({"email": "b@ok.test", "attributes": {"a.b": 1}}),
            "attributes.a.b",
        ),
        (
            "/v1/contacts",
            json!({"email": "b@ok.test", "colour": "red"}),
            "colour",
        ),
        ("/v1/lists", json!({"name": "", "opt_in": "single"}), "name"),
        (
            "/v1/lists",
            json!({"name": "D", "opt_in": "double"}),
            "confirm_from",
        ),
        (
            "/v1/lists",
            json!({"name": "D", "opt_in": "triple"}),
            "opt_in",
        ),
        (
            "/v1/segments",
            json!({"name": "S", "expression": "attributes.plan == \"pro\""}),
            "expression",
        ),
    ] {
        let (status, answer) = api(&p, &p.api_key, Method::POST, path, Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
    }
    let (status, answer) = api(
        &p,
        &p.api_key,
        Method::POST,
        "/v1/lists",
        Some(json!({"name": "D", "opt_in": "double", "confirm_from": "x@not-ours.test"})),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    for (path, field) in [
        ("/v1/contacts?cursor=AA", "cursor"),
        ("/v1/contacts?status=gone", "query"),
    ] {
        let (status, answer) = api(&p, &p.api_key, Method::GET, path, None).await;
        assert_eq!(
            (status, answer["error"]["field"].as_str()),
            (400, Some(field)),
            "{path}: {answer}"
        );
    }
    let (status, answer) = api(
        &p,
        &p.api_key,
        Method::POST,
        "/v1/lists",
        Some(json!({"name": "U", "opt_in": "single", "confirmed_url": "https://x.test/\r\n"})),
    )
    .await;
    assert_eq!(
        (status, answer["error"]["field"].as_str()),
        (400, Some("confirmed_url")),
        "{answer}"
    );
    let (status, answer) = api(
        &p,
        &p.api_key,
        Method::POST,
        "/v1/contacts",
        Some(json!({"email": "c@ok.test", "attributes": {"Status": 1}})),
    )
    .await;
    assert_eq!(
        (status, answer["error"]["field"].as_str()),
        (400, Some("attributes.Status")),
        "{answer}"
    );
    let (status, _) = api(
        &p,
        &p.api_key,
        Method::POST,
        "/v1/contacts",
        Some(json!({"email": "ADA@example.test"})),
    )
    .await;
    assert_eq!(status, 409, "the address is already a contact");
    let (status, _) = api(
        &p,
        &p.api_key,
        Method::POST,
        "/v1/lists",
        Some(json!({"name": "News", "opt_in": "single"})),
    )
    .await;
    assert_eq!(status, 409);
    let (_, lists) = api(&p, &p.api_key, Method::GET, "/v1/lists", None).await;
    assert_eq!(lists["data"].as_array().unwrap().len(), 1, "{lists}");
    assert_eq!(lists["data"][0]["counts"]["subscribed"], 1, "{lists}");

    // Segment language errors say where.
    for (expression, position) in [
        ("attributes.plan = \"pro\" and", 28),
        ("opened_within(\"x\")", 15),
        ("status = \"gone\"", 10),
        ("not in_list(\"nope\")", 13),
    ] {
        let (status, answer) = api(
            &p,
            &p.api_key,
            Method::POST,
            "/v1/segments/check",
            Some(json!({"expression": expression})),
        )
        .await;
        assert_eq!(status, 400, "{expression}: {answer}");
        assert_eq!(
            answer["error"]["position"], position,
            "{expression}: {answer}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("at position {position}:")),
            "{answer}"
        );
    }

    // Attribute merge (RFC 7396) and search.
    let (status, changed) = api(
        &p,
        &p.api_key,
        Method::PATCH,
        &format!("/v1/contacts/{contact_id}"),
        Some(json!({"attributes": {"seats": null, "city": "Paris"}})),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        changed["attributes"],
        json!({"plan": "pro", "city": "Paris"})
    );
    let (_, found) = api(
        &p,
        &p.api_key,
        Method::GET,
        "/v1/contacts?attribute=city:Paris",
        None,
    )
    .await;
    assert_eq!(found["data"].as_array().unwrap().len(), 1, "{found}");
    let (_, found) = api(
        &p,
        &p.api_key,
        Method::GET,
        "/v1/contacts?attribute=city:Lyon",
        None,
    )
    .await;
    assert_eq!(found["data"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_upserts_never_resubscribes_and_reports_each_bad_line() {
    let p = TestPipeline::start_stages(&[Stage::Ingest, Stage::Analytics]).await;
    let list = created(
        &p,
        "/v1/lists",
        json!({"name": "Imported", "opt_in": "single"}),
    )
    .await;
    let list_id = list["id"].as_str().unwrap();
    // Before the import: one contact left the list, one unsubscribed from everything,
    // one address is suppressed for a bounce, one has attributes to keep.
    for email in ["left@ok.test", "gone@ok.test"] {
        created(
            &p,
            "/v1/contacts",
            json!({"email": email, "lists": [list_id]}),
        )
        .await;
    }
    let left = contact_by_email(&p, "left@ok.test").await;
    let (status, _) = api(
        &p,
        &p.api_key,
        Method::DELETE,
        &format!(
            "/v1/lists/{list_id}/members/{}",
            left["id"].as_str().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let gone = contact_by_email(&p, "gone@ok.test").await;
    let (status, _) = api(
        &p,
        &p.api_key,
        Method::PATCH,
        &format!("/v1/contacts/{}", gone["id"].as_str().unwrap()),
        Some(json!({"status": "unsubscribed"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, answer, _) = p
        .call(
            &p.api_key,
            Method::POST,
            "/v1/suppressions",
            Some(&json!({"suppressions": [{"email": "bounced@ok.test", "reason": "bounce"}]})),
        )
        .await;
    assert!(status == 200 || status == 201, "{answer}");
    created(
        &p,
        "/v1/contacts",
        json!({"email": "keep@ok.test", "attributes": {"plan": "free", "since": 2019}}),
    )
    .await;

    let mut file = b"\xEF\xBB\xBFemail,name,plan,seats\r\n".to_vec();
    file.extend_from_slice(b"new1@ok.test,\"Doe, Jane\",pro,3\r\n"); // line 2
    file.extend_from_slice(b"not-an-address,x,pro,1\r\n"); // 3: bad address
    file.extend_from_slice(b"keep@ok.test,Keeper,pro,\r\n"); // 4: update, seats empty
    file.extend_from_slice(b"new1@ok.test,Again,basic,9\r\n"); // 5: duplicate
    file.extend_from_slice(b"new2@ok.test,too,many,fields,here\r\n"); // 6: columns
    file.extend_from_slice(b"in\xffvalid@ok.test,x,pro,1\r\n"); // 7: not UTF-8
    file.extend_from_slice(b"left@ok.test,Left,pro,1\r\n"); // 8: stays unsubscribed
    file.extend_from_slice(b"gone@ok.test,Gone,pro,1\r\n"); // 9: not subscribed
    file.extend_from_slice(b"bounced@ok.test,B,pro,1\r\n"); // 10: created bounced
    file.extend_from_slice(
        format!("long@ok.test,\"{}\",pro,1\r\n", "x".repeat(100_000)).as_bytes(),
    ); // 11
    file.extend_from_slice(b"\"quoted\nname\"@ok.test,x,pro,1\r\n"); // 12-13: bad address
    file.extend_from_slice(b"new3@ok.test,\"Multi, Line\",\"a \"\"b\"\"\nc\",7"); // 14-15, no final break
    let (status, job) = upload(
        &p,
        &p.api_key,
        list_id,
        "text/csv; charset=utf-8",
        file.clone(),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let job = finished(&p, job["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(
        (
            job["rows_read"].as_i64(),
            job["created"].as_i64(),
            job["updated"].as_i64(),
            job["skipped"].as_i64()
        ),
        (Some(12), Some(3), Some(3), Some(6)),
        "{job}"
    );
    let skipped: Vec<(i64, String)> = job["skipped_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["line"].as_i64().unwrap(),
                l["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let lines: Vec<i64> = skipped.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [3, 5, 6, 7, 11, 12], "{skipped:?}");
    assert!(skipped[0].1.starts_with("email:"), "{skipped:?}");
    assert!(skipped[1].1.contains("duplicate"), "{skipped:?}");
    assert!(skipped[2].1.contains("5 fields"), "{skipped:?}");
    assert!(skipped[3].1.contains("UTF-8"), "{skipped:?}");
    assert!(skipped[4].1.contains("longer"), "{skipped:?}");

    let new1 = contact_by_email(&p, "new1@ok.test").await;
    assert_eq!(
        (new1["name"].as_str(), membership(&new1, list_id)),
        (Some("Doe, Jane"), Some("subscribed"))
    );
    assert_eq!(new1["attributes"], json!({"plan": "pro", "seats": 3}));
    let new3 = contact_by_email(&p, "new3@ok.test").await;
    assert_eq!(
        new3["attributes"],
        json!({"plan": "a \"b\"\nc", "seats": 7}),
        "{new3}"
    );
    assert_eq!(new3["name"], "Multi, Line");
    let keep = contact_by_email(&p, "keep@ok.test").await;
    assert_eq!(
        keep["attributes"],
        json!({"plan": "pro", "since": 2019}),
        "merged; the empty cell kept nothing away"
    );
    assert_eq!(
        membership(&contact_by_email(&p, "left@ok.test").await, list_id),
        Some("unsubscribed")
    );
    let gone = contact_by_email(&p, "gone@ok.test").await;
    assert_eq!(
        (gone["status"].as_str(), membership(&gone, list_id)),
        (Some("unsubscribed"), Some("unsubscribed"))
    );
    let bounced = contact_by_email(&p, "bounced@ok.test").await;
    assert_eq!(
        (bounced["status"].as_str(), membership(&bounced, list_id)),
        (Some("bounced"), None)
    );

    // Running the same file again adds no contact and no membership twice.
    let (_, before) = api(
        &p,
        &p.api_key,
        Method::GET,
        &format!("/v1/lists/{list_id}"),
        None,
    )
    .await;
    let (status, again) = upload(&p, &p.api_key, list_id, "text/csv", file).await;
    assert_eq!(status, 202);
    let again = finished(&p, again["id"].as_str().unwrap()).await;
    assert_eq!(
        (again["created"].as_i64(), again["updated"].as_i64()),
        (Some(0), Some(6)),
        "{again}"
    );
    let (_, after) = api(
        &p,
        &p.api_key,
        Method::GET,
        &format!("/v1/lists/{list_id}"),
        None,
    )
    .await;
    assert_eq!(before["counts"], after["counts"]);
    assert_eq!(
        after["counts"],
        json!({"subscribed": 3, "unconfirmed": 0, "unsubscribed": 2})
    );

    // NDJSON, with a bad line among good ones.
    let ndjson = b"{\"email\":\"nd1@ok.test\",\"attributes\":{\"plan\":\"pro\"}}\n{\"email\":\"nd2@ok.test\",\"plan\":1}\n\n{\"email\":\"nd3@ok.test\",\"name\":\"N\"}\n".to_vec();
    let (status, job) = upload(&p, &p.api_key, list_id, "application/x-ndjson", ndjson).await;
    assert_eq!(status, 202, "{job}");
    let job = finished(&p, job["id"].as_str().unwrap()).await;
    assert_eq!(
        (job["created"].as_i64(), job["skipped"].as_i64()),
        (Some(2), Some(1)),
        "{job}"
    );
    assert_eq!(job["skipped_lines"][0]["line"], 2, "{job}");

    // A bad header refuses the file whole: no job, nothing written.
    for (content_type, file, status) in [
        ("text/csv", b"name,plan\nx,y\n".to_vec(), 400),
        ("text/csv", b"email,a.b\nx@ok.test,1\n".to_vec(), 400),
        ("text/csv", Vec::new(), 400),
        ("application/pdf", b"email\nx@ok.test\n".to_vec(), 415),
    ] {
        let (got, answer) = upload(&p, &p.api_key, list_id, content_type, file).await;
        assert_eq!(got, status, "{answer}");
        assert_eq!(
            answer["error"]["field"],
            if status == 415 {
                "Content-Type"
            } else {
                "file"
            },
            "{answer}"
        );
    }
    let (_, jobs) = api(
        &p,
        &p.api_key,
        Method::GET,
        &format!("/v1/imports?list_id={list_id}"),
        None,
    )
    .await;
    assert_eq!(
        jobs["data"].as_array().unwrap().len(),
        3,
        "only the three good files: {jobs}"
    );

    // The export is the import's shape and reads back.
    let r = p
        .http
        .get(format!(
            "http://{}/v1/lists/{list_id}/export",
            p.analytics.unwrap()
        ))
        .bearer_auth(&p.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let text = r.text().await.unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("email,name,plan,seats,since,status,state"),
        "{text}"
    );
    assert!(
        text.contains("new3@ok.test,\"Multi, Line\",\"a \"\"b\"\"\nc\",7,,active,subscribed"),
        "{text}"
    );
    assert!(
        text.contains("keep@ok.test,Keeper,pro,,2019,active,subscribed"),
        "{text}"
    );
    assert!(
        text.contains("left@ok.test,Left,pro,1,,active,unsubscribed"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_cut_off_midway_resumes_without_duplicates() {
    let tweak = |c: &mut SendmillConfig| {
        c.analytics.audiences.import_batch_rows = 200;
        c.analytics.audiences.import_lease = Duration::from_secs(1);
        c.analytics.audiences.import_poll = Duration::from_millis(200);
    };
    let mut p = TestPipeline::start_configured(&[Stage::Ingest, Stage::Analytics], tweak).await;
    let list = created(&p, "/v1/lists", json!({"name": "Big", "opt_in": "single"})).await;
    let list_id = list["id"].as_str().unwrap().to_owned();
    let rows = 30_000;
    let mut file = String::from("email,plan,n\n");
    for i in 0..rows {
        file.push_str(&format!("r{i}@ok.test,p{},{i}\n", i % 7));
    }
    let (status, job) = upload(&p, &p.api_key, &list_id, "text/csv", file.into_bytes()).await;
    assert_eq!(status, 202, "{job}");
    let job_id = job["id"].as_str().unwrap().to_owned();
    // Stopped while the job runs: its uncommitted batch is lost, its lease left behind.
    let midway = poll_until(LIMIT, || async {
        let (_, job) = api(
            &p,
            &p.api_key,
            Method::GET,
            &format!("/v1/imports/{job_id}"),
            None,
        )
        .await;
        (job["state"] == "running" && job["rows_read"].as_i64() > Some(0)).then_some(job)
    })
    .await
    .expect("the job runs");
    p.restart().await;
    let job = finished(&p, &job_id).await;
    let midway_rows = midway["rows_read"].as_i64().unwrap();
    assert!(midway_rows < rows, "cut off midway: {midway}");
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(
        (
            job["rows_read"].as_i64(),
            job["created"].as_i64(),
            job["skipped"].as_i64()
        ),
        (Some(rows), Some(rows), Some(0)),
        "{job}"
    );
    let (_, list) = api(
        &p,
        &p.api_key,
        Method::GET,
        &format!("/v1/lists/{list_id}"),
        None,
    )
    .await;
    assert_eq!(list["counts"]["subscribed"], rows, "{list}");
    let store = p.store().await;
    let (contacts, events): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM contacts WHERE account_id = $1),
                (SELECT count(*) FROM contact_events WHERE account_id = $1 AND kind = 'subscribed')",
    )
    .bind(p.account.0)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!((contacts, events), (rows, rows));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_and_an_unsubscribe_flip_the_contact_and_its_memberships() {
    let p = TestPipeline::start().await;
    let a = created(&p, "/v1/lists", json!({"name": "A", "opt_in": "single"})).await;
    let b = created(&p, "/v1/lists", json!({"name": "B", "opt_in": "single"})).await;
    let lists = [a["id"].as_str().unwrap(), b["id"].as_str().unwrap()];
    let bouncer = format!("{}@bounce.test", unique("gone"));
    let reader = format!("{}@ok.test", unique("reader"));
    for email in [&bouncer, &reader] {
        created(&p, "/v1/contacts", json!({"email": email, "lists": lists})).await;
    }
    let (status, answer) = p.send(&message_to(&p, json!([bouncer]))).await;
    assert_eq!(status, 202, "{answer}");
    let mut body = message_to(&p, json!([reader]));
    body["list_unsubscribe"] = json!(true);
    let (status, answer) = p.send(&body).await;
    assert_eq!(status, 202, "{answer}");
    let id = first_message_id(&answer);
    p.wait_for_status(&id, "delivered", LIMIT).await;
    let dump = std::fs::read_to_string(dumped_message(&id).expect("delivered")).unwrap();
    let unfolded = dump.replace("\n ", " ").replace("\n\t", " ");
    let link = unfolded
        .lines()
        .find_map(|l| l.strip_prefix("List-Unsubscribe: "))
        .and_then(|v| v.split(['<', '>']).find(|part| part.starts_with("http")))
        .expect("an https unsubscribe link")
        .to_owned();
    let r = p
        .http
        .post(local(&p, &link))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    for (email, status, cause) in [
        (&bouncer, "bounced", "bounce"),
        (&reader, "unsubscribed", "unsubscribe"),
    ] {
        let contact = poll_until(LIMIT, || async {
            let c = contact_by_email(&p, email).await;
            (c["status"] == status).then_some(c)
        })
        .await
        .unwrap_or_else(|| panic!("{email} never became {status}"));
        for list in lists {
            assert_eq!(
                membership(&contact, list),
                Some("unsubscribed"),
                "{contact}"
            );
        }
        let (_, events) = api(
            &p,
            &p.api_key,
            Method::GET,
            &format!("/v1/contacts/{}/events", contact["id"].as_str().unwrap()),
            None,
        )
        .await;
        let last = events["data"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            (last["kind"].as_str(), last["source"].as_str()),
            (Some(status), Some(cause)),
            "{events}"
        );
    }
    // Segments see it at once.
    let (_, count) = api(
        &p,
        &p.api_key,
        Method::POST,
        "/v1/segments/check",
        Some(json!({"expression": "in_list(\"A\") or status = \"active\""})),
    )
    .await;
    assert_eq!(count["count"], 0, "{count}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_opt_in_from_the_public_form_to_a_confirmed_membership() {
    let p = TestPipeline::start_configured(&Stage::ALL, |c| {
        c.analytics.audiences.subscribe_per_ip_per_minute = 2;
        // As behind a reverse proxy: the client is the header's last entry.
        c.analytics.audiences.client_ip_header = "x-forwarded-for".into();
    })
    .await;
    let list = created(
        &p,
        "/v1/lists",
        json!({
            "name": "Letters", "opt_in": "double", "public_subscribe": true,
            "description": "<b>Weekly</b> letters",
            "confirm_from": format!("hello@{}", p.domain),
            "confirmed_url": "https://shop.test/welcome"
        }),
    )
    .await;
    let list_id = list["id"].as_str().unwrap();
    let form = local(&p, list["subscribe_url"].as_str().expect("a public form"));
    let page = p.http.get(&form).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    let html = page.text().await.unwrap();
    assert!(
        html.contains("&lt;b&gt;Weekly&lt;/b&gt;"),
        "escaped: {html}"
    );
    assert!(html.contains("name=\"website\""), "the honeypot: {html}");
    let post = |body: String, client: &'static str| {
        let form = form.clone();
        let http = p.http.clone();
        async move {
            let r = http
                .post(&form)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-forwarded-for", format!("203.0.113.250, {client}"))
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // A bot fills the honeypot: thanked, nothing stored.
    let bot = "email=bot%40ok.test&website=http%3A%2F%2Fspam.test";
    assert_eq!(post(bot.into(), "198.51.100.1").await.0, 200);
    let (_, none) = api(
        &p,
        &p.api_key,
        Method::GET,
        "/v1/contacts?email_prefix=bot",
        None,
    )
    .await;
    assert_eq!(none["data"], json!([]));
    let (status, page) = post("email=not-an-address".into(), "198.51.100.2").await;
    assert_eq!(status, 400, "{page}");
    let person = format!("{}@ok.test", unique("person"));
    let sign_up = format!("email={}&name=Ada&website=", person.replace('@', "%40"));
    let (status, page) = post(sign_up.clone(), "198.51.100.3").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("check your inbox"), "{page}");
    // Two sign-ups per client address and minute: of four more right away, some are
    // refused (at most two fit even if a minute turns meanwhile).
    let mut refused = 0;
    for i in 0..4 {
        let (status, _) = post(format!("email=more{i}%40ok.test"), "198.51.100.4").await;
        assert!(status == 200 || status == 429, "{status}");
        refused += usize::from(status == 429);
    }
    assert!(refused >= 2, "{refused} refused");
    let (_, more) = api(
        &p,
        &p.api_key,
        Method::GET,
        "/v1/contacts?email_prefix=more",
        None,
    )
    .await;
    assert_eq!(
        more["data"].as_array().unwrap().len(),
        4 - refused,
        "a refused sign-up stores nothing"
    );

    let contact = contact_by_email(&p, &person).await;
    assert_eq!(
        membership(&contact, list_id),
        Some("unconfirmed"),
        "{contact}"
    );
    let (first, link) = confirmation(&p, &person, &[]).await;
    // Asking again at once sends nothing more (the confirmation is written before the
    // form answers, so none can still be on its way).
    assert_eq!(post(sign_up.clone(), "198.51.100.5").await.0, 200);
    assert_eq!(
        accepted_for(&p, &person).len(),
        1,
        "one confirmation, not two"
    );

    // Fetching the link (a scanner would) confirms nothing; the button does.
    let r = p.http.get(&link).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        membership(&contact_by_email(&p, &person).await, list_id),
        Some("unconfirmed")
    );
    let mut tampered = link.clone();
    tampered.insert(tampered.len() - 3, 'x');
    let r = no_redirects().post(&tampered).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = no_redirects()
        .post(&link)
        .header("x-forwarded-for", "192.0.2.44")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "https://shop.test/welcome");
    let (_, members) = api(
        &p,
        &p.api_key,
        Method::GET,
        &format!("/v1/lists/{list_id}/members?state=subscribed"),
        None,
    )
    .await;
    let member = &members["data"][0];
    assert_eq!(member["email"], person.as_str(), "{members}");
    assert_eq!(member["confirmed_ip"], "192.0.2.44", "{members}");
    assert!(member["confirmed_at"].is_string(), "{members}");
    let contact_id = contact["id"].as_str().unwrap();
    let kinds = |events: &Value| -> Vec<String> {
        events["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, events) = api(
        &p,
        &p.api_key,
        Method::GET,
        &format!("/v1/contacts/{contact_id}/events"),
        None,
    )
    .await;
    assert_eq!(kinds(&events), ["unconfirmed", "confirmed"], "{events}");

    // The person unsubscribes from everything; the account cannot make them active
    // again, but their own confirmed sign-up does, and lifts their unsubscribe.
    let preferences = local(
        &p,
        contact_by_email(&p, &person).await["preferences_url"]
            .as_str()
            .unwrap(),
    );
    let r = p
        .http
        .post(&preferences)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("action=unsubscribe_all")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let store = p.store().await;
    assert_eq!(
        store
            .suppression(p.account, &person)
            .await
            .unwrap()
            .as_deref(),
        Some("unsubscribe")
    );
    let (status, answer) = api(
        &p,
        &p.api_key,
        Method::PATCH,
        &format!("/v1/contacts/{contact_id}"),
        Some(json!({"status": "active"})),
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(post(sign_up, "198.51.100.6").await.0, 200);
    assert_eq!(
        membership(&contact_by_email(&p, &person).await, list_id),
        Some("unconfirmed")
    );
    let (_, link) = confirmation(&p, &person, &[first]).await;
    let r = no_redirects().post(&link).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let back = contact_by_email(&p, &person).await;
    assert_eq!(
        (back["status"].as_str(), membership(&back, list_id)),
        (Some("active"), Some("subscribed")),
        "{back}"
    );
    assert_eq!(
        store.suppression(p.account, &person).await.unwrap(),
        None,
        "the unsubscribe is lifted"
    );

    // A list without a public form has none.
    let closed = created(
        &p,
        "/v1/lists",
        json!({"name": "Closed", "opt_in": "single"}),
    )
    .await;
    let r = p
        .http
        .get(format!(
            "http://{}/subscribe/{}",
            p.analytics.unwrap(),
            closed["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// The ids of the messages audiences accepted for `person` (confirmations), oldest first.
fn accepted_for(p: &TestPipeline, person: &str) -> Vec<String> {
    p.events()
        .into_iter()
        .filter(|e| e.recipient == person && e.event_type == sendmill_wire::EventType::Accepted)
        .inspect(|e| assert_eq!(e.stage, "audiences"))
        .map(|e| e.message_id.to_string())
        .collect()
}

/// A confirmation for `person` other than `seen`: waits until it is delivered through
/// the pipeline and answers its id and link (pointed at this pipeline).
async fn confirmation(p: &TestPipeline, person: &str, seen: &[String]) -> (String, String) {
    let id = poll_until(LIMIT, || async {
        accepted_for(p, person)
            .into_iter()
            .find(|id| !seen.contains(id))
    })
    .await
    .expect("a confirmation message was accepted");
    p.wait_for_status(&id, "delivered", LIMIT).await;
    let dump = std::fs::read_to_string(dumped_message(&id).unwrap()).unwrap();
    let decoded = dump.replace("=\r\n", "").replace("=\n", "");
    assert!(
        decoded.contains("Subject: Please confirm your subscription to Letters"),
        "{dump}"
    );
    let start = decoded
        .find(&format!("{TRACKING_BASE}/confirm/"))
        .expect("a confirmation link");
    let link: String = decoded[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(*c))
        .collect();
    (id, local(p, &link))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preferences_page_unsubscribes_from_one_list_only() {
    let p = TestPipeline::start_stages(&[Stage::Ingest, Stage::Analytics]).await;
    let a = created(
        &p,
        "/v1/lists",
        json!({"name": "Alpha", "opt_in": "single"}),
    )
    .await;
    let b = created(&p, "/v1/lists", json!({"name": "Beta", "opt_in": "single"})).await;
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let contact = created(
        &p,
        "/v1/contacts",
        json!({"email": "pref@ok.test", "lists": [a, b]}),
    )
    .await;
    let url = local(
        &p,
        contact["preferences_url"]
            .as_str()
            .expect("a preferences link"),
    );
    let page = p.http.get(&url).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("Alpha") && page.contains("Beta"), "{page}");
    assert_eq!(page.matches(" checked").count(), 2, "{page}");
    assert!(!page.contains("<script"), "works without JavaScript");

    // Keep Alpha only: a plain form POST.
    let r = p
        .http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("list={a}&action=save"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("saved"));
    let after = contact_by_email(&p, "pref@ok.test").await;
    assert_eq!(after["status"], "active");
    assert_eq!(
        (membership(&after, a), membership(&after, b)),
        (Some("subscribed"), Some("unsubscribed"))
    );
    let (_, events) = api(
        &p,
        &p.api_key,
        Method::GET,
        &format!("/v1/contacts/{}/events", after["id"].as_str().unwrap()),
        None,
    )
    .await;
    let last = events["data"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (
            last["kind"].as_str(),
            last["list_id"].as_str(),
            last["source"].as_str(),
            last["ip"].as_str()
        ),
        (
            Some("unsubscribed"),
            Some(b),
            Some("preferences"),
            Some("127.0.0.1")
        )
    );

    // A token for another contact cannot be made by editing this one.
    let mut forged = url.clone();
    forged.insert(forged.len() - 4, 'A');
    assert_eq!(p.http.get(&forged).send().await.unwrap().status(), 400);

    // Everything: the contact, every list and the account's suppression list.
    let r = p
        .http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("action=unsubscribe_all")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let after = contact_by_email(&p, "pref@ok.test").await;
    assert_eq!(
        (after["status"].as_str(), membership(&after, a)),
        (Some("unsubscribed"), Some("unsubscribed"))
    );
    let store = p.store().await;
    assert_eq!(
        store
            .suppression(p.account, "pref@ok.test")
            .await
            .unwrap()
            .as_deref(),
        Some("unsubscribe")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_marketer_app_in_chromium_shows_only_the_accounts_own_audience() {
    let p = TestPipeline::start_stages(&[Stage::Ingest, Stage::Analytics]).await;
    let base = format!("http://{}", p.analytics.unwrap());
    let list = created(
        &p,
        "/v1/lists",
        json!({"name": "Customers", "opt_in": "single"}),
    )
    .await;
    let list_id = list["id"].as_str().unwrap();
    for (email, plan) in [
        ("ada@ok.test", "pro"),
        ("adam@ok.test", "free"),
        ("bob@ok.test", "pro"),
    ] {
        created(
            &p,
            "/v1/contacts",
            json!({"email": email, "attributes": {"plan": plan}, "lists": [list_id]}),
        )
        .await;
    }
    let other = p.tenant("other-app").await;
    let (status, _) = api(
        &p,
        &other.api_key,
        Method::POST,
        "/v1/lists",
        Some(json!({"name": "Theirs", "opt_in": "single"})),
    )
    .await;
    assert_eq!(status, 201);

    // Without a session the app's API answers 401; a key without the contacts scope
    // cannot sign in.
    let r = p
        .http
        .get(format!("{base}/app/api/v1/lists"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let store = p.store().await;
    let send_only = store
        .create_api_key(
            p.account,
            "send-only",
            &[sendmill_store::Scope::Send],
            false,
        )
        .await
        .unwrap()
        .plaintext;
    let r = no_redirects()
        .post(format!("{base}/app/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={send_only}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("set-cookie").is_none());
    // A session's changing requests need the app's header (a forged cross-site form
    // cannot send it).
    let r = no_redirects()
        .post(format!("{base}/app/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={}", p.api_key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_owned();
    let r = p
        .http
        .post(format!("{base}/app/api/v1/lists"))
        .header("cookie", &session)
        .json(&json!({"name": "Forged", "opt_in": "single"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = p
        .http
        .get(format!("{base}/app/api/v1/lists"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let node_dir = sendmill_tests::local_dir().join("node/node_modules/playwright-core");
    assert!(
        node_dir.exists(),
        "{} is missing: run deploy/local/install-packages.sh",
        node_dir.display()
    );
    let artifacts = sendmill_tests::repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("audiences-app.png");
    let csv = artifacts.join(format!("{}.csv", unique("app-import")));
    std::fs::write(
        &csv,
        "email,plan\ncarol@ok.test,pro\nnot-an-address,pro\ndave@ok.test,free\n",
    )
    .unwrap();
    let run = tokio::task::spawn_blocking({
        let args = [
            base.clone(),
            p.api_key.clone(),
            csv.to_string_lossy().into_owned(),
            other.api_key.clone(),
            screenshot.to_string_lossy().into_owned(),
        ];
        move || {
            std::process::Command::new("node")
                .arg(sendmill_tests::repo_root().join("deploy/local/app-check.js"))
                .args(args)
                .env("PLAYWRIGHT_CORE", node_dir)
                .output()
                .expect("node runs")
        }
    })
    .await
    .unwrap();
    let _ = std::fs::remove_file(&csv);
    assert!(
        run.status.success(),
        "the browser check failed: {}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let seen: Value = serde_json::from_slice(&run.stdout).expect("one JSON line");
    assert_eq!(seen["redirectedToLogin"], true, "{seen}");
    assert_eq!(seen["errors"], json!([]), "{seen}");
    // The one failed request is the broken expression's 400, shown in the editor.
    let failed = seen["consoleErrors"].as_array().unwrap();
    assert!(
        failed.iter().all(|e| e.as_str().unwrap().contains("400")),
        "{seen}"
    );
    let lists = seen["lists"].as_array().unwrap();
    assert_eq!(lists.len(), 1, "{seen}");
    assert!(
        lists[0]
            .as_str()
            .unwrap()
            .starts_with("Customers\tsingle\t3\t0\t0"),
        "{seen}"
    );
    assert_eq!(
        seen["searched"],
        json!(["ada@ok.test", "adam@ok.test"]),
        "{seen}"
    );
    assert!(
        seen["importStatus"].as_str().unwrap().contains("2 created"),
        "{seen}"
    );
    assert!(
        seen["skipped"][0]
            .as_str()
            .unwrap()
            .starts_with("3\temail:"),
        "{seen}"
    );
    assert!(
        seen["listsAfter"][0]
            .as_str()
            .unwrap()
            .starts_with("Customers\tsingle\t5\t"),
        "{seen}"
    );
    assert_eq!(seen["count"], 3, "ada, bob and the imported carol: {seen}");
    assert!(
        seen["segments"][0]
            .as_str()
            .unwrap()
            .starts_with("Pro customers"),
        "{seen}"
    );
    assert_eq!(seen["position"], 28, "{seen}");
    assert!(
        seen["error"].as_str().unwrap().contains("at position 28"),
        "{seen}"
    );
    // The other account's session sees its own list and nothing of this one.
    assert_eq!(
        seen["other"]["lists"].as_array().unwrap().len(),
        1,
        "{seen}"
    );
    assert!(
        seen["other"]["lists"][0]
            .as_str()
            .unwrap()
            .starts_with("Theirs"),
        "{seen}"
    );
    assert_eq!(seen["other"]["contacts"], json!([]), "{seen}");
    assert_eq!(seen["other"]["segments"], json!([]), "{seen}");
    assert!(screenshot.exists());
    // What the app did is in the account, through the same API.
    let (_, segments) = api(&p, &p.api_key, Method::GET, "/v1/segments", None).await;
    assert_eq!(segments["data"][0]["name"], "Pro customers", "{segments}");
}
