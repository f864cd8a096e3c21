//! Availability (issue 8) through the daemon: identical unwraps coalesced into one KMS
//! call, a bounded cache purged on revocation, health that tells the truth, store keys
//! pre-warmed at start, and faster polls while a key is degraded.

use std::collections::HashMap;
use std::time::Duration;

use kms_broker::backend::mock::{mock, MockFault};
use kms_broker_client::pb::{GetStoreKeyRequest, KeyState, UnwrapKeyRequest, WrapKeyRequest};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::common::{allow_me_everything, must_return, wait_for_state, Client, Daemon};

fn body(name: &str, extra: &str) -> String {
    format!(
        "[keys.k]\nuris = [\"mock://{name}\"]\n[stores.s1]\nkey = \"k\"\n[revocation]\npoll_interval = \"200ms\"\n[kms]\nattempt_timeout = \"5s\"\ndeadline = \"10s\"\nmax_attempts = 1\n{extra}\n{}",
        allow_me_everything()
    )
}

async fn wrap(c: &mut Client) -> Vec<u8> {
    c.wrap_key(WrapKeyRequest {
        key: "k".into(),
        plaintext: b"data key".to_vec(),
        context: HashMap::from([("t".into(), "1".into())]),
    })
    .await
    .unwrap()
    .into_inner()
    .wrapped
}

async fn unwrap(c: &mut Client, blob: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    c.unwrap_key(UnwrapKeyRequest {
        wrapped: blob.to_vec(),
        context: HashMap::from([("t".into(), "1".into())]),
    })
    .await
    .map(|r| std::mem::take(&mut r.into_inner().plaintext))
}

async fn health(d: &Daemon, service: &str) -> i32 {
    let mut h = HealthClient::new(d.unix_channel().await);
    h.check(HealthCheckRequest {
        service: service.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_unwraps_make_one_kms_call() {
    let m = mock("av-coalesce");
    let d = Daemon::start(&body("av-coalesce", "[cache]\nmax_age = \"0s\"")).await;
    let mut c = d.unix().await;
    let blob = wrap(&mut c).await;
    // Long enough that all 100 calls arrive while the first is at the KMS, even on a
    // loaded machine: a call arriving after it ends would (rightly) start another.
    m.set_latency(Duration::from_secs(2));
    let before = m.calls().decrypt;
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let (mut c, blob) = (c.clone(), blob.clone());
            tokio::spawn(async move { unwrap(&mut c, &blob).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), b"data key");
    }
    assert_eq!(
        m.calls().decrypt,
        before + 1,
        "one KMS call for 100 callers"
    );
    // With the cache off, a later call asks the KMS again.
    unwrap(&mut c, &blob).await.unwrap();
    assert_eq!(m.calls().decrypt, before + 2);
    m.set_latency(Duration::ZERO);
    d.stop().await;
}

#[tokio::test]
async fn the_cache_expires_and_is_purged_on_revocation() {
    let m = mock("av-cache");
    let d = Daemon::start(&body("av-cache", "[cache]\nmax_age = \"1s\"")).await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "k", KeyState::Active).await;
    let blob = wrap(&mut c).await;
    let before = m.calls().decrypt;
    unwrap(&mut c, &blob).await.unwrap();
    unwrap(&mut c, &blob).await.unwrap();
    assert_eq!(m.calls().decrypt, before + 1, "the second is a hit");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    unwrap(&mut c, &blob).await.unwrap();
    assert_eq!(
        m.calls().decrypt,
        before + 2,
        "max_age forces a new KMS call"
    );
    // Disabled at the KMS: the cached plaintext is not handed out.
    m.disable();
    wait_for_state(&mut c, "k", KeyState::Disabled).await;
    let e = unwrap(&mut c, &blob).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    m.enable();
    wait_for_state(&mut c, "k", KeyState::Active).await;
    unwrap(&mut c, &blob).await.unwrap();
    assert_eq!(
        m.calls().decrypt,
        before + 3,
        "re-enabled: asked the KMS afresh"
    );
    d.stop().await;
}

#[tokio::test]
async fn health_follows_the_store_keys_and_liveness_never_does() {
    let m = mock("av-health");
    let d = Daemon::start(&body("av-health", "")).await;
    let mut c = d.unix().await;
    c.get_store_key(GetStoreKeyRequest {
        store_id: "s1".into(),
        create: true,
    })
    .await
    .unwrap();
    let wait_for = |want: ServingStatus| {
        let d = &d;
        async move {
            must_return("health to change", Duration::from_secs(5), async {
                while health(d, "kmsbroker.v1.KeyBroker").await != want as i32 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await
        }
    };
    wait_for(ServingStatus::Serving).await;
    m.disable();
    wait_for(ServingStatus::NotServing).await;
    assert_eq!(
        health(&d, "").await,
        ServingStatus::Serving as i32,
        "liveness"
    );
    m.enable();
    wait_for(ServingStatus::Serving).await;
    d.stop().await;
}

#[tokio::test]
async fn store_keys_are_pre_warmed_at_start() {
    let m = mock("av-prewarm");
    let d = Daemon::start(&body("av-prewarm", "")).await;
    let mut c = d.unix().await;
    c.get_store_key(GetStoreKeyRequest {
        store_id: "s1".into(),
        create: true,
    })
    .await
    .unwrap();
    let before = m.calls().decrypt;
    let d = d.restart().await;
    // No call from us: the daemon unwraps the key by itself.
    must_return("the pre-warm", Duration::from_secs(5), async {
        while m.calls().decrypt == before {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let mut c = d.unix().await;
    c.get_store_key(GetStoreKeyRequest {
        store_id: "s1".into(),
        create: false,
    })
    .await
    .unwrap();
    assert_eq!(
        m.calls().decrypt,
        before + 1,
        "served from the pre-warmed key"
    );
    d.stop().await;
}

#[tokio::test]
async fn a_degraded_key_is_polled_faster() {
    let m = mock("av-degraded");
    let d = Daemon::start(&body("av-degraded", "").replace(
        "poll_interval = \"200ms\"",
        "poll_interval = \"1h\"\ndegraded_poll_interval = \"100ms\"",
    ))
    .await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "k", KeyState::Active).await;
    let checks = m.calls().check;
    // Healthy: the next check is an hour away. A real call sees the KMS fail...
    m.set_fault(Some(MockFault::Unavailable));
    let blob = vec![0u8; 8];
    let _ = unwrap(&mut c, &blob).await;
    let _ = c
        .wrap_key(WrapKeyRequest {
            key: "k".into(),
            plaintext: b"x".to_vec(),
            context: HashMap::new(),
        })
        .await;
    wait_for_state(&mut c, "k", KeyState::Unreachable).await;
    m.set_fault(None);
    // ...and the degraded interval brings the next check (and the recovery) in well under
    // the hour.
    must_return("the recovery check", Duration::from_secs(10), async {
        wait_for_state(&mut c, "k", KeyState::Active).await
    })
    .await;
    assert!(m.calls().check > checks);
    d.stop().await;
}
