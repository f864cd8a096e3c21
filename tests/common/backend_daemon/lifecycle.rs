//! The key lifecycle against a real KMS stand-in, through the daemon: config bodies with
//! several keys and a store, the lifecycle RPCs, and the two flows every backend runs the
//! same way (moving a store between keys; any-of-N with one region stopped). The
//! rotation flow differs per KMS (versions or none) and lives in each backend's tests.

use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kms_broker_client::pb::{
    GetStoreKeyRequest, KeyState, RewrapKeyRequest, RewrapRequest, RotateStoreKeyRequest,
    StoreStatus, StoreStatusRequest, WrapKeyRequest, WrapKeyResponse,
};
use tonic::Code;

use super::{code, ctx, store_key, unwrap};
use crate::common::{must_return, my_uid, wait_for_state, Client, Daemon};

/// The store every flow uses (as in [`super::body`]).
pub const STORE: &str = "s";

/// A config body: each key `(name, uris, wrap_mode)`, store `s` under `store_key`, fast
/// polling and short KMS timeouts, and every operation granted to this uid.
pub fn lc_body(keys: &[(&str, &[&str], &str)], store_key: &str) -> String {
    let mut out = String::new();
    for (name, uris, mode) in keys {
        let list = uris
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!(
            "[keys.{name}]\nuris = [{list}]\nwrap_mode = \"{mode}\"\n\n"
        ));
    }
    out.push_str(&format!(
        "[stores.{STORE}]\nkey = \"{store_key}\"\n\n[revocation]\npoll_interval = \"300ms\"\ngrace_period = \"0s\"\n\n\
         [kms]\nattempt_timeout = \"1s\"\ndeadline = \"2s\"\nmax_attempts = 2\nhedge_after = \"200ms\"\n\n\
         [[policy]]\npeer = \"uid:{}\"\nallow = [\"WrapKey\", \"UnwrapKey\", \"GetStoreKey\", \"RevokeStatus\", \
         \"RotateStoreKey\", \"StoreStatus\", \"Rewrap\"]\n",
        my_uid()
    ));
    out
}

/// Starts a daemon on `body` in `dir` (kept across restarts) and waits until every key in
/// `active` is ACTIVE.
pub async fn start_in(dir: &Path, body: &str, active: &[&str]) -> (Daemon, Client) {
    let d = Daemon::start_in(dir, body).await.expect("daemon starts");
    let mut c = d.unix().await;
    for key in active {
        wait_for_state(&mut c, key, KeyState::Active).await;
    }
    (d, c)
}

/// A fresh local key file in `dir`; returns its `file://` URI.
pub fn file_key(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    kms_broker::backend::file::create_key_file(&path).expect("key file");
    format!("file://{}", path.display())
}

/// WrapKey under `key` (context as [`super::wrap`]).
pub async fn wrap_under(
    c: &mut Client,
    key: &str,
    pt: &[u8],
) -> Result<WrapKeyResponse, tonic::Status> {
    c.wrap_key(WrapKeyRequest {
        key: key.into(),
        plaintext: pt.to_vec(),
        context: ctx(),
    })
    .await
    .map(|r| r.into_inner())
}

/// RewrapKey of `wrapped` (context as [`super::wrap`]) under `key` (empty: its own key).
pub async fn rewrap_key(
    c: &mut Client,
    wrapped: &[u8],
    key: &str,
) -> Result<WrapKeyResponse, tonic::Status> {
    c.rewrap_key(RewrapKeyRequest {
        wrapped: wrapped.to_vec(),
        context: ctx(),
        key: key.into(),
    })
    .await
    .map(|r| r.into_inner())
}

/// StoreStatus of store `s`.
pub async fn store_status(c: &mut Client) -> StoreStatus {
    c.store_status(StoreStatusRequest {
        store_id: STORE.into(),
    })
    .await
    .expect("StoreStatus")
    .into_inner()
    .stores
    .pop()
    .expect("store s")
}

/// Rewrap of every store; the number of files that changed (or would).
pub async fn rewrap(c: &mut Client, dry_run: bool) -> Result<u32, tonic::Status> {
    c.rewrap(RewrapRequest {
        store_id: String::new(),
        dry_run,
    })
    .await
    .map(|r| r.into_inner().rewrapped)
}

/// Every key store `s` hands out now (active first, then previous), as (key id, key bytes).
pub async fn all_store_keys(c: &mut Client) -> Result<Vec<(Vec<u8>, Vec<u8>)>, tonic::Status> {
    let r = c
        .get_store_key(GetStoreKeyRequest {
            store_id: STORE.into(),
            create: false,
        })
        .await?
        .into_inner();
    Ok(r.active
        .into_iter()
        .chain(r.previous)
        .map(|mut k| (std::mem::take(&mut k.key_id), std::mem::take(&mut k.key)))
        .collect())
}

/// Creates store `s` and rotates it once, so its file holds two wrapped store keys (a
/// re-wrap must carry both); returns them as [`all_store_keys`] does.
pub async fn two_generations(c: &mut Client) -> Vec<(Vec<u8>, Vec<u8>)> {
    store_key(c, true).await.expect("create store s");
    c.rotate_store_key(RotateStoreKeyRequest {
        store_id: STORE.into(),
    })
    .await
    .expect("RotateStoreKey");
    let keys = all_store_keys(c).await.expect("store keys");
    assert_eq!(keys.len(), 2, "active and previous");
    keys
}

/// Polls StoreStatus until `needs_rewrap` is `want`; a hang guard, not a timing assertion.
pub async fn wait_for_rewrap(c: &mut Client, want: bool, why: &str) -> StoreStatus {
    let start = Instant::now();
    loop {
        let st = store_status(c).await;
        if st.needs_rewrap == want {
            return st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{why}: needs_rewrap stayed {}: {}",
            st.needs_rewrap,
            st.detail
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until `key`'s URI starting with `prefix` is `want`, while `key` itself stays ACTIVE
/// (its other URI carries it).
pub async fn wait_for_key_uri(c: &mut Client, key: &str, prefix: &str, want: KeyState) {
    let start = Instant::now();
    loop {
        let s = wait_for_state(c, key, KeyState::Active).await;
        let u = s.uris.iter().find(|u| u.uri.starts_with(prefix));
        if u.expect("uri listed").state == want as i32 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{key}'s {prefix} never became {want:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops (SIGSTOP) or continues (SIGCONT) process `pid`: a region that stops answering and
/// comes back, for stand-ins that hold their keys only in memory (a kill would lose them).
pub fn pause(pid: u32, paused: bool) {
    let sig = if paused { "-STOP" } else { "-CONT" };
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(ok.success(), "kill {sig} {pid} failed");
}

/// Issue 7, moving a store: from a file key to KMS key `a`, then to KMS key `b` (config
/// change + Rewrap each time); then `retire_a` disables or revokes `a` at the KMS (the key
/// shows `a_state`) and, after a restart (nothing served from memory), the store still
/// opens, through `b`.
pub async fn moves_a_store(
    a: &str,
    b: &str,
    retire_a: impl Future<Output = ()>,
    a_state: KeyState,
) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = file_key(tmp.path(), "f.key");
    let keys: [(&str, &[&str], &str); 3] = [
        ("f", &[&file], "strict"),
        ("a", &[a], "strict"),
        ("b", &[b], "strict"),
    ];
    let all = ["f", "a", "b"];
    let (d, mut c) = start_in(tmp.path(), &lc_body(&keys, "f"), &all).await;
    let held = two_generations(&mut c).await;
    assert_eq!(store_status(&mut c).await.key, "f");
    d.stop().await;

    for (from, to) in [("f", "a"), ("a", "b")] {
        let (d, mut c) = start_in(tmp.path(), &lc_body(&keys, to), &all).await;
        let st = store_status(&mut c).await;
        assert_eq!((st.key.as_str(), st.configured_key.as_str()), (from, to));
        assert!(st.needs_rewrap, "{}", st.detail);
        assert_eq!(
            all_store_keys(&mut c)
                .await
                .expect("opens through the old key"),
            held
        );
        assert_eq!(rewrap(&mut c, true).await.expect("dry run"), 1);
        assert_eq!(
            store_status(&mut c).await.key,
            from,
            "a dry run moves nothing"
        );
        assert_eq!(rewrap(&mut c, false).await.expect("move"), 1);
        let st = store_status(&mut c).await;
        assert_eq!(st.key, to);
        assert!(!st.needs_rewrap, "{}", st.detail);
        assert_eq!(rewrap(&mut c, false).await.expect("again"), 0, "idempotent");
        assert_eq!(all_store_keys(&mut c).await.expect("after the move"), held);
        d.stop().await;
    }

    // Key a goes away at the KMS: the store no longer needs it.
    retire_a.await;
    let (d, mut c) = start_in(tmp.path(), &lc_body(&keys, "b"), &["f", "b"]).await;
    wait_for_state(&mut c, "a", a_state).await;
    assert_eq!(all_store_keys(&mut c).await.expect("opens through b"), held);
    let st = store_status(&mut c).await;
    assert!(st.key == "b" && !st.needs_rewrap, "{st:?}");
    d.stop().await;
}

/// Issue 7, any-of-N: keys `k` (strict) and `ka` (available), each on `uri` and a file key;
/// store `s` under `ka`. With `uri`'s stand-in stopped (`region(false)`), unwraps work
/// through the file key, `k` refuses to wrap (UNAVAILABLE), `ka` wraps and its store shows
/// the gap; once it is back (`region(true)`) the daemon adds the missing wraps by itself,
/// and after the file key leaves `ka` the store opens through the KMS alone.
pub async fn survives_a_stopped_region(uri: &str, region: &mut dyn FnMut(bool)) {
    let scheme = &uri[..uri.find("://").expect("a URI") + 3];
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = file_key(tmp.path(), "f.key");
    let body = lc_body(
        &[
            ("k", &[uri, &file], "strict"),
            ("ka", &[uri, &file], "available"),
        ],
        "ka",
    );
    let (d, mut c) = start_in(tmp.path(), &body, &["k", "ka"]).await;
    let w = wrap_under(&mut c, "k", b"strict blob")
        .await
        .expect("wrap k");
    let wa = wrap_under(&mut c, "ka", b"available blob")
        .await
        .expect("wrap ka");

    region(false);
    wait_for_key_uri(&mut c, "k", scheme, KeyState::Unreachable).await;
    wait_for_key_uri(&mut c, "ka", scheme, KeyState::Unreachable).await;
    let guard = Duration::from_secs(30);
    for (blob, pt) in [
        (&w.wrapped, &b"strict blob"[..]),
        (&wa.wrapped, b"available blob"),
    ] {
        let got = must_return("an unwrap with a region down", guard, unwrap(&mut c, blob)).await;
        assert_eq!(got.expect("through the file key"), pt);
    }
    let strict = must_return("a strict wrap", guard, wrap_under(&mut c, "k", b"x")).await;
    let (wc, wm) = code(strict, super::NO_SECRETS);
    assert_eq!(wc, Code::Unavailable, "strict mode needs every URI: {wm}");
    let gap = must_return("an available wrap", guard, wrap_under(&mut c, "ka", b"gap")).await;
    let gap = gap.expect("available mode wraps under the file key alone");
    let held = must_return("a store created", guard, store_key(&mut c, true))
        .await
        .expect("the store is created under the file key alone");
    let st = store_status(&mut c).await;
    assert!(
        st.needs_rewrap && st.detail.contains(scheme) && st.key_versions.len() == 1,
        "the gap shows: {st:?}"
    );

    region(true);
    let st = wait_for_rewrap(&mut c, false, "the gap is filled without an operator").await;
    assert_eq!(st.key_versions.len(), 2, "{st:?}");
    wrap_under(&mut c, "k", b"x")
        .await
        .expect("strict wraps again");
    // A caller's blob is the caller's to fix: RewrapKey wraps it under every URI again.
    let fixed = rewrap_key(&mut c, &gap.wrapped, "")
        .await
        .expect("RewrapKey");
    d.stop().await;

    // The added wrap is the KMS's own: without the file key, the store opens through it.
    let kms_only = lc_body(
        &[("k", &[uri, &file], "strict"), ("ka", &[uri], "available")],
        "ka",
    );
    let (d, mut c) = start_in(tmp.path(), &kms_only, &["ka"]).await;
    assert_eq!(
        store_key(&mut c, false)
            .await
            .expect("opens through the KMS alone"),
        held
    );
    assert_eq!(
        unwrap(&mut c, &wa.wrapped)
            .await
            .expect("wrapped under both"),
        b"available blob"
    );
    assert_eq!(unwrap(&mut c, &fixed.wrapped).await.expect("fixed"), b"gap");
    let (gc, gm) = code(unwrap(&mut c, &gap.wrapped).await, super::NO_SECRETS);
    assert!(
        gc == Code::InvalidArgument && gm.contains("not configured"),
        "the unfixed blob had only the file key's wrap: {gc:?} {gm}"
    );
    d.stop().await;
}
