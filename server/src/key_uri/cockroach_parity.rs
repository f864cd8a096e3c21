//! CockroachDB's key-URI forms (`pkg/cloud/gcp/gcp_kms.go`, `pkg/cloud/amazon/aws_kms.go`),
//! each parsed to the meaning CockroachDB gives it; and the envelope id, which must not
//! depend on the spelling of the scheme or on a version suffix.

use base64::Engine;

use super::KeyUri;
use crate::backend::aws::AwsUri;
use crate::backend::gcp::GcpUri;

const GK: &str = "projects/p/locations/global/keyRings/r/cryptoKeys/k";
const GID: &str = "gs:///projects/p/locations/global/keyRings/r/cryptoKeys/k";
const ARN: &str = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
/// Every secret below holds this, so one check covers redaction and errors.
const MARK: &str = "s3cr3t";

/// (query, auth, impersonated target, delegates, endpoint)
type GcpCase = (
    String,
    &'static str,
    Option<String>,
    Vec<String>,
    Option<&'static str>,
);

/// (query, region, auth, endpoint, roles, the secret key the SDK gets)
type AwsCase<'a> = (
    String,
    &'static str,
    &'static str,
    Option<&'static str>,
    Vec<&'static str>,
    Option<&'a str>,
);

fn creds() -> String {
    let json = serde_json::json!({
        "type": "service_account",
        "client_email": "broker@p.iam.gserviceaccount.com",
        "private_key": MARK,
    });
    let b64 = base64::engine::general_purpose::STANDARD.encode(json.to_string());
    url::form_urlencoded::byte_serialize(b64.as_bytes()).collect()
}

fn parse(uri: &str) -> KeyUri {
    let u = KeyUri::parse(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
    for shown in [u.redacted(), format!("{u:?}"), u.id()] {
        assert!(!shown.contains(MARK), "{uri} shows a secret: {shown}");
        assert!(
            !shown.contains(&creds()[..16]),
            "{uri} shows CREDENTIALS: {shown}"
        );
    }
    u
}

fn gcp(uri: &str) -> GcpUri {
    match parse(uri) {
        KeyUri::Gcp(g) => g,
        other => panic!("{uri}: {other:?}"),
    }
}

fn aws(uri: &str) -> AwsUri {
    match parse(uri) {
        KeyUri::Aws(a) => a,
        other => panic!("{uri}: {other:?}"),
    }
}

#[test]
fn gcp_forms() {
    let c = creds();
    let sa = |n: &str| format!("{n}@p.iam.gserviceaccount.com");
    let chain = format!("{},{},{}", sa("d1"), sa("d2"), sa("t"));
    let cases: Vec<GcpCase> = vec![
        ("AUTH=implicit".into(), "Implicit", None, vec![], None),
        (format!("CREDENTIALS={c}"), "Specified", None, vec![], None),
        (
            format!("AUTH=specified&CREDENTIALS={c}"),
            "Specified",
            None,
            vec![],
            None,
        ),
        (
            format!("BEARER_TOKEN=ya29.{MARK}"),
            "Bearer",
            None,
            vec![],
            None,
        ),
        (
            format!("AUTH=specified&BEARER_TOKEN=ya29.{MARK}"),
            "Bearer",
            None,
            vec![],
            None,
        ),
        // CockroachDB: CREDENTIALS wins over BEARER_TOKEN; implicit ignores both.
        (
            format!("CREDENTIALS={c}&BEARER_TOKEN=ya29.{MARK}"),
            "Specified",
            None,
            vec![],
            None,
        ),
        (
            format!("AUTH=implicit&BEARER_TOKEN=ya29.{MARK}"),
            "Implicit",
            None,
            vec![],
            None,
        ),
        (
            format!("AUTH=implicit&ASSUME_ROLE={}", sa("t")),
            "Implicit",
            Some(sa("t")),
            vec![],
            None,
        ),
        (
            format!("AUTH=implicit&ASSUME_ROLE={chain}"),
            "Implicit",
            Some(sa("t")),
            vec![sa("d1"), sa("d2")],
            None,
        ),
        (
            format!("BEARER_TOKEN=ya29.{MARK}&ASSUME_ROLE={chain}"),
            "Bearer",
            Some(sa("t")),
            vec![sa("d1"), sa("d2")],
            None,
        ),
        (
            "AUTH=implicit&GCP_ENDPOINT=https://kms.example.com".into(),
            "Implicit",
            None,
            vec![],
            Some("https://kms.example.com"),
        ),
    ];
    for (query, auth, target, delegates, endpoint) in cases {
        for scheme in ["gs", "gcp-kms"] {
            for version in ["", "/cryptoKeyVersions/7"] {
                let uri = format!("{scheme}:///{GK}{version}?{query}");
                let u = gcp(&uri);
                assert_eq!(u.key_name(), GK, "{uri}");
                assert_eq!(parse(&uri).id(), GID, "{uri}");
                assert_eq!(
                    format!("{:?}", u.auth()).split('(').next(),
                    Some(auth),
                    "{uri}"
                );
                assert_eq!(u.impersonate().map(|i| i.target.clone()), target, "{uri}");
                let got = u
                    .impersonate()
                    .map(|i| i.delegates.clone())
                    .unwrap_or_default();
                assert_eq!(got, delegates, "{uri}");
                assert_eq!(u.endpoint(), endpoint, "{uri}");
                // The delegation chain is not secret: an operator needs to see it.
                if target.is_some() {
                    assert!(
                        u.redacted().contains("ASSUME_ROLE=t@")
                            || u.redacted().contains("ASSUME_ROLE=d1@"),
                        "{uri}"
                    );
                }
            }
        }
    }
}

#[test]
fn gcp_refusals_name_what_is_missing() {
    // Each of these CockroachDB refuses too (or, for the last two, would fail at the first
    // call); none may echo a secret.
    let cases = [
        ("", "BEARER_TOKEN"),
        ("AUTH=specified", "CREDENTIALS=<base64"),
        ("AUTH=specified", "or BEARER_TOKEN"),
        ("AUTH=assume", "AUTH must be"),
        ("AUTH=implicit&ASSUME_ROLE=a@p,,t@p", "ASSUME_ROLE"),
        ("AUTH=implicit&ASSUME_ROLE=s3cr3t%20x", "ASSUME_ROLE"),
        ("AUTH=implicit&BEARER=s3cr3t", "unknown parameter"),
    ];
    for (query, want) in cases {
        for scheme in ["gs", "gcp-kms"] {
            let uri = format!("{scheme}:///{GK}?{query}");
            let e = KeyUri::parse(&uri).unwrap_err();
            assert!(e.contains(want), "{uri}: {e}");
            assert!(!e.contains(MARK), "{uri}: {e}");
        }
    }
    let e = KeyUri::parse("gcp-kms:///?AUTH=implicit").unwrap_err();
    assert!(e.contains("must name a CryptoKey"), "{e}");
}

#[test]
fn aws_forms() {
    let keys = format!("AWS_ACCESS_KEY_ID=AKIDPUBLIC&AWS_SECRET_ACCESS_KEY=ab+{MARK}/Q");
    let ep = "AWS_ENDPOINT=http://127.0.0.1:4566";
    let (d, t) = ("arn:aws:iam::1:role/d", "arn:aws:iam::2:role/t");
    let plus = format!("ab+{MARK}/Q");
    let cases: Vec<AwsCase> = vec![
        ("REGION=us-east-1&AUTH=implicit".into(), "us-east-1", "implicit", None, vec![], None),
        // A raw `+` arrives as a space, which CockroachDB reads back as `+` (the secret only).
        (format!("REGION=us-east-1&{keys}"), "us-east-1", "specified", None, vec![], Some(plus.as_str())),
        (
            format!("REGION=us-east-1&AUTH=specified&AWS_ACCESS_KEY_ID=A&AWS_SECRET_ACCESS_KEY=ab%2B{MARK}%2FQ"),
            "us-east-1",
            "specified",
            None,
            vec![],
            Some(plus.as_str()),
        ),
        (
            format!("REGION=us-east-1&AWS_ACCESS_KEY_ID=A&AWS_SECRET_ACCESS_KEY=ab%20{MARK}/Q"),
            "us-east-1",
            "specified",
            None,
            vec![],
            Some(plus.as_str()),
        ),
        // CockroachDB: implicit ignores keys in the URI.
        (format!("REGION=us-east-1&AUTH=implicit&{keys}"), "us-east-1", "implicit", None, vec![], None),
        // CockroachDB: a custom endpoint without REGION signs for "default-region".
        (format!("AUTH=implicit&{ep}"), "default-region", "implicit", Some("http://127.0.0.1:4566"), vec![], None),
        (
            format!("REGION=us-east-1&AUTH=implicit&ASSUME_ROLE={d},{t}"),
            "us-east-1",
            "implicit",
            None,
            vec![d, t],
            None,
        ),
    ];
    for (query, region, auth, endpoint, roles, secret) in cases {
        for scheme in ["aws", "aws-kms"] {
            let uri = format!("{scheme}:///{ARN}?{query}");
            let u = aws(&uri);
            assert_eq!(parse(&uri).id(), format!("aws:///{ARN}"), "{uri}");
            assert_eq!(u.key(), ARN, "{uri}");
            assert_eq!((u.region(), u.auth_mode()), (region, auth), "{uri}");
            assert_eq!(u.endpoint(), endpoint, "{uri}");
            assert_eq!(u.roles(), roles, "{uri}");
            assert_eq!(u.secrets().first().copied(), secret, "{uri}");
        }
    }
    // The session token keeps its spaces: CockroachDB mends only the secret key.
    let u = aws(&format!(
        "aws-kms:///{ARN}?REGION=us-east-1&AWS_ACCESS_KEY_ID=A&AWS_SECRET_ACCESS_KEY=x&AWS_SESSION_TOKEN=a+{MARK}"
    ));
    assert_eq!(u.secrets(), vec!["x", format!("a {MARK}").as_str()]);
}

#[test]
fn aws_refusals_name_what_is_missing() {
    let cases = [
        ("AUTH=implicit", "REGION is required"),
        ("REGION=us-east-1", "AWS_SECRET_ACCESS_KEY"),
        (
            "REGION=us-east-1&AWS_SECRET_ACCESS_KEY=s3cr3t",
            "AWS_ACCESS_KEY_ID",
        ),
        ("REGION=us-east-1&AUTH=s3cr3t", "AUTH must be"),
        ("REGION=eu-west-1&AUTH=implicit", "region"),
    ];
    for (query, want) in cases {
        for scheme in ["aws", "aws-kms"] {
            let uri = format!("{scheme}:///{ARN}?{query}");
            let e = KeyUri::parse(&uri).unwrap_err();
            assert!(e.contains(want), "{uri}: {e}");
            assert!(!e.contains(MARK), "{uri}: {e}");
        }
    }
}

#[test]
fn a_blob_wrapped_under_one_spelling_unwraps_under_the_other() {
    let ids = |uris: &[&str]| -> Vec<String> { uris.iter().map(|u| parse(u).id()).collect() };
    let g = ids(&[
        &format!("gs:///{GK}?AUTH=implicit"),
        &format!("gcp-kms:///{GK}?AUTH=implicit"),
        &format!("gcp-kms:///{GK}/cryptoKeyVersions/12?BEARER_TOKEN=t"),
    ]);
    assert!(g.iter().all(|id| id == GID), "{g:?}");
    let a = ids(&[
        &format!("aws:///{ARN}?REGION=us-east-1&AUTH=implicit"),
        &format!("aws-kms:///{ARN}?REGION=us-east-1&AUTH=implicit"),
    ]);
    assert!(a.iter().all(|id| *id == format!("aws:///{ARN}")), "{a:?}");
    // Distinct keys keep distinct ids.
    assert_ne!(parse(&format!("gs:///{GK}2?AUTH=implicit")).id(), GID);
}
