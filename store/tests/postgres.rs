//! Against the real PostgreSQL started by deploy/local/start-services.sh.

use sendmill_store::{
    secrets::{Keyring, SecretError},
    webhooks::{Verification, WebhookFormat},
    RotationError, Scope, Store, StoreError,
};

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
        .create_api_key(account, "ci", &[Scope::Send], false)
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

/// A database of its own (resealing touches every row of a database, and other tests
/// share `sendmill_test`), dropped at the end.
struct OwnDatabase {
    admin: sqlx::PgPool,
    name: String,
    url: String,
}

impl OwnDatabase {
    async fn create() -> Self {
        let base = std::env::var("SENDMILL_TEST_DATABASE_URL").unwrap_or_else(|_| {
            "postgres://sendmill:sendmill@127.0.0.1:5432/sendmill_test".to_owned()
        });
        let admin = sqlx::PgPool::connect(&base).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is required at {base} (run deploy/local/start-services.sh): {e}")
        });
        let name = format!("sendmill_secrets_{}", uuid::Uuid::now_v7().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        let url = format!("{}/{name}", base.rsplit_once('/').unwrap().0);
        OwnDatabase { admin, name, url }
    }

    async fn store(&self, keyring: Option<&str>) -> Store {
        let ring = keyring.map(|k| std::sync::Arc::new(Keyring::parse(k).unwrap()));
        let store = Store::connect(&self.url, 2)
            .await
            .unwrap()
            .with_keyring(ring);
        store.migrate().await.unwrap();
        store
    }

    async fn drop_it(self) {
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&self.admin)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn secrets_are_sealed_at_rest_resealed_on_rotation_and_bound_to_their_row() {
    let db = OwnDatabase::create().await;
    let k1 = format!("k1:{}", Keyring::generate_key().unwrap());
    let k2 = format!("k2:{}", Keyring::generate_key().unwrap());

    // Before any KEK: plaintext, as rows written by an older version are.
    let plain = db.store(None).await;
    let account = plain.create_account("secrets").await.unwrap();
    let old_domain = plain
        .add_sending_domain(account, "old.example.test", "s1")
        .await
        .unwrap();
    let (old_hook, old_secret) = plain
        .create_webhook(
            account,
            "https://hooks.example.test/a",
            "",
            &[],
            10,
            WebhookFormat::Standard,
        )
        .await
        .unwrap();
    let Verification::Secret(old_secret) = old_secret else {
        panic!("a standard endpoint has a secret")
    };
    // A SigV4 key is never kept in plaintext: without a KEK it is refused.
    assert!(matches!(
        plain
            .create_api_key(account, "ses", &[Scope::Send], true)
            .await,
        Err(StoreError::Secret(SecretError::NoKeyring))
    ));

    // With k1: new rows are sealed; the migration-time reseal seals the old ones.
    let sealed = db.store(Some(&k1)).await;
    let new_domain = sealed
        .add_sending_domain(account, "new.example.test", "s1")
        .await
        .unwrap();
    let resealed = sealed.reseal_secrets().await.unwrap();
    assert_eq!(
        (resealed.sending_domains, resealed.webhook_endpoints),
        (1, 1)
    );
    let ses_key = sealed
        .create_api_key(account, "ses", &[Scope::Send], true)
        .await
        .unwrap();
    let (stored, kek): (Vec<u8>, Option<String>) =
        sqlx::query_as("SELECT sigv4_secret, sigv4_kek_id FROM api_keys WHERE id = $1")
            .bind(ses_key.id)
            .fetch_one(sealed.pool())
            .await
            .unwrap();
    assert_eq!(kek.as_deref(), Some("k1"));
    assert!(!String::from_utf8_lossy(&stored).contains(&ses_key.plaintext[3..]));
    assert_eq!(
        sealed.sigv4_key(ses_key.id).await.unwrap().unwrap().1,
        ses_key.plaintext
    );
    assert_eq!(
        sealed.reseal_secrets().await.unwrap(),
        Default::default(),
        "idempotent"
    );
    for domain in [&old_domain, &new_domain] {
        let (stored, ed, kek): (Vec<u8>, Vec<u8>, Option<String>) = sqlx::query_as(
            "SELECT dkim_private_key, dkim_ed25519_private_key, dkim_kek_id
             FROM sending_domains WHERE id = $1",
        )
        .bind(domain.id)
        .fetch_one(sealed.pool())
        .await
        .unwrap();
        assert_eq!(kek.as_deref(), Some("k1"));
        assert_ne!(
            stored, domain.dkim_private_key_pkcs8,
            "the RSA key is in plaintext"
        );
        assert_ne!(ed, domain.ed25519.as_ref().unwrap().private_pkcs8);
        let read = sealed
            .sending_domain(account, &domain.domain)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.dkim_private_key_pkcs8, domain.dkim_private_key_pkcs8);
        assert_eq!(
            read.ed25519.unwrap().private_pkcs8,
            domain.ed25519.as_ref().unwrap().private_pkcs8
        );
    }
    let (stored_secret, kek): (String, Option<String>) =
        sqlx::query_as("SELECT secret, secret_kek_id FROM webhook_endpoints WHERE id = $1")
            .bind(old_hook.id)
            .fetch_one(sealed.pool())
            .await
            .unwrap();
    assert_eq!(kek.as_deref(), Some("k1"));
    assert!(!stored_secret.contains(&old_secret[6..]));
    assert!(matches!(
        sealed.webhook_secret(account, old_hook.id).await.unwrap(),
        Some(Verification::Secret(s)) if s == old_secret
    ));

    // Without the KEK the sealed rows do not open, and say why.
    let error = db
        .store(None)
        .await
        .sending_domain(account, "new.example.test")
        .await
        .expect_err("a sealed key read without a keyring");
    assert!(
        error.to_string().contains("no KEK is configured"),
        "{error}"
    );

    // A sealed key moved to another row does not open there.
    sqlx::query(
        "UPDATE sending_domains SET dkim_private_key = (SELECT dkim_private_key FROM sending_domains WHERE id = $1)
         WHERE id = $2",
    )
    .bind(new_domain.id)
    .bind(old_domain.id)
    .execute(sealed.pool())
    .await
    .unwrap();
    assert!(sealed
        .sending_domain(account, "old.example.test")
        .await
        .is_err());
    // Rotation: k2 first, k1 kept to open; reseal; then k2 alone opens everything.
    let rotating = db.store(Some(&format!("{k2}\n{k1}"))).await;
    let rotated = rotating.reseal_secrets().await.unwrap();
    assert_eq!(
        (
            rotated.sending_domains,
            rotated.webhook_endpoints,
            rotated.api_keys
        ),
        (1, 1, 1)
    );
    // The row that does not open is reported by id and left as it was.
    assert_eq!(rotated.failed.len(), 1, "{:?}", rotated.failed);
    assert!(
        rotated.failed[0].contains(&old_domain.id.to_string()),
        "{:?}",
        rotated.failed
    );
    let only_k2 = db.store(Some(&k2)).await;
    let read = only_k2
        .sending_domain(account, "new.example.test")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        read.dkim_private_key_pkcs8,
        new_domain.dkim_private_key_pkcs8
    );
    assert!(matches!(
        only_k2.webhook_secret(account, old_hook.id).await.unwrap(),
        Some(Verification::Secret(s)) if s == old_secret
    ));
    assert_eq!(
        only_k2.sigv4_key(ses_key.id).await.unwrap().unwrap().1,
        ses_key.plaintext
    );
    // k1 alone no longer opens them.
    assert!(db
        .store(Some(&k1))
        .await
        .sending_domain(account, "new.example.test")
        .await
        .is_err());
    db.drop_it().await;
}

/// DKIM key rotation: a staged key is sealed under the row's KEK and published beside
/// the signing one; activation makes it the signing key under its selector; a KEK
/// rotation in between reseals it too; a selector in use or not a DNS label is refused.
#[tokio::test]
async fn a_dkim_key_is_staged_sealed_then_activated_under_its_new_selector() {
    let db = OwnDatabase::create().await;
    let k1 = format!("k1:{}", Keyring::generate_key().unwrap());
    let k2 = format!("k2:{}", Keyring::generate_key().unwrap());
    let store = db.store(Some(&k1)).await;
    let account = store.create_account("rotation").await.unwrap();
    let created = store
        .add_sending_domain(account, "rotate.example.test", "s1")
        .await
        .unwrap();

    for bad in ["s1", "S1", "s1e", "", "a.b", "-x", &"x".repeat(64)] {
        let refused = store
            .stage_dkim_key(account, "rotate.example.test", bad)
            .await
            .expect_err(bad);
        assert!(
            matches!(
                refused,
                RotationError::SelectorInUse(_) | RotationError::BadSelector(_)
            ),
            "{bad}: {refused}"
        );
    }
    let other = store.create_account("other").await.unwrap();
    assert!(matches!(
        store
            .stage_dkim_key(other, "rotate.example.test", "s2")
            .await,
        Err(RotationError::NoDomain(_))
    ));
    assert!(matches!(
        store
            .activate_dkim_key(account, "rotate.example.test")
            .await,
        Err(RotationError::NothingStaged(_))
    ));

    let staged = store
        .stage_dkim_key(account, "rotate.example.test", "s2")
        .await
        .unwrap();
    let next = staged.next_dkim.clone().unwrap();
    assert_eq!(next.selector, "s2");
    assert_ne!(next.public_key, created.dkim_public_key);
    // Still signing with the old key.
    let read = store
        .sending_domain(account, "rotate.example.test")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.dkim_selector, "s1");
    assert_eq!(read.dkim_private_key_pkcs8, created.dkim_private_key_pkcs8);
    assert_eq!(read.next_dkim.unwrap().private_pkcs8, next.private_pkcs8);
    let (stored, kek): (Vec<u8>, Option<String>) = sqlx::query_as(
        "SELECT dkim_next_private_key, dkim_kek_id FROM sending_domains WHERE id = $1",
    )
    .bind(created.id)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(kek.as_deref(), Some("k1"));
    assert_ne!(stored, next.private_pkcs8, "the staged key is in plaintext");

    // A KEK rotation while a key is staged reseals it with the rest of the row.
    let rotated = db.store(Some(&format!("{k2},{k1}"))).await;
    assert_eq!(rotated.reseal_secrets().await.unwrap().sending_domains, 1);
    let only_k2 = db.store(Some(&k2)).await;
    let active = only_k2
        .activate_dkim_key(account, "rotate.example.test")
        .await
        .unwrap();
    assert_eq!(active.dkim_selector, "s2");
    assert!(active.next_dkim.is_none());
    let read = only_k2
        .sending_domain(account, "rotate.example.test")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.dkim_selector, "s2");
    assert_eq!(read.dkim_private_key_pkcs8, next.private_pkcs8);
    assert_eq!(read.dkim_public_key, next.public_key);
    assert!(read.next_dkim.is_none());
    assert_eq!(
        read.ed25519.as_ref().unwrap().private_pkcs8,
        created.ed25519.unwrap().private_pkcs8,
        "the Ed25519 key is kept"
    );
    let (name, value) = read.dkim_record();
    assert_eq!(name, "s2._domainkey.rotate.example.test");
    assert!(sendmill_store::dkim::publishes_key(
        &value.replace("; ", " ;  "),
        &next.public_key
    ));
    assert!(!sendmill_store::dkim::publishes_key(
        &value,
        &created.dkim_public_key
    ));
    db.drop_it().await;
}
