//! Daemon-level tests: a real daemon (tests/common) whose key is an AWS KMS key on moto.

use std::collections::HashMap;

use kms_broker_client::pb::{GetStoreKeyRequest, KeyState, UnwrapKeyRequest};
use tonic::Code;

use crate::common::backend_daemon::{
    both_fail, code, every_edited_byte_is_refused, kms_request_ids, refused_while, start,
    start_audited, status_text, survives_the_loss_of_either, unwrap, wrap,
};
use crate::common::wait_for_state;
use crate::moto::{Moto, SECRET, TOKEN};

/// What no error or status may show.
const SECRETS: &[&str] = &[SECRET, TOKEN];

#[tokio::test]
async fn daemon_round_trip_rotation_and_store_key() {
    let Some(moto) = Moto::start() else { return };
    let (id, _) = moto.create_key().await;
    let (d, mut c) = start(&[&moto.uri(&id)]).await;
    let w1 = wrap(&mut c, &[1u8; 32]).await.expect("wrap");
    assert_eq!((w1.key.as_str(), w1.key_version.as_str()), ("k", ""));
    assert_eq!(
        unwrap(&mut c, &w1.wrapped).await.expect("unwrap"),
        vec![1u8; 32]
    );

    moto.rotate(&id).await;
    let w2 = wrap(&mut c, &[2u8; 32]).await.expect("wrap after rotation");
    assert_eq!(w2.key_version, "", "AWS hides its versions");
    assert_eq!(
        unwrap(&mut c, &w1.wrapped).await.expect("old blob"),
        vec![1u8; 32]
    );
    assert_eq!(
        unwrap(&mut c, &w2.wrapped).await.expect("new blob"),
        vec![2u8; 32]
    );

    let other = UnwrapKeyRequest {
        wrapped: w1.wrapped.clone(),
        context: HashMap::new(),
    };
    assert_eq!(
        code(c.unwrap_key(other).await, SECRETS).0,
        Code::InvalidArgument
    );

    // A store key wrapped under AWS survives a restart (it is unwrapped again from disk).
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
    let text = status_text(&mut c, SECRETS).await;
    assert!(
        text.contains("REGION=us-east-1"),
        "the redacted URI is shown: {text}"
    );
    d.stop().await;
}

#[tokio::test]
async fn daemon_disabled_then_enabled() {
    let Some(moto) = Moto::start() else { return };
    let (id, _) = moto.create_key().await;
    let (d, mut c) = start(&[&moto.uri(&id)]).await;
    let w = wrap(&mut c, b"payload").await.expect("wrap");

    moto.disable(&id).await;
    wait_for_state(&mut c, "k", KeyState::Disabled).await;
    refused_while(&mut c, &w.wrapped, "DISABLED", SECRETS).await;

    moto.enable(&id).await;
    wait_for_state(&mut c, "k", KeyState::Active).await;
    assert_eq!(
        unwrap(&mut c, &w.wrapped).await.expect("works again"),
        b"payload"
    );
    assert!(wrap(&mut c, b"x").await.is_ok());
    d.stop().await;
}

#[tokio::test]
async fn daemon_policy_deny_is_revoked_and_secrets_never_show() {
    let Some(moto) = Moto::start() else { return };
    let (id, _) = moto.create_key().await;
    let (d, mut c) = start(&[&moto.uri(&id)]).await;
    let w = wrap(&mut c, b"payload").await.expect("wrap");

    moto.deny(&id, "kms:*").await;
    let s = wait_for_state(&mut c, "k", KeyState::Revoked).await;
    assert!(
        s.detail.contains("AccessDenied")
            || s.uris.iter().any(|u| u.detail.contains("AccessDenied")),
        "{s:?}"
    );
    refused_while(&mut c, &w.wrapped, "REVOKED", SECRETS).await;
    let text = status_text(&mut c, SECRETS).await;
    assert!(
        text.contains("AWS_ACCESS_KEY_ID=AKIDDAEMON"),
        "the redacted URI is shown: {text}"
    );

    moto.allow(&id).await;
    wait_for_state(&mut c, "k", KeyState::Active).await;
    assert_eq!(
        unwrap(&mut c, &w.wrapped).await.expect("access restored"),
        b"payload"
    );
    d.stop().await;
}

#[tokio::test]
async fn daemon_scheduled_deletion_is_destroyed() {
    let Some(moto) = Moto::start() else { return };
    let (id, _) = moto.create_key().await;
    let (d, mut c) = start(&[&moto.uri(&id)]).await;
    let w = wrap(&mut c, b"payload").await.expect("wrap");
    moto.schedule_deletion(&id).await;
    wait_for_state(&mut c, "k", KeyState::Destroyed).await;
    refused_while(&mut c, &w.wrapped, "DESTROYED", SECRETS).await;
    d.stop().await;
}

#[tokio::test]
async fn daemon_stopped_moto_is_unreachable_and_unavailable() {
    let Some(mut moto) = Moto::start() else {
        return;
    };
    let (id, _) = moto.create_key().await;
    let (d, mut c) = start(&[&moto.uri(&id)]).await;
    let w = wrap(&mut c, b"payload").await.expect("wrap");
    moto.kill();
    wait_for_state(&mut c, "k", KeyState::Unreachable).await;
    both_fail(&mut c, &w.wrapped, Code::Unavailable, SECRETS).await;
    status_text(&mut c, SECRETS).await;
    d.stop().await;
}

#[tokio::test]
async fn daemon_aws_plus_mock_survives_the_loss_of_either() {
    let Some(mut moto) = Moto::start() else {
        return;
    };
    let (id, _) = moto.create_key().await;
    let uri = moto.uri(&id);
    survives_the_loss_of_either(&uri, "aws-kms-two-uris", move || moto.kill()).await;
}

#[tokio::test]
async fn daemon_every_edited_byte_is_refused_and_changes_nothing() {
    let Some(moto) = Moto::start() else { return };
    let (id, _) = moto.create_key().await;
    let (d, mut c) = start(&[&moto.uri(&id)]).await;
    every_edited_byte_is_refused(&mut c, SECRETS).await;
    d.stop().await;
}

#[tokio::test]
async fn the_audit_trail_names_aws_request_ids_of_answers_and_refusals() {
    let Some(moto) = Moto::start() else { return };
    let (id, _) = moto.create_key().await;
    let tmp = tempfile::tempdir().unwrap();
    let (d, mut c) = start_audited(tmp.path(), &[&moto.uri(&id)]).await;
    let w = wrap(&mut c, &[7u8; 32]).await.expect("wrap");
    unwrap(&mut c, &w.wrapped).await.expect("unwrap");
    // Refused by AWS itself (the context does not match): that answer has an id too.
    let other = UnwrapKeyRequest {
        wrapped: w.wrapped.clone(),
        context: HashMap::new(),
    };
    assert_eq!(
        c.unwrap_key(other).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    d.stop().await;

    let ids = kms_request_ids(tmp.path());
    assert_eq!(ids.len(), 3, "{ids:?}");
    for call in &ids {
        assert!(!call.is_empty(), "every call reached AWS: {ids:?}");
        assert!(call.iter().all(|id| id.len() >= 16), "{call:?}");
    }
    // Each answer has its own id.
    assert_ne!(ids[0], ids[1]);
}
