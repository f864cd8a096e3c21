//! Runs a Vault endpoint as `vaultrs::api::exec_with_result` does, and also notes the
//! response's `request_id` for the call's audit record ([`crate::kms_request`]): Vault's
//! (and OpenBao's) audit device logs the same id as `request.id`, so a record of ours joins
//! the KMS's. vaultrs strips that wrapper field, hence this copy of its few lines; errors
//! keep vaultrs's exact shape, so classification does not change. (Error bodies carry no
//! request id: Vault sends only `errors`.)

use rustify::endpoint::Endpoint;
use rustify::errors::ClientError as RestClientError;
use serde::de::DeserializeOwned;
use vaultrs::api::{EndpointError, EndpointResult};
use vaultrs::client::Client;
use vaultrs::error::ClientError;

pub(super) async fn exec<E>(client: &impl Client, endpoint: E) -> Result<E::Response, ClientError>
where
    E: Endpoint,
    E::Response: DeserializeOwned + Send + Sync,
{
    let answer = endpoint
        .with_middleware(client.middle())
        .exec(client.http())
        .await
        .map_err(api_error)?;
    let wrapped: EndpointResult<E::Response> = answer.wrap().map_err(ClientError::from)?;
    crate::kms_request::note(&wrapped.request_id);
    wrapped.data.ok_or(ClientError::ResponseDataEmptyError)
}

/// vaultrs's `parse_err`: a Vault error body becomes `APIError { code, errors }`.
fn api_error(e: RestClientError) -> ClientError {
    if let RestClientError::ServerResponseError {
        code,
        content: Some(body),
    } = &e
    {
        if let Ok(err) = serde_json::from_str::<EndpointError>(body) {
            return ClientError::APIError {
                code: *code,
                errors: err.errors,
            };
        }
    }
    ClientError::from(e)
}
