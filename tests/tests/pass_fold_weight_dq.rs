//! Pass `fold-weight-dq`, specified by example: every
//! `tests/passes/fold-weight-dq/*.kir` is parsed, verified, run through the
//! pass, verified again, checked on the interpreter against the
//! unoptimized module (seeded random inputs), and snapshotted as `<input>
//! --- after fold-weight-dq --- <output>`. The rewrites are exact (the
//! interpreter runs `kiln.DequantMatMul` as DequantizeLinear then MatMul),
//! so the usual tolerance applies.

use kiln_compiler::conformance::Tolerance;

mod pass_clean_util;

#[test]
fn cases() {
    for path in pass_clean_util::cases("fold-weight-dq") {
        let text = pass_clean_util::run_case("fold-weight-dq", &path);
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("case")
            .to_string();
        insta::assert_snapshot!(name, text);
    }
}

/// The folded cases on the cpu backend, whole pipeline: every product of
/// quantized weights runs on the weight-only kernel with the weights as
/// stored (8 or 4 bits, never an f32 copy), every step native, the
/// outputs those of the interpreter on the unfolded module at 1 and 2
/// threads. Tolerance: rtol 1e-4, atol 1e-5: the kernel sums in another
/// order than the interpreter's MatMul, and its batch-1 path multiplies by
/// the scale once per block instead of once per weight.
#[test]
fn cpu_runs_the_folded_cases_natively() {
    let tol = Tolerance {
        rtol: 1e-4,
        atol: 1e-5,
        quantized: false,
    };
    pass_clean_util::cpu_runs_cases_natively("fold-weight-dq", tol, |name, src, report| {
        let products = src.matches("MatMul(").count() + src.matches("Gemm(").count();
        let packed = report.matches(" KiB packed)").count();
        assert_eq!(packed, products, "{name}: {report}");
    });
}
