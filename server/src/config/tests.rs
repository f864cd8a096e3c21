use super::*;
use crate::envelope::MAX_ENTRIES;

const GOOD: &str = r#"
[server]
unix_socket = "broker.sock"
state_dir = "state"

[keys.primary]
uris = ["file:///etc/kms/key.bin"]

[stores.store-1]
key = "primary"

[[policy]]
peer = "uid:0"
allow = ["WrapKey", "GetStoreKey"]
"#;

fn parse(t: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/kms-broker/config.toml"), t)
}

#[test]
fn good_config_and_relative_paths() {
    let c = parse(GOOD).unwrap();
    assert_eq!(
        c.server.unix_socket,
        Path::new("/etc/kms-broker/broker.sock")
    );
    assert_eq!(c.stores.len(), 1);
    assert_eq!(c.revocation.grace_period, Duration::from_secs(900));
}

#[test]
fn unknown_field_names_file_and_field() {
    let e = parse(&GOOD.replace("state_dir", "state_dri")).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("/etc/kms-broker/config.toml"), "{s}");
    assert!(s.contains("state_dri"), "{s}");
}

#[test]
fn store_naming_a_missing_key() {
    let e = parse(&GOOD.replace("key = \"primary\"", "key = \"nope\"")).unwrap_err();
    assert_eq!(e.field, "stores.store-1.key");
}

#[test]
fn store_key_for_a_cert_peer_is_refused() {
    let e = parse(&GOOD.replace("uid:0", "cert:backup")).unwrap_err();
    assert!(e.field.starts_with("policy[0]"), "{e}");
    assert!(e.problem.contains("GetStoreKey"), "{e}");
}

#[test]
fn a_key_has_at_most_as_many_uris_as_an_envelope_holds() {
    let uris = |n: usize| {
        (0..n)
            .map(|i| format!("\"file:///k/{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let with = |n: usize| {
        let line = GOOD
            .lines()
            .find(|l| l.starts_with("uris"))
            .expect("GOOD has a uris line");
        GOOD.replace(line, &format!("uris = [{}]", uris(n)))
    };
    assert_eq!(
        parse(&with(MAX_ENTRIES))
            .unwrap()
            .keys
            .values()
            .next()
            .unwrap()
            .uris
            .len(),
        MAX_ENTRIES
    );
    let e = parse(&with(MAX_ENTRIES + 1)).unwrap_err();
    assert_eq!(e.field, "keys.primary.uris");
    assert!(e.problem.contains("at most 16"), "{e}");
}

#[test]
fn tcp_needs_tls() {
    let e = parse(&GOOD.replace("state_dir", "tcp_listen = \"127.0.0.1:7443\"\nstate_dir"))
        .unwrap_err();
    assert_eq!(e.field, "tls");
}

#[test]
fn kms_and_revocation_values_that_cannot_work_are_named() {
    let cases = [
        ("[kms]\nmax_in_flight = 0", "kms.max_in_flight"),
        ("[kms]\nmax_attempts = 0", "kms"),
        ("[kms]\nrate_per_second = -1.0", "kms.rate_per_second"),
        (
            "[revocation]\npoll_interval = \"10ms\"",
            "revocation.poll_interval",
        ),
        (
            "[revocation]\npoll_interval = \"10s\"\ndegraded_poll_interval = \"20s\"",
            "revocation.degraded_poll_interval",
        ),
    ];
    for (section, field) in cases {
        let e = parse(&format!("{GOOD}\n{section}\n")).unwrap_err();
        assert_eq!(e.field, field, "{section}: {e}");
    }
    let c = parse(&format!("{GOOD}\n[revocation]\npoll_interval = \"60s\"\n")).unwrap();
    assert_eq!(c.revocation.degraded_poll_interval, Duration::from_secs(10));
    assert_eq!(c.max_in_flight, 256);
    assert_eq!(c.hedge_after, Duration::from_millis(250));
}

/// serde's own message quotes a value of the wrong type, and a URI value carries secrets:
/// the error (exit-64 line, reload log line, audit record) names the field, never the value.
#[test]
fn a_value_of_the_wrong_type_is_never_echoed() {
    for (from, to) in [
        (
            "uris = [\"file:///etc/kms/key.bin\"]",
            "uris = \"aws:///k?REGION=x&AWS_SECRET_ACCESS_KEY=s3cr3tVALUE\"",
        ),
        (
            "uris = [\"file:///etc/kms/key.bin\"]",
            "uris = [\"file:///k\"]\nwrap_mode = { s = \"s3cr3tVALUE\" }",
        ),
        (
            "uris = [\"file:///etc/kms/key.bin\"]",
            "uris = \"s3cr3t\\\"VALUE\\\\\"",
        ),
    ] {
        let e = parse(&GOOD.replace(from, to)).unwrap_err();
        let shown = e.to_string();
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(!shown.contains("VALUE"), "{shown}");
        assert!(shown.contains("invalid type"), "{shown}");
    }
    let e = parse(&GOOD.replace(
        "uris = [\"file:///etc/kms/key.bin\"]",
        "uris = \"s3cr3t\\\"VALUE\"",
    ))
    .unwrap_err();
    assert_eq!(
        e.problem, "invalid type: string \"…\", expected a sequence",
        "the kind of value and what was expected are kept"
    );
}
