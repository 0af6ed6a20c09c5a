//! Pass `fold-qdq`, specified by example: every `tests/passes/fold-qdq/*.kir` is
//! parsed, verified, run through the pass, verified again, checked on the
//! interpreter against the unoptimized module (seeded random inputs), and
//! snapshotted as `<input> --- after fold-qdq --- <output>`.
//!
//! Tolerance: one quantization step of the cases' outputs (0.1). The float
//! graph rounds each sum in f32 before quantizing, the integer op rounds
//! once; a sum within f32 rounding of a step's midpoint lands on the other
//! side (the harness draws inputs in steps of 0.001, which meet such ties).

use kiln_compiler::conformance::Tolerance;

mod pass_clean_util;

#[test]
fn cases() {
    let one_step = Tolerance {
        rtol: 0.0,
        atol: 0.1 + 1e-6,
        quantized: false,
    };
    for path in pass_clean_util::cases("fold-qdq") {
        let text = pass_clean_util::run_case_within("fold-qdq", &path, one_step);
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("case")
            .to_string();
        insta::assert_snapshot!(name, text);
    }
}

/// The folded cases on the cpu backend: every step native (the integer
/// kernels, 8-bit movement, Q/DQ), the outputs within one step of the
/// interpreter on the unfolded module, at 1 and 2 threads.
#[test]
fn cpu_runs_the_folded_cases_natively() {
    let one_step = Tolerance {
        rtol: 0.0,
        atol: 0.1 + 1e-6,
        quantized: false,
    };
    pass_clean_util::cpu_runs_cases_natively("fold-qdq", one_step, |name, _, report| {
        assert!(report.contains("QLinearConv"), "{name}: {report}");
    });
}
