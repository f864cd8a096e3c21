//! Locked, dump-excluded memory for key bytes: the one module of the workspace with
//! `unsafe` code (each block has a `SAFETY` note).
//!
//! Why an arena: `mlock` is not counted per allocation. Two secrets on one page share its
//! lock, and `munlock` for one would unlock the other. So small secrets live in slots of a
//! few size classes, carved from whole pages that are mapped, locked and marked
//! `MADV_DONTDUMP` once and never unlocked; a freed slot is wiped and kept for the next
//! secret of its class. A secret over the largest class gets a mapping of its own, which is
//! unmapped (and so unlocked) when it drops: no other secret shares its pages.
//!
//! Pages are mapped and locked when first needed, so the locked size (`VmLck`) follows the
//! key material held at its highest, in page steps.
//!
//! Nothing here fails a caller. Where a page cannot be locked (`RLIMIT_MEMLOCK` reached),
//! it is still used, excluded from dumps, and counted in [`MemoryStats::unlocked_bytes`]
//! with one warning; where a page cannot be mapped at all, the secret falls back to wiped
//! heap memory ([`MemoryStats::heap_fallbacks`]). The daemon checks at start that the limit
//! leaves room ([`probe`]), so the first is an exception rather than the rule. Off Linux,
//! every secret is wiped heap memory.

use zeroize::{Zeroize, Zeroizing};

/// What the arena holds: read by the daemon's start-up check and by tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes mapped for secrets and locked in RAM.
    pub locked_bytes: usize,
    /// Bytes mapped for secrets that `mlock` refused (the limit was reached): excluded from
    /// dumps, but they may be swapped.
    pub unlocked_bytes: usize,
    /// Secrets that went to ordinary (wiped) heap memory because no page could be mapped,
    /// or because the platform is not Linux.
    pub heap_fallbacks: u64,
}

/// The arena's counters now.
pub fn stats() -> MemoryStats {
    imp::stats()
}

/// Checks that `bytes` more could be locked now (`mlock` of a scratch mapping, released at
/// once): the honest test of `RLIMIT_MEMLOCK`, which also passes where `CAP_IPC_LOCK` lifts
/// the limit. Off Linux: `Unsupported`.
pub fn probe(bytes: usize) -> std::io::Result<()> {
    imp::probe(bytes)
}

/// The bytes of one secret. Wiped when it drops; where it lives is the arena's business.
pub(crate) struct LockedBuf {
    len: usize,
    home: Home,
}

enum Home {
    /// Nothing allocated (a zero-length secret).
    Empty,
    #[cfg(target_os = "linux")]
    Arena(imp::Region),
    Heap(Zeroizing<Vec<u8>>),
}

impl LockedBuf {
    /// `len` zero bytes, to be filled in place (no copy of the secret outside).
    pub(crate) fn zeroed(len: usize) -> Self {
        if len == 0 {
            return Self {
                len,
                home: Home::Empty,
            };
        }
        #[cfg(target_os = "linux")]
        if let Some(region) = imp::Region::alloc(len) {
            return Self {
                len,
                home: Home::Arena(region),
            };
        }
        imp::count_heap_fallback();
        Self {
            len,
            home: Home::Heap(Zeroizing::new(vec![0; len])),
        }
    }

    pub(crate) fn copy_from(bytes: &[u8]) -> Self {
        let mut b = Self::zeroed(bytes.len());
        b.as_mut_slice().copy_from_slice(bytes);
        b
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match &self.home {
            Home::Empty => &[],
            #[cfg(target_os = "linux")]
            Home::Arena(r) => r.slice(self.len),
            Home::Heap(v) => v,
        }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.home {
            Home::Empty => &mut [],
            #[cfg(target_os = "linux")]
            Home::Arena(r) => r.slice_mut(self.len),
            Home::Heap(v) => v,
        }
    }
}

impl Drop for LockedBuf {
    fn drop(&mut self) {
        // Wipe first, then hand the memory back: a reused slot never shows an old key.
        self.as_mut_slice().zeroize();
        #[cfg(target_os = "linux")]
        if let Home::Arena(r) = &self.home {
            r.release();
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::MemoryStats;
    use std::sync::atomic::{AtomicU64, Ordering};

    static HEAP: AtomicU64 = AtomicU64::new(0);

    pub(super) fn stats() -> MemoryStats {
        MemoryStats {
            heap_fallbacks: HEAP.load(Ordering::Relaxed),
            ..MemoryStats::default()
        }
    }

    pub(super) fn probe(_: usize) -> std::io::Result<()> {
        Err(std::io::ErrorKind::Unsupported.into())
    }

    pub(super) fn count_heap_fallback() {
        HEAP.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(target_os = "linux")]
#[path = "locked/linux.rs"]
mod imp;
