//! What the per-backend daemon tests (AWS on moto, Cloud KMS on the fake, Vault on OpenBao)
//! share: a daemon whose key `k` (store `s`) lives on the given URIs, with fast polling and
//! short KMS timeouts so state changes show within a second or two.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kms_broker_client::pb::{
    KeyState, RevokeStatusRequest, UnwrapKeyRequest, WrapKeyRequest, WrapKeyResponse,
};
use tonic::Code;

use super::{allow_me_everything, wait_for_state, Client, Daemon};

/// For calls whose outcome carries no credential worth checking.
pub const NO_SECRETS: &[&str] = &[];

/// The config body: key `k` on `uris`, store `s` under it, everything allowed to this uid.
pub fn body(uris: &[&str]) -> String {
    let list = uris
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[keys.k]\nuris = [{list}]\n\n[stores.s]\nkey = \"k\"\n\n[revocation]\npoll_interval = \"300ms\"\ngrace_period = \"0s\"\n\n\
         [kms]\nattempt_timeout = \"1s\"\ndeadline = \"2s\"\nmax_attempts = 2\n{}",
        allow_me_everything()
    )
}

/// Starts the daemon on `uris` and waits until key `k` is ACTIVE.
pub async fn start(uris: &[&str]) -> (Daemon, Client) {
    let d = Daemon::start(&body(uris)).await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "k", KeyState::Active).await;
    (d, c)
}

pub fn ctx() -> HashMap<String, String> {
    HashMap::from([("store".to_owned(), "s1".to_owned())])
}

pub async fn wrap(c: &mut Client, pt: &[u8]) -> Result<WrapKeyResponse, tonic::Status> {
    c.wrap_key(WrapKeyRequest {
        key: "k".into(),
        plaintext: pt.to_vec(),
        context: ctx(),
    })
    .await
    .map(|r| r.into_inner())
}

pub async fn unwrap(c: &mut Client, wrapped: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    c.unwrap_key(UnwrapKeyRequest {
        wrapped: wrapped.to_vec(),
        context: ctx(),
    })
    .await
    .map(|r| r.into_inner().plaintext)
}

/// The failure's code and message, after checking the message shows none of `secrets`.
pub fn code<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    secrets: &[impl AsRef<str>],
) -> (Code, String) {
    let s = r.expect_err("should fail");
    let m = s.message().to_owned();
    for secret in secrets {
        assert!(!m.contains(secret.as_ref()), "a secret leaked: {m}");
    }
    (s.code(), m)
}

/// Every status the daemon shows, as text, checked free of `secrets`.
pub async fn status_text(c: &mut Client, secrets: &[impl AsRef<str>]) -> String {
    let all = c
        .revoke_status(RevokeStatusRequest { key: String::new() })
        .await
        .expect("status")
        .into_inner();
    let text = format!("{all:?}");
    for secret in secrets {
        assert!(!text.contains(secret.as_ref()), "a secret leaked: {text}");
    }
    text
}

/// Polls RevokeStatus until key `k`'s URI starting with `prefix` is in state `want`, while
/// the key as a whole stays ACTIVE (the other URI carries it).
pub async fn wait_for_uri_state(c: &mut Client, prefix: &str, want: KeyState) {
    let start = Instant::now();
    loop {
        let s = wait_for_state(c, "k", KeyState::Active).await;
        let u = s
            .uris
            .iter()
            .find(|u| u.uri.starts_with(prefix))
            .expect("uri listed");
        if u.state == want as i32 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{prefix} never became {want:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A key on `uri` and on `mock://{mock_name}` survives the loss of either: it wraps under
/// both; with the mock disabled, `uri` alone unwraps (and wrapping, which needs every URI, is
/// refused); with the mock back and `uri`'s peer stopped by `kill`, the mock alone unwraps.
/// Returns the first wrap, for backend-specific checks of its versions.
pub async fn survives_the_loss_of_either(
    uri: &str,
    mock_name: &str,
    kill: impl FnOnce(),
) -> WrapKeyResponse {
    use kms_broker::backend::mock::mock;
    let scheme = &uri[..uri.find("://").expect("a URI") + 3];
    let (d, mut c) = start(&[uri, &format!("mock://{mock_name}")]).await;
    let w = wrap(&mut c, b"payload").await.expect("wrap under both");

    mock(mock_name).disable();
    wait_for_uri_state(&mut c, "mock://", KeyState::Disabled).await;
    assert_eq!(
        unwrap(&mut c, &w.wrapped)
            .await
            .unwrap_or_else(|e| panic!("via {scheme}: {e}")),
        b"payload"
    );
    assert_eq!(
        code(wrap(&mut c, b"x").await, NO_SECRETS).0,
        Code::FailedPrecondition
    );

    mock(mock_name).enable();
    wait_for_uri_state(&mut c, "mock://", KeyState::Active).await;
    kill();
    wait_for_uri_state(&mut c, scheme, KeyState::Unreachable).await;
    assert_eq!(
        unwrap(&mut c, &w.wrapped).await.expect("via the mock"),
        b"payload"
    );
    d.stop().await;
    w
}

/// WrapKey and an UnwrapKey of `wrapped` both fail with `want`. Returns their messages,
/// each checked free of `secrets`.
pub async fn both_fail(
    c: &mut Client,
    wrapped: &[u8],
    want: Code,
    secrets: &[impl AsRef<str>],
) -> (String, String) {
    let (wc, wm) = code(wrap(c, b"x").await, secrets);
    assert_eq!(wc, want, "WrapKey: {wm}");
    let (uc, um) = code(unwrap(c, wrapped).await, secrets);
    assert_eq!(uc, want, "UnwrapKey: {um}");
    (wm, um)
}

/// While the key is `state` (DISABLED, REVOKED, DESTROYED), WrapKey and UnwrapKey are both
/// FAILED_PRECONDITION and WrapKey's message names the state.
pub async fn refused_while(
    c: &mut Client,
    wrapped: &[u8],
    state: &str,
    secrets: &[impl AsRef<str>],
) {
    let (wm, _) = both_fail(c, wrapped, Code::FailedPrecondition, secrets).await;
    assert!(wm.contains(state), "{wm}");
}
