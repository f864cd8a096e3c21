//! Parsing a request's caller-supplied parts, before anything else (CONTRACT's first check):
//! the context map, key names and store ids, each parsed once.

use std::collections::{BTreeMap, HashMap};

use crate::backend::RESERVED_CONTEXT_PREFIX;
use crate::error::Error;
use crate::key_name::KeyName;
use crate::store_key::StoreId;

/// The cloud KMS limit on a single Encrypt.
pub const MAX_PLAINTEXT: usize = 4096;
const MAX_CONTEXT_ENTRIES: usize = 64;
const MAX_CONTEXT_BYTES: usize = 8192;

pub(super) fn parse_context(
    ctx: HashMap<String, String>,
) -> Result<BTreeMap<String, String>, Error> {
    if ctx.len() > MAX_CONTEXT_ENTRIES {
        return Err(Error::invalid(format!(
            "context has more than {MAX_CONTEXT_ENTRIES} entries"
        )));
    }
    let size: usize = ctx.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_CONTEXT_BYTES {
        return Err(Error::invalid(format!(
            "context is larger than {MAX_CONTEXT_BYTES} bytes"
        )));
    }
    if ctx.keys().any(|k| k.starts_with(RESERVED_CONTEXT_PREFIX)) {
        return Err(Error::invalid(format!(
            "context keys starting with {RESERVED_CONTEXT_PREFIX:?} are reserved"
        )));
    }
    Ok(ctx.into_iter().collect())
}

pub(super) fn parse_key_name(key: &str) -> Result<KeyName, Error> {
    if key.is_empty() {
        return Err(Error::invalid(
            "key is required: the name of a configured key",
        ));
    }
    KeyName::parse(key).map_err(|_| {
        Error::invalid("key must be a configured key's name ([A-Za-z0-9._-], 1 to 128)")
    })
}

pub(super) fn parse_store_id(raw: &str) -> Result<StoreId, Error> {
    StoreId::parse(raw).map_err(Error::InvalidArgument)
}

/// A name the caller may leave empty, meaning "every one I may see".
pub(super) fn parse_optional<T>(
    raw: &str,
    parse: impl FnOnce(&str) -> Result<T, Error>,
) -> Result<Option<T>, Error> {
    if raw.is_empty() {
        Ok(None)
    } else {
        parse(raw).map(Some)
    }
}
