//! `/metrics` scraped from a running daemon: counters move with calls, a key's state gauge
//! follows the mock KMS, and every metric the Grafana dashboard queries is exported.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use kms_broker::backend::mock::mock;
use kms_broker_client::pb::{
    GetStoreKeyRequest, KeyState, RewrapKeyRequest, UnwrapKeyRequest, WrapKeyRequest,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::common::{allow_me_everything, must_return, wait_for_state, Daemon};

fn body(name: &str) -> String {
    format!(
        "[keys.k]\nuris = [\"mock://{name}\"]\n[stores.s1]\nkey = \"k\"\n[revocation]\npoll_interval = \"300ms\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n{}",
        allow_me_everything()
    )
}

/// One plain HTTP/1.1 request; returns the status line and the body.
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    must_return("a scrape", std::time::Duration::from_secs(10), async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    })
    .await
}

pub async fn scrape(d: &Daemon) -> String {
    let (status, body) = get(d.metrics.expect("[metrics] is configured"), "/metrics").await;
    assert!(status.contains("200"), "{status}");
    body
}

/// The value of the sample `series` (its name and labels exactly as exported), or None.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

fn wrap() -> WrapKeyRequest {
    WrapKeyRequest {
        key: "k".into(),
        plaintext: b"dk".to_vec(),
        context: HashMap::new(),
    }
}

#[tokio::test]
async fn counters_move_and_a_key_state_change_shows() {
    let m = mock("metrics-state");
    let d = Daemon::start(&body("metrics-state")).await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "k", KeyState::Active).await;

    let text = scrape(&d).await;
    let active = r#"kms_broker_key_state{key="k",state="ACTIVE"}"#;
    let disabled = r#"kms_broker_key_state{key="k",state="DISABLED"}"#;
    assert_eq!(sample(&text, active), Some(1.0), "{text}");
    assert_eq!(sample(&text, disabled), Some(0.0));
    let ok_wraps = r#"kms_broker_calls_total{op="WrapKey",code="OK"}"#;
    let before = sample(&text, ok_wraps).unwrap_or(0.0);
    let mut wrapped = Vec::new();
    for _ in 0..3 {
        wrapped = c.wrap_key(wrap()).await.unwrap().into_inner().wrapped;
    }
    c.rewrap_key(RewrapKeyRequest {
        wrapped,
        context: HashMap::new(),
        key: String::new(),
    })
    .await
    .unwrap();
    c.get_store_key(GetStoreKeyRequest {
        store_id: "s1".into(),
        create: true,
    })
    .await
    .unwrap();
    let text = scrape(&d).await;
    assert_eq!(sample(&text, ok_wraps), Some(before + 3.0), "{text}");
    // Counted under the RPC's own name, not the policy operation that governs it.
    assert_eq!(
        sample(&text, r#"kms_broker_calls_total{op="RewrapKey",code="OK"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"kms_broker_call_duration_seconds_count{op="WrapKey"}"#
        ),
        Some(before + 3.0)
    );
    assert_eq!(
        sample(&text, r#"kms_broker_store_key_held{store="s1"}"#),
        Some(1.0)
    );
    // A held store key lives in the key-memory arena: some page of it is mapped (locked, or
    // past this process's memlock limit, unlocked).
    let mapped = ["locked", "unlocked"].map(|st| {
        sample(
            &text,
            &format!(r#"kms_broker_key_memory_bytes{{state="{st}"}}"#),
        )
    });
    assert!(
        mapped.iter().map(|v| v.expect("exported")).sum::<f64>() >= 4096.0,
        "{text}"
    );
    let kms_ok = r#"kms_broker_kms_calls_total{key="k",uri="mock://metrics-state",backend="mock",outcome="ok"}"#;
    assert!(sample(&text, kms_ok).unwrap() >= 4.0, "{text}");
    // UnwrapKey's cache: one KMS call, then a hit for the same blob and context.
    let hits = r#"kms_broker_unwrap_cache_total{event="hit"}"#;
    let calls = r#"kms_broker_unwrap_cache_total{event="kms_call"}"#;
    let (hits0, calls0) = (sample(&text, hits), sample(&text, calls));
    assert_eq!((hits0, calls0), (Some(0.0), Some(0.0)), "{text}");
    let blob = c.wrap_key(wrap()).await.unwrap().into_inner().wrapped;
    for _ in 0..2 {
        c.unwrap_key(UnwrapKeyRequest {
            wrapped: blob.clone(),
            context: HashMap::new(),
        })
        .await
        .unwrap();
    }
    let text = scrape(&d).await;
    assert_eq!(sample(&text, calls), Some(1.0), "{text}");
    assert_eq!(sample(&text, hits), Some(1.0));
    assert_eq!(
        sample(
            &text,
            r#"kms_broker_breaker_state{key="k",uri="mock://metrics-state"}"#
        ),
        Some(0.0),
        "closed"
    );

    m.disable();
    wait_for_state(&mut c, "k", KeyState::Disabled).await;
    let e = c.wrap_key(wrap()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let text = scrape(&d).await;
    assert_eq!(sample(&text, active), Some(0.0), "{text}");
    assert_eq!(sample(&text, disabled), Some(1.0));
    assert_eq!(
        sample(
            &text,
            r#"kms_broker_uri_state{key="k",uri="mock://metrics-state",state="DISABLED"}"#
        ),
        Some(1.0)
    );
    let kms_disabled = r#"kms_broker_kms_calls_total{key="k",uri="mock://metrics-state",backend="mock",outcome="disabled"}"#;
    assert!(sample(&text, kms_disabled).unwrap() >= 1.0, "{text}");
    assert_eq!(
        sample(
            &text,
            r#"kms_broker_calls_total{op="WrapKey",code="FAILED_PRECONDITION"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"kms_broker_store_key_held{store="s1"}"#),
        Some(0.0),
        "a disabled key's store key is dropped"
    );
    assert!(sample(&text, r#"kms_broker_key_seconds_since_last_good{key="k"}"#).is_some());

    let (status, _) = get(d.metrics.unwrap(), "/other").await;
    assert!(status.contains("404"), "{status}");
}

/// Every `kms_broker_*` name in a string.
/// Two keys over one KMS key: its state shows under both, its KMS calls once, so a sum of
/// `kms_broker_kms_calls_total` counts each call once.
#[tokio::test]
async fn a_uri_two_keys_list_is_counted_once() {
    let m = mock("metrics-shared");
    let d = Daemon::start(&format!(
        "[keys.a]\nuris = [\"mock://metrics-shared\"]\n[keys.b]\nuris = [\"mock://metrics-shared\"]\n\
         [revocation]\npoll_interval = \"1h\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n{}",
        allow_me_everything()
    ))
    .await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "b", KeyState::Active).await;
    for key in ["a", "b", "b"] {
        let mut req = wrap();
        req.key = key.into();
        c.wrap_key(req).await.unwrap();
    }
    let text = scrape(&d).await;
    for key in ["a", "b"] {
        let state = format!(
            r#"kms_broker_uri_state{{key="{key}",uri="mock://metrics-shared",state="ACTIVE"}}"#
        );
        assert_eq!(sample(&text, &state), Some(1.0), "{text}");
    }
    let calls: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("kms_broker_kms_calls_total{") && l.contains("mock://metrics-shared")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    let seen = m.calls();
    assert_eq!(
        calls,
        (seen.encrypt + seen.check) as f64,
        "each KMS answer counted once: {text}"
    );
    let breakers = text
        .lines()
        .filter(|l| {
            l.starts_with("kms_broker_breaker_state{") && l.contains("mock://metrics-shared")
        })
        .count();
    assert_eq!(breakers, 1, "{text}");
    d.stop().await;
}

fn metric_names(expr: &str, out: &mut BTreeSet<String>) {
    let mut rest = expr;
    while let Some(at) = rest.find("kms_broker_") {
        let tail = &rest[at..];
        let end = tail
            .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
}

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| exprs(i, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/kms-broker.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(all.len() >= 8, "the dashboard has its panels: {all:?}");
    let mut queried = BTreeSet::new();
    for e in &all {
        let mut names = BTreeSet::new();
        metric_names(e, &mut names);
        assert!(!names.is_empty(), "{e} queries no kms_broker metric");
        queried.extend(names);
    }

    let _m = mock("metrics-dashboard");
    let d = Daemon::start(&body("metrics-dashboard")).await;
    let mut c = d.unix().await;
    wait_for_state(&mut c, "k", KeyState::Active).await;
    // A call, so the histogram has series.
    c.wrap_key(wrap()).await.unwrap();
    let text = scrape(&d).await;
    let exported: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = queried
        .iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which the daemon does not export; it exports {exported:?}"
    );
}
