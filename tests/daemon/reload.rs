//! Config reload (what SIGHUP runs; `ops/reload.rs` sends the real signal to the binary):
//! a refused config changes nothing, an accepted one applies to connections already open,
//! kept URIs keep their state, and new TLS files apply to new handshakes only.

use std::collections::HashMap;
use std::time::Duration;

use kms_broker::backend::mock::mock;
use kms_broker::certs::{self, Pem};
use kms_broker_client::pb::{
    GetStoreKeyRequest, KeyState, RevokeStatusRequest, UnwrapKeyRequest, WrapKeyRequest,
    WrapKeyResponse,
};
use tonic::Code;

use crate::common::{must_return, my_uid, wait_for_state, Client, Daemon};

fn policy(ops: &[&str]) -> String {
    let ops: Vec<String> = ops.iter().map(|o| format!("{o:?}")).collect();
    format!(
        "[[policy]]\npeer = \"uid:{}\"\nallow = [{}]\n",
        my_uid(),
        ops.join(", ")
    )
}

/// Keys named `names`, each on `mock://<prefix>-<name>`, then `extra`.
fn body(prefix: &str, names: &[&str], extra: &str) -> String {
    let mut b = String::new();
    for n in names {
        b += &format!("[keys.{n}]\nuris = [\"mock://{prefix}-{n}\"]\n");
    }
    b + "[revocation]\npoll_interval = \"1h\"\n" + extra
}

async fn wrap(c: &mut Client, key: &str) -> Result<WrapKeyResponse, tonic::Status> {
    c.wrap_key(WrapKeyRequest {
        key: key.into(),
        plaintext: b"data key".to_vec(),
        context: HashMap::new(),
    })
    .await
    .map(|r| r.into_inner())
}

async fn unwrap(c: &mut Client, wrapped: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    c.unwrap_key(UnwrapKeyRequest {
        wrapped: wrapped.to_vec(),
        context: HashMap::new(),
    })
    .await
    .map(|r| std::mem::take(&mut r.into_inner().plaintext))
}

async fn state(c: &mut Client, key: &str) -> Result<(i32, String), tonic::Status> {
    let r = c
        .revoke_status(RevokeStatusRequest { key: key.into() })
        .await?
        .into_inner();
    Ok((r.keys[0].state, r.keys[0].detail.clone()))
}

#[tokio::test]
async fn a_refused_reload_changes_nothing_and_an_accepted_one_applies_to_open_connections() {
    let a = mock("rl-open-a");
    mock("rl-open-b");
    let narrow = policy(&["WrapKey", "RevokeStatus"]);
    let mut d = Daemon::start(&body("rl-open", &["a"], &narrow)).await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "a", KeyState::Active).await;
    // A stream on this connection must outlive every reload below.
    let mut watch = c
        .watch_revoke_status(RevokeStatusRequest { key: "a".into() })
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut watch).await;
    assert_eq!(first.keys[0].state, KeyState::Active as i32);
    let blob = wrap(&mut c, "a").await.unwrap().wrapped;
    assert_eq!(
        unwrap(&mut c, &blob).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // Each refused: the message says why, and the narrow policy is still the one in force.
    let good = body(
        "rl-open",
        &["a", "b"],
        &policy(&["WrapKey", "UnwrapKey", "RevokeStatus"]),
    );
    let refusals = [
        ("[keys.a\nuris = ", "kms-broker.toml"),
        (
            &*format!("{good}[limits]\nmax_unix_connections = 7\n"),
            "[limits] can only change with a restart",
        ),
        (
            &*good.replace("mock://rl-open-b", "nope://rl-open-b"),
            "keys.b.uris[0]",
        ),
        (
            &*format!("{good}[[policy]]\npeer = \"uid:x\"\nallow = [\"WrapKey\"]\n"),
            "policy",
        ),
    ];
    for (text, why) in refusals {
        let e = d.reload(text).await.expect_err(&format!("refused: {text}"));
        let msg = e.to_string();
        assert!(msg.contains("previous config stays in force"), "{msg}");
        assert!(msg.contains(why), "{why:?} in {msg}");
        assert_eq!(
            unwrap(&mut c, &blob).await.unwrap_err().code(),
            Code::PermissionDenied,
            "after refusing {text:?}"
        );
        assert_eq!(state(&mut c, "b").await.unwrap_err().code(), Code::NotFound);
    }

    let summary = d.reload(&good).await.expect("accepted");
    assert!(summary.contains("added b"), "{summary}");
    // The same connection: the new policy at its next call, and the new key checked at once
    // (the poll interval is an hour).
    assert_eq!(unwrap(&mut c, &blob).await.unwrap(), b"data key");
    wait_for_state(&mut c, "b", KeyState::Active).await;
    wrap(&mut c, "b").await.expect("the new key wraps");
    // The stream opened before the reloads still delivers.
    a.disable();
    // (The poll interval is an hour: a refused Encrypt is what reports it.)
    assert_eq!(
        wrap(&mut c, "a").await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    let ev = next(&mut watch).await;
    assert_eq!(ev.keys[0].state, KeyState::Disabled as i32);
    assert!(ev.epoch > first.epoch);

    // Removing a key and narrowing the policy again also apply at once.
    d.reload(&body("rl-open", &["a"], &narrow)).await.unwrap();
    assert_eq!(state(&mut c, "b").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        unwrap(&mut c, &blob).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    d.stop().await;
}

#[tokio::test]
async fn a_kept_uri_keeps_its_revocation_through_a_reload() {
    let a = mock("rl-kept-a");
    mock("rl-kept-b");
    let all = policy(&["WrapKey", "UnwrapKey", "RevokeStatus"]);
    let mut d = Daemon::start(&body("rl-kept", &["a"], &all)).await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "a", KeyState::Active).await;
    let blob = wrap(&mut c, "a").await.unwrap().wrapped;
    a.revoke();
    // Slow answers from now on: the check that a reload starts is still running when we
    // look, so what we see is what the reload kept, not what that check found.
    a.set_latency(Duration::from_secs(2));
    wait_revoked(&mut c).await;

    d.reload(&body("rl-kept", &["a", "b"], &all)).await.unwrap();
    let (st, detail) = state(&mut c, "a").await.unwrap();
    assert_eq!(st, KeyState::Revoked as i32, "{detail}");
    assert_ne!(detail, "not checked yet");
    assert_eq!(
        unwrap(&mut c, &blob).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        wrap(&mut c, "a").await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    a.set_latency(Duration::ZERO);
    d.stop().await;
}

/// A store's held key is gated by the URIs of the key it was unwrapped under. A reload
/// that keeps those URIs keeps it held (no KMS call); one that swaps them drops it, so the
/// CMEK that really protects the store file is asked again. Before, the held key was still
/// handed out after that CMEK was revoked, as the daemon no longer polled it.
#[tokio::test]
async fn a_reload_that_swaps_a_stores_kms_key_drops_what_it_held() {
    let a = mock("rl-swap-a");
    mock("rl-swap-b");
    let all = policy(&["GetStoreKey", "RevokeStatus"]);
    let store = |uri: &str, extra: &str| {
        format!(
            "[keys.k]\nuris = [\"mock://{uri}\"]\n{extra}[stores.s1]\nkey = \"k\"\n\
             [revocation]\npoll_interval = \"1h\"\n{all}"
        )
    };
    let get = |create: bool| GetStoreKeyRequest {
        store_id: "s1".into(),
        create,
    };
    let mut d = Daemon::start(&store("rl-swap-a", "")).await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "k", KeyState::Active).await;
    let created = c.get_store_key(get(true)).await.unwrap().into_inner();
    let key_id = created.active.as_ref().unwrap().key_id.clone();

    // The same URIs (another key added): still held, no KMS call to hand it out.
    let other = "[keys.other]\nuris = [\"mock://rl-swap-b\"]\n";
    d.reload(&store("rl-swap-a", other)).await.unwrap();
    let decrypts = a.calls().decrypt;
    let held = c.get_store_key(get(false)).await.unwrap().into_inner();
    assert_eq!(held.active.as_ref().unwrap().key_id, key_id);
    assert_eq!(a.calls().decrypt, decrypts, "handed out from memory");

    // Swapped: the store file is still wrapped under rl-swap-a, which the customer revokes.
    d.reload(&store("rl-swap-b", "")).await.unwrap();
    a.revoke();
    let e = c.get_store_key(get(false)).await.unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(e.message().contains("no longer lists"), "{}", e.message());
    assert_eq!(
        a.calls().decrypt,
        decrypts,
        "rl-swap-a is no longer the daemon's to ask"
    );
    d.stop().await;
}

async fn wait_revoked(c: &mut Client) {
    must_return("REVOKED is seen", Duration::from_secs(20), async {
        loop {
            let _ = wrap(c, "a").await;
            if state(c, "a").await.unwrap().0 == KeyState::Revoked as i32 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test]
async fn new_tls_files_apply_to_new_handshakes_and_open_sessions_go_on() {
    mock("rl-tls-a");
    let ops = "[[policy]]\npeer = \"cert:operator\"\nallow = [\"RevokeStatus\"]\n";
    let mut d = Daemon::start(&body("rl-tls", &["a"], ops)).await;
    let mut open = d.tls("operator").await;
    wait_for_state(&mut open, "a", KeyState::Active).await;

    // The operator rotates to a new CA and server certificate.
    let fresh = tempfile::tempdir().unwrap();
    certs::write_dev_certs(fresh.path()).unwrap();
    for f in ["ca.pem", "server.pem", "server-key.pem"] {
        std::fs::copy(fresh.path().join(f), d.dir.join("certs").join(f)).unwrap();
    }
    let new_ca = Pem {
        cert: std::fs::read_to_string(fresh.path().join("ca.pem")).unwrap(),
        key: std::fs::read_to_string(fresh.path().join("ca-key.pem")).unwrap(),
    };
    let old_ca = Pem {
        cert: d.ca.cert.clone(),
        key: d.ca.key.clone(),
    };
    let body = d.body.clone();
    let summary = d.reload(&body).await.unwrap();
    assert!(summary.contains("TLS files re-read"), "{summary}");

    // The session opened before the reload goes on.
    state(&mut open, "a")
        .await
        .expect("the open session still works");
    // New handshakes: the old CA's client certificate is refused, the new one's accepted.
    let old_cert = certs::issue(&old_ca, Some("operator"), &["operator"], false).unwrap();
    let refused = d.tls_with(Some(&old_cert), &new_ca.cert).await;
    let refused = match refused {
        Err(e) => Err(e.to_string()),
        Ok(mut c) => state(&mut c, "a").await.map_err(|s| s.to_string()),
    };
    assert!(refused.is_err(), "old CA's client accepted: {refused:?}");
    let new_cert = certs::issue(&new_ca, Some("operator"), &["operator"], false).unwrap();
    let mut c = d.tls_with(Some(&new_cert), &new_ca.cert).await.unwrap();
    state(&mut c, "a").await.expect("the new CA's client");
    // And a client still trusting only the old CA no longer trusts the server.
    let stale = d.tls_with(Some(&old_cert), &old_ca.cert).await;
    let stale = match stale {
        Err(e) => Err(e.to_string()),
        Ok(mut c) => state(&mut c, "a").await.map_err(|s| s.to_string()),
    };
    assert!(stale.is_err(), "{stale:?}");
    d.stop().await;
}

async fn next(
    s: &mut tonic::Streaming<kms_broker_client::pb::RevokeStatusEvent>,
) -> kms_broker_client::pb::RevokeStatusEvent {
    must_return("the next watch event", Duration::from_secs(10), s.message())
        .await
        .expect("the stream goes on")
        .expect("an event")
}

#[tokio::test]
async fn every_reload_applied_or_refused_is_in_the_audit_trail() {
    mock("rl-audit-a");
    mock("rl-audit-b");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("audit")).unwrap();
    let trail = "[audit]\npath = \"audit/trail.jsonl\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n";
    let all = policy(&["WrapKey", "RevokeStatus"]);
    let first = body("rl-audit", &["a"], &format!("{trail}{all}"));
    let mut d = Daemon::start_in(tmp.path(), &first).await.unwrap();
    d.reload("not = [toml").await.unwrap_err();
    d.reload(&body("rl-audit", &["a", "b"], &format!("{trail}{all}")))
        .await
        .unwrap();
    // The metrics count both, for an alert on a refused reload.
    let text = crate::metrics::scrape(&d).await;
    for (outcome, n) in [("applied", 1.0), ("refused", 1.0)] {
        let series = format!(r#"kms_broker_config_reloads_total{{outcome="{outcome}"}}"#);
        assert_eq!(crate::metrics::sample(&text, &series), Some(n), "{text}");
    }
    d.stop().await;

    let path = tmp.path().join("audit/trail.jsonl");
    kms_broker::audit::verify(&path).expect("the chain holds");
    let events: Vec<(String, String)> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|r| {
            let e = r["event"].as_str()?.to_owned();
            Some((e, r["detail"].as_str().unwrap_or_default().to_owned()))
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names, ["start", "reload_refused", "reload"], "{events:?}");
    assert!(events[1].1.contains("kms-broker.toml"), "{events:?}");
    assert!(events[2].1.contains("added b"), "{events:?}");
}

#[tokio::test]
async fn an_open_watch_follows_the_reloaded_policy() {
    let a = mock("rl-watch-a");
    let b = mock("rl-watch-b");
    let uid = my_uid();
    let see = |keys: &str| {
        format!(
            "[[policy]]\npeer = \"uid:{uid}\"\nallow = [\"WrapKey\"]\n\
             [[policy]]\npeer = \"uid:{uid}\"\nallow = [\"RevokeStatus\"]\nkeys = [{keys}]\n"
        )
    };
    let mut d = Daemon::start(&body("rl-watch", &["a", "b"], &see("\"a\", \"b\""))).await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "a", KeyState::Active).await;
    wait_for_state(&mut c, "b", KeyState::Active).await;
    let mut watch = c
        .watch_revoke_status(RevokeStatusRequest { key: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut watch).await.keys.len(), 2);

    // The operator takes key b out of this peer's sight.
    d.reload(&body("rl-watch", &["a", "b"], &see("\"a\"")))
        .await
        .unwrap();
    b.disable();
    a.disable();
    for key in ["b", "a"] {
        assert_eq!(
            wrap(&mut c, key).await.unwrap_err().code(),
            Code::FailedPrecondition
        );
    }
    let ev = next(&mut watch).await;
    let keys: Vec<&str> = ev.keys.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, ["a"], "b's change is not shown any more: {ev:?}");
    assert_eq!(ev.keys[0].state, KeyState::Disabled as i32);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_during_reloads_all_succeed() {
    mock("rl-busy-a");
    mock("rl-busy-b");
    let all = policy(&["WrapKey", "UnwrapKey", "RevokeStatus"]);
    let one = body("rl-busy", &["a"], &all);
    let two = body("rl-busy", &["a", "b"], &all);
    let mut d = Daemon::start(&one).await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "a", KeyState::Active).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (mut c, stop) = (c.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let w = wrap(&mut c, "a").await.expect("WrapKey during a reload");
                    let back = unwrap(&mut c, &w.wrapped)
                        .await
                        .expect("UnwrapKey during a reload");
                    assert_eq!(back, b"data key");
                    n += 1;
                }
                n
            })
        })
        .collect();
    // Twenty reloads while the callers run, alternating configs (key b comes and goes;
    // key a, which they use, is kept each time).
    for i in 0..20 {
        d.reload(if i % 2 == 0 { &two } else { &one })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for t in callers {
        total += must_return("a caller ends", Duration::from_secs(30), t)
            .await
            .unwrap();
    }
    assert!(total >= 8, "every caller made calls: {total}");
    d.stop().await;
}
