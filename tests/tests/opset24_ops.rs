//! The ai.onnx ops of opsets 23-24 (Attention, RMSNormalization,
//! RotaryEmbedding, Swish, TensorScatter) on every backend, against the
//! node cases in
//! `tests/models/opset24` (made by `tests/models/make_opset24_cases.py`:
//! expected outputs from onnx's reference implementation, checked against
//! onnxruntime there). The interpreter runs the ops themselves; the cpu
//! and gpu backends run what the `expand-composites` pass turns them
//! into, with no step left on the interpreter or the host; TensorScatter
//! runs natively on the cpu and as a cpu step of the gpu backend.
//!
//! Tolerance: ONNX's default (rtol 1e-3) but atol 1e-5, since the
//! reference computes in f32 and the decompositions sum in another order
//! (attention probabilities of order 1e-2 times values of order 1).

use std::path::PathBuf;

use kiln_compiler::conformance::{report_line, run_test_on, Outcome, Tolerance};
use kiln_compiler::lower::cpu::CpuOptions;
use kiln_compiler::lower::gpu::GpuOptions;
use kiln_compiler::Target;
use kiln_runtime::gpu::Gpu;

const TOL: Tolerance = Tolerance {
    rtol: 1e-3,
    atol: 1e-5,
    quantized: false,
};

fn cases() -> Vec<PathBuf> {
    let dir = kiln_tests::repo_root().join("tests/models/opset24");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    v.sort();
    assert!(v.len() >= 20, "the opset-24 cases are missing");
    v
}

/// Cases of ops the gpu backend leaves to the cpu (TensorScatter).
fn on_host(dir: &std::path::Path) -> bool {
    dir.to_string_lossy().contains("tensor_scatter")
}

/// The compiled executable's step report for case `dir` on `target`.
fn report(dir: &std::path::Path, target: &Target) -> String {
    let m = kiln_compiler::load_model(dir).expect("loads");
    let inputs = kiln_compiler::check::inputs_from_test_folder(&m, dir)
        .expect("reads inputs")
        .expect("has inputs");
    let shapes = kiln_compiler::lower::shapes_of(&inputs);
    kiln_compiler::compile(&m, target, &shapes)
        .expect("compiles")
        .report()
}

#[test]
fn the_interpreter_runs_the_opset24_ops() {
    let mut failures = vec![];
    for dir in cases() {
        let r = run_test_on(
            &dir,
            TOL,
            &Target::Cpu(CpuOptions {
                opt_level: 0,
                ..Default::default()
            }),
        );
        if r.outcome != Outcome::Pass {
            failures.push(report_line(&r));
        }
        let r = kiln_compiler::conformance::run_test_at(&dir, TOL, 0);
        if r.outcome != Outcome::Pass {
            failures.push(format!("interp: {}", report_line(&r)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_cpu_runs_the_opset24_ops_natively() {
    let mut failures = vec![];
    for dir in cases() {
        for threads in [1, 2] {
            let target = Target::Cpu(CpuOptions {
                opt_level: 2,
                threads,
                ..Default::default()
            });
            let r = run_test_on(&dir, TOL, &target);
            if r.outcome != Outcome::Pass {
                failures.push(format!("{threads} thread(s): {}", report_line(&r)));
            }
        }
        let rep = report(&dir, &Target::Cpu(CpuOptions::default()));
        if !rep.trim_end().ends_with(" 0 on the interpreter") {
            failures.push(format!(
                "{}: steps on the interpreter:\n{rep}",
                dir.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_gpu_runs_the_opset24_ops_on_the_device() {
    let want = std::env::var("KILN_GPU_ADAPTER")
        .ok()
        .filter(|s| !s.is_empty());
    if let Err(e) = Gpu::open() {
        assert!(want.is_none(), "KILN_GPU_ADAPTER is set, but: {e}");
        eprintln!("skipped: no GPU adapter ({e})");
        return;
    }
    let gpu = Target::Gpu(GpuOptions::default());
    let mut failures = vec![];
    for dir in cases() {
        let r = run_test_on(&dir, TOL, &gpu);
        if r.outcome != Outcome::Pass {
            failures.push(report_line(&r));
        }
        let f16 = dir.to_string_lossy().contains("f16");
        let rep = report(&dir, &gpu);
        if !f16 && !on_host(&dir) && !rep.contains(" on the gpu, 0 on the cpu") {
            failures.push(format!("{}: cpu steps:\n{rep}", dir.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
