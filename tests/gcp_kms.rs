//! The Google Cloud KMS backend against the fake (`tests/standins/gcp_kms_fake/`: the REST
//! face of the real google.cloud.kms.v1 protos, with key states, rotation, IAM and CRC32C).
//!
//! Backend-level tests call the `KmsBackend` trait directly (failure modes: network, server
//! errors, corruption, in `gcp_kms/faults.rs`); the daemon-level ones (`gcp_kms/daemon.rs`)
//! go through a real daemon. Each test starts its own fake on a free
//! 127.0.0.1 port (killed on drop) and administers keys through `google-cloud-kms-v1`, the
//! same client the backend uses.

mod common;
#[path = "gcp_kms/daemon.rs"]
mod daemon;
#[path = "gcp_kms/errors.rs"]
mod errors;
#[path = "gcp_kms/fake.rs"]
mod fake;
#[path = "gcp_kms/faults.rs"]
mod faults;
#[path = "gcp_kms/least_privilege.rs"]
mod least_privilege;
#[path = "gcp_kms/lifecycle.rs"]
mod lifecycle;
#[path = "gcp_kms/limits.rs"]
mod limits;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::must_return;
use fake::{Fake, ServiceAccount, DAEMON_SA, ENCRYPTER, VIEWER};
use google_cloud_kms_v1::model::crypto_key_version::CryptoKeyVersionState as S;
use kms_broker::backend::{connect, Aad, BackendError, Ciphertext, FailureClass, KmsBackend};
use kms_broker::key_uri::KeyUri;
use kms_broker::secret::SecretBytes;
use serde_json::json;

use FailureClass::{Destroyed, Disabled, InvalidCiphertext, Revoked, Unreachable};

pub async fn backend(uri: &str) -> Arc<dyn KmsBackend> {
    connect(&KeyUri::parse(uri).expect("uri parses"))
        .await
        .expect("backend builds")
}

pub fn aad(ctx: &str) -> Aad {
    Aad::new("db", BTreeMap::from([("node".to_owned(), ctx.to_owned())]))
}

pub async fn wrap(b: &dyn KmsBackend, pt: &[u8]) -> Result<Ciphertext, BackendError> {
    b.encrypt(&SecretBytes::copy_from(pt), &aad("n1")).await
}

pub async fn unwrap(b: &dyn KmsBackend, ct: &Ciphertext) -> Result<SecretBytes, BackendError> {
    b.decrypt(&ct.bytes, &ct.key_version, &aad("n1"))
        .await
        .map(|d| d.plaintext)
}

pub fn class<T: std::fmt::Debug>(r: Result<T, BackendError>) -> FailureClass {
    r.expect_err("should fail").class
}

/// Like [`class`], also checking that no fragment of `sa`'s key shows in the error.
fn class_no_leak<T: std::fmt::Debug>(
    r: Result<T, BackendError>,
    sa: &ServiceAccount,
) -> FailureClass {
    let e = r.expect_err("should fail");
    let shown = format!("{e} {e:?}");
    for s in sa.secret_fragments() {
        assert!(!shown.contains(&s), "a secret leaked: {shown}");
    }
    e.class
}

#[tokio::test]
async fn round_trip() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    let key = fake.create_key("k").await;
    let b = backend(&fake.uri("k")).await;
    let ct = wrap(&*b, b"a data key").await.expect("wrap");
    assert_eq!(ct.key_version, format!("{key}/cryptoKeyVersions/1"));
    assert_eq!(
        unwrap(&*b, &ct).await.expect("unwrap").expose(),
        b"a data key"
    );
    assert_eq!(b.check().await.expect("check").detail, "primary version 1");
    // The largest plaintext the contract allows.
    let big = wrap(&*b, &[7u8; 4096]).await.expect("wrap 4 KiB");
    assert_eq!(
        unwrap(&*b, &big).await.expect("unwrap 4 KiB").expose(),
        &[7u8; 4096][..]
    );
}

#[tokio::test]
async fn wrong_aad_tampering_and_other_keys_are_invalid_ciphertext() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    fake.create_key("k").await;
    fake.create_key("other").await;
    let b = backend(&fake.uri("k")).await;
    let other = backend(&fake.uri("other")).await;
    let ct = wrap(&*b, b"secret").await.expect("wrap");

    assert_eq!(
        class(b.decrypt(&ct.bytes, &ct.key_version, &aad("n2")).await),
        InvalidCiphertext
    );
    let mut bad = ct.bytes.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(
        class(b.decrypt(&bad, &ct.key_version, &aad("n1")).await),
        InvalidCiphertext
    );
    assert_eq!(
        class(b.decrypt(b"garbage", "", &aad("n1")).await),
        InvalidCiphertext
    );
    assert_eq!(class(unwrap(&*other, &ct).await), InvalidCiphertext);
}

#[tokio::test]
async fn rotation_makes_a_new_version_and_old_blobs_still_decrypt() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    let key = fake.create_key("k").await;
    let b = backend(&fake.uri("k")).await;
    let old = wrap(&*b, b"before").await.expect("wrap v1");
    let v2 = fake.rotate(&key).await;
    assert_eq!(v2, "2");
    let new = wrap(&*b, b"after").await.expect("wrap v2");
    assert_eq!(new.key_version, format!("{key}/cryptoKeyVersions/2"));
    assert_ne!(old.key_version, new.key_version);
    assert_eq!(
        unwrap(&*b, &old).await.expect("old blob").expose(),
        b"before"
    );
    assert_eq!(
        unwrap(&*b, &new).await.expect("new blob").expose(),
        b"after"
    );
    assert_eq!(b.check().await.expect("check").detail, "primary version 2");
}

#[tokio::test]
async fn disabled_primary_then_enabled_again() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    let key = fake.create_key("k").await;
    let b = backend(&fake.uri("k")).await;
    let ct = wrap(&*b, b"payload").await.expect("wrap");

    fake.set_state(&key, "1", S::Disabled).await;
    let e = b.check().await.expect_err("disabled");
    assert_eq!(
        (e.class, e.detail.as_str()),
        (Disabled, "primary version 1 is DISABLED")
    );
    assert_eq!(class(wrap(&*b, b"x").await), Disabled);
    assert_eq!(class(unwrap(&*b, &ct).await), Disabled);

    fake.set_state(&key, "1", S::Enabled).await;
    assert!(b.check().await.is_ok());
    assert_eq!(
        unwrap(&*b, &ct).await.expect("works again").expose(),
        b"payload"
    );

    // After a rotation, disabling the OLD version fails only the blobs it made.
    let v2 = fake.rotate(&key).await;
    fake.set_state(&key, "1", S::Disabled).await;
    assert!(b.check().await.is_ok(), "the primary ({v2}) is fine");
    // Refused, but about that one version: no evidence about the key (issue 6 item 5).
    let e = unwrap(&*b, &ct).await.expect_err("v1 is disabled");
    assert_eq!(
        (e.class, e.version_only, e.evidence()),
        (Disabled, true, None)
    );
}

#[tokio::test]
async fn scheduled_and_completed_destruction_are_destroyed() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    let key = fake.create_key("k").await;
    let b = backend(&fake.uri("k")).await;
    let ct = wrap(&*b, b"payload").await.expect("wrap");

    fake.destroy(&key, "1").await;
    let e = b.check().await.expect_err("scheduled");
    assert_eq!(
        (e.class, e.detail.as_str()),
        (Destroyed, "primary version 1 is DESTROY_SCHEDULED")
    );
    assert_eq!(class(wrap(&*b, b"x").await), Destroyed);
    assert_eq!(class(unwrap(&*b, &ct).await), Destroyed);

    // Restore puts it back to DISABLED (reversible), then enabling makes it usable.
    fake.restore(&key, "1").await;
    assert_eq!(class(b.check().await), Disabled);
    fake.set_state(&key, "1", S::Enabled).await;
    assert_eq!(
        unwrap(&*b, &ct).await.expect("restored").expose(),
        b"payload"
    );

    // A key whose destruction completes (a short destroyScheduledDuration in the fake).
    let quick = fake
        .create_key_with(
            "quick",
            json!({ "purpose": "ENCRYPT_DECRYPT", "destroyScheduledDuration": "1s" }),
            false,
        )
        .await;
    let q = backend(&fake.uri("quick")).await;
    let qct = wrap(&*q, b"gone soon").await.expect("wrap");
    fake.destroy(&quick, "1").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let e = q.check().await.expect_err("destroyed");
    assert_eq!(
        (e.class, e.detail.as_str()),
        (Destroyed, "primary version 1 is DESTROYED")
    );
    assert_eq!(class(unwrap(&*q, &qct).await), Destroyed);
}

#[tokio::test]
async fn missing_key_and_missing_primary() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    // Like Cloud KMS, the fake denies by default and cannot tell a missing key from one
    // we may not see: PERMISSION_DENIED "(or it may not exist)".
    let b = backend(&fake.uri("never-made")).await;
    assert_eq!(class(b.check().await), Revoked);
    // With a grant on the key ring, a missing key is NOT_FOUND.
    fake.set_bindings(
        fake::RING,
        &[(ENCRYPTER, &["allUsers"]), (VIEWER, &["allUsers"])],
    )
    .await;
    assert_eq!(class(b.check().await), Destroyed);
    assert_eq!(class(wrap(&*b, b"x").await), Destroyed);

    fake.create_key_with("empty", json!({ "purpose": "ENCRYPT_DECRYPT" }), true)
        .await;
    let e = backend(&fake.uri("empty"))
        .await
        .check()
        .await
        .expect_err("no primary");
    assert_eq!(e.class, Disabled, "{e}");
}

#[tokio::test]
async fn revoked_permission_and_credentials_are_revoked_and_never_leak() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    let key = fake.create_key("k").await;
    let sa = ServiceAccount::new(DAEMON_SA);
    let member = format!("serviceAccount:{DAEMON_SA}");
    fake.set_bindings(&key, &[(ENCRYPTER, &[&member]), (VIEWER, &[&member])])
        .await;
    let uri = fake.uri_as_sa("k", &sa);
    let b = backend(&uri).await;
    let ct = wrap(&*b, b"payload")
        .await
        .expect("wrap as the service account");
    assert!(b.check().await.is_ok());

    // The usual revocation: the encrypter/decrypter binding goes, the viewer one stays.
    // GetCryptoKey still works; TestIamPermissions tells the truth.
    fake.set_bindings(&key, &[(VIEWER, &[&member])]).await;
    assert_eq!(class_no_leak(b.check().await, &sa), Revoked);
    assert_eq!(class_no_leak(wrap(&*b, b"x").await, &sa), Revoked);
    assert_eq!(class_no_leak(unwrap(&*b, &ct).await, &sa), Revoked);
    // A denial on a real call is about the whole key, never one version.
    let e = unwrap(&*b, &ct).await.expect_err("denied");
    assert!(!e.version_only && e.evidence().is_some(), "{e:?}");

    // Everything taken away: GetCryptoKey is PERMISSION_DENIED too.
    fake.set_bindings(&key, &[(VIEWER, &["user:someone-else@example.com"])])
        .await;
    assert_eq!(class_no_leak(b.check().await, &sa), Revoked);

    fake.set_bindings(&key, &[(ENCRYPTER, &[&member]), (VIEWER, &[&member])])
        .await;
    assert!(b.check().await.is_ok());
    assert_eq!(
        unwrap(&*b, &ct).await.expect("access restored").expose(),
        b"payload"
    );

    // The service account itself disabled: its tokens are refused (401 UNAUTHENTICATED).
    fake.disable_service_account(DAEMON_SA, true);
    assert_eq!(class_no_leak(b.check().await, &sa), Revoked);
    assert_eq!(class_no_leak(wrap(&*b, b"x").await, &sa), Revoked);
    fake.disable_service_account(DAEMON_SA, false);
    assert!(b.check().await.is_ok());

    // Anonymous callers are not in the policy at all.
    assert_eq!(class(backend(&fake.uri("k")).await.check().await), Revoked);
    for shown in [
        format!("{b:?}"),
        KeyUri::parse(&uri).expect("uri").redacted(),
    ] {
        for s in sa.secret_fragments() {
            assert!(!shown.contains(&s), "a secret leaked: {shown}");
        }
        assert!(
            shown.contains("CREDENTIALS=redacted") || shown.starts_with("GcpBackend"),
            "{shown}"
        );
    }
}

#[tokio::test]
async fn uri_parse_redaction_and_offline_construction() {
    let sa = ServiceAccount::new(DAEMON_SA);
    let base = "gs:///projects/p/locations/global/keyRings/r/cryptoKeys/k";
    let uri = format!(
        "{base}?AUTH=specified&CREDENTIALS={}&GCP_ENDPOINT=http://127.0.0.1:9",
        sa.url_param()
    );
    let parsed = KeyUri::parse(&uri).expect("parses");
    assert_eq!(parsed.id(), base);
    // Building the backend contacts nothing (port 9 has no listener), and nothing shows
    // the key: not the URI's Debug or redacted form, not the backend's Debug.
    let b = connect(&parsed).await.expect("builds offline");
    for shown in [format!("{parsed:?}"), parsed.redacted(), format!("{b:?}")] {
        for s in sa.secret_fragments() {
            assert!(!shown.contains(&s), "a secret leaked: {shown}");
        }
    }
    assert!(parsed.redacted().contains("CREDENTIALS=redacted"));
    assert!(parsed.redacted().contains("GCP_ENDPOINT=http"));
    assert_eq!(class_no_leak(b.check().await, &sa), Unreachable);

    // Application Default Credentials build offline too: the universe is pinned, so no
    // metadata-server lookup happens (on this machine ADC is a file or the metadata server).
    let implicit = format!("{base}?AUTH=implicit&GCP_ENDPOINT=http://127.0.0.1:9");
    let parsed = KeyUri::parse(&implicit).expect("parses");
    must_return("building ADC", Duration::from_secs(10), connect(&parsed))
        .await
        .expect("ADC builds offline");

    // A key file whose private key is broken fails at load, without quoting it.
    let broken = ServiceAccount {
        json: sa.json.replace("MII", "XXX"),
        private_key_pem: String::new(),
    };
    let uri = format!("{base}?AUTH=specified&CREDENTIALS={}", broken.url_param());
    let e = connect(&KeyUri::parse(&uri).expect("parses"))
        .await
        .expect_err("bad key");
    for s in sa.secret_fragments() {
        assert!(!e.contains(&s), "a secret leaked: {e}");
    }
    for bad in [
        format!("{base}?AUTH=implicit&EXTRA=1"),
        format!("{base}?AUTH=none"),
        base.to_owned(),
    ] {
        assert!(KeyUri::parse(&bad).is_err(), "{bad}");
    }
}
