//! `aws:///` URIs: refusals at config load that never echo a secret (an unknown parameter's
//! name included), plain http only towards loopback, and redacted forms.

use kms_broker::backend::connect;
use kms_broker::backend::FailureClass::Unreachable;
use kms_broker::key_uri::KeyUri;

use crate::moto::{SECRET, TOKEN};
use crate::{class, common};

#[test]
fn uri_errors_are_caught_at_parse_and_never_echo_secrets() {
    let k = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    for (uri, want) in [
        (format!("aws:///{k}?AUTH=implicit"), "REGION"),
        (
            format!("aws:///{k}?REGION=us-east-1&AUTH=specified&AWS_SECRET_ACCESS_KEY={SECRET}"),
            "AWS_ACCESS_KEY_ID",
        ),
        (
            format!("aws:///{k}?REGION=us-east-1&AUTH=specified"),
            "AWS_SECRET_ACCESS_KEY",
        ),
        (
            format!("aws:///{k}?REGION=us-east-1&AUTH=implicit&AWS_SECRET_KEY={SECRET}"),
            "unknown parameter",
        ),
        (
            format!("aws:///{k}?REGION=us-west-2&AUTH=implicit"),
            "region",
        ),
        // Plain http only towards loopback: store keys would cross the network in clear.
        (
            format!(
                "aws:///{k}?REGION=us-east-1&AUTH=implicit&AWS_ENDPOINT=http://kms.internal:4566"
            ),
            "only towards",
        ),
        (
            format!("aws:///{k}?REGION=us-east-1&AUTH=implicit&AWS_ENDPOINT=http://192.168.1.5"),
            "only towards",
        ),
        // An unknown name is never echoed: it may be a pasted secret.
        (
            format!("aws:///{k}?REGION=us-east-1&AUTH=implicit&{SECRET}=1"),
            "unknown parameter",
        ),
    ] {
        let e = KeyUri::parse(&uri).expect_err(&uri);
        assert!(e.contains(want), "{uri}: {e}");
        assert!(!e.contains(SECRET), "{e}");
    }
}

#[tokio::test]
async fn secrets_never_show_in_debug_or_redacted_forms() {
    let port = common::standins::free_port();
    let uri = format!(
        "aws:///alias/k?REGION=us-east-1&AUTH=specified&AWS_ACCESS_KEY_ID=AKIDSHOWN&AWS_SECRET_ACCESS_KEY={SECRET}&AWS_SESSION_TOKEN={TOKEN}&AWS_ENDPOINT=http://127.0.0.1:{port}"
    );
    let parsed = KeyUri::parse(&uri).expect("parses");
    assert_eq!(parsed.id(), "aws:///alias/k");
    let b = connect(&parsed)
        .await
        .expect("builds without contacting AWS");
    let shown = format!("{parsed:?} {} {b:?}", parsed.redacted());
    assert!(!shown.contains(SECRET) && !shown.contains(TOKEN), "{shown}");
    // Public parameters stay visible, as written.
    assert!(
        shown.contains("AKIDSHOWN")
            && shown.contains(&format!("AWS_ENDPOINT=http://127.0.0.1:{port}")),
        "{shown}"
    );
    // Nothing listens there: the failure's detail is checked by `class`.
    assert_eq!(class(b.check().await), Unreachable);
}
