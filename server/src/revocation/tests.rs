//! The state rules, URI by URI: fail closed, no stale lifts, grace only while unreachable.

use super::*;
use crate::backend::resilient::RetryPolicy;
use crate::backend::FailureClass;

fn key() -> Key {
    let uri = |n: &str| {
        let u = KeyUri::parse(&format!("file:///nonexistent/{n}")).unwrap();
        let KeyUri::File(f) = u.clone() else {
            panic!("a file URI")
        };
        let b = std::sync::Arc::new(crate::backend::file::FileBackend::new(f));
        Arc::new(KmsUri::new(u, Resilient::new(b, RetryPolicy::default()), 8))
    };
    Key {
        name: KeyName::parse("k").unwrap(),
        uris: vec![uri("a"), uri("b")],
        wrap_mode: WrapMode::Strict,
    }
}

fn err(class: FailureClass) -> BackendError {
    BackendError::new(class, "x")
}

fn check(k: &Key, c: &Clock, i: usize, r: Result<Option<&str>, &BackendError>) {
    k.uris[i].record(c, &k.name, c.ticket(Source::Check), r);
}

#[test]
fn fresh_start_hands_out_nothing() {
    let k = key();
    assert_eq!(k.status().state, KeyState::Unreachable);
    assert!(k.may_hand_out_held(Duration::from_secs(900)).is_err());
}

#[test]
fn best_of_uris_and_wrap_needs_all() {
    let (k, c) = (key(), Clock::default());
    check(&k, &c, 0, Ok(Some("v1")));
    check(&k, &c, 1, Err(&err(FailureClass::Disabled)));
    let s = k.status();
    assert_eq!(s.state, KeyState::Active);
    assert_eq!(s.uris[1].state, KeyState::Disabled);
    assert!(k.gate_any().is_ok());
    assert_eq!(
        k.gate_wrap().unwrap_err().code(),
        tonic::Code::FailedPrecondition
    );
    assert!(k.may_hand_out_held(Duration::ZERO).is_ok());
}

#[test]
fn revoked_kinds_have_no_grace() {
    let (k, c) = (key(), Clock::default());
    check(&k, &c, 0, Ok(None));
    check(&k, &c, 0, Err(&err(FailureClass::Revoked)));
    check(&k, &c, 1, Err(&err(FailureClass::Destroyed)));
    let e = k.may_hand_out_held(Duration::from_secs(900)).unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.to_string().contains("REVOKED"), "{e}");
}

#[test]
fn only_a_check_that_began_after_a_denial_lifts_it() {
    let (k, c) = (key(), Clock::default());
    check(&k, &c, 0, Ok(None));
    // A slow Decrypt and a poll are admitted, then the key is revoked.
    let slow_use = c.ticket(Source::Use);
    let slow_check = c.ticket(Source::Check);
    check(&k, &c, 0, Err(&err(FailureClass::Disabled)));
    let epoch = c.epoch();
    k.uris[0].record(&c, &k.name, slow_use, Ok(None));
    k.uris[0].record(&c, &k.name, slow_check, Ok(Some("stale")));
    assert_eq!(k.uris[0].state(), KeyState::Disabled);
    // A real call that began after the denial still cannot lift it: only a check can.
    k.uris[0].record(&c, &k.name, c.ticket(Source::Use), Ok(None));
    assert_eq!(k.uris[0].state(), KeyState::Disabled);
    // An unreachable KMS is no evidence that the key came back.
    check(&k, &c, 0, Err(&BackendError::unreachable("timeout")));
    assert_eq!(k.uris[0].state(), KeyState::Disabled);
    assert_eq!(c.epoch(), epoch, "nothing changed");
    check(&k, &c, 0, Ok(Some("fresh")));
    assert_eq!(k.uris[0].state(), KeyState::Active);
    assert!(c.epoch() > epoch);
}

#[test]
fn caller_shaped_and_version_scoped_failures_change_nothing() {
    let (k, c) = (key(), Clock::default());
    check(&k, &c, 0, Ok(Some("v")));
    for e in [
        BackendError::invalid_ciphertext("bad tag"),
        BackendError::invalid_request("too large"),
        err(FailureClass::Disabled).version_scoped(),
    ] {
        k.uris[0].record(&c, &k.name, c.ticket(Source::Use), Err(&e));
        assert_eq!(k.uris[0].state(), KeyState::Active, "{e}");
    }
}

#[tokio::test(start_paused = true)]
async fn unreachable_grace_window() {
    let (k, c) = (key(), Clock::default());
    let grace = Duration::from_secs(60);
    check(&k, &c, 0, Ok(None));
    check(&k, &c, 0, Err(&BackendError::unreachable("timeout")));
    check(&k, &c, 1, Err(&BackendError::unreachable("timeout")));
    assert!(k.may_hand_out_held(grace).is_ok());
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(
        k.may_hand_out_held(grace).unwrap_err().code(),
        tonic::Code::Unavailable
    );
}

#[test]
fn zero_grace_turns_it_off_and_a_denied_uri_lends_none() {
    let (k, c) = (key(), Clock::default());
    check(&k, &c, 0, Ok(None));
    check(&k, &c, 0, Err(&BackendError::unreachable("timeout")));
    check(&k, &c, 1, Err(&BackendError::unreachable("timeout")));
    assert!(k.may_hand_out_held(Duration::ZERO).is_err());
    // URI b was active a moment ago and is now DISABLED; URI a never answered.
    let (k, c) = (key(), Clock::default());
    check(&k, &c, 1, Ok(None));
    check(&k, &c, 1, Err(&err(FailureClass::Disabled)));
    assert_eq!(k.status().state, KeyState::Unreachable);
    assert!(k.may_hand_out_held(Duration::from_secs(900)).is_err());
}
