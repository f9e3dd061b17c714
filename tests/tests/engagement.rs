//! Opens, clicks and unsubscribes through the links render writes into a real message:
//! valid tokens give exactly one event per request, tampered ones a 4xx and nothing.

use sendmill_store::Store;
use sendmill_tests::*;
use serde_json::{json, Value};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);
const BROWSER: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";

/// The analytics URL behind a link written into the message.
fn local(p: &TestPipeline, link: &str) -> String {
    link.replacen(
        TRACKING_BASE,
        &format!("http://{}", p.analytics.unwrap()),
        1,
    )
}

fn links_in(html: &str, path: &str) -> Vec<String> {
    html.match_indices(&format!("{TRACKING_BASE}{path}"))
        .map(|(i, _)| html[i..].split('"').next().unwrap().to_owned())
        .collect()
}

async fn count(p: &TestPipeline, id: &str, event_type: &str, machine: Option<u8>) -> u64 {
    let machine_clause = machine.map_or(String::new(), |m| format!(" AND machine = {m}"));
    sendmill_platform::clients::clickhouse(&p.config.clickhouse)
        .query(&format!(
            "SELECT count() FROM events FINAL WHERE message_id = toUUID(?) AND event_type = ?{machine_clause}"
        ))
        .bind(id)
        .bind(event_type)
        .fetch_one::<u64>()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_clicks_and_one_click_unsubscribe_each_write_one_event() {
    let p = TestPipeline::start().await;
    let mut body = message_to(&p, json!(["reader@ok.test"]));
    body["html"] = json!("<html><body><p>Hi {{name}}, <a href=\"https://shop.test/sale?a=1&amp;b=2\">see the sale</a>.</p></body></html>");
    body["track_opens"] = json!(true);
    body["track_clicks"] = json!(true);
    body["list_unsubscribe"] = json!(true);
    let (status, response) = p.send(&body).await;
    assert_eq!(status, 202, "{response}");
    let id = first_message_id(&response);
    p.wait_for_status(&id, "delivered", LIMIT).await;

    let dump = dumped_message(&id).expect("delivered to the sink");
    assert!(
        dkim_verifies(&dump, &p.dkim_record),
        "the decorated message must still verify"
    );
    let parsed = mime_check(&dump, &["List-Unsubscribe", "List-Unsubscribe-Post"]);
    let html = parsed["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|part| part["type"] == "text/html")
        .and_then(|part| part["text"].as_str())
        .unwrap()
        .to_owned();
    let pixel = links_in(&html, "/t/o/").pop().expect("an open pixel");
    let click = links_in(&html, "/t/c/").pop().expect("a tracked link");
    assert!(
        !html.contains("https://shop.test"),
        "the target is only inside the token"
    );
    assert_eq!(
        parsed["headers"]["List-Unsubscribe-Post"][0],
        "List-Unsubscribe=One-Click"
    );
    let list_unsubscribe = parsed["headers"]["List-Unsubscribe"][0]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        list_unsubscribe.contains(&format!("@bounces.{}", p.domain)),
        "{list_unsubscribe}"
    );
    let unsubscribe = list_unsubscribe
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        unsubscribe.starts_with(&format!("{TRACKING_BASE}/u/")),
        "{unsubscribe}"
    );

    // Open, by Apple's privacy proxy (a machine).
    let r = p
        .http
        .get(local(&p, &pixel))
        .header("user-agent", "Mozilla/5.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/gif");

    // Click, by a person: redirected to the original target.
    let r = p
        .http
        .get(local(&p, &click))
        .header("user-agent", BROWSER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "https://shop.test/sale?a=1&b=2");

    // A tampered click token: no redirect, no event.
    let mut tampered = local(&p, &click);
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let r = p.http.get(&tampered).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
    let r = p
        .http
        .get(format!("http://{}/t/c/not-a-token", p.analytics.unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // The unsubscribe page asks; it does not unsubscribe (link scanners follow links).
    let r = p.http.get(local(&p, &unsubscribe)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(page.contains("<form method=\"post\""), "{page}");
    let store = Store::connect(&p.config.postgres.url, 1).await.unwrap();
    assert_eq!(
        store
            .suppression(p.account, "reader@ok.test")
            .await
            .unwrap(),
        None
    );

    // RFC 8058 one-click: a plain form POST, no cookies, no script.
    let r = p
        .http
        .post(local(&p, &unsubscribe))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        store
            .suppression(p.account, "reader@ok.test")
            .await
            .unwrap()
            .as_deref(),
        Some("unsubscribe")
    );

    let all_in = poll_until(LIMIT, || async {
        let counts = (
            count(&p, &id, "opened", Some(1)).await,
            count(&p, &id, "clicked", Some(0)).await,
            count(&p, &id, "unsubscribed", None).await,
        );
        (counts == (1, 1, 1)).then_some(counts)
    })
    .await;
    assert!(
        all_in.is_some(),
        "events: {:?}",
        p.stored_event_types(&id).await
    );
    let clicked: Value = p.timeline(&id).await.1;
    assert!(clicked["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "clicked"));
    // Nothing more arrived for the rejected requests.
    assert_eq!(
        p.stored_event_types(&id).await.len(),
        5,
        "accepted, delivered, opened, clicked, unsubscribed"
    );
    p.stop().await;
}
