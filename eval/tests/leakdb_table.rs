//! LeakDB's Hanoi leak table (EPyT-Flow's `leakdb_data.py`, in tests/data/leakdb) read with
//! the crate's parser; expected counts are those stated in the data set's README
//! (762 of 1,000 scenarios leak, 1,020 leaks, nodes 2-32).

use outpost_eval::leakdb::{labels_from_windows, parse_table, table_json};
use std::path::PathBuf;

#[test]
fn hanoi_table_counts_and_labels() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/leakdb/epyt-flow/leakdb_data.py");
    let py = std::fs::read_to_string(path).unwrap();
    let table = parse_table(table_json(&py, "HANOI_LEAKAGES").unwrap()).unwrap();
    assert_eq!(table.len(), 762);
    assert_eq!(table.values().map(Vec::len).sum::<usize>(), 1020);
    for leaks in table.values() {
        for l in leaks {
            let node: u32 = l.node_id.parse().unwrap();
            assert!((2..=32).contains(&node), "{}", l.node_id);
            assert!(l.leak_start_time < l.leak_end_time && l.leak_end_time <= 17_520);
            assert!(l.leak_type == "abrupt" || l.leak_type == "incipient");
        }
    }
    // Scenario 2 (first leaking Hanoi scenario): labels are 1 exactly on [start, end).
    let leaks = &table[&2];
    let windows: Vec<(u64, u64)> = leaks.iter().map(|l| (l.leak_start_time, l.leak_end_time)).collect();
    let y = labels_from_windows(17_520, &windows);
    for (t, &v) in y.iter().enumerate() {
        let t = t as u64;
        assert_eq!(v, windows.iter().any(|&(s, e)| s <= t && t < e), "step {t}");
    }
    assert!(!table.contains_key(&1), "scenario 1 has no leak");
    assert!(table_json(&py, "NET1_LEAKAGES").is_some());
}
