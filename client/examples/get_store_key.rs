//! Fetches a store's key from a kms-broker daemon and prints its id and algorithm (never
//! the key itself); with `--out FILE`, also writes the active key as a CockroachDB store
//! key file (`key_id || key`), created mode 0600 and renamed into place atomically
//! ([`StoreKey::write_key_file`]).
//!
//! ```text
//! kms-broker serve --dev      # in another terminal: serves `dev-store` on .dev/broker.sock
//! cargo run -p kms-broker-client --example get_store_key -- unix:.dev/broker.sock dev-store --create --out store.key
//! ```
//!
//! Exit codes: 0 on success, 1 if the daemon refused or could not be reached, 2 on bad usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use kms_broker_client::{Client, ClientError, ClientOptions, KeyState, StoreKey};

const USAGE: &str = "usage: get_store_key ENDPOINT STORE_ID [--create] [--out FILE]\n  \
    ENDPOINT: unix:///path/to/broker.sock (or unix:relative/path)\n  \
    --create: make the store's key if it has none (only when initializing a new store)\n  \
    --out FILE: write the active key there (mode 0600, replaced atomically)";

struct Args {
    endpoint: String,
    store_id: String,
    create: bool,
    out: Option<PathBuf>,
}

fn parse_args(args: &[String]) -> Option<Args> {
    let [endpoint, store_id, rest @ ..] = args else {
        return None;
    };
    let mut parsed = Args {
        endpoint: endpoint.clone(),
        store_id: store_id.clone(),
        create: false,
        out: None,
    };
    let mut rest = rest.iter();
    while let Some(flag) = rest.next() {
        match flag.as_str() {
            "--create" => parsed.create = true,
            "--out" => parsed.out = Some(PathBuf::from(rest.next()?)),
            _ => return None,
        }
    }
    Some(parsed)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(Args {
        endpoint,
        store_id,
        create,
        out,
    }) = parse_args(&args)
    else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };

    // A short deadline: an interactive user would rather see the hint than wait 30 s.
    let opts = ClientOptions {
        startup_deadline: Duration::from_secs(3),
        ..ClientOptions::default()
    };
    let result = match Client::connect(&endpoint, opts).await {
        Ok(client) => client.get_store_key(&store_id, create).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(keys) => {
            print_key("active", &keys.active);
            for key in &keys.previous {
                print_key("previous", key);
            }
            if let Some(out) = out {
                if let Err(e) = keys.active.write_key_file(&out) {
                    eprintln!("error: cannot write {}: {e}", out.display());
                    return ExitCode::FAILURE;
                }
                println!("wrote {} (mode 0600)", out.display());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            if let Some(hint) = hint(&err) {
                eprintln!("hint: {hint}");
            }
            if matches!(err, ClientError::Config(_)) {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
            ExitCode::FAILURE
        }
    }
}

fn print_key(which: &str, key: &StoreKey) {
    println!(
        "{which}: key_id={} algorithm={}",
        key.key_id_hex(),
        key.algorithm
    );
}

fn hint(err: &ClientError) -> Option<&'static str> {
    match err {
        ClientError::Connect { .. } => Some(
            "is the daemon running? Start one with `kms-broker serve --dev` \
             (socket .dev/broker.sock, store dev-store) or `kms-broker serve --config FILE`",
        ),
        ClientError::KeyNotUsable { state, .. } => Some(match state {
            KeyState::Disabled => {
                "the KMS key is disabled: enable it at the KMS, no restart needed"
            }
            KeyState::Revoked => {
                "the daemon's access to the KMS key was taken away: restore it at the KMS"
            }
            _ => "the KMS key is gone: data under it cannot be read again",
        }),
        ClientError::VersionNotUsable { .. } => Some(
            "the KMS key version that wrapped the store key is off: re-enable it, then `kms-broker rewrap`",
        ),
        ClientError::Status { code, .. } => match code {
            kms_broker_client::Code::NotFound => {
                Some("the store is not configured, or has no key yet: pass --create to make one")
            }
            kms_broker_client::Code::PermissionDenied => {
                Some("the daemon's [[policy]] does not grant GetStoreKey on this store to your uid")
            }
            _ => None,
        },
        _ => None,
    }
}
