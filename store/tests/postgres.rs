//! Against the real PostgreSQL started by deploy/local/start-services.sh.

use sendmill_store::{Scope, Store};

async fn store() -> Store {
    let url = std::env::var("SENDMILL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://sendmill:sendmill@127.0.0.1:5432/sendmill_test".to_owned());
    let store = Store::connect(&url, 4).await.unwrap_or_else(|e| {
        panic!("PostgreSQL is required at {url} (run deploy/local/start-services.sh): {e}")
    });
    store.migrate().await.unwrap();
    store
}

#[tokio::test]
async fn keys_authenticate_until_revoked_and_only_their_hash_is_stored() {
    let store = store().await;
    let account = store.create_account("keys-test").await.unwrap();
    let key = store
        .create_api_key(account, "ci", &[Scope::Send])
        .await
        .unwrap();

    let principal = store.authenticate(&key.plaintext).await.unwrap().unwrap();
    assert_eq!(principal.account_id, account);
    assert!(principal.has(Scope::Send));
    assert!(!principal.has(Scope::Domains));

    let stored: Vec<u8> = sqlx::query_scalar("SELECT secret_hash FROM api_keys WHERE id = $1")
        .bind(key.id)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(stored.len(), 32);
    assert!(!String::from_utf8_lossy(&stored).contains(&key.plaintext[3..]));

    // Another account cannot revoke it.
    let other = store.create_account("keys-test-other").await.unwrap();
    assert!(!store.revoke_api_key(other, key.id).await.unwrap());
    assert!(store.authenticate(&key.plaintext).await.unwrap().is_some());

    assert!(store.revoke_api_key(account, key.id).await.unwrap());
    assert!(store.authenticate(&key.plaintext).await.unwrap().is_none());
}

#[tokio::test]
async fn sending_domains_are_scoped_to_their_account() {
    let store = store().await;
    let owner = store.create_account("domain-owner").await.unwrap();
    let stranger = store.create_account("domain-stranger").await.unwrap();
    let domain = format!("d{}.example.test", uuid::Uuid::now_v7().simple());

    let added = store
        .add_sending_domain(owner, &domain, "s1")
        .await
        .unwrap();
    assert_eq!(added.dkim_record().0, format!("s1._domainkey.{domain}"));
    assert!(store
        .sending_domain(owner, &domain)
        .await
        .unwrap()
        .is_some());
    assert!(store
        .sending_domain(stranger, &domain)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .add_sending_domain(owner, &domain, "s2")
        .await
        .is_err());
}
