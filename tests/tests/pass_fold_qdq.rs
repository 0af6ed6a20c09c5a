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
    use kiln_compiler::compile::{compile, Target};
    use kiln_compiler::conformance::compare;
    use kiln_compiler::lower::cpu::CpuOptions;
    use kiln_runtime::Interpreter;
    let one_step = Tolerance {
        rtol: 0.0,
        atol: 0.1 + 1e-6,
        quantized: false,
    };
    for path in pass_clean_util::cases("fold-qdq") {
        let name = path.display().to_string();
        if name.ends_with("kept.kir") {
            continue;
        }
        let src = std::fs::read_to_string(&path).expect("read");
        let m = kiln_ir::parse_module(&src).expect("parses");
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
                assert!(report.contains("QLinearConv"), "{name}: {report}");
                let got = exe.run(&inputs).expect("runs");
                for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                    compare(g, w, one_step)
                        .unwrap_or_else(|e| panic!("{name}: output {k}, seed {seed}: {e}"));
                }
            }
        }
    }
}
