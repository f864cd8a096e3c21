//! WatchRevokeStatus: every visible key's state, then each change, with a growing epoch,
//! so a node drops its keys the moment the CMEK is revoked rather than at its next poll.
//!
//! The stream follows the revocation [`crate::revocation::Clock`]'s epoch: no polling of
//! our own, no KMS call. A burst of changes is coalesced into one event carrying every key
//! whose state differs from what this watcher was last sent. Streams end when the daemon
//! shuts down, so they never hold a drain.
//!
//! Each event reads the runtime in force ([`Live`]), so a stream follows reloads: a key the
//! reload removed, or that the new policy no longer lets this peer see, is left out of
//! every event from then on. A stream never pins an old runtime (and its cache) in memory.

use std::collections::BTreeMap;
use std::pin::Pin;

use futures_util::Stream;
use tokio::sync::watch;

use super::pb_key_status;
use crate::key_name::KeyName;
use crate::live::Live;
use crate::pb;
use crate::peer::Peer;
use crate::revocation::KeyStatus;
use crate::state::KeyState;

pub type EventStream =
    Pin<Box<dyn Stream<Item = Result<pb::RevokeStatusEvent, tonic::Status>> + Send>>;

/// What a watcher compares: the key's state and each URI's.
fn states(s: &KeyStatus) -> (KeyState, Vec<KeyState>) {
    (s.state, s.uris.iter().map(|u| u.state).collect())
}

struct Watcher {
    live: Live,
    peer: Peer,
    keys: Vec<KeyName>,
    sent: BTreeMap<KeyName, (KeyState, Vec<KeyState>)>,
    epochs: watch::Receiver<u64>,
    closing: watch::Receiver<bool>,
    first: bool,
}

impl Watcher {
    /// The next event, or `None` when the daemon shuts down.
    async fn next(&mut self) -> Option<pb::RevokeStatusEvent> {
        loop {
            if !self.first {
                tokio::select! {
                    r = self.epochs.changed() => r.ok()?,
                    _ = self.closing.wait_for(|c| *c) => return None,
                }
            }
            let epoch = *self.epochs.borrow_and_update();
            let rt = self.live.current();
            let mut changed = Vec::new();
            for k in &self.keys {
                if !rt.config.policy.may_see(&self.peer, k) {
                    continue;
                }
                let Some(s) = rt.broker.status(k) else {
                    continue;
                };
                let now = states(&s);
                if self.first || self.sent.get(k) != Some(&now) {
                    self.sent.insert(k.clone(), now);
                    changed.push(pb_key_status(s));
                }
            }
            if self.first || !changed.is_empty() {
                self.first = false;
                return Some(pb::RevokeStatusEvent {
                    epoch,
                    keys: changed,
                });
            }
        }
    }
}

/// The stream for one watcher of `keys` (already authorized).
pub fn stream(
    live: Live,
    peer: Peer,
    keys: Vec<KeyName>,
    closing: watch::Receiver<bool>,
) -> EventStream {
    // One clock across reloads: this subscription follows every runtime.
    let epochs = live.current().broker.clock().subscribe();
    let w = Watcher {
        live,
        peer,
        keys,
        sent: BTreeMap::new(),
        epochs,
        closing,
        first: true,
    };
    Box::pin(futures_util::stream::unfold(w, |mut w| async move {
        w.next().await.map(|e| (Ok(e), w))
    }))
}
