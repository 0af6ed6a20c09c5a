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
    use kiln_compiler::compile::{compile, Target};
    use kiln_compiler::conformance::compare;
    use kiln_compiler::lower::cpu::CpuOptions;
    use kiln_runtime::Interpreter;
    let tol = Tolerance {
        rtol: 1e-4,
        atol: 1e-5,
        quantized: false,
    };
    for path in pass_clean_util::cases("fold-weight-dq") {
        let name = path.display().to_string();
        if name.ends_with("kept.kir") {
            continue;
        }
        let src = std::fs::read_to_string(&path).expect("read");
        let m = kiln_ir::parse_module(&src).expect("parses");
        let products = src.matches("MatMul(").count() + src.matches("Gemm(").count();
        for seed in 1..=3 {
            let inputs = pass_clean_util::random_inputs(&m, seed);
            let want = Interpreter::new(&m).run(&inputs).expect("interprets");
            for threads in [1, 2] {
                let opts = CpuOptions {
                    threads,
                    ..Default::default()
                };
                let exe = compile(
                    &m,
                    &Target::Cpu(opts),
                    &kiln_compiler::lower::shapes_of(&inputs),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
                let report = exe.report();
                assert!(
                    report.trim_end().ends_with("0 on the interpreter"),
                    "{name}: {report}"
                );
                let packed = report.matches(" KiB packed)").count();
                assert_eq!(packed, products, "{name}: {report}");
                let got = exe.run(&inputs).expect("runs");
                for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                    compare(g, w, tol)
                        .unwrap_or_else(|e| panic!("{name}: output {k}, seed {seed}: {e}"));
                }
            }
        }
    }
}
