//! Issue 8's "Measure" table: availability at fleet scale. Each row runs against its own
//! daemon and mock KMS key, and prints `| measure | target | result | met? |`.

use std::path::Path;

use super::harness::Row;

pub async fn run(root: &Path) {
    println!();
    println!("| measure (issue 8) | target | result | met? |");
    println!("|---|---|---|---|");
    let mut rows: Vec<Row> = Vec::new();
    let only = std::env::var("BENCH_FLEET_ROWS").unwrap_or_default();
    let want = |row: &str| only.is_empty() || only.split(',').any(|r| r == row);
    macro_rules! section {
        ($row:literal, $f:expr) => {
            if want($row) {
                for r in $f.await {
                    r.print();
                    rows.push(r);
                }
            }
        };
    }
    section!("1", super::coalesce::run(root));
    section!("2", super::revoke::run(root));
    section!("3", super::storm::run(root));
    section!("4", super::echo::run(root));
    section!("5", super::rss::run(root));
    section!("6", super::prewarm::run(root));
    let missed = rows.iter().filter(|r| !r.met).count();
    println!();
    println!("issue 8: {} rows, {missed} target(s) missed", rows.len());
}
