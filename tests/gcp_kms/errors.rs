//! Errors read from Google's structure (issue 10 items 3 and 5): the "current state is: X"
//! ending and not resource names, ErrorInfo reasons (a disabled project is not a revoked
//! key), Cloud EKM's error domains, and which answers are retried.

use std::time::Duration;

use google_cloud_kms_v1::model::crypto_key_version::CryptoKeyVersionState as S;
use kms_broker::backend::resilient::{Resilient, RetryPolicy};
use kms_broker::backend::FailureClass::{Disabled, Revoked, Unreachable};
use kms_broker::backend::KmsBackend;
use kms_broker::secret::SecretBytes;
use serde_json::json;

use crate::fake::Fake;
use crate::{aad, backend, class, unwrap, wrap};

#[tokio::test]
async fn a_ring_named_destroyed_holding_a_disabled_key_is_disabled() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    let ring = fake.create_ring("destroyed-ring").await;
    let key = fake.create_key_in(&ring, "destroy_scheduled").await;
    let b = backend(&fake.uri_in("destroyed-ring", "destroy_scheduled")).await;
    let ct = wrap(&*b, b"payload").await.expect("wrap");
    fake.set_state(&key, "1", S::Disabled).await;
    // Cloud KMS's message names the ring and the key, then "current state is: DISABLED."
    let e = wrap(&*b, b"x").await.expect_err("disabled");
    assert!(e.detail.contains("destroyed-ring"), "{}", e.detail);
    assert_eq!(e.class, Disabled, "{e}");
    let e = unwrap(&*b, &ct).await.expect_err("disabled");
    assert_eq!((e.class, e.version_only), (Disabled, true), "{e}");
    assert_eq!(class(b.check().await), Disabled);
}

#[tokio::test]
async fn a_disabled_api_or_billing_is_not_a_revoked_key_and_is_not_retried() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    fake.create_key("k").await;
    let b = backend(&fake.uri("k")).await;
    for preset in ["SERVICE_DISABLED", "BILLING_DISABLED"] {
        fake.fault(json!({ "method": "Encrypt", "action": "error", "preset": preset }));
        let e = wrap(&*b, b"x").await.expect_err(preset);
        assert_eq!(e.class, Unreachable, "{preset}: {e}");
        assert!(
            e.detail.contains(preset) && e.detail.contains("not a revocation"),
            "{}",
            e.detail
        );
        assert!(!e.should_retry(), "{preset}");

        fake.fault(json!({ "method": "GetCryptoKey", "action": "error", "preset": preset }));
        let e = b.check().await.expect_err(preset);
        assert_eq!(e.class, Unreachable, "{preset}: {e}");
    }
    // Through the retry policy: one attempt only. Two faults queued; the second is still
    // there for the next call.
    let r = Resilient::new(b.clone(), RetryPolicy::default());
    fake.fault(
        json!({ "method": "Encrypt", "action": "error", "preset": "SERVICE_DISABLED", "count": 2 }),
    );
    let e = r
        .encrypt(&SecretBytes::copy_from(b"x"), &aad("n1"))
        .await
        .expect_err("disabled API");
    assert!(e.detail.contains("SERVICE_DISABLED"), "{}", e.detail);
    assert_eq!(r.stats().attempts, 1);
    assert_eq!(
        class(wrap(&*b, b"x").await),
        Unreachable,
        "the second fault"
    );
    wrap(&*b, b"x").await.expect("the project is fine again");
}

#[tokio::test]
async fn ekm_permission_loss_is_revoked_and_an_ekm_outage_is_unreachable() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    fake.create_key("k").await;
    let b = backend(&fake.uri("k")).await;
    let ct = wrap(&*b, b"payload").await.expect("wrap");
    for method in ["Encrypt", "Decrypt"] {
        fake.fault(
            json!({ "method": method, "action": "error", "preset": "EKM_PERMISSION_DENIED" }),
        );
        let e = if method == "Encrypt" {
            wrap(&*b, b"x").await.map(|_| ())
        } else {
            unwrap(&*b, &ct).await.map(|_| ())
        }
        .expect_err(method);
        assert_eq!((e.class, e.version_only), (Revoked, false), "{method}: {e}");

        fake.fault(json!({ "method": method, "action": "error", "preset": "EKM_UNAVAILABLE" }));
        let e = if method == "Encrypt" {
            wrap(&*b, b"x").await.map(|_| ())
        } else {
            unwrap(&*b, &ct).await.map(|_| ())
        }
        .expect_err(method);
        assert_eq!(e.class, Unreachable, "{method}: {e}");
        assert!(e.detail.contains("EKM"), "{}", e.detail);
    }
}

#[tokio::test]
async fn only_googles_retryable_codes_are_retried_and_quota_honours_retry_info() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    fake.create_key("k").await;
    let b = backend(&fake.uri("k")).await;
    let policy = RetryPolicy {
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        ..RetryPolicy::default()
    };
    let pt = SecretBytes::copy_from(b"x");
    // Not retried: one attempt, and the second queued fault is still there afterwards.
    for (status, code) in [("UNIMPLEMENTED", 501), ("UNKNOWN", 500), ("ABORTED", 409)] {
        let r = Resilient::new(b.clone(), policy);
        fake.fault(
            json!({ "method": "Encrypt", "action": "error", "status": status,
            "code": code, "count": 2 }),
        );
        let e = r.encrypt(&pt, &aad("n1")).await.expect_err(status);
        assert_eq!(
            (e.class, e.should_retry()),
            (Unreachable, false),
            "{status}: {e}"
        );
        assert_eq!(r.stats().attempts, 1, "{status}");
        assert!(
            wrap(&*b, b"x").await.is_err(),
            "{status}: the second fault is left"
        );
    }
    // Retried: the call succeeds after one failure.
    for (status, code) in [
        ("UNAVAILABLE", 503),
        ("DEADLINE_EXCEEDED", 504),
        ("INTERNAL", 500),
    ] {
        let r = Resilient::new(b.clone(), policy);
        fake.fault(
            json!({ "method": "Encrypt", "action": "error", "status": status, "code": code }),
        );
        r.encrypt(&pt, &aad("n1")).await.expect(status);
        assert_eq!(r.stats().retries, 1, "{status}");
    }
    // Quota: throttled, with RetryInfo's delay.
    fake.fault(
        json!({ "method": "Encrypt", "action": "error", "status": "RESOURCE_EXHAUSTED",
        "code": 429, "message": "Quota exceeded for quota metric 'Cryptographic requests'.",
        "details": [
            { "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT_EXCEEDED",
              "domain": "googleapis.com", "metadata": { "service": "cloudkms.googleapis.com" } },
            { "@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.500s" }
        ] }),
    );
    let e = wrap(&*b, b"x").await.expect_err("quota");
    assert!(e.throttled && e.should_retry(), "{e:?}");
    assert_eq!(e.retry_after, Some(Duration::from_millis(1500)));
    assert!(e.detail.contains("RATE_LIMIT_EXCEEDED"), "{}", e.detail);
}
