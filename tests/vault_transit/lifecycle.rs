//! Issue 7 on OpenBao, through the daemon: CMEK rotation, re-wrap and the old version
//! retired (`min_decryption_version`); moving a store between keys; any-of-N with the
//! server stopped.

use kms_broker_client::pb::KeyState;
use tonic::Code;

use crate::bao::Bao;
use crate::common::backend_daemon::lifecycle::{
    all_store_keys, lc_body, moves_a_store, pause, rewrap, rewrap_key, start_in, store_status,
    survives_a_stopped_region, two_generations, wait_for_rewrap,
};
use crate::common::backend_daemon::{assert_all_active, code, unwrap, wrap};
use crate::common::wait_for_state;

#[tokio::test]
async fn cmek_rotation_rewrap_then_the_old_version_retired() {
    let Some(bao) = Bao::start() else { return };
    let (uri, token) = bao.setup("k");
    let secrets = [token.as_str()];
    let tmp = tempfile::tempdir().expect("tempdir");
    let (d, mut c) = start_in(
        tmp.path(),
        &lc_body(&[("k", &[&uri], "strict")], "k"),
        &["k"],
    )
    .await;
    let held = two_generations(&mut c).await;
    let old = wrap(&mut c, b"old blob").await.expect("wrap");
    assert_eq!(old.key_version, "v1");
    let st = store_status(&mut c).await;
    assert!(!st.needs_rewrap, "{}", st.detail);
    assert_eq!(st.key_versions, vec!["v1".to_owned()]);

    // The operator rotates; the poll reads latest_version.
    bao.rotate("k");
    let st = wait_for_rewrap(&mut c, true, "the poll sees v2").await;
    assert!(
        st.detail.contains("version \"v1\"") && st.detail.contains("\"v2\""),
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
    assert_eq!(st.key_versions, vec!["v2".to_owned()]);
    assert_eq!(rewrap(&mut c, false).await.expect("again"), 0, "idempotent");
    let moved = rewrap_key(&mut c, &old.wrapped, "")
        .await
        .expect("RewrapKey");
    assert_eq!(
        (moved.key.as_str(), moved.key_version.as_str()),
        ("k", "v2")
    );

    // v1 is retired at the KMS. After a restart (nothing from memory), everything
    // re-wrapped still opens; the blob left on v1 is refused, and the key stays ACTIVE.
    bao.configure("k", "min_decryption_version=2");
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
    let (got, msg) = code(unwrap(&mut c, &old.wrapped).await, &secrets);
    assert_eq!(got, Code::FailedPrecondition, "{msg}");
    assert!(
        msg.contains("below the key's min_decryption_version 2"),
        "{msg}"
    );
    assert_all_active(&mut c, "an unwrap below min_decryption_version").await;
    assert!(!store_status(&mut c).await.needs_rewrap);
    let fresh = wrap(&mut c, b"new").await.expect("wraps under v2");
    assert_eq!(fresh.key_version, "v2");
    d.stop().await;
}

#[tokio::test]
async fn moving_a_store_from_a_file_key_to_a_then_b_then_a_revoked() {
    let Some(bao) = Bao::start() else { return };
    let (a, token_a) = bao.setup("a");
    let (b, _) = bao.setup("b");
    // Revocation as an operator does it: the daemon's token for key a is revoked.
    let retire = async {
        bao.cli(&["token", "revoke", &token_a]);
    };
    moves_a_store(&a, &b, retire, KeyState::Revoked).await;
}

#[tokio::test]
async fn any_of_n_with_the_server_stopped_and_back() {
    let Some(bao) = Bao::start() else { return };
    let (uri, _) = bao.setup("k");
    // A dev server keeps its keys in memory: the region is lost by pausing the process
    // (it accepts connections and never answers), and comes back with the same keys.
    let pid = bao.server.0.id();
    survives_a_stopped_region(&uri, &mut |up| pause(pid, !up)).await;
}

/// An operator who retires a version before re-wrapping is told so, not that the store's
/// file is corrupt; lowering `min_decryption_version` again undoes it.
#[tokio::test]
async fn retiring_a_version_the_store_still_needs_is_named_and_reversible() {
    let Some(bao) = Bao::start() else { return };
    let (uri, token) = bao.setup("k");
    let tmp = tempfile::tempdir().expect("tempdir");
    let body = lc_body(&[("k", &[&uri], "strict")], "k");
    let (d, mut c) = start_in(tmp.path(), &body, &["k"]).await;
    let held = two_generations(&mut c).await;
    bao.rotate("k");
    bao.configure("k", "min_decryption_version=2");
    let d = d.restart().await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "k", KeyState::Active).await;
    let (got, msg) = code(all_store_keys(&mut c).await, &[token.as_str()]);
    assert_eq!(got, Code::FailedPrecondition, "{msg}");
    assert!(msg.contains("min_decryption_version"), "{msg}");
    let (got, msg) = code(rewrap(&mut c, false).await, &[token.as_str()]);
    assert_eq!(got, Code::FailedPrecondition, "{msg}");
    assert_all_active(&mut c, "a store file under a retired version").await;

    bao.configure("k", "min_decryption_version=1");
    assert_eq!(all_store_keys(&mut c).await.expect("readable again"), held);
    assert_eq!(rewrap(&mut c, false).await.expect("now re-wrapped"), 1);
    d.stop().await;
}
