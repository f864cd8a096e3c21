//! The gRPC codec of the KeyBroker service (server and client, set by `build.rs`): prost
//! encoding, plus wiping the key bytes of a message once it is encoded.
//!
//! The messages that carry key bytes (`WrapKeyRequest.plaintext`,
//! `UnwrapKeyResponse.plaintext`, `StoreKey.key` inside `GetStoreKeyResponse`) also wipe
//! them on drop, so a request dropped unread (refused by a layer, cut by a deadline, or
//! failing to decode halfway) leaves no plaintext in the heap either. Every message of the
//! service implements [`Wipe`]: the codec requires it, so a new message does not compile
//! until someone has said whether it carries key bytes.
//!
//! Out of reach of this codec: the bytes it encodes into (tonic's encode buffer, then h2's
//! frames and rustls' records) and the buffer it decodes from (tonic's decode buffer). Those
//! are freed without wiping; the README's "Key memory" lists them.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::Status;
use zeroize::Zeroize;

use crate::pb;

/// A message that may carry key bytes wipes them (to empty; the memory to zero).
pub trait Wipe {
    fn wipe(&mut self);
}

/// [`tonic_prost::ProstCodec`], with [`Wipe`] after encoding.
#[derive(Debug)]
pub struct ZeroizingCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ZeroizingCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for ZeroizingCodec<T, U>
where
    T: Message + Wipe + Send + 'static,
    U: Message + Default + Wipe + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ZeroizingEncoder<T>;
    // Decoding needs nothing more: the fields prost fills are wiped by the message's Drop
    // (also when decoding fails halfway), or moved into `SecretBytes` by the handler.
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ZeroizingEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

/// Encodes like prost, then wipes the message's key bytes.
#[derive(Debug)]
pub struct ZeroizingEncoder<T>(PhantomData<T>);

impl<T: Message + Wipe> Encoder for ZeroizingEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, mut item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        let encoded = item.encode(buf);
        item.wipe();
        // prost fails only when the buffer cannot grow; tonic's can. Still no panic
        // (tonic_prost expects here).
        encoded.map_err(|e| Status::internal(format!("encoding the message failed: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Messages with key bytes: wiped by the codec after encoding, and on drop.
macro_rules! key_bytes {
    ($($msg:ident { $($field:ident),+ }),+ $(,)?) => {$(
        impl Wipe for pb::$msg {
            fn wipe(&mut self) {
                $(self.$field.zeroize();)+
            }
        }
        impl Drop for pb::$msg {
            fn drop(&mut self) {
                self.wipe();
            }
        }
    )+};
}

key_bytes! {
    WrapKeyRequest { plaintext },
    UnwrapKeyResponse { plaintext },
    StoreKey { key },
}

impl Wipe for pb::GetStoreKeyResponse {
    fn wipe(&mut self) {
        // The store keys also wipe themselves on drop; this is for right after encoding.
        self.active.iter_mut().for_each(Wipe::wipe);
        self.previous.iter_mut().for_each(Wipe::wipe);
    }
}

/// Messages without key bytes (`wrapped` blobs and key ids are not secret).
macro_rules! no_key_bytes {
    ($($msg:ident),+ $(,)?) => {$(
        impl Wipe for pb::$msg {
            fn wipe(&mut self) {}
        }
    )+};
}

no_key_bytes! {
    WrapKeyResponse,
    UnwrapKeyRequest,
    GetStoreKeyRequest,
    RevokeStatusRequest,
    RevokeStatusResponse,
    RevokeStatusEvent,
    RotateStoreKeyRequest,
    StoreStatusRequest,
    StoreStatusResponse,
    StoreStatus,
    RewrapRequest,
    RewrapResponse,
    RewrapKeyRequest,
    ImportStoreKeyRequest,
    DropPreviousStoreKeyRequest,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_key(byte: u8) -> pb::StoreKey {
        pb::StoreKey {
            key_id: vec![1; 32],
            key: vec![byte; 32],
            algorithm: "AES-256".into(),
            created_at: None,
        }
    }

    #[test]
    fn wipe_empties_key_bytes_and_keeps_the_rest() {
        let mut req = pb::WrapKeyRequest {
            key: "primary".into(),
            plaintext: vec![7; 32],
            context: [("a".to_owned(), "b".to_owned())].into(),
        };
        req.wipe();
        assert!(req.plaintext.is_empty());
        assert_eq!(req.key, "primary");
        assert_eq!(req.context.len(), 1);

        let mut resp = pb::UnwrapKeyResponse {
            plaintext: vec![7; 16],
            key: "primary".into(),
            key_version: "v1".into(),
        };
        resp.wipe();
        assert!(resp.plaintext.is_empty());
        assert_eq!(resp.key_version, "v1");

        let mut keys = pb::GetStoreKeyResponse {
            active: Some(store_key(8)),
            previous: vec![store_key(9), store_key(10)],
            wrapped_copy: vec![5; 100],
        };
        keys.wipe();
        let all = keys.active.iter().chain(&keys.previous);
        assert!(all.clone().all(|k| k.key.is_empty()));
        assert!(all.clone().all(|k| k.key_id == vec![1; 32]));
        assert_eq!(all.count(), 3);
        // The wrapped copy is ciphertext: the node keeps it to restore from.
        assert_eq!(keys.wrapped_copy, vec![5; 100]);
    }
}
