//! Daemon-level tests: a real daemon (tests/common) whose key is an OpenBao transit key.

use std::collections::HashMap;

use kms_broker_client::pb::{KeyState, UnwrapKeyRequest};
use tonic::Code;

use crate::bao::Bao;
use crate::common::backend_daemon::{
    both_fail, code, every_edited_byte_is_refused, hold_store_key, kms_request_ids, refused_while,
    start, start_audited, status_text, store_key, survives_the_loss_of_either, unwrap, wrap,
    NO_SECRETS,
};
use crate::common::wait_for_state;

#[tokio::test]
async fn daemon_round_trip_and_rotation() {
    let Some(bao) = Bao::start() else { return };
    let (uri, _) = bao.setup("k");
    let (d, mut c) = start(&[&uri]).await;
    let w1 = wrap(&mut c, &[1u8; 32]).await.expect("wrap");
    assert_eq!((w1.key.as_str(), w1.key_version.as_str()), ("k", "v1"));
    assert_eq!(
        unwrap(&mut c, &w1.wrapped).await.expect("unwrap"),
        vec![1u8; 32]
    );

    bao.rotate("k");
    let w2 = wrap(&mut c, &[2u8; 32]).await.expect("wrap after rotation");
    assert_eq!(w2.key_version, "v2");
    assert_eq!(
        unwrap(&mut c, &w1.wrapped).await.expect("old blob"),
        vec![1u8; 32]
    );
    assert_eq!(
        unwrap(&mut c, &w2.wrapped).await.expect("new blob"),
        vec![2u8; 32]
    );

    // Another context does not authenticate.
    let other = UnwrapKeyRequest {
        wrapped: w1.wrapped.clone(),
        context: HashMap::new(),
    };
    assert_eq!(
        c.unwrap_key(other).await.expect_err("other context").code(),
        Code::InvalidArgument
    );
    d.stop().await;
}

#[tokio::test]
async fn daemon_soft_delete_is_disabled_and_restore_is_active_again() {
    let Some(bao) = Bao::start() else { return };
    let (uri, _) = bao.setup("k");
    let (d, mut c) = start(&[&uri]).await;
    let w = wrap(&mut c, b"payload").await.expect("wrap");

    bao.soft_delete("k");
    let s = wait_for_state(&mut c, "k", KeyState::Disabled).await;
    assert!(s.detail.contains("soft-delete"), "{}", s.detail);
    refused_while(&mut c, &w.wrapped, "DISABLED", NO_SECRETS).await;

    bao.restore("k");
    wait_for_state(&mut c, "k", KeyState::Active).await;
    assert_eq!(
        unwrap(&mut c, &w.wrapped).await.expect("works again"),
        b"payload"
    );
    assert!(wrap(&mut c, b"x").await.is_ok());
    d.stop().await;
}

#[tokio::test]
async fn daemon_revoked_token_is_revoked_and_the_token_never_shows() {
    let Some(bao) = Bao::start() else { return };
    let (uri, token) = bao.setup("k");
    let (d, mut c) = start(&[&uri]).await;
    let w = wrap(&mut c, b"payload").await.expect("wrap");

    bao.cli(&["token", "revoke", &token]);
    let s = wait_for_state(&mut c, "k", KeyState::Revoked).await;
    assert!(
        !format!("{s:?}").contains(&token),
        "the token leaked: {s:?}"
    );
    // Both messages and every status are checked free of the token by the helpers.
    refused_while(&mut c, &w.wrapped, "REVOKED", &[&token]).await;
    let text = status_text(&mut c, &[&token]).await;
    assert!(
        text.contains("TOKEN_FILE"),
        "the redacted URI is shown: {text}"
    );
    d.stop().await;
}

#[tokio::test]
async fn daemon_deleted_key_is_destroyed() {
    let Some(bao) = Bao::start() else { return };
    let (uri, _) = bao.setup("k");
    let (d, mut c) = start(&[&uri]).await;
    let w = wrap(&mut c, b"payload").await.expect("wrap");
    bao.delete_key("k");
    wait_for_state(&mut c, "k", KeyState::Destroyed).await;
    refused_while(&mut c, &w.wrapped, "DESTROYED", NO_SECRETS).await;
    assert!(!bao.key_exists("k"));
    d.stop().await;
}

#[tokio::test]
async fn daemon_stopped_bao_is_unreachable_and_unavailable() {
    let Some(mut bao) = Bao::start() else { return };
    let (uri, _) = bao.setup("k");
    // The shared config has a grace period of 0: nothing held is handed out while the KMS is down.
    let (d, mut c) = start(&[&uri]).await;
    let w = wrap(&mut c, b"payload").await.expect("wrap");
    bao.kill();
    wait_for_state(&mut c, "k", KeyState::Unreachable).await;
    both_fail(&mut c, &w.wrapped, Code::Unavailable, NO_SECRETS).await;
    d.stop().await;
}

#[tokio::test]
async fn daemon_vault_plus_mock_survives_the_loss_of_either() {
    let Some(mut bao) = Bao::start() else { return };
    let (uri, _) = bao.setup("k");
    let w = survives_the_loss_of_either(&uri, "vault-transit-two-uris", move || bao.kill()).await;
    assert!(w.key_version.contains("v1"), "{}", w.key_version);
}

#[tokio::test]
async fn daemon_policy_cut_to_read_only_is_revoked_at_the_next_check() {
    // Issue 6 item 5: the token can still READ the key, so a status check that only reads
    // it saw nothing; capabilities-self shows the lost encrypt/decrypt rights.
    let Some(bao) = Bao::start() else { return };
    let (uri, token) = bao.setup("k");
    let (d, mut c) = start(&[&uri]).await;
    let w = wrap(&mut c, b"payload").await.expect("wrap");
    hold_store_key(&mut c).await;

    bao.policy(
        "daemon-k",
        "path \"transit/keys/k\" { capabilities = [\"read\"] }\n",
    );
    let s = wait_for_state(&mut c, "k", KeyState::Revoked).await;
    let shown = format!("{s:?}");
    assert!(shown.contains("transit/encrypt/k"), "{shown}");
    refused_while(&mut c, &w.wrapped, "REVOKED", &[&token]).await;
    let (code, _) = code(store_key(&mut c, false).await, &[&token]);
    assert_eq!(
        code,
        Code::FailedPrecondition,
        "the held store key is dropped"
    );

    bao.policy("daemon-k", &crate::bao::daemon_policy("k"));
    wait_for_state(&mut c, "k", KeyState::Active).await;
    assert_eq!(
        unwrap(&mut c, &w.wrapped).await.expect("restored"),
        b"payload"
    );
    d.stop().await;
}

#[tokio::test]
async fn daemon_decrypt_right_alone_lost_is_revoked_at_the_next_check() {
    let Some(bao) = Bao::start() else { return };
    let (uri, _) = bao.setup("k");
    let (d, mut c) = start(&[&uri]).await;
    bao.policy(
        "daemon-k",
        "path \"transit/keys/k\" { capabilities = [\"read\"] }\n\
         path \"transit/encrypt/k\" { capabilities = [\"update\"] }\n",
    );
    let s = wait_for_state(&mut c, "k", KeyState::Revoked).await;
    assert!(format!("{s:?}").contains("transit/decrypt/k"), "{s:?}");
    d.stop().await;
}

#[tokio::test]
async fn daemon_every_edited_byte_is_refused_and_changes_nothing() {
    // Also Vault's 400 path: a Vault ciphertext edited anywhere is a 400 from Vault, which
    // must leave the key ACTIVE and the held store key handed out.
    let Some(bao) = Bao::start() else { return };
    let (uri, token) = bao.setup("k");
    let (d, mut c) = start(&[&uri]).await;
    every_edited_byte_is_refused(&mut c, &[&token]).await;
    d.stop().await;
}

#[tokio::test]
async fn the_audit_trail_names_the_request_ids_vaults_audit_device_logs() {
    let Some(bao) = Bao::start() else { return };
    let (uri, _) = bao.setup("k");
    // OpenBao's own audit log: the ids in ours must be ids it logged.
    let bao_log = bao.audit_log();
    let tmp = tempfile::tempdir().unwrap();
    let (d, mut c) = start_audited(tmp.path(), &[&uri]).await;
    let w = wrap(&mut c, &[5u8; 32]).await.expect("wrap");
    unwrap(&mut c, &w.wrapped).await.expect("unwrap");
    d.stop().await;

    let ours = kms_request_ids(tmp.path());
    assert_eq!(ours.len(), 2, "{ours:?}");
    let theirs = std::fs::read_to_string(&bao_log).unwrap();
    for (call, path) in ours.iter().zip(["transit/encrypt/k", "transit/decrypt/k"]) {
        assert_eq!(call.len(), 1, "one Vault call each: {call:?}");
        let logged = theirs
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .any(|e| {
                e["request"]["id"].as_str() == Some(call[0].as_str())
                    && e["request"]["path"].as_str() == Some(path)
            });
        assert!(logged, "{} on {path} is in OpenBao's audit log", call[0]);
    }
}
