//! Backend-level: Cloud KMS's documented size limits (HSM keys: 8 KiB of plaintext and AAD
//! combined) and the ciphertext cap, refused as the request's fault, never the key's.

use std::collections::BTreeMap;

use kms_broker::backend::Aad;
use kms_broker::backend::FailureClass::{InvalidCiphertext, InvalidRequest};
use kms_broker::secret::SecretBytes;
use serde_json::json;

use crate::fake::Fake;
use crate::{aad, backend, daemon};

#[tokio::test]
async fn hsm_limit_before_and_after_the_level_is_known() {
    let Some(fake) = Fake::start().await else {
        return;
    };
    let hsm =
        json!({ "purpose": "ENCRYPT_DECRYPT", "versionTemplate": { "protectionLevel": "HSM" } });
    fake.create_key_with("hsm", hsm, false).await;
    fake.create_key("soft").await;
    let ctx: BTreeMap<String, String> = daemon::big_context().into_iter().collect();
    let big = Aad::new("db", ctx);
    let pt = SecretBytes::copy_from(&[1u8; 4096]);

    // Level not known yet: the request reaches Cloud KMS, whose INVALID_ARGUMENT is the
    // request's fault, never evidence about the key.
    let b = backend(&fake.uri("hsm")).await;
    assert!(b.check_size(4096, &big).is_ok(), "no refusal on a guess");
    let e = b.encrypt(&pt, &big).await.expect_err("over the HSM limit");
    assert_eq!((e.class, e.evidence()), (InvalidRequest, None), "{e}");
    assert!(e.detail.contains("INVALID_ARGUMENT"), "{}", e.detail);

    // Once known (from the check), refused before any call.
    assert!(b.check().await.expect("usable").detail.contains("HSM"));
    let e = b.check_size(4096, &big).expect_err("over the HSM limit");
    assert_eq!((e.class, e.evidence()), (InvalidRequest, None));
    let e = b.encrypt(&pt, &big).await.expect_err("over the HSM limit");
    assert!(e.detail.contains("HSM key"), "{}", e.detail);
    assert!(b
        .encrypt(&SecretBytes::copy_from(&[1u8; 2048]), &big)
        .await
        .is_ok());
    b.check().await.expect("still usable");

    // A software key takes the same request (64 KiB each for plaintext and AAD).
    let soft = backend(&fake.uri("soft")).await;
    soft.check().await.expect("usable");
    assert!(soft.check_size(4096, &big).is_ok());
    let ct = soft.encrypt(&pt, &big).await.expect("software key");
    assert_eq!(
        soft.decrypt(&ct.bytes, "", &big)
            .await
            .expect("unwrap")
            .plaintext
            .len(),
        4096
    );
}

#[tokio::test]
async fn over_long_ciphertexts_are_refused_without_a_call() {
    let Some(mut fake) = Fake::start().await else {
        return;
    };
    fake.create_key("k").await;
    let b = backend(&fake.uri("k")).await;
    fake.kill();
    // Stopped: anything that reached Cloud KMS would be UNREACHABLE.
    for bad in [vec![1u8; 8 * 1024 + 1], Vec::new()] {
        let e = b.decrypt(&bad, "", &aad("n1")).await.expect_err("refused");
        assert_eq!((e.class, e.evidence()), (InvalidCiphertext, None));
    }
}
