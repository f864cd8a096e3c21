//! `wait_ready`: wait for the daemon to serve, before a node's first real call.

use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::HealthCheckRequest;

use crate::retry::{retry_until, Retry};
use crate::{Client, ClientError};

/// The health service name of the daemon's key operations.
pub const KEY_BROKER_SERVICE: &str = "kmsbroker.v1.KeyBroker";

impl Client {
    /// Waits until the daemon answers and reports `kmsbroker.v1.KeyBroker` SERVING on the
    /// standard health service, retrying until
    /// [`ClientOptions::startup_deadline`](crate::ClientOptions::startup_deadline). SERVING means the daemon can hand out the
    /// store keys it holds: it stays NOT_SERVING while a key they need is DISABLED, REVOKED
    /// or DESTROYED, or its KMS has not answered yet. Costs the daemon no KMS call.
    ///
    /// At the deadline: the connection error if the daemon never answered, else
    /// `Unavailable` naming the last health status.
    pub async fn wait_ready(&self) -> Result<(), ClientError> {
        retry_until(
            self.opts.startup_deadline,
            self.opts.backoff,
            "Health/Check",
            Retry::Idempotent,
            || async {
                let req = HealthCheckRequest {
                    service: KEY_BROKER_SERVICE.to_owned(),
                };
                let resp = self.health.clone().check(req).await;
                let status = resp.map_err(|s| self.error(s))?.into_inner().status();
                if status == ServingStatus::Serving {
                    Ok(())
                } else {
                    Err(ClientError::Status {
                        code: Code::Unavailable,
                        message: format!(
                            "kms-broker is up but {KEY_BROKER_SERVICE} is {}",
                            status.as_str_name()
                        ),
                    })
                }
            },
        )
        .await
    }
}
