use super::*;

const SECRET: &str = "TOP-SECRET-PEM";

fn creds_b64() -> String {
    let json = serde_json::json!({
        "type": "service_account",
        "client_email": "broker@p.iam.gserviceaccount.com",
        "private_key": SECRET,
        "private_key_id": "k1",
        "project_id": "p",
    });
    base64::engine::general_purpose::STANDARD.encode(json.to_string())
}

fn parse(s: &str) -> Result<GcpUri, String> {
    GcpUri::parse(&Url::parse(s).unwrap())
}

const KEY: &str = "gs:///projects/p/locations/global/keyRings/r/cryptoKeys/k";

#[test]
fn implicit() {
    let u = parse(&format!("{KEY}?AUTH=implicit")).unwrap();
    assert_eq!(u.id(), KEY);
    assert_eq!(
        u.key_name(),
        "projects/p/locations/global/keyRings/r/cryptoKeys/k"
    );
    assert!(matches!(u.auth(), GcpAuth::Implicit));
    assert!(u.redacted().contains("AUTH=implicit"));
}

#[test]
fn specified_credentials_are_never_shown() {
    let b64 = creds_b64();
    let enc: String = url::form_urlencoded::byte_serialize(b64.as_bytes()).collect();
    let u = parse(&format!("{KEY}?AUTH=specified&CREDENTIALS={enc}")).unwrap();
    assert_eq!(u.id(), KEY);
    for shown in [u.redacted(), format!("{u:?}"), format!("{:?}", u.auth())] {
        assert!(!shown.contains(&b64[..20]), "{shown}");
        assert!(!shown.contains(SECRET), "{shown}");
    }
    assert!(u.redacted().contains("CREDENTIALS=redacted"));
    // CREDENTIALS alone implies AUTH=specified; a raw `+` (decoded as space) still works.
    let u2 = parse(&format!("{KEY}?CREDENTIALS={b64}")).unwrap();
    assert_eq!(u, u2);
}

#[test]
fn bad_credentials_are_not_echoed() {
    let not_sa = base64::engine::general_purpose::STANDARD.encode(format!(
        r#"{{"type":"authorized_user","refresh_token":"{SECRET}"}}"#
    ));
    for bad in [
        format!("{SECRET}!!"),
        not_sa,
        base64::engine::general_purpose::STANDARD.encode(SECRET),
    ] {
        let e = parse(&format!("{KEY}?AUTH=specified&CREDENTIALS={bad}")).unwrap_err();
        assert!(!e.contains(SECRET) && !e.contains(&bad), "{e}");
    }
    let e = parse(&format!("{KEY}?eyJTOPSECRETSECRETSECRETSECRETSECRET")).unwrap_err();
    assert!(!e.contains("SECRET"), "{e}");
}

#[test]
fn auth_rules() {
    assert!(parse(KEY).unwrap_err().contains("AUTH=implicit"));
    assert!(parse(&format!("{KEY}?AUTH=specified")).is_err());
    // CockroachDB's meaning: implicit ignores CREDENTIALS.
    let u = parse(&format!("{KEY}?AUTH=implicit&CREDENTIALS={}", creds_b64())).unwrap();
    assert!(matches!(u.auth(), GcpAuth::Implicit));
    assert!(parse(&format!("{KEY}?AUTH=magic")).is_err());
    assert!(parse(&format!("{KEY}?AUTH=none")).is_err());
    assert!(parse(&format!(
        "{KEY}?AUTH=none&GCP_ENDPOINT=https://cloudkms.googleapis.com"
    ))
    .is_err());
    let u = parse(&format!(
        "{KEY}?AUTH=none&GCP_ENDPOINT=http://127.0.0.1:8080"
    ))
    .unwrap();
    assert_eq!(u.endpoint(), Some("http://127.0.0.1:8080"));
    assert!(u.redacted().contains("GCP_ENDPOINT=http"));
    assert!(parse(&format!("{KEY}?AUTH=none&GCP_ENDPOINT=http://localhost:1")).is_ok());
    assert!(parse(&format!("{KEY}?AUTH=none&GCP_ENDPOINT=http://[::1]:1/")).is_ok());
}

#[test]
fn endpoint_rules() {
    let ok = parse(&format!(
        "{KEY}?AUTH=implicit&GCP_ENDPOINT=https://kms.example.com/"
    ))
    .unwrap();
    assert_eq!(ok.endpoint(), Some("https://kms.example.com"));
    for bad in [
        "http://kms.example.com",
        "https://h/x",
        "ftp://h",
        "https://u:p@h",
        "nope",
    ] {
        assert!(
            parse(&format!("{KEY}?AUTH=implicit&GCP_ENDPOINT={bad}")).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn unknown_and_repeated_params_fail() {
    let e = parse(&format!("{KEY}?AUTH=implicit&REGION=x")).unwrap_err();
    assert!(
        e.contains("unknown parameter") && !e.contains("REGION"),
        "{e}"
    );
    assert!(parse(&format!("{KEY}?AUTH=implicit&AUTH=implicit"))
        .unwrap_err()
        .contains("twice"));
}

#[test]
fn path_rules() {
    for bad in [
        "gs://host/projects/p/locations/l/keyRings/r/cryptoKeys/k?AUTH=implicit",
        "gs:///projects/p/locations/l/keyRings/r?AUTH=implicit",
        "gs:///projects/p/locations/l/keyRings/r/cryptoKeys/?AUTH=implicit",
        "gs:///projects/p/locations/l/keyRings/r/cryptoKeys/k%2F1?AUTH=implicit",
        "gs:///project/p/locations/l/keyRings/r/cryptoKeys/k?AUTH=implicit",
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
    assert!(parse(
        "gs:///projects/example.com:p/locations/us-east1/keyRings/r_1/cryptoKeys/k-2?AUTH=implicit"
    )
    .is_ok());
}
