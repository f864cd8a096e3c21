//! The client against the real daemon over its Unix socket, with the mock KMS.

mod common;

use std::time::Duration;

use common::{code, returns, Setup, ALL, LONG_STARTUP, RETURNS_WITHIN};
use kms_broker::backend::mock::{mock, MockFault};
use kms_broker_client::{Client, ClientError, Code, KeyState};

#[tokio::test]
async fn wrap_unwrap_round_trip() {
    let t = Setup::new("round-trip");
    let daemon = t.start(ALL).await;
    let client = t.client(LONG_STARTUP).await;

    let ctx = [("table", "users"), ("node", "1")];
    let wrapped = client
        .wrap_key("k1", b"data key bytes", ctx)
        .await
        .expect("wrap");
    assert_eq!(wrapped.key, "k1");
    assert!(!wrapped.wrapped.is_empty());

    let unwrapped = client
        .unwrap_key(&wrapped.wrapped, ctx)
        .await
        .expect("unwrap");
    assert_eq!(unwrapped.plaintext.expose(), b"data key bytes");
    assert_eq!(unwrapped.key, "k1");
    let debug = format!("{unwrapped:?}");
    assert!(
        debug.contains("REDACTED") && !debug.contains("data key"),
        "{debug}"
    );

    // The context is bound: another one does not authenticate.
    let other = client
        .unwrap_key(&wrapped.wrapped, [("table", "orders")])
        .await;
    assert_eq!(code(other), Code::InvalidArgument);
    // A key name that is not configured.
    let unknown = client.wrap_key("nope", b"x", [("a", "b")]).await;
    assert_eq!(code(unknown), Code::NotFound);

    let states = client
        .revoke_status(Some("k1"))
        .await
        .expect("revoke status");
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].key, "k1");
    daemon.stop().await;
}

#[tokio::test]
async fn store_key_is_created_once_and_kept_across_restarts() {
    let t = Setup::new("store-key");
    let daemon = t.start(ALL).await;
    let client = t.client(LONG_STARTUP).await;

    let created = client.get_store_key("s1", true).await.expect("create");
    let again = client.get_store_key("s1", false).await.expect("get");
    assert_eq!(created.active.key_id, again.active.key_id);
    assert!(created.active.key.ct_eq(again.active.key.expose()));
    assert_eq!(created.active.algorithm.as_str(), "AES-256");
    let file = created.active.key_file_bytes();
    assert_eq!(file.len(), 64);
    assert_eq!(&file.expose()[..32], &created.active.key_id);

    let debug = format!("{created:?}");
    assert!(debug.contains("REDACTED"), "{debug}");

    let small = client.get_store_key("s2", true).await.expect("create s2");
    assert_eq!(small.active.key.len(), 16);
    assert_ne!(small.active.key_id, created.active.key_id);

    // A restart reads the wrapped key back from the state dir.
    daemon.stop().await;
    let daemon = t.start(ALL).await;
    let after = client
        .get_store_key("s1", false)
        .await
        .expect("get after restart");
    assert_eq!(after.active.key_id, created.active.key_id);
    assert!(after.active.key.ct_eq(created.active.key.expose()));
    daemon.stop().await;
}

#[tokio::test]
async fn keyless_store_without_create_is_not_found() {
    let t = Setup::new("not-found");
    let daemon = t.start(ALL).await;
    let client = t.client(LONG_STARTUP).await;
    assert_eq!(
        code(returns(client.get_store_key("s1", false)).await),
        Code::NotFound
    );
    // A store that is not configured at all.
    assert_eq!(
        code(returns(client.get_store_key("s9", true)).await),
        Code::NotFound
    );
    daemon.stop().await;
}

#[tokio::test]
async fn waits_for_a_daemon_that_starts_late() {
    let t = Setup::new("late-start");
    let client = t.client(Duration::from_secs(30)).await;
    // Nothing listens yet: the call's first attempts fail to connect and are retried.
    let call = tokio::spawn(async move { client.get_store_key("s1", true).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!call.is_finished(), "the call should still be retrying");
    let daemon = t.start(ALL).await;
    let keys = call
        .await
        .expect("task")
        .expect("get_store_key once the daemon listens");
    assert_eq!(keys.active.key.len(), 32);
    daemon.stop().await;
}

#[tokio::test]
async fn unreachable_daemon_fails_with_a_connect_error_at_the_deadline() {
    let t = Setup::new("never-starts");
    let client = t.client(Duration::from_millis(300)).await;
    let err = client.get_store_key("s1", false).await.err();
    assert!(matches!(err, Some(ClientError::Connect { .. })), "{err:?}");
}

#[tokio::test]
async fn waits_while_the_kms_is_unavailable() {
    let t = Setup::new("kms-unavailable");
    let kms = mock(&t.mock);
    kms.set_fault(Some(MockFault::Unavailable));
    // One quick KMS attempt per call, so the daemon answers UNAVAILABLE at once.
    let kms_policy = "[kms]\nattempt_timeout = \"1s\"\ndeadline = \"1s\"\nmax_attempts = 1\n";
    let daemon = t.start_with(&t.config(ALL, "", kms_policy)).await;
    let client = t.client(Duration::from_secs(30)).await;
    let call = tokio::spawn(async move { client.get_store_key("s1", true).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!call.is_finished(), "UNAVAILABLE should be retried");
    kms.set_fault(None);
    let keys = call
        .await
        .expect("task")
        .expect("get_store_key once the KMS answers");
    assert_eq!(keys.active.key.len(), 32);
    daemon.stop().await;
}

#[tokio::test]
async fn permission_denied_is_returned_not_retried() {
    let t = Setup::new("denied");
    let daemon = t.start(&["WrapKey", "UnwrapKey", "RevokeStatus"]).await;
    let client = t.client(LONG_STARTUP).await;
    let res = returns(client.get_store_key("s1", true)).await;
    assert_eq!(code(res), Code::PermissionDenied);
    daemon.stop().await;
}

#[tokio::test]
async fn disabled_key_is_failed_precondition_not_retried() {
    let t = Setup::new("disabled");
    let kms = mock(&t.mock);
    let daemon = t.start(ALL).await;
    let client = t.client(LONG_STARTUP).await;
    let held = client
        .get_store_key("s1", true)
        .await
        .expect("create while enabled");

    kms.disable();
    // Wrapping needs the KMS, which refuses.
    let wrap = returns(client.wrap_key("k1", b"k", [("a", "b")])).await;
    assert_eq!(code(wrap), Code::FailedPrecondition);
    // Once the poller has seen it, held store keys are dropped too: no grace for DISABLED.
    wait_for_state(&client, KeyState::Disabled).await;
    let res = returns(client.get_store_key("s1", false)).await;
    // Typed: the caller matches on the state, not on the message text.
    match &res {
        Err(ClientError::KeyNotUsable { key, state, .. }) => {
            assert_eq!((key.as_str(), *state), ("k1", KeyState::Disabled));
        }
        other => panic!("expected KeyNotUsable, got {other:?}"),
    }
    assert_eq!(code(res), Code::FailedPrecondition);

    kms.enable();
    wait_for_state(&client, KeyState::Active).await;
    let back = client
        .get_store_key("s1", false)
        .await
        .expect("enabled again");
    assert_eq!(back.active.key_id, held.active.key_id);
    daemon.stop().await;
}

async fn wait_for_state(client: &Client, want: KeyState) {
    let poll = async {
        loop {
            let states = client
                .revoke_status(Some("k1"))
                .await
                .expect("revoke status");
            if states.first().map(|s| s.state) == Some(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(RETURNS_WITHIN, poll)
        .await
        .unwrap_or_else(|_| panic!("key never became {want:?}"));
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout() {
    let t = Setup::new("slow");
    let daemon = t.start(ALL).await;
    // The shortest timeout the client accepts, for a daemon that claims to need no time
    // for its KMS: the daemon's KMS then answers later than that (a hung daemon, to the
    // client).
    let opts = kms_broker_client::ClientOptions {
        call_timeout: Some(kms_broker_client::CALL_TIMEOUT_MARGIN),
        daemon_kms_deadline: Duration::ZERO,
        ..common::fast_options(LONG_STARTUP)
    };
    let client = Client::connect(&t.endpoint(), opts).await.expect("connect");
    mock(&t.mock).set_latency(Duration::from_secs(10));
    let err = client.wrap_key("k1", b"k", [("a", "b")]).await.err();
    assert!(matches!(err, Some(ClientError::Timeout(_))), "{err:?}");
    assert_eq!(err.map(|e| e.code()), Some(Code::DeadlineExceeded));
    mock(&t.mock).set_latency(Duration::ZERO);
    daemon.stop().await;
}
