//! The key lifecycle through the daemon: store-key rotation, CMEK rotation and re-wrap,
//! moving a store to another key, RewrapKey, and WatchRevokeStatus.

use std::collections::HashMap;
use std::time::Duration;

use kms_broker::backend::mock::mock;
use kms_broker_client::pb::{
    GetStoreKeyRequest, KeyState, RevokeStatusRequest, RewrapKeyRequest, RewrapRequest,
    RotateStoreKeyRequest, StoreStatusRequest, UnwrapKeyRequest, WrapKeyRequest,
};
use tonic::Code;

use crate::common::{must_return, my_uid, wait_for_state, Client, Daemon};

fn allow_all() -> String {
    format!(
        "[[policy]]\npeer = \"uid:{}\"\nallow = [\"WrapKey\", \"UnwrapKey\", \"GetStoreKey\", \"RevokeStatus\", \"RotateStoreKey\", \"StoreStatus\", \"Rewrap\"]\n",
        my_uid()
    )
}

/// Keys `a` and `b` (one mock URI each) and store `s1` under `store_key`.
fn body(a: &str, b: &str, store_key: &str) -> String {
    format!(
        "[keys.a]\nuris = [\"mock://{a}\"]\n[keys.b]\nuris = [\"mock://{b}\"]\n[stores.s1]\nkey = \"{store_key}\"\n[revocation]\npoll_interval = \"200ms\"\n[kms]\nattempt_timeout = \"1s\"\ndeadline = \"2s\"\nmax_attempts = 1\n{}",
        allow_all()
    )
}

async fn get(
    c: &mut Client,
    create: bool,
) -> Result<kms_broker_client::pb::GetStoreKeyResponse, tonic::Status> {
    c.get_store_key(GetStoreKeyRequest {
        store_id: "s1".into(),
        create,
    })
    .await
    .map(|r| r.into_inner())
}

async fn status(c: &mut Client) -> kms_broker_client::pb::StoreStatus {
    c.store_status(StoreStatusRequest {
        store_id: "s1".into(),
    })
    .await
    .unwrap()
    .into_inner()
    .stores
    .remove(0)
}

async fn rewrap(c: &mut Client, dry_run: bool) -> Result<u32, tonic::Status> {
    c.rewrap(RewrapRequest {
        store_id: String::new(),
        dry_run,
    })
    .await
    .map(|r| r.into_inner().rewrapped)
}

#[tokio::test]
async fn rotating_twice_keeps_every_generation_across_restarts() {
    mock("lc-rot-a");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = body("lc-rot-a", "lc-rot-b", "a");
    let d = Daemon::start_in(tmp.path(), &cfg).await.unwrap();
    let mut c = d.unix().await;
    let e = c
        .rotate_store_key(RotateStoreKeyRequest {
            store_id: "s1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "no key yet: {e:?}");
    let g0 = get(&mut c, true).await.unwrap().active.unwrap();
    let mut ids = vec![g0.key_id.clone()];
    for n in 1..=2 {
        let st = c
            .rotate_store_key(RotateStoreKeyRequest {
                store_id: "s1".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.previous.len(), n);
        assert_eq!(st.previous[0].key_id, *ids.last().unwrap(), "newest first");
        ids.push(st.active.unwrap().key_id);
        // The held keys follow at once: the node gets the new active key and every old one.
        let keys = get(&mut c, false).await.unwrap();
        assert_eq!(keys.active.as_ref().unwrap().key_id, *ids.last().unwrap());
        assert_eq!(keys.previous.len(), n);
    }
    let before = get(&mut c, false).await.unwrap();
    d.stop().await;
    let d = Daemon::start_in(tmp.path(), &cfg).await.unwrap();
    let mut c = d.unix().await;
    let after = get(&mut c, false).await.unwrap();
    assert_eq!(after.active, before.active);
    assert_eq!(after.previous, before.previous);
    let got: Vec<_> = after.previous.iter().map(|k| k.key_id.clone()).collect();
    assert_eq!(got, vec![ids[1].clone(), ids[0].clone()]);
    assert_eq!(
        after.previous[1].key, g0.key,
        "the first generation's key bytes"
    );
    d.stop().await;
}

#[tokio::test]
async fn cmek_rotation_then_rewrap_keeps_the_store_key() {
    let m = mock("lc-cmek");
    let d = Daemon::start(&body("lc-cmek", "lc-cmek-b", "a")).await;
    let mut c = d.unix().await;
    let key = get(&mut c, true).await.unwrap().active.unwrap();
    let st = status(&mut c).await;
    assert!(!st.needs_rewrap, "{}", st.detail);
    assert_eq!(st.key_versions, vec!["1".to_string()]);
    assert_eq!(m.rotate(), "2");
    // The poller learns the new primary version; the store now depends on version 1.
    must_return(
        "status to see the rotation",
        Duration::from_secs(5),
        async {
            while !status(&mut c).await.needs_rewrap {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
    .await;
    let st = status(&mut c).await;
    assert!(st.detail.contains("version \"1\""), "{}", st.detail);
    assert_eq!(rewrap(&mut c, true).await.unwrap(), 1, "dry run counts");
    assert!(
        status(&mut c).await.needs_rewrap,
        "a dry run changes nothing"
    );
    assert_eq!(rewrap(&mut c, false).await.unwrap(), 1);
    let st = status(&mut c).await;
    assert!(!st.needs_rewrap, "{}", st.detail);
    assert_eq!(st.key_versions, vec!["2".to_string()]);
    assert_eq!(rewrap(&mut c, false).await.unwrap(), 0, "idempotent");
    // New wraps use version 2 at once; the store key itself never changed.
    let d = d.restart().await;
    let mut c = d.unix().await;
    assert_eq!(get(&mut c, false).await.unwrap().active.unwrap(), key);
    d.stop().await;
}

#[tokio::test]
async fn moving_a_store_to_another_key_then_retiring_the_old_one() {
    let a = mock("lc-move-a");
    mock("lc-move-b");
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(tmp.path(), &body("lc-move-a", "lc-move-b", "a"))
        .await
        .unwrap();
    let mut c = d.unix().await;
    let key = get(&mut c, true).await.unwrap().active.unwrap();
    d.stop().await;
    // The operator points the store at key b.
    let moved = body("lc-move-a", "lc-move-b", "b");
    let d = Daemon::start_in(tmp.path(), &moved).await.unwrap();
    let mut c = d.unix().await;
    let st = status(&mut c).await;
    assert_eq!((st.key.as_str(), st.configured_key.as_str()), ("a", "b"));
    assert!(st.needs_rewrap);
    assert_eq!(
        get(&mut c, false).await.unwrap().active.unwrap(),
        key,
        "still opens through a"
    );
    assert_eq!(rewrap(&mut c, false).await.unwrap(), 1);
    let st = status(&mut c).await;
    assert_eq!(st.key, "b");
    assert!(!st.needs_rewrap, "{}", st.detail);
    d.stop().await;
    // Key a is destroyed: the store no longer needs it.
    a.destroy();
    let d = Daemon::start_in(tmp.path(), &moved).await.unwrap();
    let mut c = d.unix().await;
    assert_eq!(get(&mut c, false).await.unwrap().active.unwrap(), key);
    d.stop().await;
}

#[tokio::test]
async fn a_move_whose_old_key_is_revoked_fails_closed() {
    let a = mock("lc-stuck-a");
    mock("lc-stuck-b");
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(tmp.path(), &body("lc-stuck-a", "lc-stuck-b", "a"))
        .await
        .unwrap();
    let mut c = d.unix().await;
    get(&mut c, true).await.unwrap();
    d.stop().await;
    a.revoke();
    let d = Daemon::start_in(tmp.path(), &body("lc-stuck-a", "lc-stuck-b", "b"))
        .await
        .unwrap();
    let mut c = d.unix().await;
    let e = rewrap(&mut c, false).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("REVOKED"), "{}", e.message());
    let e = get(&mut c, false).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(status(&mut c).await.key, "a", "the file is untouched");
    a.restore_access();
    d.stop().await;
}

#[tokio::test]
async fn rewrap_key_moves_a_blob_without_the_plaintext_leaving() {
    let m = mock("lc-rk-a");
    mock("lc-rk-b");
    let d = Daemon::start(&body("lc-rk-a", "lc-rk-b", "a")).await;
    let mut c = d.unix().await;
    let ctx = HashMap::from([("backup".to_string(), "b1".to_string())]);
    let w = c
        .wrap_key(WrapKeyRequest {
            key: "a".into(),
            plaintext: b"data key".to_vec(),
            context: ctx.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.key_version, "1");
    m.rotate();
    let same = c
        .rewrap_key(RewrapKeyRequest {
            wrapped: w.wrapped.clone(),
            context: ctx.clone(),
            key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((same.key.as_str(), same.key_version.as_str()), ("a", "2"));
    let other = c
        .rewrap_key(RewrapKeyRequest {
            wrapped: w.wrapped.clone(),
            context: ctx.clone(),
            key: "b".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other.key, "b");
    for blob in [same.wrapped, other.wrapped] {
        let out = c
            .unwrap_key(UnwrapKeyRequest {
                wrapped: blob,
                context: ctx.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(out.plaintext, b"data key");
    }
    // The context still binds: a rewrap with another context does not authenticate.
    let e = c
        .rewrap_key(RewrapKeyRequest {
            wrapped: w.wrapped,
            context: HashMap::new(),
            key: "b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    d.stop().await;
}

#[tokio::test]
async fn rewrap_key_needs_unwrap_on_the_source_and_wrap_on_the_target() {
    mock("lc-rkp-a");
    mock("lc-rkp-b");
    let narrow = format!(
        "[keys.a]\nuris = [\"mock://lc-rkp-a\"]\n[keys.b]\nuris = [\"mock://lc-rkp-b\"]\n[[policy]]\npeer = \"uid:{0}\"\nallow = [\"WrapKey\", \"UnwrapKey\"]\nkeys = [\"a\"]\n[[policy]]\npeer = \"uid:{0}\"\nallow = [\"UnwrapKey\"]\nkeys = [\"b\"]\n",
        my_uid()
    );
    let d = Daemon::start(&narrow).await;
    let mut c = d.unix().await;
    let w = c
        .wrap_key(WrapKeyRequest {
            key: "a".into(),
            plaintext: b"dk".to_vec(),
            context: HashMap::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let e = c
        .rewrap_key(RewrapKeyRequest {
            wrapped: w.wrapped.clone(),
            context: HashMap::new(),
            key: "b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "no WrapKey on b: {e:?}");
    c.rewrap_key(RewrapKeyRequest {
        wrapped: w.wrapped,
        context: HashMap::new(),
        key: String::new(),
    })
    .await
    .expect("UnwrapKey and WrapKey on a");
    d.stop().await;
}

#[tokio::test]
async fn watchers_see_every_change_with_a_growing_epoch_and_end_at_shutdown() {
    let m = mock("lc-watch");
    mock("lc-watch-b");
    let d = Daemon::start(&body("lc-watch", "lc-watch-b", "a")).await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "a", KeyState::Active).await;
    let mut stream = c
        .watch_revoke_status(RevokeStatusRequest { key: "a".into() })
        .await
        .unwrap()
        .into_inner();
    let first = next_event(&mut stream).await.expect("the current state");
    assert_eq!(first.keys.len(), 1);
    assert_eq!(first.keys[0].state, KeyState::Active as i32);
    m.disable();
    let ev = next_event(&mut stream).await.expect("the change");
    assert!(ev.epoch > first.epoch);
    assert_eq!(ev.keys[0].state, KeyState::Disabled as i32);
    m.enable();
    let back = next_event(&mut stream).await.expect("the change back");
    assert!(back.epoch > ev.epoch);
    assert_eq!(back.keys[0].state, KeyState::Active as i32);
    // A watcher does not hold the drain: the stream ends when the daemon stops.
    must_return("stop with a watcher open", Duration::from_secs(5), d.stop()).await;
    let end = must_return("the stream's end", Duration::from_secs(5), stream.message()).await;
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}

async fn next_event(
    s: &mut tonic::Streaming<kms_broker_client::pb::RevokeStatusEvent>,
) -> Option<kms_broker_client::pb::RevokeStatusEvent> {
    must_return("the next watch event", Duration::from_secs(5), s.message())
        .await
        .unwrap()
}
