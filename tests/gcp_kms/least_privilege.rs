//! Least privilege (issue 10 items 1, 2, 4, 7): a caller with only
//! `roles/cloudkms.cryptoKeyEncrypterDecrypter` (no `cloudkms.cryptoKeys.get`) is ACTIVE,
//! learns its key's state and protection level from Encrypt, and learns a rotation from
//! Decrypt's `used_primary`.

use std::collections::BTreeMap;

use google_cloud_kms_v1::model::crypto_key_version::CryptoKeyVersionState as S;
use kms_broker::backend::Aad;
use kms_broker::backend::FailureClass::{Destroyed, Disabled, InvalidRequest, Revoked};
use kms_broker::secret::SecretBytes;
use kms_broker_client::pb::KeyState;
use serde_json::json;
use tonic::Code;

use crate::common::backend_daemon::lifecycle::{lc_body, start_in, store_status, wait_for_rewrap};
use crate::common::backend_daemon::{
    code, store_key, unwrap as d_unwrap, wrap as d_wrap, NO_SECRETS,
};
use crate::common::wait_for_state;
use crate::fake::{self, Fake, ENCRYPTER, VIEWER};
use crate::{backend, class, daemon, unwrap, wrap};

const VIEWER_HINT: &str = "roles/cloudkms.viewer";

#[tokio::test]
async fn encrypter_only_is_active_and_encrypt_proves_the_state() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    let key = fake.create_key("k").await;
    fake.encrypter_only(&key).await;
    let b = backend(&fake.uri("k")).await;
    // The fake denies GetCryptoKey as Cloud KMS does: IAM's sentence and its ErrorInfo.
    let e = fake
        .admin
        .get_crypto_key()
        .set_name(&key)
        .send()
        .await
        .expect_err("no cloudkms.cryptoKeys.get");
    let status = e.status().expect("a Google error body");
    assert_eq!(
        status.code,
        google_cloud_gax::error::rpc::Code::PermissionDenied
    );
    assert_eq!(
        status.message,
        format!("Permission 'cloudkms.cryptoKeys.get' denied on resource '{key}' (or it may not exist).")
    );
    assert!(
        status.details.iter().any(|d| matches!(d,
            google_cloud_gax::error::rpc::StatusDetails::ErrorInfo(i) if i.reason == "IAM_PERMISSION_DENIED")),
        "{status:?}"
    );

    // ACTIVE, through a canary Encrypt; the detail says what is missing and what Viewer adds.
    let h = b
        .check()
        .await
        .expect("ACTIVE without cloudkms.cryptoKeys.get");
    assert_eq!(h.version, Some(format!("{key}/cryptoKeyVersions/1")));
    assert!(h.detail.starts_with("primary version 1;"), "{}", h.detail);
    assert!(h.detail.contains("metadata not readable"), "{}", h.detail);
    assert!(h.detail.contains(VIEWER_HINT), "{}", h.detail);
    let ct = wrap(&*b, b"payload").await.expect("wrap");
    assert_eq!(unwrap(&*b, &ct).await.expect("unwrap").expose(), b"payload");

    // The primary disabled: without metadata, the standing proof does not see it (what
    // Viewer adds); the first Encrypt that fails does, and then the check does too.
    fake.set_state(&key, "1", S::Disabled).await;
    assert!(
        b.check().await.is_ok(),
        "the proof stands until a call fails"
    );
    assert_eq!(class(wrap(&*b, b"x").await), Disabled);
    let e = b.check().await.expect_err("proven again: DISABLED");
    assert_eq!(e.class, Disabled, "{e}");
    assert!(e.detail.starts_with("canary Encrypt"), "{}", e.detail);
    // Still DISABLED at the next check (no proof while it fails), then enabled again.
    assert_eq!(class(b.check().await), Disabled);
    fake.set_state(&key, "1", S::Enabled).await;
    b.check().await.expect("ACTIVE again");

    fake.destroy(&key, "1").await;
    assert_eq!(class(wrap(&*b, b"x").await), Destroyed);
    assert_eq!(class(b.check().await), Destroyed);

    // Every grant gone: TestIamPermissions lists nothing, and a 403 cannot tell a refused
    // key from a missing one; the detail says so.
    let other = fake.create_key("other").await;
    fake.set_bindings(&other, &[]).await;
    let e = backend(&fake.uri("other"))
        .await
        .check()
        .await
        .expect_err("no grant");
    assert_eq!(e.class, Revoked);
    assert!(
        e.detail.contains("or the key does not exist"),
        "{}",
        e.detail
    );
}

#[tokio::test]
async fn the_hsm_level_is_learnt_from_the_canary() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    let hsm =
        json!({ "purpose": "ENCRYPT_DECRYPT", "versionTemplate": { "protectionLevel": "HSM" } });
    let key = fake.create_key_with("hsm", hsm, false).await;
    fake.encrypter_only(&key).await;
    let b = backend(&fake.uri("hsm")).await;
    let big = Aad::new(
        "db",
        daemon::big_context()
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
    );
    assert!(
        b.check_size(4096, &big).is_ok(),
        "unknown yet: no refusal on a guess"
    );
    let h = b.check().await.expect("ACTIVE");
    assert!(h.detail.contains("(HSM)"), "{}", h.detail);
    // Known now, from the EncryptResponse: refused before any call.
    let e = b.check_size(4096, &big).expect_err("over the HSM limit");
    assert_eq!((e.class, e.evidence()), (InvalidRequest, None));
    let e = b
        .encrypt(&SecretBytes::copy_from(&[1u8; 4096]), &big)
        .await
        .expect_err("over the HSM limit");
    assert!(
        e.detail.contains("HSM key"),
        "ours, not Cloud KMS's: {}",
        e.detail
    );
}

#[tokio::test]
async fn a_missing_key_is_a_403_without_a_ring_grant_and_destroyed_with_one() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    let missing = format!("{}/cryptoKeys/never-made", fake::RING);
    // TestIamPermissions on a missing key: an empty set, not NOT_FOUND (iam_policy.proto).
    let perms = fake
        .admin
        .test_iam_permissions()
        .set_resource(&missing)
        .set_permissions(["cloudkms.cryptoKeyVersions.useToEncrypt"])
        .send()
        .await
        .expect("TestIamPermissions answers");
    assert!(perms.permissions.is_empty(), "{perms:?}");

    let b = backend(&fake.uri("never-made")).await;
    for e in [
        b.check().await.expect_err("missing"),
        wrap(&*b, b"x").await.expect_err("missing"),
    ] {
        assert_eq!(e.class, Revoked, "{e}");
        assert!(
            e.detail.contains("or the key does not exist"),
            "{}",
            e.detail
        );
    }
    // A grant on the key ring: Cloud KMS may say NOT_FOUND, and the detail says which.
    fake.set_bindings(
        fake::RING,
        &[(ENCRYPTER, &["allUsers"]), (VIEWER, &["allUsers"])],
    )
    .await;
    for e in [
        b.check().await.expect_err("missing"),
        wrap(&*b, b"x").await.expect_err("missing"),
    ] {
        assert_eq!(e.class, Destroyed, "{e}");
        assert!(e.detail.contains("the key does not exist"), "{}", e.detail);
        assert!(!e.detail.contains("or the key"), "{}", e.detail);
    }
}

#[tokio::test]
async fn a_blob_the_primary_did_not_open_shows_the_rotation() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    let key = fake.create_key("k").await;
    fake.encrypter_only(&key).await;
    let b = backend(&fake.uri("k")).await;
    let v = |n: &str| Some(format!("{key}/cryptoKeyVersions/{n}"));
    let old = wrap(&*b, b"old").await.expect("wrap");
    assert_eq!(b.check().await.expect("check").version, v("1"));
    fake.rotate(&key).await;
    // The proof (an Encrypt by version 1) stands: nothing told us yet.
    assert_eq!(b.check().await.expect("check").version, v("1"));
    // Decrypt answers used_primary = false for a blob of what we took for the primary.
    assert_eq!(unwrap(&*b, &old).await.expect("old blob").expose(), b"old");
    assert_eq!(b.check().await.expect("check").version, v("2"));
}

#[tokio::test]
async fn daemon_encrypter_only_wraps_unwraps_hands_out_and_reports_active() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    let key = fake.create_key("k").await;
    fake.encrypter_only(&key).await;
    let (d, mut c) = crate::common::backend_daemon::start(&[&fake.uri("k")]).await;
    let s = wait_for_state(&mut c, "k", KeyState::Active).await;
    assert!(s.detail.contains(VIEWER_HINT), "{s:?}");
    let w = d_wrap(&mut c, b"payload").await.expect("wrap");
    assert_eq!(
        d_unwrap(&mut c, &w.wrapped).await.expect("unwrap"),
        b"payload"
    );
    let held = store_key(&mut c, true).await.expect("GetStoreKey creates");

    // Disabled at the KMS: the first refused call is evidence, and the check agrees.
    fake.set_state(&key, "1", S::Disabled).await;
    let (got, msg) = code(d_wrap(&mut c, b"x").await, NO_SECRETS);
    assert_eq!(got, Code::FailedPrecondition, "{msg}");
    wait_for_state(&mut c, "k", KeyState::Disabled).await;
    fake.set_state(&key, "1", S::Enabled).await;
    wait_for_state(&mut c, "k", KeyState::Active).await;

    // A restart unwraps the store key from disk with the same single role.
    let d = d.restart().await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "k", KeyState::Active).await;
    assert_eq!(store_key(&mut c, false).await.expect("after restart"), held);
    d.stop().await;
}

#[tokio::test]
async fn daemon_used_primary_marks_the_store_behind() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    let key = fake.create_key("k").await;
    fake.encrypter_only(&key).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let body = lc_body(&[("k", &[&fake.uri("k")], "strict")], "k");
    let (d, mut c) = start_in(tmp.path(), &body, &["k"]).await;
    store_key(&mut c, true).await.expect("create store s");
    let old = d_wrap(&mut c, b"old blob").await.expect("wrap");
    assert!(!store_status(&mut c).await.needs_rewrap);

    fake.rotate(&key).await;
    // Without metadata the polls still stand on version 1's proof...
    assert!(!store_status(&mut c).await.needs_rewrap);
    // ...until an unwrap that the primary did not open shows that it moved.
    assert_eq!(
        d_unwrap(&mut c, &old.wrapped).await.expect("unwrap"),
        b"old blob"
    );
    let st = wait_for_rewrap(&mut c, true, "used_primary = false").await;
    assert!(st.detail.contains("cryptoKeyVersions/2"), "{}", st.detail);
    d.stop().await;
}
