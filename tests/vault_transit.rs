//! The Vault Transit backend against a real OpenBao dev server (`.standins/bin/bao`).
//!
//! Backend-level tests call `kms_broker::backend::connect` and the `KmsBackend` trait
//! directly; the daemon-level ones (`vault_transit/daemon.rs`) go through a real daemon.
//! Each test starts its own OpenBao on a free 127.0.0.1 port (killed on drop).

#[path = "vault_transit/bao.rs"]
mod bao;
mod common;
#[path = "vault_transit/daemon.rs"]
mod daemon;
#[path = "vault_transit/lifecycle.rs"]
mod lifecycle;
#[path = "vault_transit/rights.rs"]
mod rights;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bao::{write_token, Bao};
use common::must_return;
use kms_broker::backend::resilient::{Resilient, RetryPolicy};
use kms_broker::backend::{connect, Aad, BackendError, Ciphertext, FailureClass, KmsBackend};
use kms_broker::key_uri::KeyUri;
use kms_broker::secret::SecretBytes;

async fn backend(uri: &str) -> Arc<dyn KmsBackend> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let parsed = KeyUri::parse(uri).expect("uri parses");
    connect(&parsed).await.expect("backend builds")
}

fn aad(ctx: &str) -> Aad {
    Aad::new("db", BTreeMap::from([("node".to_owned(), ctx.to_owned())]))
}

async fn wrap(b: &Arc<dyn KmsBackend>, pt: &[u8]) -> Result<Ciphertext, BackendError> {
    b.encrypt(&SecretBytes::copy_from(pt), &aad("n1")).await
}

async fn unwrap(b: &Arc<dyn KmsBackend>, ct: &Ciphertext) -> Result<SecretBytes, BackendError> {
    b.decrypt(&ct.bytes, &ct.key_version, &aad("n1"))
        .await
        .map(|d| d.plaintext)
}

fn class<T: std::fmt::Debug>(r: Result<T, BackendError>) -> FailureClass {
    r.expect_err("should fail").class
}

#[tokio::test]
async fn round_trip() {
    let Some(bao) = Bao::start() else { return };
    let (uri, _) = bao.setup("k");
    let b = backend(&uri).await;
    let health = b.check().await.expect("key is usable");
    assert!(health.detail.contains("v1"), "{}", health.detail);
    let ct = wrap(&b, &[7u8; 32]).await.expect("wrap");
    assert_eq!(ct.key_version, "v1");
    assert!(ct.bytes.starts_with(b"vault:v1:"));
    assert!(unwrap(&b, &ct).await.expect("unwrap").ct_eq(&[7u8; 32]));
    // The limit of the contract: 4096 bytes.
    let big = wrap(&b, &[1u8; 4096]).await.expect("wrap 4 KiB");
    assert_eq!(unwrap(&b, &big).await.expect("unwrap 4 KiB").len(), 4096);
}

#[tokio::test]
async fn wrong_aad_or_tampering_is_invalid_ciphertext() {
    let Some(bao) = Bao::start() else { return };
    let (uri, _) = bao.setup("k");
    let b = backend(&uri).await;
    let ct = wrap(&b, b"secret key bytes").await.expect("wrap");
    let invalid = FailureClass::InvalidCiphertext;
    assert_eq!(
        class(b.decrypt(&ct.bytes, &ct.key_version, &aad("n2")).await),
        invalid
    );
    let other_name = Aad::new(
        "other",
        BTreeMap::from([("node".to_owned(), "n1".to_owned())]),
    );
    assert_eq!(
        class(b.decrypt(&ct.bytes, &ct.key_version, &other_name).await),
        invalid
    );
    // One base64 character in the middle of `vault:v1:...`: every one of its bits is used
    // (near the end, padding bits are ignored by the decoder, and a change may be a no-op).
    let mut tampered = ct.bytes.clone();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'Q' } else { b'A' };
    assert_eq!(
        class(b.decrypt(&tampered, &ct.key_version, &aad("n1")).await),
        invalid
    );
    assert_eq!(class(b.decrypt(&ct.bytes, "v2", &aad("n1")).await), invalid);
    assert_eq!(class(b.decrypt(b"garbage", "", &aad("n1")).await), invalid);
    assert_eq!(
        class(b.decrypt(&[0xff, 0xfe], "", &aad("n1")).await),
        invalid
    );
    // A bare "1" is accepted as the version too.
    assert!(b.decrypt(&ct.bytes, "1", &aad("n1")).await.is_ok());
    // None of that changed the key: it is still usable.
    b.check().await.expect("still usable");
}

#[tokio::test]
async fn derived_keys_work_with_the_aad_as_context() {
    let Some(bao) = Bao::start() else { return };
    bao.create_key("d", &["derived=true"]);
    let file = bao.token_file(&bao.daemon_token("d", "1h"));
    let b = backend(&bao.uri("d", &file)).await;
    let ct = wrap(&b, b"derived").await.expect("wrap");
    assert!(unwrap(&b, &ct).await.expect("unwrap").ct_eq(b"derived"));
    let e = b.decrypt(&ct.bytes, &ct.key_version, &aad("n2")).await;
    assert_eq!(class(e), FailureClass::InvalidCiphertext);
}

#[tokio::test]
async fn rotation_new_wraps_carry_the_new_version_and_old_blobs_still_unwrap() {
    let Some(bao) = Bao::start() else { return };
    let (uri, _) = bao.setup("k");
    let b = backend(&uri).await;
    let v1 = wrap(&b, b"one").await.expect("wrap v1");
    bao.rotate("k");
    let v2 = wrap(&b, b"two").await.expect("wrap v2");
    assert_eq!(
        (v1.key_version.as_str(), v2.key_version.as_str()),
        ("v1", "v2")
    );
    assert!(unwrap(&b, &v1).await.expect("old blob").ct_eq(b"one"));
    assert!(unwrap(&b, &v2).await.expect("new blob").ct_eq(b"two"));
    let health = b.check().await.expect("usable");
    assert!(health.detail.contains("v2"), "{}", health.detail);
}

#[tokio::test]
async fn a_version_below_min_decryption_version_is_that_version_disabled_not_the_key() {
    let Some(bao) = Bao::start() else { return };
    let (uri, _) = bao.setup("k");
    let b = backend(&uri).await;
    let v1 = wrap(&b, b"one").await.expect("wrap v1");
    bao.rotate("k");
    let v2 = wrap(&b, b"two").await.expect("wrap v2");
    bao.configure("k", "min_decryption_version=2");
    let e = unwrap(&b, &v1).await.expect_err("v1 is retired");
    assert_eq!(
        (e.class, e.evidence()),
        (FailureClass::Disabled, None),
        "{e}"
    );
    assert!(e.detail.contains("min_decryption_version"), "{}", e.detail);
    assert!(unwrap(&b, &v2).await.is_ok());
    let health = b.check().await.expect("the key itself is fine");
    assert!(
        health.detail.contains("min_decryption_version 2"),
        "{}",
        health.detail
    );
    // Reversible: lowering it makes v1 readable again.
    bao.configure("k", "min_decryption_version=1");
    assert!(unwrap(&b, &v1).await.is_ok());
}

#[tokio::test]
async fn soft_delete_is_disabled_and_restore_brings_it_back() {
    let Some(bao) = Bao::start() else { return };
    let (uri, _) = bao.setup("k");
    let b = backend(&uri).await;
    let ct = wrap(&b, b"x").await.expect("wrap");
    bao.soft_delete("k");
    let e = b.check().await.expect_err("soft-deleted");
    assert_eq!(e.class, FailureClass::Disabled);
    assert!(e.detail.contains("soft-delete"), "{}", e.detail);
    assert_eq!(class(wrap(&b, b"y").await), FailureClass::Disabled);
    assert_eq!(class(unwrap(&b, &ct).await), FailureClass::Disabled);
    bao.restore("k");
    b.check().await.expect("restored");
    assert!(unwrap(&b, &ct).await.is_ok());
    assert!(wrap(&b, b"y").await.is_ok());
}

#[tokio::test]
async fn a_key_type_without_associated_data_is_refused() {
    let Some(bao) = Bao::start() else { return };
    bao.create_key("rsa", &["type=rsa-2048"]);
    let file = bao.token_file(&bao.daemon_token("rsa", "1h"));
    let b = backend(&bao.uri("rsa", &file)).await;
    let e = b.check().await.expect_err("not AEAD");
    assert_eq!(e.class, FailureClass::Disabled);
    assert!(e.detail.contains("rsa-2048"), "{}", e.detail);
    assert_eq!(class(wrap(&b, b"x").await), FailureClass::Disabled);
}

#[tokio::test]
async fn deleted_key_is_destroyed() {
    let Some(bao) = Bao::start() else { return };
    let (uri, _) = bao.setup("k");
    let b = backend(&uri).await;
    let ct = wrap(&b, b"x").await.expect("wrap");
    bao.delete_key("k");
    assert_eq!(class(b.check().await), FailureClass::Destroyed);
    assert_eq!(class(unwrap(&b, &ct).await), FailureClass::Destroyed);
    assert_eq!(class(wrap(&b, b"y").await), FailureClass::Destroyed);
    assert!(
        !bao.key_exists("k"),
        "wrap must not re-create a deleted key"
    );
}

#[tokio::test]
async fn a_missing_key_is_never_created() {
    let Some(bao) = Bao::start() else { return };
    // A careless operator's policy that WOULD let Vault upsert the key on encrypt: the
    // daemon's read-before-encrypt is what stops it.
    bao.policy(
        "careless",
        "path \"transit/encrypt/ghost\" { capabilities = [\"create\", \"update\"] }\n\
         path \"transit/keys/ghost\" { capabilities = [\"read\"] }\n",
    );
    let file = bao.token_file(&bao.token(&["-policy=careless", "-ttl=1h"]));
    let b = backend(&bao.uri("ghost", &file)).await;
    assert_eq!(class(b.check().await), FailureClass::Destroyed);
    assert_eq!(class(wrap(&b, b"x").await), FailureClass::Destroyed);
    assert!(!bao.key_exists("ghost"), "the daemon created a key");

    // And the README policy (update, no create) is refused by Vault itself.
    let file = bao.token_file(&bao.daemon_token("ghost2", "1h"));
    let b = backend(&bao.uri("ghost2", &file)).await;
    assert_eq!(class(wrap(&b, b"x").await), FailureClass::Destroyed);
    assert!(!bao.key_exists("ghost2"));
}

#[tokio::test]
async fn stopped_bao_is_unreachable() {
    let Some(mut bao) = Bao::start() else { return };
    let (uri, _) = bao.setup("k");
    let b = backend(&uri).await;
    let ct = wrap(&b, b"x").await.expect("wrap");
    bao.kill();
    let guard = Duration::from_secs(30);
    let check = must_return("read key", guard, b.check()).await;
    assert_eq!(class(check), FailureClass::Unreachable);
    let w = must_return("encrypt", guard, wrap(&b, b"y")).await;
    assert_eq!(class(w), FailureClass::Unreachable);
    let e = must_return("decrypt", guard, unwrap(&b, &ct))
        .await
        .expect_err("down");
    assert_eq!(e.class, FailureClass::Unreachable);
}

#[tokio::test]
async fn a_hung_vault_is_cut_by_the_attempt_timeout() {
    // Accepts TCP connections (the kernel backlog) and never answers.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = hole.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    write_token(&file, "s.hungvaulttoken");
    let uri = format!(
        "vault://127.0.0.1:{port}/transit/k?TLS=false&TOKEN_FILE={}",
        file.display()
    );
    let policy = RetryPolicy {
        attempt_timeout: Duration::from_millis(500),
        deadline: Duration::from_secs(2),
        max_attempts: 2,
        ..RetryPolicy::default()
    };
    let b = Resilient::new(backend(&uri).await, policy);
    let e = must_return("read key", Duration::from_secs(30), b.check())
        .await
        .expect_err("hung");
    assert_eq!(e.class, FailureClass::Unreachable);
    // The daemon's attempt timeout cut it, not a connection error.
    assert!(e.detail.contains("timed out"), "{}", e.detail);
    drop(hole);
}

#[tokio::test]
async fn tls_with_ca_file() {
    let Some(bao) = Bao::start_with(true) else {
        return;
    };
    let (uri, _) = bao.setup("k");
    assert!(!uri.contains("TLS=false"));
    let b = backend(&uri).await;
    let ct = wrap(&b, b"over tls").await.expect("wrap over TLS");
    assert!(unwrap(&b, &ct).await.expect("unwrap").ct_eq(b"over tls"));
    // Without the CA, the server's certificate is not trusted: the KMS is not reachable.
    let no_ca = uri.split("&CA_FILE=").next().expect("uri").to_owned();
    let b = backend(&no_ca).await;
    assert_eq!(class(b.check().await), FailureClass::Unreachable);
}

#[tokio::test]
async fn token_renewal_and_token_file_rotation() {
    let Some(bao) = Bao::start() else { return };
    bao.create_key("k", &[]);
    let token = bao.daemon_token("k", "4s");
    let file = bao.token_file(&token);
    let b = backend(&bao.uri("k", &file)).await;
    // Checks every second for 7 s: past the token's 4 s TTL, renewal keeps it alive.
    for _ in 0..7 {
        b.check().await.expect("token kept alive");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(wrap(&b, b"x").await.is_ok());

    // A non-renewable token is used as is, and the status says when it expires.
    let fixed = bao.token(&["-policy=daemon-k", "-ttl=1h", "-renewable=false"]);
    write_token(&file, &fixed);
    let health = b.check().await.expect("new token from the file");
    assert!(health.detail.contains("not renewable"), "{}", health.detail);

    // Rotation through the file (as a Vault Agent sink does): revoke the old, write new.
    let fresh = bao.daemon_token("k", "1h");
    bao.cli(&["token", "revoke", &fixed]);
    assert_eq!(class(wrap(&b, b"y").await), FailureClass::Revoked);
    write_token(&file, &fresh);
    b.check().await.expect("the check picks up the new token");
    assert!(wrap(&b, b"y").await.is_ok());
}

#[tokio::test]
async fn uri_errors_and_redaction_never_show_the_token() {
    let secret = "s.NeverShowThisToken";
    for bad in [
        format!("vault://127.0.0.1:8200/transit/k?TLS=false&TOKEN={secret}"),
        format!("vault://127.0.0.1:8200/transit/k?TLS=false&TOKEN_ENV=T&SECRET={secret}"),
        format!("vault://u:{secret}@127.0.0.1:8200/transit/k?TOKEN_ENV=T"),
        "vault://vault.example:8200/transit/k?TLS=false&TOKEN_ENV=T".to_owned(),
        "vault://127.0.0.1:8200/transit/k".to_owned(),
    ] {
        let e = KeyUri::parse(&bad).expect_err(&bad);
        assert!(!e.contains(secret), "{e}");
    }
    let u =
        KeyUri::parse("vault://127.0.0.1:8201/kms/transit/k?TLS=false&TOKEN_ENV=VT&NAMESPACE=team")
            .expect("parses");
    assert_eq!(u.id(), "vault://127.0.0.1:8201/team/kms/transit/k");
    assert!(u.redacted().contains("TOKEN_ENV=VT"), "{}", u.redacted());
    // A missing token file fails at start, naming the file, not contacting Vault.
    let u = KeyUri::parse("vault://127.0.0.1:9/transit/k?TLS=false&TOKEN_FILE=/nonexistent/t")
        .expect("parses");
    let e = connect(&u).await.expect_err("no token file");
    assert!(e.contains("/nonexistent/t"), "{e}");
}

#[test]
fn the_token_never_reaches_logs_errors_or_debug() {
    use std::sync::Mutex;
    // Captures every log line of every crate at TRACE (vaultrs, rustify, reqwest, hyper…).
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("sink").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let Some(mut bao) = Bao::start() else { return };
    let (uri, token) = bao.setup("k");
    let sink = Sink::default();
    let w = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || w.clone())
        .finish();
    // A current-thread runtime, so every task logs through this thread's subscriber.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let mut seen = Vec::new();
    tracing::subscriber::with_default(subscriber, || {
        rt.block_on(async {
            let b = backend(&uri).await;
            seen.push(format!(
                "{b:?} {uri:?}",
                uri = KeyUri::parse(&uri).expect("uri")
            ));
            seen.push(format!("{:?}", b.check().await));
            let ct = wrap(&b, b"x").await.expect("wrap");
            seen.push(format!(
                "{:?}",
                b.decrypt(&ct.bytes, &ct.key_version, &aad("other")).await
            ));
            bao.cli(&["token", "revoke", &token]);
            seen.push(format!("{:?}", b.check().await));
            seen.push(format!("{:?}", wrap(&b, b"y").await));
            bao.kill();
            seen.push(format!("{:?}", b.check().await));
        })
    });
    let logs = String::from_utf8_lossy(&sink.0.lock().expect("sink")).into_owned();
    assert!(logs.len() > 1000, "the capture works: {logs}");
    assert!(!logs.contains(&token), "the token is in the logs");
    for s in &seen {
        assert!(!s.contains(&token), "the token is in {s}");
    }
}
