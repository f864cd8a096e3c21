//! UnwrapKey's KMS work: ask the blob's configured URIs, fastest usable first, hedging
//! to the next when one is slow, each at most once.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use super::{kms_error, worse, Broker, Unwrapped};
use crate::backend::{Aad, BackendError, Decrypted, FailureClass, KmsBackend};
use crate::envelope::{Entry, Envelope};
use crate::error::Error;
use crate::revocation::{KmsUri, Source, Ticket};

/// One Decrypt in flight: which URI and entry, its ticket, how long it took, the answer.
type DecryptAttempt<'a> = BoxFuture<
    'a,
    (
        &'a KmsUri,
        &'a Entry,
        Ticket,
        Duration,
        Result<Decrypted, BackendError>,
    ),
>;

impl Broker {
    /// Unwraps with the configured URIs the blob names: usable ones only, ACTIVE and
    /// recently fastest first, each at most once. When the first has not answered within
    /// `hedge_after`, the next is asked too, and the first good answer wins. URIs come from
    /// the config, matched by id; the blob only says which. An entry whose URI is no longer
    /// configured is skipped, so old blobs survive retiring a region.
    pub async fn unwrap(
        &self,
        env: &Envelope,
        context: BTreeMap<String, String>,
    ) -> Result<Unwrapped, Error> {
        let key = &env.key_name;
        let k = self.key(key)?;
        k.gate_any()?;
        let aad = Aad::with_format(env.format.aad(), key.as_str(), context);

        // Envelope entries are unique by URI id (decode checks) and so are a key's URIs
        // (config checks): each URI is tried at most once.
        let mut candidates: Vec<(&KmsUri, &Entry)> = env
            .entries
            .iter()
            .filter_map(|e| k.uris.iter().find(|u| u.id == e.uri_id).map(|u| (&**u, e)))
            .collect();
        if candidates.is_empty() {
            return Err(Error::invalid(format!(
                "wrapped was made by KMS keys that are not configured for key {:?}",
                key.as_str()
            )));
        }
        candidates.sort_by_key(|(u, _)| (u.state(), u.latency()));
        let mut failure: Option<BackendError> = None;
        let mut pending = candidates.into_iter();
        let mut in_flight = FuturesUnordered::new();
        // Started attempts, so that a slow one that lost to a hedge still counts as slow.
        let mut started: Vec<(&KmsUri, Instant)> = Vec::new();
        let aad = &aad;
        loop {
            if in_flight.is_empty() {
                match self.start_decrypt(&mut pending, aad, &mut failure, &mut started) {
                    Some(f) => in_flight.push(f),
                    None => break,
                }
            }
            let hedge = async {
                if self.hedge_after.is_zero() {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(self.hedge_after).await;
            };
            let done = tokio::select! {
                done = in_flight.next() => done,
                _ = hedge => {
                    if let Some(f) = self.start_decrypt(&mut pending, aad, &mut failure, &mut started) {
                        in_flight.push(f);
                    }
                    continue;
                }
            };
            let Some((u, entry, ticket, took, r)) = done else {
                continue;
            };
            started.retain(|(s, _)| !std::ptr::eq(*s, u));
            match r {
                Ok(d) => {
                    u.record(&self.clock, key, ticket, Ok(None));
                    u.note_latency(took);
                    for (slow, since) in &started {
                        slow.note_latency(since.elapsed());
                    }
                    env.verify(&d.plaintext)?;
                    k.gate_any()?;
                    let key_version = match d.key_version {
                        Some(v) => v,
                        None if env.versions_authenticated() => entry.key_version.clone(),
                        None => String::new(),
                    };
                    return Ok(Unwrapped {
                        plaintext: d.plaintext,
                        key_version,
                    });
                }
                Err(e) => {
                    u.record(&self.clock, key, ticket, Err(&e));
                    tracing::debug!(%key, uri = %u.uri.redacted(), detail = %e.detail, "unwrap attempt failed");
                    // A blob that does not authenticate under one of its KMS keys was
                    // tampered with (or made for another context): asking the others only
                    // costs KMS calls.
                    if e.class == FailureClass::InvalidCiphertext {
                        return Err(kms_error(key, e));
                    }
                    failure = Some(worse(failure, e));
                }
            }
        }
        match failure {
            Some(e) => Err(kms_error(key, e)),
            // Every candidate URI is of a revoked kind.
            None => Err(k.gate_any().err().unwrap_or_else(|| {
                Error::Unavailable(format!("no usable KMS URI for key {:?}", key.as_str()))
            })),
        }
    }

    /// Starts a Decrypt with the next candidate that may be asked (not denied, within the
    /// KMS's size limits); `None` when none is left.
    fn start_decrypt<'a>(
        &'a self,
        pending: &mut impl Iterator<Item = (&'a KmsUri, &'a Entry)>,
        aad: &'a Aad,
        failure: &mut Option<BackendError>,
        started: &mut Vec<(&'a KmsUri, Instant)>,
    ) -> Option<DecryptAttempt<'a>> {
        for (u, entry) in pending.by_ref() {
            if u.state().is_revoked_kind() {
                continue;
            }
            if let Err(e) = u.backend.check_size(entry.ciphertext.len(), aad) {
                *failure = Some(worse(failure.take(), e));
                continue;
            }
            let ticket = self.clock.ticket(Source::Use);
            started.push((u, Instant::now()));
            return Some(Box::pin(async move {
                let _turn = u.turn().await;
                let started = Instant::now();
                let r = u
                    .backend
                    .decrypt(&entry.ciphertext, &entry.key_version, aad)
                    .await;
                (u, entry, ticket, started.elapsed(), r)
            }));
        }
        None
    }
}
