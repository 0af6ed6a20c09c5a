#![allow(dead_code)]
//! Shared by the `pass_constant_fold`, `pass_dce` and `pass_cse` tests:
//! run one pass on every `.kir` file of `tests/passes/<pass>/`, check the
//! result verifies and computes what the input computed, and give back the
//! before/after text for the caller to snapshot.

use std::collections::HashMap;
use std::path::PathBuf;

use kiln_compiler::conformance::{compare, Tolerance};
use kiln_ir::text::{print_module, PrintOptions};
use kiln_ir::{Dim, ElemType, Module, Type};
use kiln_runtime::{Data, Interpreter, Tensor, Value};

/// The `.kir` files of a pass, sorted.
pub fn cases(pass: &str) -> Vec<PathBuf> {
    let dir = kiln_tests::repo_root().join("tests/passes").join(pass);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "kir"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no cases in {}", dir.display());
    v
}

/// [`run_case`] on every case of `pass`: (case name, snapshot text).
pub fn snapshots(pass: &str) -> Vec<(String, String)> {
    cases(pass)
        .iter()
        .map(|path| {
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("case");
            (name.to_string(), run_case(pass, path))
        })
        .collect()
}

/// Parse, verify, run the pass, verify; check outputs agree on seeded
/// random inputs; the snapshot text `<input>\n--- after <pass> ---\n<output>`.
pub fn run_case(pass: &str, path: &PathBuf) -> String {
    run_case_within(pass, path, EXACT_ENOUGH)
}

/// The check every meaning-keeping pass meets: rtol 1e-3, atol 1e-6.
pub const EXACT_ENOUGH: Tolerance = Tolerance {
    rtol: 1e-3,
    atol: 1e-6,
    quantized: false,
};

/// [`run_case`] with the outputs compared within `tol` (a pass that keeps
/// meaning only up to rounding says how far, and why).
pub fn run_case_within(pass: &str, path: &PathBuf, tol: Tolerance) -> String {
    let src = std::fs::read_to_string(path).unwrap();
    let name = path.display().to_string();
    let before = kiln_ir::parse_module(&src).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    kiln_ir::verify::verify(&before)
        .unwrap_or_else(|e| panic!("{name}: input does not verify: {e}"));
    let mut after = before.clone();
    kiln_compiler::compile::run_named(&mut after, pass).unwrap_or_else(|e| panic!("{name}: {e}"));
    check_results_within(&before, &after, &name, tol);
    let opts = PrintOptions::default();
    format!(
        "{}\n--- after {pass} ---\n{}",
        print_module(&before, &opts),
        print_module(&after, &opts)
    )
}

/// The interpreter gives the same outputs (rtol 1e-3, atol 1e-6) for both
/// modules on three seeded random input sets.
pub fn check_same_results(before: &Module, after: &Module, what: &str) {
    check_results_within(before, after, what, EXACT_ENOUGH)
}

/// [`check_same_results`] within `tol`.
pub fn check_results_within(before: &Module, after: &Module, what: &str, tol: Tolerance) {
    let ib = Interpreter::new(before);
    let ia = Interpreter::new(after);
    for seed in 1..=3u64 {
        let inputs = random_inputs(before, seed);
        let want = ib
            .run(&inputs)
            .unwrap_or_else(|e| panic!("{what}: before: {e}"));
        let got = ia
            .run(&inputs)
            .unwrap_or_else(|e| panic!("{what}: after: {e}"));
        assert_eq!(want.len(), got.len(), "{what}: output count");
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            compare(g, w, tol).unwrap_or_else(|e| panic!("{what}: output {k}: {e}"));
        }
    }
}

/// Inputs from the declared shapes (symbolic and unknown dims are 3): f32
/// in [-2, 2), integers in [0, 3), bools alternating.
pub fn random_inputs(m: &Module, seed: u64) -> HashMap<String, Value> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = HashMap::new();
    for &i in &m.body.inputs {
        let Type::Tensor(t) = m.ty(i) else {
            panic!("only tensor inputs")
        };
        let shape: Vec<usize> = t
            .shape
            .as_ref()
            .expect("ranked input")
            .iter()
            .map(|d| match d {
                Dim::Known(k) => *k as usize,
                _ => 3,
            })
            .collect();
        let n: usize = shape.iter().product();
        let data = match t.elem {
            ElemType::F32 => Data::F32(
                (0..n)
                    .map(|_| (next() % 4000) as f32 / 1000.0 - 2.0)
                    .collect(),
            ),
            ElemType::I64 => Data::I64((0..n).map(|_| (next() % 3) as i64).collect()),
            ElemType::I32 => Data::I32((0..n).map(|_| (next() % 3) as i32).collect()),
            ElemType::Bool => Data::Bool((0..n).map(|_| next() % 2 == 0).collect()),
            e => panic!("no random inputs of {e}"),
        };
        out.insert(
            m.name(i).to_string(),
            Value::tensor(Tensor::new(shape, data).unwrap()),
        );
    }
    out
}

/// Every case of `tests/passes/<pass>/` except `kept.kir`, compiled whole
/// for the cpu backend at 1 and 2 threads on three seeded input sets:
/// every step native (the report ends `0 on the interpreter`), `check`
/// approves the report, and the outputs are the interpreter's on the
/// unoptimized module within `tol`.
pub fn cpu_runs_cases_natively(pass: &str, tol: Tolerance, check: impl Fn(&str, &str, &str)) {
    use kiln_compiler::compile::{compile, Target};
    use kiln_compiler::lower::cpu::CpuOptions;
    for path in cases(pass) {
        let name = path.display().to_string();
        if name.ends_with("kept.kir") {
            continue;
        }
        let src = std::fs::read_to_string(&path).expect("read");
        let m = kiln_ir::parse_module(&src).expect("parses");
        for seed in 1..=3 {
            let inputs = random_inputs(&m, seed);
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
                check(&name, &src, &report);
                let got = exe.run(&inputs).expect("runs");
                for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                    compare(g, w, tol)
                        .unwrap_or_else(|e| panic!("{name}: output {k}, seed {seed}: {e}"));
                }
            }
        }
    }
}
