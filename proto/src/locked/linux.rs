//! The Linux arena: size-class slots on locked pages, and a mapping of its own for a large
//! secret. See the parent module for why.

use std::ffi::c_void;
use std::ptr::{null_mut, NonNull};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use rustix::mm::{madvise, mlock, mmap_anonymous, munmap, Advice, MapFlags, ProtFlags};

use super::MemoryStats;

/// Slot sizes. Store keys (16 to 32 bytes), key files (64), cloud credentials (a few KiB)
/// and data keys (up to the contract's 4096) each find a class that wastes at most half.
const CLASSES: [usize; 9] = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

struct Arena {
    /// Free slots per class, as addresses: wiped, on pages that stay mapped and locked.
    free: [Vec<usize>; CLASSES.len()],
    stats: MemoryStats,
}

static ARENA: Mutex<Arena> = Mutex::new(Arena {
    free: [const { Vec::new() }; CLASSES.len()],
    stats: MemoryStats {
        locked_bytes: 0,
        unlocked_bytes: 0,
        heap_fallbacks: 0,
    },
});

static WARNED: AtomicBool = AtomicBool::new(false);

/// A poisoned lock only means another thread panicked while holding it; the free lists
/// are still consistent (every update is a single push or pop), so carry on.
fn arena() -> MutexGuard<'static, Arena> {
    ARENA.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn stats() -> MemoryStats {
    arena().stats
}

pub(super) fn count_heap_fallback() {
    arena().stats.heap_fallbacks += 1;
}

fn page_size() -> usize {
    rustix::param::page_size()
}

fn class_of(len: usize) -> Option<usize> {
    CLASSES.iter().position(|&c| len <= c)
}

/// One secret's memory: a slot of the arena, or a mapping of its own.
pub(super) struct Region {
    ptr: NonNull<u8>,
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    /// A slot of `CLASSES[i]` bytes on an arena page.
    Slot(usize),
    /// A mapping of `size` bytes (whole pages) for this secret alone.
    Mapping { size: usize, locked: bool },
}

// SAFETY: a Region is the only handle to its bytes (the arena hands a slot to one Region at
// a time, and a mapping belongs to its Region alone), like a `Box<[u8]>`: moving it to, or
// sharing `&Region` with, another thread is as sound as it is for a Box.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` only gives out `&[u8]`.
unsafe impl Sync for Region {}

impl Region {
    /// Room for `len` (1 or more) bytes, all zero. `None` when no page could be mapped.
    pub(super) fn alloc(len: usize) -> Option<Region> {
        let Some(class) = class_of(len) else {
            let size = len.checked_next_multiple_of(page_size())?;
            let (ptr, locked) = map(size)?;
            let mut a = arena();
            if locked {
                a.stats.locked_bytes += size;
            } else {
                a.stats.unlocked_bytes += size;
            }
            return Some(Region {
                ptr,
                kind: Kind::Mapping { size, locked },
            });
        };
        let mut a = arena();
        if a.free[class].is_empty() {
            refill(&mut a, class)?;
        }
        let ptr = NonNull::new(a.free[class].pop()? as *mut u8)?;
        Some(Region {
            ptr,
            kind: Kind::Slot(class),
        })
    }

    fn capacity(&self) -> usize {
        match self.kind {
            Kind::Slot(class) => CLASSES[class],
            Kind::Mapping { size, .. } => size,
        }
    }

    pub(super) fn slice(&self, len: usize) -> &[u8] {
        // SAFETY: `ptr` points at `capacity()` bytes of a live mapping that only this
        // Region uses (see `Send` above); they are initialized (zero from `mmap`, or wiped
        // on release), and the borrow of `self` keeps the Region, so the slot, alive.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), len.min(self.capacity())) }
    }

    pub(super) fn slice_mut(&mut self, len: usize) -> &mut [u8] {
        // SAFETY: as in `slice`; `&mut self` makes this the only borrow of those bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), len.min(self.capacity())) }
    }

    /// Hands the memory back. The caller wiped the bytes in use; the rest of a slot was
    /// never written (it is zero), and a mapping goes back to the kernel whole.
    pub(super) fn release(&self) {
        match self.kind {
            Kind::Slot(class) => arena().free[class].push(self.ptr.as_ptr() as usize),
            Kind::Mapping { size, locked } => {
                // SAFETY: the mapping was made by `map` for this Region alone and nothing
                // borrows it any more (this runs from Drop); munmap also unlocks it, which
                // touches no other secret because no other secret shares its pages.
                let _ = unsafe { munmap(self.ptr.as_ptr().cast::<c_void>(), size) };
                let mut a = arena();
                if locked {
                    a.stats.locked_bytes -= size;
                } else {
                    a.stats.unlocked_bytes -= size;
                }
            }
        }
    }
}

/// Maps one page more for `class` and adds its slots to the free list. Pages are never
/// given back: a slot on them may be in use, and an `munlock` would unlock it.
fn refill(a: &mut Arena, class: usize) -> Option<()> {
    let page = page_size();
    let (base, locked) = map(page)?;
    if locked {
        a.stats.locked_bytes += page;
    } else {
        a.stats.unlocked_bytes += page;
    }
    let size = CLASSES[class];
    let base = base.as_ptr() as usize;
    // Reversed, so that `pop` hands out the lowest address first.
    a.free[class].extend((0..page / size).rev().map(|i| base + i * size));
    Some(())
}

/// `size` bytes of new, zeroed, read-write pages that nothing else uses.
fn fresh_mapping(size: usize) -> rustix::io::Result<*mut std::ffi::c_void> {
    // SAFETY: an anonymous private mapping at an address the kernel picks (null hint): it
    // overlaps nothing else in the process.
    unsafe {
        mmap_anonymous(
            null_mut(),
            size,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )
    }
}

/// A fresh mapping of `size` bytes (a multiple of the page size), excluded from dumps and
/// from forked children, and locked where `RLIMIT_MEMLOCK` allows; `(address, locked)`.
fn map(size: usize) -> Option<(NonNull<u8>, bool)> {
    let ptr = fresh_mapping(size).ok()?;
    // SAFETY (the three calls): `ptr..ptr+size` is the mapping just made, not yet handed to
    // anyone; mlock and madvise change how the kernel treats those pages (kept in RAM, left
    // out of core dumps, zero in a forked child), never their contents as seen here.
    let locked = match unsafe { mlock(ptr, size) } {
        Ok(()) => true,
        Err(e) => {
            warn_unlocked(e);
            false
        }
    };
    // Both only fail on arguments the kernel does not know (DONTDUMP since 3.4, WIPEONFORK
    // since 4.14); the pages are then ordinary, which is all an old kernel offers.
    let _ = unsafe { madvise(ptr, size, Advice::LinuxDontDump) };
    let _ = unsafe { madvise(ptr, size, Advice::LinuxWipeOnFork) };
    NonNull::new(ptr.cast::<u8>()).map(|p| (p, locked))
}

fn warn_unlocked(e: rustix::io::Errno) {
    if WARNED.swap(true, Ordering::Relaxed) {
        return;
    }
    let limit = rustix::process::getrlimit(rustix::process::Resource::Memlock).current;
    let limit = limit.map_or("unlimited".to_owned(), |b| format!("{b} bytes"));
    tracing::warn!(
        "cannot lock key memory ({e}; RLIMIT_MEMLOCK is {limit}): key bytes from now on are \
         still kept out of core dumps, but may be swapped; raise the limit (systemd \
         LimitMEMLOCK=, `ulimit -l`) or grant CAP_IPC_LOCK"
    );
}

pub(super) fn probe(bytes: usize) -> std::io::Result<()> {
    let size = bytes
        .max(1)
        .checked_next_multiple_of(page_size())
        .ok_or(std::io::ErrorKind::InvalidInput)?;
    let ptr = fresh_mapping(size)?;
    // SAFETY: the scratch mapping just made, used by nothing else; unmapping it also
    // unlocks it and touches no other mapping.
    let locked = unsafe { mlock(ptr, size) };
    // SAFETY: as above.
    let _ = unsafe { munmap(ptr, size) };
    Ok(locked?)
}

#[cfg(test)]
mod tests {
    use super::super::{Home, LockedBuf};
    use super::*;

    /// The `VmFlags` line of the mapping of /proc/self/smaps that holds `addr`.
    fn vm_flags(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((lo, hi)) = range.split_once('-') {
                    if let (Ok(lo), Ok(hi)) =
                        (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                    {
                        inside = (lo..hi).contains(&addr);
                        continue;
                    }
                }
            }
            if inside && line.starts_with("VmFlags:") {
                return line.to_owned();
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    fn addr(b: &LockedBuf) -> (usize, Kind) {
        match &b.home {
            Home::Arena(r) => (r.ptr.as_ptr() as usize, r.kind),
            _ => panic!("the secret is not in the arena"),
        }
    }

    #[test]
    fn a_dropped_secret_leaves_its_slot_zeroed() {
        // Another test's thread may take the slot between our drop and our look; then try
        // again. Under the arena's lock, a slot on the free list is the arena's alone, so
        // reading it races with nobody.
        for _ in 0..100 {
            let b = LockedBuf::copy_from(&[0xA5; 48]);
            let (at, kind) = addr(&b);
            let Kind::Slot(class) = kind else {
                panic!("48 bytes get a slot")
            };
            assert!(b.as_slice().iter().all(|&x| x == 0xA5));
            drop(b);
            let a = arena();
            if a.free[class].contains(&at) {
                // SAFETY: a free slot of `CLASSES[class]` bytes on a page the arena keeps
                // mapped; the lock held keeps every other thread from taking it meanwhile.
                let slot = unsafe { std::slice::from_raw_parts(at as *const u8, CLASSES[class]) };
                assert!(
                    slot.iter().all(|&x| x == 0),
                    "a freed slot still holds key bytes"
                );
                return;
            }
        }
        panic!("never found the freed slot on the free list");
    }

    #[test]
    fn pages_are_excluded_from_dumps_and_locked_where_the_limit_allows() {
        let lockable = probe(page_size()).is_ok();
        // The CI machine can lock a page: not checking `lo` there would hide a regression.
        assert!(
            lockable || std::env::var_os("CI").is_none(),
            "CI can lock a page"
        );
        let small = LockedBuf::copy_from(&[1; 32]);
        let large = LockedBuf::copy_from(&[2; 10_000]);
        for b in [&small, &large] {
            let flags = vm_flags(addr(b).0);
            // smaps: dd = MADV_DONTDUMP, wf = MADV_WIPEONFORK, lo = mlocked.
            assert!(flags.contains(" dd"), "{flags}");
            assert!(flags.contains(" wf"), "{flags}");
            if lockable {
                assert!(flags.contains(" lo"), "{flags}");
            }
        }
        let (_, kind) = addr(&large);
        assert!(
            matches!(kind, Kind::Mapping { size, .. } if size >= 10_000 && size % page_size() == 0)
        );
        assert_eq!(large.as_slice().len(), 10_000);
        assert!(large.as_slice().iter().all(|&x| x == 2));
    }

    #[test]
    fn freeing_one_secret_keeps_its_neighbour_locked() {
        if let Err(e) = probe(page_size()) {
            // The CI machine can lock a page: a skip there would hide a regression.
            assert!(std::env::var_os("CI").is_none(), "CI can lock a page: {e}");
            eprintln!("skipped: RLIMIT_MEMLOCK leaves no room for one page here");
            return;
        }
        // Two live secrets on one page (keep allocating until two share a page).
        let page = page_size();
        let mut held = Vec::new();
        let (first, second) = loop {
            held.push(LockedBuf::copy_from(&[3; 20]));
            let at = addr(held.last().unwrap()).0;
            if let Some(i) = held[..held.len() - 1]
                .iter()
                .position(|b| addr(b).0 / page == at / page)
            {
                break (held.swap_remove(i), held.pop().unwrap());
            }
            assert!(held.len() < 10_000, "slots of one page never met");
        };
        let at = addr(&second).0;
        drop(first);
        // mlock is not counted per slot: had the free munlocked the page, the neighbour
        // would now be swappable.
        assert!(vm_flags(at).contains(" lo"), "{}", vm_flags(at));
        assert!(second.as_slice().iter().all(|&x| x == 3));
    }
}
