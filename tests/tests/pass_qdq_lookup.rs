//! Pass `qdq-lookup`, specified by example: every
//! `tests/passes/qdq-lookup/*.kir` is parsed, verified, run through the
//! pass, verified again, checked on the interpreter against the module
//! before it (seeded random inputs), and snapshotted as
//! `<input> --- after qdq-lookup --- <output>`.
//!
//! Tolerance: none. A table holds what the interpreter computed for each
//! byte with the very nodes it replaces, so the results are bit for bit
//! the float graph's.

use kiln_compiler::conformance::Tolerance;

mod pass_clean_util;

const EXACT: Tolerance = Tolerance {
    rtol: 0.0,
    atol: 0.0,
    quantized: false,
};

#[test]
fn cases() {
    for path in pass_clean_util::cases("qdq-lookup") {
        let text = pass_clean_util::run_case_within("qdq-lookup", &path, EXACT);
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("case")
            .to_string();
        insta::assert_snapshot!(name, text);
    }
}

/// The rewritten cases on the cpu backend: every step native (the table
/// lookups among them), the outputs exactly the interpreter's on the
/// module before the pass, at 1 and 2 threads.
#[test]
fn cpu_runs_the_rewritten_cases_natively() {
    pass_clean_util::cpu_runs_cases_natively("qdq-lookup", EXACT, |name, _, report| {
        assert!(report.contains("Lookup (8-bit)"), "{name}: {report}");
    });
}
