//! Failure modes through the backend: a stopped or hung Cloud KMS, server errors, and
//! corrupted responses (CRC32C checks), each Unreachable so that the daemon retries.

use std::time::Duration;

use kms_broker::backend::resilient::{Resilient, RetryPolicy};
use kms_broker::backend::FailureClass::Unreachable;
use kms_broker::backend::KmsBackend;
use kms_broker::secret::SecretBytes;
use serde_json::json;

use crate::common::must_return;
use crate::fake::Fake;
use crate::{aad, backend, class, unwrap, wrap};

#[tokio::test]
async fn a_stopped_or_hung_kms_is_unreachable_and_a_hang_is_cut_at_the_attempt_timeout() {
    let Some(mut fake) = Fake::start().await else {
        return;
    };
    fake.create_key("k").await;
    let b = backend(&fake.uri("k")).await;
    let ct = wrap(&*b, b"payload").await.expect("wrap");

    // A hung answer: the daemon's per-attempt timeout cuts it; the SDK does not retry.
    let policy = RetryPolicy {
        attempt_timeout: Duration::from_millis(500),
        deadline: Duration::from_millis(900),
        max_attempts: 1,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(20),
        ..RetryPolicy::default()
    };
    let r = Resilient::new(b.clone(), policy);
    fake.fault(json!({ "method": "GetCryptoKey", "action": "hang" }));
    let guard = Duration::from_secs(30);
    let e = must_return("GetCryptoKey", guard, r.check())
        .await
        .expect_err("hung");
    assert_eq!(e.class, Unreachable);
    assert!(e.detail.contains("attempt timed out"), "{}", e.detail);

    fake.kill();
    assert_eq!(
        class(must_return("GetCryptoKey", guard, b.check()).await),
        Unreachable
    );
    assert_eq!(
        class(must_return("Encrypt", guard, wrap(&*b, b"x")).await),
        Unreachable
    );
    let e = must_return("Decrypt", guard, unwrap(&*b, &ct))
        .await
        .expect_err("down");
    assert_eq!(e.class, Unreachable);
    assert!(e.detail.contains("Decrypt"), "{}", e.detail);

    // Back with its keys: usable again.
    fake.restart();
    assert_eq!(unwrap(&*b, &ct).await.expect("back").expose(), b"payload");
}

#[tokio::test]
async fn server_errors_are_unreachable_and_the_daemon_retries_them() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    fake.create_key("k").await;
    let b = backend(&fake.uri("k")).await;
    for (status, code) in [
        ("UNAVAILABLE", 503),
        ("RESOURCE_EXHAUSTED", 429),
        ("INTERNAL", 500),
        ("DEADLINE_EXCEEDED", 504),
    ] {
        fake.fault(
            json!({ "method": "Encrypt", "action": "error", "status": status, "code": code }),
        );
        let e = wrap(&*b, b"x").await.expect_err(status);
        assert_eq!(e.class, Unreachable, "{status}: {e}");
    }
    fake.fault(json!({ "method": "Encrypt", "action": "drop" }));
    assert_eq!(class(wrap(&*b, b"x").await), Unreachable);

    // One failure, then success: the daemon's retry policy absorbs it.
    let r = Resilient::new(b.clone(), RetryPolicy::default());
    fake.fault(
        json!({ "method": "Encrypt", "action": "error", "status": "UNAVAILABLE", "code": 503 }),
    );
    assert!(r
        .encrypt(&SecretBytes::copy_from(b"x"), &aad("n1"))
        .await
        .is_ok());
}

#[tokio::test]
async fn corrupted_responses_are_caught_and_retried() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    fake.create_key("k").await;
    let b = backend(&fake.uri("k")).await;
    let ct = wrap(&*b, b"payload").await.expect("wrap");
    for (method, field) in [
        ("Encrypt", "ciphertextCrc32c"),
        ("Encrypt", "ciphertext"),
        ("Encrypt", "verifiedPlaintextCrc32c"),
        ("Encrypt", "verifiedAdditionalAuthenticatedDataCrc32c"),
        ("Decrypt", "plaintextCrc32c"),
        ("Decrypt", "plaintext"),
    ] {
        fake.fault(json!({ "method": method, "action": "corrupt", "field": field }));
        let e = if method == "Encrypt" {
            wrap(&*b, b"x").await.map(|_| ())
        } else {
            unwrap(&*b, &ct).await.map(|_| ())
        }
        .expect_err(field);
        assert_eq!(e.class, Unreachable, "{field}: {e}");
        assert!(e.detail.contains("integrity"), "{field}: {e}");
    }
    // A damaged request: Cloud KMS checks our checksum and refuses (INVALID_ARGUMENT naming
    // the checksum), which is corruption in transit, not a bad blob.
    fake.fault(json!({ "method": "Decrypt", "action": "error", "status": "INVALID_ARGUMENT",
        "message": "The checksum in field ciphertext_crc32c did not match the data in field ciphertext." }));
    assert_eq!(class(unwrap(&*b, &ct).await), Unreachable);

    let r = Resilient::new(b.clone(), RetryPolicy::default());
    fake.fault(json!({ "method": "Decrypt", "action": "corrupt", "field": "plaintext" }));
    assert_eq!(
        r.decrypt(&ct.bytes, &ct.key_version, &aad("n1"))
            .await
            .expect("retried")
            .plaintext
            .expose(),
        b"payload"
    );
}
