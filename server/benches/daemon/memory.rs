//! Key memory: what a secret costs in the locked arena (`kms_broker_api::locked`) against
//! the zeroized heap vector it replaced, in-process, copy in and drop. Printed as its own
//! table; `BENCH_MEMORY_ONLY=1` runs only this.

use std::hint::black_box;
use std::time::Instant;

use kms_broker::secret::SecretBytes;
use zeroize::Zeroizing;

const ROUNDS: usize = 200_000;

/// Nanoseconds per round of `f`, the best of three passes (the least disturbed).
fn per_round(mut f: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..ROUNDS {
                f();
            }
            t.elapsed().as_nanos() as f64 / ROUNDS as f64
        })
        .fold(f64::INFINITY, f64::min)
}

pub fn run() {
    println!();
    println!("| secret size | zeroized heap Vec (ns) | locked arena SecretBytes (ns) | ratio |");
    println!("|---|---|---|---|");
    for size in [32usize, 4096, 8192] {
        let src = vec![7u8; size];
        let heap = per_round(|| {
            black_box(Zeroizing::new(black_box(&src).to_vec()));
        });
        let arena = per_round(|| {
            black_box(SecretBytes::copy_from(black_box(&src)));
        });
        println!(
            "| {size} B | {heap:.0} | {arena:.0} | {:.2}x |",
            arena / heap
        );
    }
    let s = kms_broker_api::locked::stats();
    println!(
        "\narena after: {} KiB locked, {} KiB unlocked, {} heap fallbacks",
        s.locked_bytes / 1024,
        s.unlocked_bytes / 1024,
        s.heap_fallbacks
    );
}
