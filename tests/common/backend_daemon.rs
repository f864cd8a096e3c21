//! What the per-backend daemon tests (AWS on moto, Cloud KMS on the fake, Vault on OpenBao)
//! share: a daemon whose key `k` (store `s`) lives on the given URIs, with fast polling and
//! short KMS timeouts so state changes show within a second or two. The key lifecycle
//! (rotation, re-wrap, moving stores, a region stopped) is in `backend_daemon/lifecycle.rs`.

pub mod lifecycle;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kms_broker_client::pb::{
    GetStoreKeyRequest, KeyState, RevokeStatusRequest, UnwrapKeyRequest, WrapKeyRequest,
    WrapKeyResponse,
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

/// [`start`] with an audit trail at `dir/audit/trail.jsonl` (read by [`kms_request_ids`]).
pub async fn start_audited(dir: &std::path::Path, uris: &[&str]) -> (Daemon, Client) {
    std::fs::create_dir(dir.join("audit")).expect("audit dir");
    let body = format!("{}\n[audit]\npath = \"audit/trail.jsonl\"\n", body(uris));
    let d = Daemon::start_in(dir, &body).await.expect("daemon starts");
    let mut c = d.unix().await;
    wait_for_state(&mut c, "k", KeyState::Active).await;
    (d, c)
}

/// The `kms_requests` of each WrapKey and UnwrapKey record in [`start_audited`]'s trail, in
/// order (empty for a record without any).
pub fn kms_request_ids(dir: &std::path::Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(dir.join("audit/trail.jsonl"))
        .expect("the trail")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON record"))
        .filter(|r| matches!(r["op"].as_str(), Some("WrapKey" | "UnwrapKey")))
        .map(|r| {
            r["kms_requests"]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default()
        })
        .collect()
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
    .map(|r| std::mem::take(&mut r.into_inner().plaintext))
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
            start.elapsed() < Duration::from_secs(20),
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

/// Key `k`'s state right now, and each of its URIs' (no waiting: a test that asserts
/// "nothing changed" must not wait for a change to be undone).
pub async fn states_now(c: &mut Client) -> (i32, Vec<i32>) {
    let all = c
        .revoke_status(RevokeStatusRequest { key: "k".into() })
        .await
        .expect("status")
        .into_inner();
    let k = all.keys.into_iter().next().expect("key k");
    (k.state, k.uris.iter().map(|u| u.state).collect())
}

/// Asserts that key `k` and every one of its URIs are ACTIVE now.
pub async fn assert_all_active(c: &mut Client, after: &str) {
    let (key, uris) = states_now(c).await;
    let active = KeyState::Active as i32;
    assert!(
        key == active && uris.iter().all(|s| *s == active),
        "after {after}: key state {key:?}, URI states {uris:?} (ACTIVE is {active})"
    );
}

/// Creates store `s`'s key (so the node holds it) and returns it.
pub async fn hold_store_key(c: &mut Client) -> Vec<u8> {
    store_key(c, true).await.expect("create store key s")
}

/// Store `s`'s active key as GetStoreKey hands it out now.
pub async fn store_key(c: &mut Client, create: bool) -> Result<Vec<u8>, tonic::Status> {
    c.get_store_key(GetStoreKeyRequest {
        store_id: "s".into(),
        create,
    })
    .await
    .map(|r| std::mem::take(&mut r.into_inner().active.expect("an active key").key))
}

/// Where byte `i` of a version-1 envelope lies, for readable failures (`None` if the blob
/// is not a version-1 envelope).
fn region(blob: &[u8], i: usize) -> Option<String> {
    if blob.get(..5)? != b"KMSB\x01" {
        return None;
    }
    let mut at = 5usize;
    let mark = |len: usize, what: String, at: &mut usize| -> Option<Option<String>> {
        let found = (i >= *at && i < *at + len).then_some(what);
        *at += len;
        Some(found)
    };
    let u16_at = |p: usize| -> Option<usize> {
        Some(u16::from_be_bytes(blob.get(p..p + 2)?.try_into().ok()?) as usize)
    };
    if i < 5 {
        return Some("magic/version".into());
    }
    let n = u16_at(at)?;
    for (len, what) in [(2, "key name length"), (n, "key name")] {
        if let Some(w) = mark(len, what.into(), &mut at)? {
            return Some(w);
        }
    }
    let count = *blob.get(at)? as usize;
    if let Some(w) = mark(1, "entry count".into(), &mut at)? {
        return Some(w);
    }
    for e in 0..count {
        let uri = u16_at(at)?;
        for (len, what) in [(2, "uri id length"), (uri, "uri id")] {
            if let Some(w) = mark(len, format!("entry {e} {what}"), &mut at)? {
                return Some(w);
            }
        }
        let ver = u16_at(at)?;
        for (len, what) in [(2, "key version length"), (ver, "key version")] {
            if let Some(w) = mark(len, format!("entry {e} {what}"), &mut at)? {
                return Some(w);
            }
        }
        let ct = u32::from_be_bytes(blob.get(at..at + 4)?.try_into().ok()?) as usize;
        for (len, what) in [(4, "ciphertext length"), (ct, "ciphertext")] {
            if let Some(w) = mark(len, format!("entry {e} {what}"), &mut at)? {
                return Some(w);
            }
        }
    }
    Some("past the end".into())
}

/// Issue 6 item 6, for one backend: every edited byte of a blob fails to unwrap, and none
/// of those failures changes the key's state or the store key the node holds.
///
/// WrapKey a 32-byte data key, then, for EVERY byte position, four edits (flip the low
/// bit, flip the high bit, set 0x00, set 0xFF; an edit that leaves the byte as it was is
/// skipped) are each sent to UnwrapKey, all against the same running daemon and KMS. Each
/// must be refused as not authentic (INVALID_ARGUMENT), naming no configured key
/// (NOT_FOUND) or unusable (FAILED_PRECONDITION): never OK, never a retryable failure.
/// Afterwards the key and its URIs are still ACTIVE, the original blob still unwraps and
/// GetStoreKey still hands out the same store key.
pub async fn every_edited_byte_is_refused(c: &mut Client, secrets: &[impl AsRef<str>]) {
    let held = hold_store_key(c).await;
    let w = wrap(c, &[0x5a; 32]).await.expect("wrap");
    let mut accepted = Vec::new();
    let mut tried = 0usize;
    for i in 0..w.wrapped.len() {
        let orig = w.wrapped[i];
        let mut edits = vec![orig ^ 0x01, orig ^ 0x80, 0x00, 0xff];
        edits.dedup();
        for new in edits.into_iter().filter(|b| *b != orig) {
            let mut edited = w.wrapped.clone();
            edited[i] = new;
            tried += 1;
            let outcome = match unwrap(c, &edited).await {
                Ok(_) => "UNWRAPPED".to_owned(),
                Err(s) => {
                    for secret in secrets {
                        assert!(
                            !s.message().contains(secret.as_ref()),
                            "a secret leaked: {s:?}"
                        );
                    }
                    match s.code() {
                        Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition => {
                            continue
                        }
                        other => format!("{other:?}: {}", s.message()),
                    }
                }
            };
            let at = region(&w.wrapped, i).unwrap_or_default();
            accepted.push(format!(
                "byte {i} ({at}) {orig:#04x}->{new:#04x}: {outcome}"
            ));
        }
    }
    assert!(tried > 3 * w.wrapped.len(), "tried only {tried} edits");
    assert_all_active(c, "every edited blob").await;
    assert_eq!(
        unwrap(c, &w.wrapped).await.expect("the original"),
        [0x5a; 32]
    );
    assert_eq!(store_key(c, false).await.expect("still handed out"), held);
    assert!(
        accepted.is_empty(),
        "{} of {tried} edits were not refused as they must be:\n{}",
        accepted.len(),
        accepted.join("\n")
    );
}
