use std::collections::BTreeMap;

use super::*;

fn aad() -> Aad {
    Aad::new("primary", BTreeMap::from([("store".into(), "s1".into())]))
}

fn pt() -> SecretBytes {
    SecretBytes::copy_from(b"a data key")
}

#[tokio::test]
async fn state_transitions() {
    let kms = mock("unit-states");
    let b = MockBackend::named("unit-states");
    assert_eq!(kms.state(), KeyState::Active);
    b.check().await.unwrap();
    // (switch off, switch back on, the failure class, the state): the reversible ones.
    type Toggle = fn(&MockKms);
    let cases: [(Toggle, Toggle, FailureClass, KeyState); 2] = [
        (
            MockKms::disable,
            MockKms::enable,
            FailureClass::Disabled,
            KeyState::Disabled,
        ),
        (
            MockKms::revoke,
            MockKms::restore_access,
            FailureClass::Revoked,
            KeyState::Revoked,
        ),
    ];
    for (off, on, class, state) in cases {
        off(&kms);
        assert_eq!(kms.state(), state);
        assert_eq!(b.check().await.unwrap_err().class, class);
        assert_eq!(b.encrypt(&pt(), &aad()).await.unwrap_err().class, class);
        assert_eq!(
            b.decrypt(&[0; 40], "1", &aad()).await.unwrap_err().class,
            class
        );
        on(&kms);
        assert_eq!(kms.state(), KeyState::Active);
        b.check().await.unwrap();
    }
    let ct = b.encrypt(&pt(), &aad()).await.unwrap();
    kms.destroy();
    kms.enable();
    assert_eq!(kms.state(), KeyState::Destroyed);
    let e = b
        .decrypt(&ct.bytes, &ct.key_version, &aad())
        .await
        .unwrap_err();
    assert_eq!(e.class, FailureClass::Destroyed);
    assert_eq!(
        kms.calls(),
        MockCalls {
            encrypt: 3,
            decrypt: 3,
            check: 5
        }
    );
}

#[tokio::test]
async fn rotation_keeps_old_versions() {
    let kms = mock("unit-rotate");
    let b = MockBackend::named("unit-rotate");
    let old = b.encrypt(&pt(), &aad()).await.unwrap();
    assert_eq!(old.key_version, "1");
    assert_eq!(kms.rotate(), "2");
    let new = b.encrypt(&pt(), &aad()).await.unwrap();
    assert_eq!(new.key_version, "2");
    for ct in [&old, &new] {
        let back = b.decrypt(&ct.bytes, &ct.key_version, &aad()).await.unwrap();
        assert!(back.plaintext.ct_eq(pt().expose()));
    }
    // The wrong version, an unknown one, or another context: not a key-state change.
    for (v, a) in [
        ("2", aad()),
        ("3", aad()),
        ("x", aad()),
        ("1", Aad::new("other", BTreeMap::new())),
    ] {
        let e = b.decrypt(&old.bytes, v, &a).await.unwrap_err();
        assert_eq!(e.class, FailureClass::InvalidCiphertext, "version {v}");
    }
    assert_eq!(b.check().await.unwrap().detail, "primary version 2");
}

#[tokio::test]
async fn fault_injection_counts() {
    let kms = mock("unit-faults");
    let b = MockBackend::named("unit-faults");
    kms.fail_next(2, MockFault::Throttled);
    assert_eq!(kms.state(), KeyState::Unreachable);
    for _ in 0..2 {
        let e = b.check().await.unwrap_err();
        assert_eq!(e.class, FailureClass::Unreachable);
        assert!(e.detail.contains("throttled"), "{}", e.detail);
    }
    b.check().await.unwrap();
    kms.set_fault(Some(MockFault::Unavailable));
    let e = b.encrypt(&pt(), &aad()).await.unwrap_err();
    assert!(e.detail.contains("unavailable"), "{}", e.detail);
    kms.set_fault(None);
    b.encrypt(&pt(), &aad()).await.unwrap();
    assert_eq!(
        kms.calls(),
        MockCalls {
            encrypt: 2,
            decrypt: 0,
            check: 3
        }
    );
    kms.reset_calls();
    assert_eq!(kms.calls(), MockCalls::default());
}

#[tokio::test(start_paused = true)]
async fn latency_uses_tokio_time() {
    let kms = mock("unit-latency");
    let b = MockBackend::named("unit-latency");
    kms.set_latency(Duration::from_secs(30));
    let start = tokio::time::Instant::now();
    b.check().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(30));
    // A timeout cuts a slow call; it still counts, as a request sent to a real KMS does.
    let cut = tokio::time::timeout(Duration::from_secs(1), b.check()).await;
    assert!(cut.is_err());
    assert_eq!(kms.calls().check, 2);
}

#[tokio::test(start_paused = true)]
async fn rate_limit_throttles_above_the_quota_and_refills() {
    let kms = mock("unit-rate");
    let b = MockBackend::named("unit-rate");
    kms.set_rate_limit(Some(3));
    for _ in 0..3 {
        b.check().await.unwrap();
    }
    let e = b.check().await.unwrap_err();
    assert_eq!(e.class, FailureClass::Unreachable);
    assert!(e.to_string().contains("throttled"), "{e}");
    // Throttled calls still reached the KMS.
    assert_eq!(kms.calls().check, 4);
    tokio::time::advance(Duration::from_millis(400)).await;
    b.check().await.unwrap();
    b.check().await.unwrap_err();
    kms.set_rate_limit(None);
    b.check().await.unwrap();
}
