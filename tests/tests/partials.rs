//! Handlebars partials and layouts stored per account, used by render, never across
//! accounts.

use sendmill_store::{Scope, Store};
use sendmill_tests::*;
use serde_json::json;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_account_renders_with_its_own_partials_and_layouts() {
    let p = TestPipeline::start().await;
    let store = Store::connect(&p.config.postgres.url, 2).await.unwrap();
    store
        .put_partial(
            p.account,
            "base",
            "<html><body><div class=\"brand\">{{> @partial-block}}</div>{{> footer}}</body></html>",
        )
        .await
        .unwrap();
    store
        .put_partial(
            p.account,
            "footer",
            "<p>Footer of account A for {{name}}</p>",
        )
        .await
        .unwrap();

    // A second tenant with a partial of the same name.
    let other = store.create_account("partials-other").await.unwrap();
    let other_domain = format!("other-{}", p.domain);
    store
        .add_sending_domain(other, &other_domain, "s1")
        .await
        .unwrap();
    let other_key = store
        .create_api_key(other, "t", &[Scope::Send], false)
        .await
        .unwrap()
        .plaintext;
    store
        .put_partial(other, "footer", "<p>Footer of account B</p>")
        .await
        .unwrap();

    let mut body = message_to(
        &p,
        json!([{"email": "layout@ok.test", "data": {"name": "Ada"}}]),
    );
    body["html"] = json!("{{#> base}}<h1>Hello {{name}}</h1>{{/base}}");
    let (status, response) = p.send(&body).await;
    assert_eq!(status, 202, "{response}");
    let id_a = first_message_id(&response);

    let body_b = json!({
        "from": format!("b@{other_domain}"),
        "to": ["layout-b@ok.test"],
        "subject": "B",
        "html": "<p>B</p>{{> footer}}"
    });
    let r = p
        .http
        .post(format!("http://{}/v1/messages", p.ingest))
        .bearer_auth(&other_key)
        .json(&body_b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let response_b: serde_json::Value = r.json().await.unwrap();
    let id_b = first_message_id(&response_b);

    p.wait_for_status(&id_a, "delivered", LIMIT).await;
    let html_of = |id: &str| html_part(&dumped_message(id).expect("delivered to the sink"));
    let html_a = html_of(&id_a);
    assert!(
        html_a.contains(
            "<div class=\"brand\"><h1>Hello Ada</h1></div><p>Footer of account A for Ada</p>"
        ),
        "{html_a}"
    );
    let b_delivered = poll_until(LIMIT, || async { dumped_message(&id_b) }).await;
    assert!(
        b_delivered.is_some(),
        "account B's message was not delivered"
    );
    let html_b = html_of(&id_b);
    assert!(html_b.contains("<p>Footer of account B</p>"), "{html_b}");
    assert!(!html_b.contains("account A"), "{html_b}");
    p.stop().await;
}
