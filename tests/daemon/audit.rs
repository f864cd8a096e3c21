//! The audit trail as a real daemon writes it: one record per call, successes and refusals
//! of WrapKey and GetStoreKey over both transports, the fields CONTRACT names, no key
//! bytes, and a chain that verifies (and continues across a restart).

use std::collections::HashMap;

use base64::Engine as _;
use kms_broker::audit::{verify, GENESIS};
use kms_broker::backend::mock::mock;
use kms_broker_client::pb::{GetStoreKeyRequest, KeyState, WrapKeyRequest};
use serde_json::Value;
use tonic::Code;

use crate::common::{allow_me_everything, my_uid, wait_for_state, Daemon};

/// A caller's mistake that must not put a credential into the trail.
const PASTED_URI: &str = "aws:///k?AWS_SECRET_ACCESS_KEY=hunter2";

fn body(name: &str) -> String {
    format!(
        "[keys.k]\nuris = [\"mock://{name}\"]\n[stores.s1]\nkey = \"k\"\n[revocation]\npoll_interval = \"300ms\"\n[audit]\npath = \"audit/trail.jsonl\"\n{}",
        allow_me_everything()
    )
}

fn wrap(key: &str, plaintext: &[u8]) -> WrapKeyRequest {
    WrapKeyRequest {
        key: key.into(),
        plaintext: plaintext.to_vec(),
        context: HashMap::from([("table".into(), "ctx-value-zz9".into())]),
    }
}

fn store(id: &str, create: bool) -> GetStoreKeyRequest {
    GetStoreKeyRequest {
        store_id: id.into(),
        create,
    }
}

fn records(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn every_call_is_recorded_with_its_peer_and_code_and_never_key_bytes() {
    let m = mock("audit-calls");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("audit")).unwrap();
    let d = Daemon::start_in(tmp.path(), &body("audit-calls"))
        .await
        .unwrap();
    let mut c = d.unix().await;
    wait_for_state(&mut c, "k", KeyState::Active).await;

    let secret = b"PLAINTEXT-THAT-MUST-NOT-APPEAR-42";
    let wrapped = c.wrap_key(wrap("k", secret)).await.unwrap().into_inner();
    let e = c.wrap_key(wrap("nope", b"x")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c.wrap_key(wrap(PASTED_URI, b"x")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let keys = c
        .get_store_key(store("s1", true))
        .await
        .unwrap()
        .into_inner();
    let store_key = std::mem::take(&mut keys.active.unwrap().key);
    let e = c.get_store_key(store("other", false)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // Over mutual TLS GetStoreKey is refused, and the trail names the certificate.
    let e = d
        .tls("backup-job")
        .await
        .get_store_key(store("s1", false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    m.disable();
    wait_for_state(&mut c, "k", KeyState::Disabled).await;
    let e = c.get_store_key(store("s1", false)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    d.stop().await;

    let path = tmp.path().join("audit/trail.jsonl");
    let summary = verify(&path).unwrap();
    assert_eq!(summary.first_prev.as_deref(), Some(GENESIS));
    assert_eq!(summary.lost, 0);
    let all = records(&path);
    assert_eq!(all[0]["event"], "start");
    let calls: Vec<&Value> = all
        .iter()
        .filter(|r| matches!(r["op"].as_str(), Some("WrapKey" | "GetStoreKey")))
        .collect();
    let shown_uri = kms_broker::log_limit::caller_text(PASTED_URI);
    let seen: Vec<(&str, &str, &str)> = calls
        .iter()
        .map(|r| {
            let target = r["key"].as_str().or(r["store"].as_str()).unwrap();
            (
                r["op"].as_str().unwrap(),
                target,
                r["code"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("WrapKey", "k", "OK"),
            ("WrapKey", "nope", "NOT_FOUND"),
            ("WrapKey", shown_uri.as_str(), "INVALID_ARGUMENT"),
            ("GetStoreKey", "s1", "OK"),
            ("GetStoreKey", "other", "NOT_FOUND"),
            ("GetStoreKey", "s1", "PERMISSION_DENIED"),
            ("GetStoreKey", "s1", "FAILED_PRECONDITION"),
        ]
    );
    for r in &calls {
        assert!(r["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{r}");
        assert!(r["latency_us"].is_u64(), "{r}");
        assert_eq!(r["hash"].as_str().map(str::len), Some(64), "{r}");
        assert_eq!(r["prev"].as_str().map(str::len), Some(64), "{r}");
    }
    let unix_peer = &calls[0]["peer"];
    assert_eq!(unix_peer["uid"], my_uid());
    assert_eq!(unix_peer["pid"], std::process::id());
    assert!(
        unix_peer["exe"]
            .as_str()
            .is_some_and(|e| e.starts_with('/')),
        "{unix_peer}"
    );
    assert_eq!(calls[5]["peer"]["cert"], "backup-job");
    // The KMS's request id of each call that reached it (the mock numbers its answers),
    // none for those refused before it; the disabled key's refusal came from held state.
    let kms_ids: Vec<usize> = calls
        .iter()
        .map(|r| r["kms_requests"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(kms_ids[..6], [1, 0, 0, 1, 0, 0], "{calls:?}");
    assert!(calls[0]["kms_requests"][0]
        .as_str()
        .is_some_and(|id| id.starts_with("mock-")));

    let text = std::fs::read_to_string(&path).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    for bytes in [&secret[..], &store_key, &wrapped.wrapped] {
        assert!(!text.contains(&hex::encode(bytes)));
        assert!(!text.contains(&b64.encode(bytes)));
    }
    assert!(!text.contains("PLAINTEXT-THAT"));
    assert!(!text.contains("hunter2"));
    assert!(
        !text.contains("ctx-value-zz9"),
        "context values are not recorded"
    );

    // A copy with one record removed is caught, and the line named.
    let cut: String = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    let copy = tmp.path().join("copy.jsonl");
    std::fs::write(&copy, cut).unwrap();
    match verify(&copy) {
        Err(kms_broker::audit::VerifyError::Bad { line, why }) => {
            assert_eq!(line, 4, "{why}");
            assert!(why.contains("removed"), "{why}");
        }
        other => panic!("a removed record must be found: {other:?}"),
    }
    // The same through the command: exit 1 naming the line; the untouched file passes.
    let bin = env!("CARGO_BIN_EXE_kms-broker");
    let out = std::process::Command::new(bin)
        .args(["audit", "verify"])
        .arg(&copy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 4"), "{err}");
    let out = std::process::Command::new(bin)
        .args(["audit", "verify"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: "));
}

#[tokio::test]
async fn a_restart_continues_the_chain_and_an_unwritable_path_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    // No `audit/` folder: the daemon does not create it, and does not serve unaudited.
    let e = Daemon::start_in(tmp.path(), &body("audit-restart"))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("audit.path") && text.contains("trail.jsonl"),
        "{text}"
    );
    assert!(matches!(e, kms_broker::server::ServeError::Config(_)));

    std::fs::create_dir(tmp.path().join("audit")).unwrap();
    let _m = mock("audit-restart");
    let d = Daemon::start_in(tmp.path(), &body("audit-restart"))
        .await
        .unwrap();
    let mut c = d.unix().await;
    wait_for_state(&mut c, "k", KeyState::Active).await;
    c.wrap_key(wrap("k", b"one")).await.unwrap();
    let d = d.restart().await;
    let mut c = d.unix().await;
    c.wrap_key(wrap("k", b"two")).await.unwrap();
    d.stop().await;
    let path = tmp.path().join("audit/trail.jsonl");
    let s = verify(&path).unwrap();
    let starts = records(&path)
        .iter()
        .filter(|r| r["event"] == "start")
        .count();
    assert_eq!(starts, 2, "one start record per daemon start, in one chain");
    assert_eq!(s.first_seq, Some(1));
    assert_eq!(s.last_seq, Some(s.records));
}
