//! Any-of-N with a region down: unwraps prefer the URI that answered fastest and hedge to
//! the next; wraps follow the key's `wrap_mode`; missing wraps are added once a URI is back.

use std::collections::HashMap;
use std::time::Duration;

use kms_broker::backend::mock::{mock, MockFault};
use kms_broker_client::pb::{
    GetStoreKeyRequest, KeyState, StoreStatusRequest, UnwrapKeyRequest, WrapKeyRequest,
};
use tonic::Code;

use crate::common::{must_return, my_uid, wait_for_state, Client, Daemon};

fn body(a: &str, b: &str, mode: &str) -> String {
    format!(
        "[keys.k]\nuris = [\"mock://{a}\", \"mock://{b}\"]\nwrap_mode = \"{mode}\"\n[stores.s1]\nkey = \"k\"\n[revocation]\npoll_interval = \"200ms\"\n[kms]\nattempt_timeout = \"20s\"\ndeadline = \"20s\"\nmax_attempts = 1\nhedge_after = \"100ms\"\n[[policy]]\npeer = \"uid:{}\"\nallow = [\"WrapKey\", \"UnwrapKey\", \"GetStoreKey\", \"RevokeStatus\", \"StoreStatus\"]\n",
        my_uid()
    )
}

async fn wrap(c: &mut Client) -> Result<Vec<u8>, tonic::Status> {
    c.wrap_key(WrapKeyRequest {
        key: "k".into(),
        plaintext: b"dk".to_vec(),
        context: HashMap::new(),
    })
    .await
    .map(|r| r.into_inner().wrapped)
}

async fn unwrap(c: &mut Client, blob: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    c.unwrap_key(UnwrapKeyRequest {
        wrapped: blob.to_vec(),
        context: HashMap::new(),
    })
    .await
    .map(|r| std::mem::take(&mut r.into_inner().plaintext))
}

async fn needs_rewrap(c: &mut Client) -> (bool, String) {
    let s = c
        .store_status(StoreStatusRequest {
            store_id: "s1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .stores
        .remove(0);
    (s.needs_rewrap, s.detail)
}

/// A hung region costs one hedge delay, not the KMS deadline, and the next unwrap asks the
/// fast region first.
#[tokio::test]
async fn unwraps_hedge_past_a_hung_region_and_then_prefer_the_fast_one() {
    let (a, b) = (mock("rg-hedge-a"), mock("rg-hedge-b"));
    let d = Daemon::start(&body("rg-hedge-a", "rg-hedge-b", "strict")).await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "k", KeyState::Active).await;
    let blob = wrap(&mut c).await.unwrap();
    // Region a now takes an hour to answer (the deadline is 20 s).
    a.set_latency(Duration::from_secs(3600));
    let (a0, b0) = (a.calls().decrypt, b.calls().decrypt);
    let got = must_return(
        "a hedged unwrap",
        Duration::from_secs(10),
        unwrap(&mut c, &blob),
    )
    .await;
    assert_eq!(got.unwrap(), b"dk");
    assert_eq!(b.calls().decrypt, b0 + 1, "region b answered");
    let asked_a = a.calls().decrypt - a0;
    // The next unwrap goes to b first: a is not asked again.
    let got = must_return(
        "a second unwrap",
        Duration::from_secs(10),
        unwrap(&mut c, &blob),
    )
    .await;
    assert_eq!(got.unwrap(), b"dk");
    assert_eq!(
        a.calls().decrypt - a0,
        asked_a,
        "the slow region was not asked again"
    );
    a.set_latency(Duration::ZERO);
    d.stop().await;
}

#[tokio::test]
async fn strict_mode_refuses_to_wrap_with_a_region_down() {
    mock("rg-strict-a");
    let b = mock("rg-strict-b");
    let d = Daemon::start(&body("rg-strict-a", "rg-strict-b", "strict")).await;
    let mut c = d.unix().await;
    let blob = wrap(&mut c).await.unwrap();
    b.set_fault(Some(MockFault::Unavailable));
    let e = wrap(&mut c).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let e = c
        .get_store_key(GetStoreKeyRequest {
            store_id: "s1".into(),
            create: true,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // Unwrapping needs only one region.
    assert_eq!(unwrap(&mut c, &blob).await.unwrap(), b"dk");
    b.set_fault(None);
    d.stop().await;
}

#[tokio::test]
async fn available_mode_wraps_with_a_region_down_and_fills_the_gap_when_it_is_back() {
    let a = mock("rg-avail-a");
    let b = mock("rg-avail-b");
    let d = Daemon::start(&body("rg-avail-a", "rg-avail-b", "available")).await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "k", KeyState::Active).await;
    b.set_fault(Some(MockFault::Unavailable));
    let blob = wrap(&mut c).await.expect("wraps under region a alone");
    let key = c
        .get_store_key(GetStoreKeyRequest {
            store_id: "s1".into(),
            create: true,
        })
        .await
        .expect("the store is created under region a alone")
        .into_inner()
        .active
        .unwrap();
    let (needs, detail) = needs_rewrap(&mut c).await;
    assert!(needs && detail.contains("mock://rg-avail-b"), "{detail}");
    // Region b comes back: the daemon adds the store's missing wrap by itself.
    b.set_fault(None);
    must_return("the gap to be filled", Duration::from_secs(10), async {
        while needs_rewrap(&mut c).await.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // Now region a can go: the store opens through b alone (after a restart, so it is
    // unwrapped again rather than served from memory).
    a.set_fault(Some(MockFault::Unavailable));
    let d = d.restart().await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "k", KeyState::Active).await;
    let again = c
        .get_store_key(GetStoreKeyRequest {
            store_id: "s1".into(),
            create: false,
        })
        .await
        .unwrap()
        .into_inner()
        .active
        .unwrap();
    assert_eq!(again, key);
    // The caller's blob has no wrap under b: it needs region a (RewrapKey would fix it).
    let e = unwrap(&mut c, &blob).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    a.set_fault(None);
    d.stop().await;
}
