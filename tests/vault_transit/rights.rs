//! Backend-level: the token's rights (a revoked token, a policy cut to `read`, a token
//! without Vault's `default` policy) and what is refused before any call.

use kms_broker::backend::FailureClass;

use crate::bao::{self, Bao};
use crate::{aad, backend, class, unwrap, wrap};

#[tokio::test]
async fn revoked_token_or_policy_is_revoked() {
    let Some(bao) = Bao::start() else { return };
    let (uri, token) = bao.setup("k");
    let b = backend(&uri).await;
    let ct = wrap(&b, b"x").await.expect("wrap");
    bao.cli(&["token", "revoke", &token]);
    assert_eq!(class(b.check().await), FailureClass::Revoked);
    assert_eq!(class(wrap(&b, b"y").await), FailureClass::Revoked);
    assert_eq!(class(unwrap(&b, &ct).await), FailureClass::Revoked);

    // The other way to take permission away: the policy loses the key.
    bao.create_key("k2", &[]);
    let token2 = bao.daemon_token("k2", "1h");
    let b2 = backend(&bao.uri("k2", &bao.token_file(&token2))).await;
    let ct2 = wrap(&b2, b"z").await.expect("wrap");
    bao.policy(
        "daemon-k2",
        "path \"transit/keys/k2\" { capabilities = [\"read\"] }\n",
    );
    // Reading the key still works, but the check asks for the rights wrap and unwrap
    // need (sys/capabilities-self), and a real call's 403 is the whole key's.
    let e = b2
        .check()
        .await
        .expect_err("encrypt and decrypt rights are gone");
    assert_eq!(e.class, FailureClass::Revoked);
    assert!(e.detail.contains("transit/encrypt/k2"), "{}", e.detail);
    let e = wrap(&b2, b"y").await.expect_err("no encrypt right");
    assert_eq!((e.class, e.version_only), (FailureClass::Revoked, false));
    let e = unwrap(&b2, &ct2).await.expect_err("no decrypt right");
    assert_eq!((e.class, e.version_only), (FailureClass::Revoked, false));
    bao.cli(&["policy", "delete", "daemon-k2"]);
    assert_eq!(class(b2.check().await), FailureClass::Revoked);
}

#[tokio::test]
async fn a_token_without_the_default_policy_is_not_misread_as_revoked() {
    // capabilities-self (and lookup-self) come from Vault's `default` policy. Without it
    // the rights cannot be checked ahead of a call: the key stays ACTIVE and the detail
    // says so; a lost right then shows at the next wrap or unwrap, as REVOKED.
    let Some(bao) = Bao::start() else { return };
    bao.create_key("k", &[]);
    bao.policy("daemon-k", &bao::daemon_policy("k"));
    let token = bao.token(&["-policy=daemon-k", "-no-default-policy", "-ttl=1h"]);
    let b = backend(&bao.uri("k", &bao.token_file(&token))).await;
    let health = b.check().await.expect("usable");
    assert!(
        health.detail.contains("capabilities-self refused"),
        "{}",
        health.detail
    );
    let ct = wrap(&b, b"x").await.expect("wrap");
    assert!(unwrap(&b, &ct).await.expect("unwrap").ct_eq(b"x"));
}

#[tokio::test]
async fn over_long_or_foreign_ciphertexts_are_refused_without_a_call() {
    let Some(mut bao) = Bao::start() else { return };
    let (uri, _) = bao.setup("k");
    let b = backend(&uri).await;
    b.check().await.expect("usable");
    // Stopped: anything that reached Vault would be UNREACHABLE, not InvalidCiphertext.
    bao.kill();
    let long = format!("vault:v1:{}", "A".repeat(12 * 1024));
    for bad in [
        long.as_bytes(),
        b"not vault",
        b"vault:v1:",
        &[0xff, 0xfe][..],
    ] {
        let e = b.decrypt(bad, "", &aad("n1")).await.expect_err("refused");
        assert_eq!(
            (e.class, e.evidence()),
            (FailureClass::InvalidCiphertext, None)
        );
    }
}
