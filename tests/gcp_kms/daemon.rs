//! Daemon-level tests: a real daemon (tests/common) whose key is a Cloud KMS key on the fake.

use std::collections::HashMap;

use google_cloud_kms_v1::model::crypto_key_version::CryptoKeyVersionState as S;
use kms_broker_client::pb::{GetStoreKeyRequest, KeyState, UnwrapKeyRequest, WrapKeyRequest};
use tonic::Code;

use crate::common::backend_daemon::{
    assert_all_active, both_fail, code, every_edited_byte_is_refused, hold_store_key,
    refused_while, start, status_text, store_key, survives_the_loss_of_either, unwrap, wrap,
    NO_SECRETS,
};
use crate::common::wait_for_state;
use crate::fake::{Fake, ServiceAccount, DAEMON_SA, ENCRYPTER, VIEWER};

#[tokio::test]
async fn daemon_round_trip_rotation_and_store_key() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    let key = fake.create_key("k").await;
    let (d, mut c) = start(&[&fake.uri("k")]).await;
    let w1 = wrap(&mut c, &[1u8; 32]).await.expect("wrap");
    assert_eq!(w1.key, "k");
    assert_eq!(w1.key_version, format!("{key}/cryptoKeyVersions/1"));
    assert_eq!(
        unwrap(&mut c, &w1.wrapped).await.expect("unwrap"),
        vec![1u8; 32]
    );

    fake.rotate(&key).await;
    let w2 = wrap(&mut c, &[2u8; 32]).await.expect("wrap after rotation");
    assert_eq!(w2.key_version, format!("{key}/cryptoKeyVersions/2"));
    assert_eq!(
        unwrap(&mut c, &w1.wrapped).await.expect("old blob"),
        vec![1u8; 32]
    );
    assert_eq!(
        unwrap(&mut c, &w2.wrapped).await.expect("new blob"),
        vec![2u8; 32]
    );
    // The status detail is the poller's: it names the new primary at a later poll (a hang
    // guard, not a timing claim).
    crate::common::must_return(
        "the poller names the new primary",
        std::time::Duration::from_secs(30),
        async {
            while wait_for_state(&mut c, "k", KeyState::Active).await.detail != "primary version 2"
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        },
    )
    .await;

    let other = UnwrapKeyRequest {
        wrapped: w1.wrapped.clone(),
        context: HashMap::new(),
    };
    assert_eq!(
        code(c.unwrap_key(other).await, NO_SECRETS).0,
        Code::InvalidArgument
    );

    // A store key wrapped under Cloud KMS survives a restart (unwrapped again from disk).
    let get = |create| GetStoreKeyRequest {
        store_id: "s".into(),
        create,
    };
    let made = c
        .get_store_key(get(true))
        .await
        .expect("create")
        .into_inner();
    let d = d.restart().await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "k", KeyState::Active).await;
    let again = c
        .get_store_key(get(false))
        .await
        .expect("after restart")
        .into_inner();
    assert_eq!(
        made.active.expect("key").key,
        again.active.expect("key").key
    );
    let text = status_text(&mut c, NO_SECRETS).await;
    assert!(
        text.contains("AUTH=none") && text.contains("GCP_ENDPOINT="),
        "the redacted URI is shown: {text}"
    );
    d.stop().await;
}

#[tokio::test]
async fn daemon_disabled_then_enabled() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    let key = fake.create_key("k").await;
    let (d, mut c) = start(&[&fake.uri("k")]).await;
    let w = wrap(&mut c, b"payload").await.expect("wrap");

    fake.set_state(&key, "1", S::Disabled).await;
    wait_for_state(&mut c, "k", KeyState::Disabled).await;
    refused_while(&mut c, &w.wrapped, "DISABLED", NO_SECRETS).await;

    fake.set_state(&key, "1", S::Enabled).await;
    wait_for_state(&mut c, "k", KeyState::Active).await;
    assert_eq!(
        unwrap(&mut c, &w.wrapped).await.expect("works again"),
        b"payload"
    );
    assert!(wrap(&mut c, b"x").await.is_ok());
    d.stop().await;
}

#[tokio::test]
async fn daemon_permission_revoked_is_revoked_and_secrets_never_show() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    let key = fake.create_key("k").await;
    let sa = ServiceAccount::new(DAEMON_SA);
    let secrets = sa.secret_fragments();
    let member = format!("serviceAccount:{DAEMON_SA}");
    fake.set_bindings(&key, &[(ENCRYPTER, &[&member]), (VIEWER, &[&member])])
        .await;
    let (d, mut c) = start(&[&fake.uri_as_sa("k", &sa)]).await;
    let w = wrap(&mut c, b"payload").await.expect("wrap");

    // The operator removes the daemon's encrypter/decrypter binding.
    fake.set_bindings(&key, &[(VIEWER, &[&member])]).await;
    let s = wait_for_state(&mut c, "k", KeyState::Revoked).await;
    assert!(format!("{s:?}").contains("useToEncrypt"), "{s:?}");
    refused_while(&mut c, &w.wrapped, "REVOKED", &secrets).await;
    let text = status_text(&mut c, &secrets).await;
    assert!(
        text.contains("CREDENTIALS=redacted"),
        "the redacted URI is shown: {text}"
    );

    fake.set_bindings(&key, &[(ENCRYPTER, &[&member]), (VIEWER, &[&member])])
        .await;
    wait_for_state(&mut c, "k", KeyState::Active).await;
    assert_eq!(
        unwrap(&mut c, &w.wrapped).await.expect("access restored"),
        b"payload"
    );
    d.stop().await;
}

#[tokio::test]
async fn daemon_destroy_scheduled_is_destroyed() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    let key = fake.create_key("k").await;
    let (d, mut c) = start(&[&fake.uri("k")]).await;
    let w = wrap(&mut c, b"payload").await.expect("wrap");
    fake.destroy(&key, "1").await;
    wait_for_state(&mut c, "k", KeyState::Destroyed).await;
    refused_while(&mut c, &w.wrapped, "DESTROYED", NO_SECRETS).await;
    d.stop().await;
}

#[tokio::test]
async fn daemon_stopped_fake_is_unreachable_and_unavailable() {
    let Some(mut fake) = Fake::start().await else {
        return;
    };
    fake.create_key("k").await;
    let (d, mut c) = start(&[&fake.uri("k")]).await;
    let w = wrap(&mut c, b"payload").await.expect("wrap");
    fake.kill();
    wait_for_state(&mut c, "k", KeyState::Unreachable).await;
    both_fail(&mut c, &w.wrapped, Code::Unavailable, NO_SECRETS).await;
    fake.restart();
    wait_for_state(&mut c, "k", KeyState::Active).await;
    assert_eq!(unwrap(&mut c, &w.wrapped).await.expect("back"), b"payload");
    d.stop().await;
}

#[tokio::test]
async fn daemon_gcp_plus_mock_survives_the_loss_of_either() {
    let Some(mut fake) = Fake::start().await else {
        return;
    };
    fake.create_key("k").await;
    let uri = fake.uri("k");
    survives_the_loss_of_either(&uri, "gcp-kms-two-uris", move || fake.kill()).await;
}

/// A 64-entry context of about 4 KiB: legal under the contract (8 KiB), but with a 4 KiB
/// plaintext over an HSM key's 8 KiB for plaintext and AAD combined.
pub fn big_context() -> HashMap<String, String> {
    (0..64)
        .map(|i| (format!("c{i:02}"), "v".repeat(60)))
        .collect()
}

#[tokio::test]
async fn daemon_hsm_limit_is_invalid_argument_and_changes_nothing() {
    // Issue 6 item 3: a caller allowed only WrapKey could switch the key off for everyone
    // (INVALID_ARGUMENT was read as DISABLED, and the held store key was dropped).
    let Some(fake) = Fake::start().await else {
        return;
    };
    fake.create_key_with(
        "k",
        serde_json::json!({
            "purpose": "ENCRYPT_DECRYPT",
            "versionTemplate": { "protectionLevel": "HSM" },
        }),
        false,
    )
    .await;
    let (d, mut c) = start(&[&fake.uri("k")]).await;
    let held = hold_store_key(&mut c).await;
    let s = wait_for_state(&mut c, "k", KeyState::Active).await;
    assert!(
        s.detail.contains("(HSM)"),
        "the check learnt the level: {s:?}"
    );
    for _ in 0..3 {
        let r = c
            .wrap_key(WrapKeyRequest {
                key: "k".into(),
                plaintext: vec![1u8; 4096],
                context: big_context(),
            })
            .await;
        let (code, message) = code(r, NO_SECRETS);
        assert_eq!(code, Code::InvalidArgument, "{message}");
        assert!(message.contains("HSM"), "{message}");
        assert_all_active(&mut c, "an over-limit WrapKey").await;
    }
    assert_eq!(store_key(&mut c, false).await.expect("still held"), held);
    // A request within the limit still works, under the same key.
    let w = c
        .wrap_key(WrapKeyRequest {
            key: "k".into(),
            plaintext: vec![1u8; 2048],
            context: big_context(),
        })
        .await
        .expect("within the limit")
        .into_inner();
    let back = c
        .unwrap_key(UnwrapKeyRequest {
            wrapped: w.wrapped,
            context: big_context(),
        })
        .await
        .expect("unwrap");
    assert_eq!(back.into_inner().plaintext, vec![1u8; 2048]);
    d.stop().await;
}

#[tokio::test]
async fn daemon_every_edited_byte_is_refused_and_changes_nothing() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    fake.create_key("k").await;
    let (d, mut c) = start(&[&fake.uri("k")]).await;
    every_edited_byte_is_refused(&mut c, NO_SECRETS).await;
    d.stop().await;
}
