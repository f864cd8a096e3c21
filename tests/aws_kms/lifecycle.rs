//! Issue 7 on AWS KMS (moto), through the daemon: CMEK rotation (AWS rotates behind one key
//! id, so nothing ever needs a re-wrap for a version); moving a store between keys;
//! any-of-N with the KMS stopped.

use kms_broker_client::pb::KeyState;

use crate::common::backend_daemon::lifecycle::{
    all_store_keys, lc_body, moves_a_store, pause, rewrap, rewrap_key, start_in, store_status,
    survives_a_stopped_region, two_generations,
};
use crate::common::backend_daemon::{unwrap, wrap};
use crate::common::wait_for_state;
use crate::moto::Moto;

#[tokio::test]
async fn cmek_rotation_needs_no_rewrap() {
    let Some(moto) = Moto::start() else { return };
    let (id, _) = moto.create_key().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let body = lc_body(&[("k", &[&moto.uri(&id)], "strict")], "k");
    let (d, mut c) = start_in(tmp.path(), &body, &["k"]).await;
    let held = two_generations(&mut c).await;
    let old = wrap(&mut c, b"old blob").await.expect("wrap");
    assert_eq!(old.key_version, "", "AWS shows no versions");

    moto.rotate(&id).await;
    let rotations = moto
        .admin
        .list_key_rotations()
        .key_id(&id)
        .send()
        .await
        .expect("ListKeyRotations");
    assert_eq!(
        rotations.rotations().len(),
        1,
        "the KMS rotated: {rotations:?}"
    );
    // A restart makes the daemon's first status check come after the rotation: whatever
    // it learned, the store does not depend on an old version (AWS keeps every one behind
    // the key id, and there is no version to disable).
    let d = d.restart().await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "k", KeyState::Active).await;
    let st = store_status(&mut c).await;
    assert!(!st.needs_rewrap, "{}", st.detail);
    assert_eq!(st.key_versions, vec![String::new()]);
    assert_eq!(rewrap(&mut c, true).await.expect("dry run"), 0);
    assert_eq!(rewrap(&mut c, false).await.expect("rewrap"), 0);
    assert_eq!(all_store_keys(&mut c).await.expect("every store key"), held);
    // RewrapKey still re-encrypts (under the rotated material, invisibly).
    let moved = rewrap_key(&mut c, &old.wrapped, "")
        .await
        .expect("RewrapKey");
    assert_eq!((moved.key.as_str(), moved.key_version.as_str()), ("k", ""));
    assert_ne!(moved.wrapped, old.wrapped);
    for blob in [&old.wrapped, &moved.wrapped] {
        assert_eq!(unwrap(&mut c, blob).await.expect("unwrap"), b"old blob");
    }
    d.stop().await;
}

#[tokio::test]
async fn moving_a_store_from_a_file_key_to_a_then_b_then_a_disabled() {
    let Some(moto) = Moto::start() else { return };
    let (a, _) = moto.create_key().await;
    let (b, _) = moto.create_key().await;
    let retire = moto.disable(&a);
    moves_a_store(&moto.uri(&a), &moto.uri(&b), retire, KeyState::Disabled).await;
}

#[tokio::test]
async fn any_of_n_with_the_kms_stopped_and_back() {
    let Some(moto) = Moto::start() else { return };
    let (id, _) = moto.create_key().await;
    // moto keeps its keys in memory: the region is lost by pausing the process (it
    // accepts connections and never answers), and comes back with the same keys.
    let pid = moto.pid();
    survives_a_stopped_region(&moto.uri(&id), &mut |up| pause(pid, !up)).await;
}
