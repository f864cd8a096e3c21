//! The AWS KMS backend against moto (`tests/standins/aws_kms.py`, which makes moto enforce
//! key state and key-policy denials as AWS does).
//!
//! Backend-level tests call the `KmsBackend` trait directly; the daemon-level ones
//! (`aws_kms/daemon.rs`) go through a real daemon. Each test starts its own moto on a free
//! 127.0.0.1 port (killed on drop) and administers keys through `aws-sdk-kms`.

mod common;
#[path = "aws_kms/daemon.rs"]
mod daemon;
#[path = "aws_kms/lifecycle.rs"]
mod lifecycle;
#[path = "aws_kms/moto.rs"]
mod moto;
#[path = "aws_kms/uri.rs"]
mod uri;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::must_return;
use kms_broker::backend::aws::AwsBackend;
use kms_broker::backend::{connect, Aad, BackendError, Ciphertext, FailureClass, KmsBackend};
use kms_broker::key_uri::KeyUri;
use kms_broker::secret::SecretBytes;
use moto::{Moto, SECRET, TOKEN};

use FailureClass::{Destroyed, Disabled, InvalidCiphertext, Revoked, Unreachable};

async fn backend(uri: &str) -> Arc<dyn KmsBackend> {
    connect(&KeyUri::parse(uri).expect("uri parses"))
        .await
        .expect("backend builds")
}

/// A backend that proves Encrypt+Decrypt on every check (the default is every 10 minutes).
async fn always_proving(uri: &str) -> AwsBackend {
    let KeyUri::Aws(u) = KeyUri::parse(uri).expect("uri parses") else {
        panic!("not aws")
    };
    AwsBackend::new(u)
        .await
        .expect("builds")
        .with_proof_interval(Duration::ZERO)
}

fn aad(ctx: &str) -> Aad {
    Aad::new("db", BTreeMap::from([("node".to_owned(), ctx.to_owned())]))
}

async fn wrap(b: &dyn KmsBackend, pt: &[u8]) -> Result<Ciphertext, BackendError> {
    b.encrypt(&SecretBytes::copy_from(pt), &aad("n1")).await
}

async fn unwrap(b: &dyn KmsBackend, ct: &Ciphertext) -> Result<SecretBytes, BackendError> {
    b.decrypt(&ct.bytes, &ct.key_version, &aad("n1"))
        .await
        .map(|d| d.plaintext)
}

/// The class of a failure, after checking its detail leaks no credential.
fn class<T: std::fmt::Debug>(r: Result<T, BackendError>) -> FailureClass {
    let e = r.expect_err("should fail");
    let shown = format!("{e} {e:?}");
    assert!(
        !shown.contains(SECRET) && !shown.contains(TOKEN),
        "a secret leaked: {shown}"
    );
    e.class
}

#[tokio::test]
async fn round_trip() {
    let Some(moto) = Moto::start() else { return };
    let (id, arn) = moto.create_key().await;
    let b = backend(&moto.uri(&id)).await;
    let health = b.check().await.expect("key is usable");
    assert!(
        health.detail.contains("Enabled") && health.detail.contains(&arn),
        "{}",
        health.detail
    );
    let ct = wrap(&*b, &[7u8; 32]).await.expect("wrap");
    assert_eq!(ct.key_version, "", "AWS rotates transparently: no versions");
    assert!(unwrap(&*b, &ct).await.expect("unwrap").ct_eq(&[7u8; 32]));
    let big = wrap(&*b, &[1u8; 4096]).await.expect("wrap 4 KiB");
    assert_eq!(unwrap(&*b, &big).await.expect("unwrap 4 KiB").len(), 4096);
}

#[tokio::test]
async fn key_arn_and_alias_name_the_same_key() {
    let Some(moto) = Moto::start() else { return };
    let (id, arn) = moto.create_key().await;
    moto.create_alias("alias/kms-broker-test", &id).await;
    let by_arn = backend(&moto.uri(&arn)).await;
    let by_alias = backend(&moto.uri("alias/kms-broker-test")).await;
    by_arn.check().await.expect("ARN form");
    by_alias.check().await.expect("alias form");
    let ct = wrap(&*by_alias, b"payload").await.expect("wrap via alias");
    assert!(unwrap(&*by_arn, &ct)
        .await
        .expect("unwrap via ARN")
        .ct_eq(b"payload"));
    let missing = backend(&moto.uri("alias/nobody")).await;
    assert_eq!(class(missing.check().await), Destroyed);
}

#[tokio::test]
async fn wrong_context_other_key_or_tampering_is_invalid_ciphertext() {
    let Some(moto) = Moto::start() else { return };
    let (id, _) = moto.create_key().await;
    let (other_id, _) = moto.create_key().await;
    let b = backend(&moto.uri(&id)).await;
    let other = backend(&moto.uri(&other_id)).await;
    let ct = wrap(&*b, b"secret key bytes").await.expect("wrap");
    assert_eq!(
        class(b.decrypt(&ct.bytes, "", &aad("n2")).await),
        InvalidCiphertext
    );
    let other_name = Aad::new(
        "other",
        BTreeMap::from([("node".to_owned(), "n1".to_owned())]),
    );
    assert_eq!(
        class(b.decrypt(&ct.bytes, "", &other_name).await),
        InvalidCiphertext
    );
    let mut tampered = ct.bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert_eq!(
        class(b.decrypt(&tampered, "", &aad("n1")).await),
        InvalidCiphertext
    );
    assert_eq!(
        class(b.decrypt(b"garbage", "", &aad("n1")).await),
        InvalidCiphertext
    );
    // Longer than AWS's documented 6144-byte CiphertextBlob, or empty: refused unbilled.
    for bad in [vec![1u8; 6145], Vec::new()] {
        let e = b.decrypt(&bad, "", &aad("n1")).await.expect_err("refused");
        assert_eq!((e.class, e.evidence()), (InvalidCiphertext, None));
    }
    // Over the documented 4096-byte plaintext: refused before the call, as the request's.
    let e = wrap(&*b, &[1u8; 4097]).await.expect_err("too large");
    assert_eq!(
        (e.class, e.evidence()),
        (FailureClass::InvalidRequest, None)
    );
    // The ciphertext does not choose the key: another key's backend refuses it.
    assert_eq!(class(unwrap(&*other, &ct).await), InvalidCiphertext);
    // None of that is a key-state change.
    b.check().await.expect("still usable");
    assert!(unwrap(&*b, &ct).await.is_ok());
}

#[tokio::test]
async fn disabled_then_enabled() {
    let Some(moto) = Moto::start() else { return };
    let (id, _) = moto.create_key().await;
    let b = backend(&moto.uri(&id)).await;
    let ct = wrap(&*b, b"payload").await.expect("wrap");
    moto.disable(&id).await;
    assert_eq!(class(b.check().await), Disabled);
    assert_eq!(class(wrap(&*b, b"x").await), Disabled);
    assert_eq!(class(unwrap(&*b, &ct).await), Disabled);
    moto.enable(&id).await;
    b.check().await.expect("enabled again");
    assert!(unwrap(&*b, &ct).await.expect("unwrap").ct_eq(b"payload"));
}

#[tokio::test]
async fn scheduled_deletion_and_missing_keys_are_destroyed() {
    let Some(moto) = Moto::start() else { return };
    let (id, _) = moto.create_key().await;
    let b = backend(&moto.uri(&id)).await;
    let ct = wrap(&*b, b"payload").await.expect("wrap");
    moto.schedule_deletion(&id).await;
    let e = b.check().await.expect_err("pending deletion");
    assert_eq!(e.class, Destroyed);
    assert!(e.detail.contains("PendingDeletion"), "{}", e.detail);
    assert_eq!(class(wrap(&*b, b"x").await), Destroyed);
    assert_eq!(class(unwrap(&*b, &ct).await), Destroyed);
    let gone = backend(&moto.uri("00000000-0000-0000-0000-000000000000")).await;
    assert_eq!(class(gone.check().await), Destroyed);
    assert_eq!(class(wrap(&*gone, b"x").await), Destroyed);
}

#[tokio::test]
async fn key_policy_deny_is_revoked_at_once() {
    let Some(moto) = Moto::start() else { return };
    let (id, _) = moto.create_key().await;
    let b = backend(&moto.uri(&id)).await;
    let ct = wrap(&*b, b"payload").await.expect("wrap");
    b.check().await.expect("usable");
    moto.deny(&id, "kms:*").await;
    // DescribeKey itself is refused: REVOKED on the next check, whatever the proof interval.
    assert_eq!(class(b.check().await), Revoked);
    assert_eq!(class(wrap(&*b, b"x").await), Revoked);
    assert_eq!(class(unwrap(&*b, &ct).await), Revoked);
    moto.allow(&id).await;
    b.check().await.expect("access restored");
    assert!(unwrap(&*b, &ct).await.is_ok());
}

#[tokio::test]
async fn decrypt_only_revocation_is_caught_by_the_proof_of_use() {
    let Some(moto) = Moto::start() else { return };
    let (id, _) = moto.create_key().await;
    let uri = moto.uri(&id);
    let b = backend(&uri).await;
    let ct = wrap(&*b, b"payload").await.expect("wrap");
    b.check().await.expect("usable (first check proves use)");
    moto.deny(&id, "kms:Decrypt").await;
    // DescribeKey still works and the proof is fresh: within the interval this is ACTIVE.
    b.check().await.expect("describe still works");
    // A failed real Decrypt is REVOKED for the whole key at once (AWS has no per-version
    // grants: never version-scoped), and voids the proof, so the next check sees it too.
    let e = unwrap(&*b, &ct).await.expect_err("denied");
    assert_eq!((e.class, e.version_only), (Revoked, false), "{e}");
    let e = b.check().await.expect_err("proof fails");
    assert_eq!(e.class, Revoked);
    assert!(e.detail.contains("proof of use"), "{}", e.detail);
    // A backend proving on every check sees it on its first check.
    assert_eq!(class(always_proving(&uri).await.check().await), Revoked);
    moto.allow(&id).await;
    b.check().await.expect("access restored");
}

#[tokio::test]
async fn unknown_credentials_are_revoked() {
    let Some(moto) = Moto::start() else { return };
    let (id, _) = moto.create_key().await;
    let b = backend(&moto.uri_as(&id, "INVALIDAKID")).await;
    assert_eq!(class(b.check().await), Revoked);
    assert_eq!(class(wrap(&*b, b"x").await), Revoked);
}

#[tokio::test]
async fn stopped_kms_is_unreachable() {
    let Some(mut moto) = Moto::start() else {
        return;
    };
    let (id, _) = moto.create_key().await;
    let b = backend(&moto.uri(&id)).await;
    let ct = wrap(&*b, b"payload").await.expect("wrap");
    moto.kill();
    let guard = Duration::from_secs(30);
    assert_eq!(
        class(must_return("DescribeKey", guard, b.check()).await),
        Unreachable
    );
    assert_eq!(
        class(must_return("Encrypt", guard, wrap(&*b, b"x")).await),
        Unreachable
    );
    assert_eq!(
        class(must_return("Decrypt", guard, unwrap(&*b, &ct)).await),
        Unreachable
    );
}

#[tokio::test]
async fn a_silent_kms_is_cut_at_the_attempt_timeout() {
    // Accepts connections (the kernel's backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let uri = format!(
        "aws:///alias/x?REGION=us-east-1&AUTH=specified&AWS_ACCESS_KEY_ID=a&AWS_SECRET_ACCESS_KEY={SECRET}&AWS_ENDPOINT=http://127.0.0.1:{port}"
    );
    let b = backend(&uri).await;
    // The SDK's own attempt timeout (5 s) ends it, not a connection error.
    let e = must_return("DescribeKey", Duration::from_secs(60), b.check())
        .await
        .expect_err("silent");
    assert_eq!(e.class, Unreachable);
    assert!(e.detail.contains("timed out"), "{}", e.detail);
}

#[tokio::test]
async fn rotation_is_transparent() {
    let Some(moto) = Moto::start() else { return };
    let (id, _) = moto.create_key().await;
    let b = backend(&moto.uri(&id)).await;
    let before = wrap(&*b, b"before").await.expect("wrap");
    moto.rotate(&id).await;
    let after = wrap(&*b, b"after").await.expect("wrap after rotation");
    assert_eq!(
        (before.key_version.as_str(), after.key_version.as_str()),
        ("", "")
    );
    assert!(unwrap(&*b, &before)
        .await
        .expect("old blob")
        .ct_eq(b"before"));
    assert!(unwrap(&*b, &after).await.expect("new blob").ct_eq(b"after"));
}

/// Set in the child process that [`implicit_auth_and_assume_role`] runs itself in.
const STS_PORT_ENV: &str = "KMS_BROKER_TEST_STS_PORT";

#[tokio::test]
async fn implicit_auth_and_assume_role() {
    // AUTH=implicit reads credentials from the environment, and aws-config takes STS's
    // endpoint only from there (AWS_ENDPOINT_URL_STS); changing the environment of a
    // threaded test process is unsound, so this test runs itself again, alone, in a child
    // process whose environment holds credentials and points STS at its moto.
    // (Only the child's output shows why it failed: the parent prints it in its panic.)
    let Some(port) = std::env::var(STS_PORT_ENV)
        .ok()
        .and_then(|p| p.parse().ok())
    else {
        if common::standins::require_bin("moto_server").is_none() {
            return;
        }
        let port = common::standins::free_port();
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "implicit_auth_and_assume_role", "--nocapture"])
            .env(STS_PORT_ENV, port.to_string())
            .env("AWS_ENDPOINT_URL_STS", format!("http://127.0.0.1:{port}"))
            .env("AWS_ACCESS_KEY_ID", "AKIDFROMENV")
            .env("AWS_SECRET_ACCESS_KEY", "secret-from-env")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .output()
            .expect("run the child test");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
        return;
    };
    let moto = Moto::start_on(port);
    let (id, _) = moto.create_key().await;

    // AUTH=implicit: the SDK's default chain finds the environment's credentials.
    let implicit = format!(
        "aws:///{id}?REGION=us-east-1&AUTH=implicit&AWS_ENDPOINT={}",
        moto.endpoint()
    );
    let b = backend(&implicit).await;
    let ct = wrap(&*b, b"payload")
        .await
        .expect("wrap with implicit credentials");
    assert!(unwrap(&*b, &ct).await.expect("unwrap").ct_eq(b"payload"));

    // The base credentials are unknown to the stand-in's KMS, so a working round trip
    // proves the KMS calls used the assumed role's credentials.
    let uri = format!(
        "{}&ASSUME_ROLE=arn:aws:iam::123456789012:role/kms-broker;external_id=ext-1",
        moto.uri_as(&id, "INVALIDBASE")
    );
    let b = backend(&uri).await;
    let ct = wrap(&*b, b"payload").await.expect("wrap as the role");
    assert!(unwrap(&*b, &ct)
        .await
        .expect("unwrap as the role")
        .ct_eq(b"payload"));
    b.check().await.expect("check as the role");

    // The role's trust no longer admits us: STS refuses AssumeRole, which is REVOKED.
    let denied = backend(&format!(
        "{}&ASSUME_ROLE=arn:aws:iam::123456789012:role/denied-kms-broker",
        moto.uri(&id)
    ))
    .await;
    assert_eq!(class(denied.check().await), Revoked);
    assert_eq!(class(wrap(&*denied, b"x").await), Revoked);
}
