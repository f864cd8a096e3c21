//! The key-state poller: one round of status checks after another, and what follows each.

use tokio::sync::watch;
use tonic_health::server::HealthReporter;

use crate::live::{Live, Runtime};
use crate::pb::key_broker_server::KeyBrokerServer;
use crate::service::Service;
use crate::state::KeyState;
use crate::stores::Stores;

/// Checks every key at once (so a fresh start learns states quickly), then every
/// `poll_interval` while all URIs are ACTIVE and every `degraded_poll_interval` while one is
/// not. After each round: drops held material that may no longer be handed out, and sets
/// the KeyBroker health. After the first round, and after the first round following a
/// reload, pre-warms the stores' keys (in the background: listeners are already up).
/// Between rounds, a key-state change seen by a real call updates the health at once, and
/// a reload starts a round at once (its new keys are unchecked until then).
pub(super) async fn poll_loop(live: Live, health: HealthReporter, mut stop: watch::Receiver<bool>) {
    let mut reloads = live.changes();
    let mut rt = live.current();
    // The clock is shared across reloads: one subscription follows every broker.
    let mut epochs = rt.broker.clock().subscribe();
    let mut prewarm = true;
    loop {
        rt.broker.poll_once().await;
        rt.stores.purge();
        report_health(&health, &rt.stores).await;
        if std::mem::take(&mut prewarm) {
            tokio::spawn(rt.stores.clone().prewarm());
        }
        let revocation = rt.config.revocation;
        let degraded = |rt: &Runtime| rt.broker.uris().any(|(_, u)| u.state() != KeyState::Active);
        let wait = if degraded(&rt) {
            revocation.degraded_poll_interval
        } else {
            revocation.poll_interval
        };
        let next = tokio::time::sleep(wait);
        tokio::pin!(next);
        loop {
            tokio::select! {
                _ = &mut next => break,
                changed = reloads.changed() => {
                    if changed.is_ok() {
                        prewarm = true;
                        break;
                    }
                }
                changed = epochs.changed() => {
                    if changed.is_ok() {
                        report_health(&health, &rt.stores).await;
                        // A real call found a key degraded: look again soon, not at the
                        // healthy interval.
                        let soon = tokio::time::Instant::now() + revocation.degraded_poll_interval;
                        if degraded(&rt) && next.deadline() > soon {
                            next.as_mut().reset(soon);
                        }
                    }
                }
                _ = async { let _ = stop.wait_for(|s| *s).await.map(|_| ()); } => return,
            }
        }
        rt = live.current();
    }
}

/// KeyBroker's health: SERVING while every configured store with a key file can be handed
/// its key (CONTRACT "Additions"). Costs no KMS call.
pub(super) async fn report_health(health: &HealthReporter, stores: &Stores) {
    match stores.servable() {
        Ok(()) => health.set_serving::<KeyBrokerServer<Service>>().await,
        Err(why) => {
            tracing::debug!(%why, "KeyBroker NOT_SERVING");
            health.set_not_serving::<KeyBrokerServer<Service>>().await
        }
    }
}
