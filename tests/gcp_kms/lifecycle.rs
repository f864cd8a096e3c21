//! Issue 7 on Cloud KMS (the fake), through the daemon: CMEK rotation, re-wrap and the old
//! version disabled; moving a store between keys; any-of-N with the KMS stopped.

use google_cloud_kms_v1::model::crypto_key_version::CryptoKeyVersionState as S;
use kms_broker_client::pb::KeyState;
use tonic::Code;

use crate::common::backend_daemon::lifecycle::{
    all_store_keys, file_key, lc_body, moves_a_store, rewrap, rewrap_key, start_in, store_status,
    survives_a_stopped_region, two_generations, wait_for_key_uri, wait_for_rewrap,
};
use crate::common::backend_daemon::{assert_all_active, code, store_key, unwrap, wrap, NO_SECRETS};
use crate::common::wait_for_state;
use crate::fake::Fake;

#[tokio::test]
async fn cmek_rotation_rewrap_then_the_old_version_disabled() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    let key = fake.create_key("k").await;
    let v = |n: &str| format!("{key}/cryptoKeyVersions/{n}");
    let tmp = tempfile::tempdir().expect("tempdir");
    let body = lc_body(&[("k", &[&fake.uri("k")], "strict")], "k");
    let (d, mut c) = start_in(tmp.path(), &body, &["k"]).await;
    let held = two_generations(&mut c).await;
    let old = wrap(&mut c, b"old blob").await.expect("wrap");
    assert_eq!(old.key_version, v("1"));
    let st = store_status(&mut c).await;
    assert!(!st.needs_rewrap, "{}", st.detail);
    assert_eq!(st.key_versions, vec![v("1")]);

    // The operator rotates: a new version, made primary. The poll learns it.
    assert_eq!(fake.rotate(&key).await, "2");
    let st = wait_for_rewrap(&mut c, true, "the poll sees the new primary").await;
    assert!(
        st.detail.contains(&format!("version {:?}", v("1")))
            && st.detail.contains(&format!("{:?}", v("2"))),
        "{}",
        st.detail
    );
    assert_eq!(rewrap(&mut c, true).await.expect("dry run"), 1);
    assert!(
        store_status(&mut c).await.needs_rewrap,
        "a dry run changes nothing"
    );
    assert_eq!(rewrap(&mut c, false).await.expect("rewrap"), 1);
    let st = store_status(&mut c).await;
    assert!(!st.needs_rewrap, "{}", st.detail);
    assert_eq!(st.key_versions, vec![v("2")]);
    assert_eq!(rewrap(&mut c, false).await.expect("again"), 0, "idempotent");
    let moved = rewrap_key(&mut c, &old.wrapped, "")
        .await
        .expect("RewrapKey");
    assert_eq!(
        (moved.key.as_str(), moved.key_version.clone()),
        ("k", v("2"))
    );

    // Version 1 is retired at the KMS. After a restart (nothing from memory), everything
    // re-wrapped still opens; the blob left on version 1 is refused, and the key stays
    // ACTIVE: a disabled old version is not the key disabled.
    fake.set_state(&key, "1", S::Disabled).await;
    let d = d.restart().await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "k", KeyState::Active).await;
    assert_eq!(all_store_keys(&mut c).await.expect("every store key"), held);
    assert_eq!(
        unwrap(&mut c, &moved.wrapped)
            .await
            .expect("re-wrapped blob"),
        b"old blob"
    );
    let (got, msg) = code(unwrap(&mut c, &old.wrapped).await, NO_SECRETS);
    assert_eq!(got, Code::FailedPrecondition, "{msg}");
    assert!(msg.contains(&format!("{} is not enabled", v("1"))), "{msg}");
    assert_all_active(&mut c, "an unwrap under a disabled old version").await;
    let st = store_status(&mut c).await;
    assert!(!st.needs_rewrap, "{}", st.detail);
    let fresh = wrap(&mut c, b"new").await.expect("wraps under version 2");
    assert_eq!(fresh.key_version, v("2"));

    // Further still: version 1 scheduled for destruction. The store does not care.
    fake.destroy(&key, "1").await;
    let d = d.restart().await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "k", KeyState::Active).await;
    assert_eq!(all_store_keys(&mut c).await.expect("after destroy"), held);
    let (got, msg) = code(unwrap(&mut c, &old.wrapped).await, NO_SECRETS);
    assert_eq!(got, Code::FailedPrecondition, "{msg}");
    assert_all_active(&mut c, "an unwrap under a destroyed old version").await;
    d.stop().await;
}

#[tokio::test]
async fn moving_a_store_from_a_file_key_to_a_then_b_then_a_revoked() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    let a = fake.create_key("a").await;
    fake.create_key("b").await;
    // Revocation as an operator does it: the key's IAM policy grants nothing any more.
    let retire = fake.set_bindings(&a, &[]);
    moves_a_store(&fake.uri("a"), &fake.uri("b"), retire, KeyState::Revoked).await;
}

#[tokio::test]
async fn any_of_n_with_the_kms_stopped_and_back() {
    let Some(mut fake) = Fake::start().await else {
        return;
    };
    fake.create_key("k").await;
    let uri = fake.uri("k");
    // A real stop (connections refused), then a restart with the same keys.
    survives_a_stopped_region(&uri, &mut |up| {
        if up {
            fake.restart()
        } else {
            fake.kill()
        }
    })
    .await;
}

#[tokio::test]
async fn a_gap_left_at_shutdown_is_filled_after_the_restart() {
    let Some(mut fake) = Fake::start().await else {
        return;
    };
    fake.create_key("k").await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = file_key(tmp.path(), "f.key");
    let body = lc_body(&[("ka", &[&fake.uri("k"), &file], "available")], "ka");
    let (d, mut c) = start_in(tmp.path(), &body, &["ka"]).await;
    fake.kill();
    wait_for_key_uri(&mut c, "ka", "gs://", KeyState::Unreachable).await;
    let held = store_key(&mut c, true)
        .await
        .expect("created under the file key");
    assert!(store_status(&mut c).await.needs_rewrap);
    // The node stops during the outage; the KMS is back before it starts again.
    d.stop().await;
    fake.restart();
    let (d, mut c) = start_in(tmp.path(), &body, &["ka"]).await;
    let st = wait_for_rewrap(&mut c, false, "the gap is filled after the restart").await;
    assert_eq!(st.key_versions.len(), 2, "{st:?}");
    assert_eq!(store_key(&mut c, false).await.expect("opens"), held);
    d.stop().await;
}

/// An operator who disables a version before re-wrapping is told so, not that the store's
/// file is corrupt; enabling it again undoes it.
#[tokio::test]
async fn disabling_a_version_the_store_still_needs_is_named_and_reversible() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    let key = fake.create_key("k").await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let body = lc_body(&[("k", &[&fake.uri("k")], "strict")], "k");
    let (d, mut c) = start_in(tmp.path(), &body, &["k"]).await;
    let held = two_generations(&mut c).await;
    fake.rotate(&key).await;
    fake.set_state(&key, "1", S::Disabled).await;
    let d = d.restart().await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "k", KeyState::Active).await;
    let (got, msg) = code(all_store_keys(&mut c).await, NO_SECRETS);
    assert_eq!(got, Code::FailedPrecondition, "{msg}");
    assert!(msg.contains("cryptoKeyVersions/1 is not enabled"), "{msg}");
    let (got, msg) = code(rewrap(&mut c, false).await, NO_SECRETS);
    assert_eq!(got, Code::FailedPrecondition, "{msg}");
    assert_all_active(&mut c, "a store file under a disabled version").await;

    fake.set_state(&key, "1", S::Enabled).await;
    assert_eq!(all_store_keys(&mut c).await.expect("readable again"), held);
    assert_eq!(rewrap(&mut c, false).await.expect("now re-wrapped"), 1);
    d.stop().await;
}
