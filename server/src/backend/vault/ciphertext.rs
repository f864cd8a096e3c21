//! Vault's ciphertext text, `vault:vN:<base64>`, checked before any call: what is not one,
//! or is longer than any this daemon makes, is refused as InvalidCiphertext without asking
//! Vault.

use crate::backend::BackendError;

/// Longest Vault ciphertext we pass on: the base64 text of 8 KiB (10,924 characters) plus
/// a `vault:vN:` prefix. A 4 KiB plaintext makes about 5.5 KiB.
pub const MAX_CIPHERTEXT: usize = 11 * 1024;

/// `vault:v3:…` → 3.
pub(super) fn version(ct: &str) -> Option<u64> {
    let rest = ct.strip_prefix("vault:v")?;
    let (v, body) = rest.split_once(':')?;
    if body.is_empty() || v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// The ciphertext as Vault's text and the version it names, checked against the version
/// the envelope recorded (`vN` or a bare `N`; empty: not recorded).
pub(super) fn parse<'a>(
    ciphertext: &'a [u8],
    recorded: &str,
) -> Result<(&'a str, u64), BackendError> {
    if ciphertext.len() > MAX_CIPHERTEXT {
        return Err(BackendError::invalid_ciphertext(format!(
            "not a Vault ciphertext of this daemon (longer than {MAX_CIPHERTEXT} bytes)"
        )));
    }
    let ct = std::str::from_utf8(ciphertext)
        .map_err(|_| BackendError::invalid_ciphertext("not a Vault ciphertext"))?;
    let v = version(ct).ok_or_else(|| {
        BackendError::invalid_ciphertext("not a Vault ciphertext (no vault:vN: prefix)")
    })?;
    let bare = recorded.strip_prefix('v').unwrap_or(recorded);
    if !recorded.is_empty() && bare != v.to_string() {
        return Err(BackendError::invalid_ciphertext(
            "key version does not match the ciphertext",
        ));
    }
    Ok((ct, v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::FailureClass;

    #[test]
    fn versions() {
        assert_eq!(version("vault:v12:abc"), Some(12));
        assert_eq!(version("vault:v1:"), None);
        assert_eq!(version("vault:vx:abc"), None);
        assert_eq!(version("nope"), None);
    }

    #[test]
    fn parse_checks_shape_size_and_recorded_version() {
        assert_eq!(parse(b"vault:v2:abc", "v2").unwrap(), ("vault:v2:abc", 2));
        assert_eq!(parse(b"vault:v2:abc", "2").unwrap().1, 2);
        assert_eq!(parse(b"vault:v2:abc", "").unwrap().1, 2);
        let long = format!("vault:v1:{}", "A".repeat(MAX_CIPHERTEXT));
        for (ct, rec) in [
            (&b"vault:v2:abc"[..], "v3"),
            (&b"vault:v2:abc"[..], "w2"),
            (&b"\xff\xfe"[..], ""),
            (&b"vault:v:abc"[..], ""),
            (long.as_bytes(), ""),
        ] {
            let e = parse(ct, rec).unwrap_err();
            assert_eq!(
                (e.class, e.evidence()),
                (FailureClass::InvalidCiphertext, None)
            );
        }
    }
}
