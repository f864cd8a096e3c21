use super::*;

fn service(code: Code, msg: &str) -> GaxError {
    GaxError::service(Status::default().set_code(code).set_message(msg))
}

#[test]
fn states_from_status() {
    let disabled = "projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1 is not enabled, current state is: DISABLED.";
    let destroyed = disabled.replace("DISABLED", "DESTROYED");
    let scheduled = disabled.replace("DISABLED", "DESTROY_SCHEDULED");
    let pending = disabled.replace("DISABLED", "PENDING_GENERATION");
    let cases = [
        (Op::Encrypt, Code::FailedPrecondition, disabled, FailureClass::Disabled),
        (Op::Decrypt, Code::FailedPrecondition, &destroyed, FailureClass::Destroyed),
        (Op::Encrypt, Code::FailedPrecondition, &scheduled, FailureClass::Destroyed),
        (Op::Encrypt, Code::FailedPrecondition, &pending, FailureClass::Unreachable),
        (Op::GetCryptoKey, Code::PermissionDenied, "Permission denied", FailureClass::Revoked),
        (Op::Encrypt, Code::Unauthenticated, "bad token", FailureClass::Revoked),
        (Op::GetCryptoKey, Code::NotFound, "not found", FailureClass::Destroyed),
        (Op::Decrypt, Code::InvalidArgument, "Decryption failed", FailureClass::InvalidCiphertext),
        (
            Op::Decrypt,
            Code::InvalidArgument,
            "The checksum in field ciphertext_crc32c did not match the data in field ciphertext.",
            FailureClass::Unreachable,
        ),
        (Op::Encrypt, Code::InvalidArgument, "The combined length of plaintext and additional_authenticated_data must be at most 8192 bytes for HSM keys.", FailureClass::InvalidRequest),
        (Op::GetCryptoKey, Code::InvalidArgument, "bad name", FailureClass::Disabled),
        (Op::Encrypt, Code::Unavailable, "", FailureClass::Unreachable),
        (Op::Encrypt, Code::ResourceExhausted, "quota", FailureClass::Unreachable),
        (Op::Decrypt, Code::DeadlineExceeded, "", FailureClass::Unreachable),
        (Op::Decrypt, Code::Internal, "", FailureClass::Unreachable),
    ];
    for (op, code, msg, want) in cases {
        let got = classify(op, &service(code, msg));
        assert_eq!(got.class, want, "{op:?} {code:?} {msg}");
        assert_eq!(
            got.throttled,
            code == Code::ResourceExhausted,
            "{op:?} {code:?}"
        );
        assert!(got.detail.starts_with(op.name()), "{}", got.detail);
    }
}

fn with_details(code: Code, msg: &str, details: serde_json::Value) -> GaxError {
    let mut status = Status::default().set_code(code).set_message(msg);
    status.details = serde_json::from_value(details).expect("google.rpc details");
    GaxError::service(status)
}

#[test]
fn resource_names_never_decide_the_state() {
    // A ring named like a state, and a message that is not Cloud KMS's state sentence.
    let version = "projects/p/locations/l/keyRings/destroyed-ring/cryptoKeys/destroy_scheduled/cryptoKeyVersions/1";
    let disabled = format!("{version} is not enabled, current state is: DISABLED.");
    for op in [Op::Encrypt, Op::Decrypt] {
        let e = classify(op, &service(Code::FailedPrecondition, &disabled));
        assert_eq!(e.class, FailureClass::Disabled, "{op:?} {}", e.detail);
    }
    let e = classify(
        Op::Encrypt,
        &service(
            Code::FailedPrecondition,
            &format!("{version} has no primary version."),
        ),
    );
    assert_eq!(e.class, FailureClass::Disabled);
    // A bad blob under a ring whose name mentions checksums is still a bad blob.
    let e = classify(
        Op::Decrypt,
        &service(
            Code::InvalidArgument,
            "Decryption failed: verify that 'name' refers to the correct CryptoKey (keyRings/crc32c-checksum).",
        ),
    );
    assert_eq!(e.class, FailureClass::InvalidCiphertext);
    // The checksum read from a BadRequest naming the field.
    let e = classify(
        Op::Decrypt,
        &with_details(
            Code::InvalidArgument,
            "bad request",
            serde_json::json!([{ "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{ "field": "ciphertext_crc32c", "description": "mismatch" }] }]),
        ),
    );
    assert_eq!(
        (e.class, e.should_retry()),
        (FailureClass::Unreachable, true)
    );
}

#[test]
fn a_disabled_project_is_not_a_revoked_key() {
    let msg = "Cloud Key Management Service (KMS) API has not been used in project 123 before or it is disabled.";
    for reason in ["SERVICE_DISABLED", "BILLING_DISABLED"] {
        let details = serde_json::json!([{ "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": reason, "domain": "googleapis.com",
            "metadata": { "service": "cloudkms.googleapis.com", "consumer": "projects/123" } }]);
        for op in [Op::Encrypt, Op::Decrypt, Op::GetCryptoKey] {
            let e = classify(
                op,
                &with_details(Code::PermissionDenied, msg, details.clone()),
            );
            assert_eq!(e.class, FailureClass::Unreachable, "{reason} {op:?}");
            assert!(!e.should_retry(), "{reason}: retrying cannot enable an API");
            assert!(e.detail.contains(reason), "{}", e.detail);
            assert!(e.detail.contains("not a revocation"), "{}", e.detail);
        }
    }
    // The usual IAM denial stays a revocation, and says it may be a missing key.
    let denied = with_details(
        Code::PermissionDenied,
        "Permission 'cloudkms.cryptoKeyVersions.useToEncrypt' denied on resource 'projects/p/locations/l/keyRings/r/cryptoKeys/k' (or it may not exist).",
        serde_json::json!([{ "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "IAM_PERMISSION_DENIED", "domain": "iam.googleapis.com" }]),
    );
    let e = classify(Op::Encrypt, &denied);
    assert_eq!(e.class, FailureClass::Revoked);
    assert!(
        e.detail.contains("or the key does not exist"),
        "{}",
        e.detail
    );
    let e = classify(
        Op::GetCryptoKey,
        &service(
            Code::NotFound,
            "CryptoKey projects/p/locations/l/keyRings/r/cryptoKeys/k not found.",
        ),
    );
    assert_eq!(e.class, FailureClass::Destroyed);
    assert!(e.detail.contains("does not exist"), "{}", e.detail);
}

#[test]
fn ekm_permission_loss_and_ekm_outage_differ() {
    let ekm = |domain: &str| {
        with_details(
            Code::FailedPrecondition,
            "Permission was denied when accessing the key.",
            serde_json::json!([{ "@type": "type.googleapis.com/google.rpc.PreconditionFailure",
                "violations": [
                    { "type": "EKM_KEY_STATE", "subject": "projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1", "description": "ENABLED" },
                    { "type": domain, "subject": "https://ekm.example/v0/keys/k", "description": "the EKM said no" }
                ] }]),
        )
    };
    for op in [Op::Encrypt, Op::Decrypt] {
        let e = classify(op, &ekm("EXTERNAL_PERMISSION_DENIED"));
        assert_eq!(
            e.evidence(),
            Some(crate::state::KeyState::Revoked),
            "{op:?}"
        );
        let e = classify(op, &ekm("EXTERNAL_UNAVAILABLE"));
        assert_eq!(e.class, FailureClass::Unreachable, "{op:?}");
        assert!(e.detail.contains("EKM"), "{}", e.detail);
    }
}

#[test]
fn retries_follow_googles_guidance() {
    for code in [Code::Unavailable, Code::DeadlineExceeded, Code::Internal] {
        let e = classify(Op::Encrypt, &service(code, ""));
        assert!(e.should_retry() && !e.throttled, "{code:?}");
    }
    for code in [
        Code::Unimplemented,
        Code::Unknown,
        Code::Aborted,
        Code::DataLoss,
        Code::Cancelled,
        Code::OutOfRange,
    ] {
        let e = classify(Op::Encrypt, &service(code, ""));
        assert_eq!(e.class, FailureClass::Unreachable, "{code:?}");
        assert!(!e.should_retry(), "{code:?} is not retried");
    }
    // Quota: throttled, with RetryInfo's delay where Google gives one.
    let quota = with_details(
        Code::ResourceExhausted,
        "Quota exceeded for quota metric 'Cryptographic requests'.",
        serde_json::json!([
            { "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT_EXCEEDED", "domain": "googleapis.com" },
            { "@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2.500s" }
        ]),
    );
    let e = classify(Op::Encrypt, &quota);
    assert!(e.throttled && e.should_retry(), "{e:?}");
    assert_eq!(e.retry_after, Some(Duration::from_millis(2500)));
    let e = classify(Op::Encrypt, &service(Code::ResourceExhausted, "quota"));
    assert_eq!((e.throttled, e.retry_after), (true, None));
}

#[test]
fn only_key_evidence_is_evidence() {
    use crate::state::KeyState;
    let disabled = "projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1 is not enabled, current state is: DISABLED.";
    // A decrypt refused because the blob's version is off: refused, but not the key.
    let e = classify(Op::Decrypt, &service(Code::FailedPrecondition, disabled));
    assert_eq!((e.class, e.evidence()), (FailureClass::Disabled, None));
    // Encrypt uses the primary: that is the key's state.
    let e = classify(Op::Encrypt, &service(Code::FailedPrecondition, disabled));
    assert_eq!(e.evidence(), Some(KeyState::Disabled));
    // A denial on a crypto call is the whole key's, at once.
    for op in [Op::Encrypt, Op::Decrypt] {
        let e = classify(op, &service(Code::PermissionDenied, "Permission denied"));
        assert_eq!(e.evidence(), Some(KeyState::Revoked), "{op:?}");
    }
    // What the caller shaped is never evidence.
    for op in [Op::Encrypt, Op::Decrypt] {
        let e = classify(op, &service(Code::InvalidArgument, "too large"));
        assert_eq!(e.evidence(), None, "{op:?}");
    }
}

#[test]
fn bare_http_statuses() {
    let http = |code| GaxError::http(code, Default::default(), "<html>".into());
    assert_eq!(
        classify(Op::Encrypt, &http(403)).class,
        FailureClass::Revoked
    );
    assert_eq!(
        classify(Op::Encrypt, &http(404)).class,
        FailureClass::Unreachable
    );
    assert_eq!(
        classify(Op::Encrypt, &http(502)).class,
        FailureClass::Unreachable
    );
}

#[test]
fn long_messages_are_cut() {
    let e = classify(Op::Encrypt, &service(Code::Internal, &"x".repeat(1000)));
    assert!(e.detail.len() < 300);
}
