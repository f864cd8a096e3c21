//! Key states: the poller, handouts refused on revocation, the unreachable grace period.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kms_broker::backend::mock::{mock, MockFault};
use kms_broker_client::pb::{
    GetStoreKeyRequest, KeyState, RevokeStatusRequest, UnwrapKeyRequest, WrapKeyRequest,
};
use tonic::Code;

use crate::common::{allow_me_everything, wait_for_state, wait_for_state_within, Daemon};

const POLL: Duration = Duration::from_millis(300);

fn body(name: &str, grace: &str) -> String {
    format!(
        "[keys.k]\nuris = [\"mock://{name}\"]\n[stores.s1]\nkey = \"k\"\n[revocation]\npoll_interval = \"300ms\"\ngrace_period = \"{grace}\"\n[kms]\nattempt_timeout = \"200ms\"\ndeadline = \"600ms\"\nmax_attempts = 2\n{}",
        allow_me_everything()
    )
}

fn store(create: bool) -> GetStoreKeyRequest {
    GetStoreKeyRequest {
        store_id: "s1".into(),
        create,
    }
}

#[tokio::test]
async fn disable_is_seen_within_a_poll_and_refuses_handouts_then_enable_restores() {
    let m = mock("rv-disable");
    let d = Daemon::start(&body("rv-disable", "15m")).await;
    let mut c = d.unix().await;
    let st = wait_for_state(&mut c, "k", KeyState::Active).await;
    assert!(st.checked_at.is_some());
    assert_eq!(st.uris.len(), 1);
    assert_eq!(st.uris[0].uri, "mock://rv-disable");
    let held = c
        .get_store_key(store(true))
        .await
        .unwrap()
        .into_inner()
        .active
        .unwrap();
    let w = c
        .wrap_key(WrapKeyRequest {
            key: "k".into(),
            plaintext: b"dk".to_vec(),
            context: HashMap::new(),
        })
        .await
        .unwrap()
        .into_inner();

    // Disabled at the KMS: the poller sees it within poll + 1 s, with no call from us.
    let checks = m.calls().check;
    m.disable();
    let t = Instant::now();
    let st = wait_for_state_within(
        &mut c,
        "k",
        KeyState::Disabled,
        POLL + Duration::from_secs(1),
    )
    .await;
    assert!(t.elapsed() <= POLL + Duration::from_secs(1));
    assert!(
        m.calls().check > checks,
        "the poller, not a request, found it"
    );
    assert_eq!(st.uris[0].state, KeyState::Disabled as i32);

    // The daemon still held the store key in memory: it must not hand it out.
    let e = c.get_store_key(store(false)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("DISABLED"), "{}", e.message());
    let e = c
        .unwrap_key(UnwrapKeyRequest {
            wrapped: w.wrapped.clone(),
            context: HashMap::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = c
        .wrap_key(WrapKeyRequest {
            key: "k".into(),
            plaintext: b"dk".to_vec(),
            context: HashMap::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // Re-enabled: ACTIVE again, and the same store key comes back (unwrapped anew).
    m.enable();
    wait_for_state(&mut c, "k", KeyState::Active).await;
    let again = c
        .get_store_key(store(false))
        .await
        .unwrap()
        .into_inner()
        .active
        .unwrap();
    assert_eq!(again.key, held.key);
    c.unwrap_key(UnwrapKeyRequest {
        wrapped: w.wrapped,
        context: HashMap::new(),
    })
    .await
    .unwrap();
    d.stop().await;
}

#[tokio::test]
async fn revoked_and_destroyed_are_reported_and_refused() {
    let m = mock("rv-revoke");
    let d = Daemon::start(&body("rv-revoke", "15m")).await;
    let mut c = d.unix().await;
    c.get_store_key(store(true)).await.unwrap();
    m.revoke();
    wait_for_state(&mut c, "k", KeyState::Revoked).await;
    let e = c.get_store_key(store(false)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("REVOKED"), "{}", e.message());
    m.restore_access();
    m.destroy();
    wait_for_state(&mut c, "k", KeyState::Destroyed).await;
    let e = c.get_store_key(store(false)).await.unwrap_err();
    assert!(e.message().contains("DESTROYED"), "{}", e.message());
    d.stop().await;
}

#[tokio::test]
async fn unreachable_kms_is_unavailable_but_held_keys_have_grace() {
    let m = mock("rv-grace");
    let d = Daemon::start(&body("rv-grace", "15m")).await;
    let mut c = d.unix().await;
    let held = c
        .get_store_key(store(true))
        .await
        .unwrap()
        .into_inner()
        .active
        .unwrap();
    m.set_fault(Some(MockFault::Unavailable));
    wait_for_state(&mut c, "k", KeyState::Unreachable).await;
    // Anything that needs the KMS fails UNAVAILABLE…
    let e = c
        .wrap_key(WrapKeyRequest {
            key: "k".into(),
            plaintext: b"dk".to_vec(),
            context: HashMap::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // …but the store key already held is still handed out within the grace period.
    let again = c
        .get_store_key(store(false))
        .await
        .unwrap()
        .into_inner()
        .active
        .unwrap();
    assert_eq!(again.key, held.key);
    // Throttling is UNAVAILABLE too.
    m.set_fault(Some(MockFault::Throttled));
    let e = c
        .wrap_key(WrapKeyRequest {
            key: "k".into(),
            plaintext: b"dk".to_vec(),
            context: HashMap::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    // A fresh start with the KMS down hands out nothing.
    let d = d.restart().await;
    let mut c = d.unix().await;
    let e = c.get_store_key(store(false)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    m.set_fault(None);
    wait_for_state(&mut c, "k", KeyState::Active).await;
    let back = c
        .get_store_key(store(false))
        .await
        .unwrap()
        .into_inner()
        .active
        .unwrap();
    assert_eq!(back.key, held.key);
    d.stop().await;
}

#[tokio::test]
async fn zero_grace_refuses_held_keys_while_unreachable() {
    let m = mock("rv-nograce");
    let d = Daemon::start(&body("rv-nograce", "0s")).await;
    let mut c = d.unix().await;
    c.get_store_key(store(true)).await.unwrap();
    m.set_fault(Some(MockFault::Unavailable));
    wait_for_state(&mut c, "k", KeyState::Unreachable).await;
    let e = c.get_store_key(store(false)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    m.set_fault(None);
    d.stop().await;
}

#[tokio::test]
async fn revoke_status_for_unknown_and_all_keys() {
    mock("rv-list");
    let d = Daemon::start(&body("rv-list", "15m")).await;
    let mut c = d.unix().await;
    let e = c
        .revoke_status(RevokeStatusRequest { key: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let all = c
        .revoke_status(RevokeStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.keys.len(), 1);
    d.stop().await;
}

/// Two keys over one KMS key: a revocation that a call through one of them sees refuses
/// the other at once, without waiting for a poll. Before, each key kept its own state for
/// the same KMS key, so the store's held key was handed out until the next poll (here an
/// hour away) although the KMS had already refused the backup key's unwrap.
#[tokio::test]
async fn a_revocation_seen_through_one_key_refuses_every_key_over_that_kms_key() {
    let m = mock("rv-shared");
    let d = Daemon::start(&format!(
        "[keys.backup]\nuris = [\"mock://rv-shared\"]\n[keys.store]\nuris = [\"mock://rv-shared\"]\n\
         [stores.s1]\nkey = \"store\"\n[revocation]\npoll_interval = \"1h\"\ngrace_period = \"15m\"\n{}",
        allow_me_everything()
    ))
    .await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "backup", KeyState::Active).await;
    wait_for_state(&mut c, "store", KeyState::Active).await;
    assert_eq!(
        m.calls().check,
        1,
        "one KMS key, one status check per poll, however many keys list it"
    );
    c.get_store_key(store(true))
        .await
        .expect("store key created");
    let w = c
        .wrap_key(WrapKeyRequest {
            key: "backup".into(),
            plaintext: b"backup data key".to_vec(),
            context: HashMap::new(),
        })
        .await
        .unwrap()
        .into_inner();

    m.revoke();
    let e = c
        .unwrap_key(UnwrapKeyRequest {
            wrapped: w.wrapped,
            context: HashMap::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = c.get_store_key(store(false)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("REVOKED"), "{}", e.message());
    let st = c
        .revoke_status(RevokeStatusRequest {
            key: "store".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.keys[0].state, KeyState::Revoked as i32, "{st:?}");
}
