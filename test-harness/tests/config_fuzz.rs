//! Configuration fuzzing (see `test_harness::config_fuzz`): every field of every configuration
//! the reference pages under `docs/reference/` document (their examples, plus every field their
//! tables list), mutated: removed, of
//! the wrong type, out of range, huge, with unknown neighbours. Each mutant is either accepted
//! (and then serves a request) or refused naming a field that exists in it, in the error and in
//! the module's log line; none traps. Prints the counts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use test_harness::config_fuzz::{documented_configs, mutants, run, undocumented_coverage};
use test_harness::paths;

#[test]
fn every_documented_field_mutated_is_accepted_or_refused_by_name_and_never_traps() {
    // The stages' reference pages (the README points to them): their examples and tables.
    let dir = paths::workspace_root().join("docs").join("reference");
    let mut pages: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    pages.sort();
    let docs: String = pages.iter().map(|p| format!("\n{}\n", std::fs::read_to_string(p).unwrap())).collect();
    let configs = documented_configs(&docs).unwrap();
    for d in &configs {
        let missing = undocumented_coverage(d);
        assert!(missing.is_empty(), "{}: documented fields the fuzzed configuration lacks: {missing:?}", d.target);
        assert!(d.target.name() == "upstream_guard" || d.table_fields.len() >= 5, "{}: {:?}", d.target, d.table_fields);
    }
    let report = run(&configs);
    println!("{report}");
    assert!(report.problems.is_empty(), "{report}");
    let tried: u64 = report.counts.values().map(|c| c.tried).sum();
    let expected: usize = configs.iter().map(|d| mutants(&d.config).len()).sum();
    assert_eq!(tried, expected as u64);
    assert!(report.counts.values().all(|c| c.accepted > 0 && c.refused > c.accepted), "{report}");
}
