//! Start-up: `wait_ready`, and the retries every call gets while the daemon (or its KMS)
//! comes up, against the real daemon with the mock KMS.

mod common;

use std::time::Duration;

use common::{returns, Setup, ALL};
use kms_broker::backend::mock::{mock, MockFault};
use kms_broker_client::{ClientError, Code};

#[tokio::test]
async fn wait_ready_waits_for_a_daemon_that_starts_late() {
    let t = Setup::new("ready-late");
    mock(&t.mock);
    let client = t.client(Duration::from_secs(60)).await;
    let ready = tokio::spawn(async move {
        client.wait_ready().await?;
        // Every call gets start-up retries, not only GetStoreKey: a wrap issued together
        // with the daemon's start is served.
        client.wrap_key("k1", b"data key", [("a", "b")]).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!ready.is_finished(), "nothing listens yet");
    let daemon = t.start(ALL).await;
    let wrapped = returns(ready)
        .await
        .expect("task")
        .expect("ready, then wrapped");
    assert_eq!(wrapped.key, "k1");
    daemon.stop().await;
}

#[tokio::test]
async fn wait_ready_gives_up_at_the_deadline_while_the_key_is_disabled() {
    let t = Setup::new("ready-disabled");
    let kms = mock(&t.mock);
    let daemon = t.start(ALL).await;
    // A store key the node needs, then the key is switched off.
    let setup = t.client(Duration::from_secs(60)).await;
    setup.get_store_key("s1", true).await.expect("store key");
    setup
        .wait_ready()
        .await
        .expect("serving while the key is usable");
    kms.disable();
    returns(async {
        while setup.get_store_key("s1", false).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let client = t.client(Duration::from_millis(800)).await;
    let err = returns(client.wait_ready()).await.unwrap_err();
    // The daemon answers, but does not serve keys: UNAVAILABLE, naming the health status.
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.to_string().contains("NOT_SERVING"), "{err}");
    daemon.stop().await;
}

#[tokio::test]
async fn an_unwrap_is_retried_while_the_kms_is_unavailable_but_a_wrap_is_not() {
    let t = Setup::new("retry-kinds");
    let kms = mock(&t.mock);
    // One quick KMS attempt per call, so the daemon answers UNAVAILABLE at once.
    let kms_policy = "[kms]\nattempt_timeout = \"1s\"\ndeadline = \"1s\"\nmax_attempts = 1\n";
    let daemon = t.start_with(&t.config(ALL, "", kms_policy)).await;
    let opts = kms_broker_client::ClientOptions {
        daemon_kms_deadline: Duration::from_secs(1),
        ..common::fast_options(Duration::from_secs(60))
    };
    let client = kms_broker_client::Client::connect(&t.endpoint(), opts)
        .await
        .expect("connect");
    let wrapped = client
        .wrap_key("k1", b"data key", [("a", "b")])
        .await
        .expect("wrap");

    kms.set_fault(Some(MockFault::Unavailable));
    kms.reset_calls();
    // WrapKey reached the daemon, which answered UNAVAILABLE: the caller decides.
    let err = returns(client.wrap_key("k1", b"other", [("a", "b")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(kms.calls().encrypt, 1, "not retried by the client");

    // UnwrapKey is idempotent: retried until the KMS answers.
    let c = client.clone();
    let blob = wrapped.wrapped.clone();
    let unwrap = tokio::spawn(async move { c.unwrap_key(&blob, [("a", "b")]).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!unwrap.is_finished(), "UNAVAILABLE should be retried");
    kms.set_fault(None);
    let plain = returns(unwrap).await.expect("task").expect("unwrapped");
    assert_eq!(plain.plaintext.expose(), b"data key");
    daemon.stop().await;
}

#[tokio::test]
async fn a_call_timeout_below_the_kms_deadline_is_refused_at_connect() {
    let t = Setup::new("short-timeout");
    let opts = kms_broker_client::ClientOptions {
        call_timeout: Some(Duration::from_secs(1)),
        ..kms_broker_client::ClientOptions::default()
    };
    let err = kms_broker_client::Client::connect(&t.endpoint(), opts)
        .await
        .err();
    assert!(matches!(err, Some(ClientError::Config(_))), "{err:?}");
}
