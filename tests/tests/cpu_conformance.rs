//! The CPU backend against the ONNX backend node suite and the shared
//! models. It must pass every node test the interpreter passes
//! (`tests/conformance/interp-passing.txt`) except those listed with a
//! reason in `tests/conformance/cpu-known-failures.txt`, and all four
//! shared models.

use kiln_compiler::conformance::{report_line, run_test_on, Outcome, Tolerance};
use kiln_compiler::lower::cpu::CpuOptions;
use kiln_compiler::Target;
use kiln_tests::{listed, node_suite_dir, shared_models, zoo_models};

/// The cpu target at -O2 on `threads` threads.
fn cpu(threads: usize) -> Target {
    Target::Cpu(CpuOptions {
        opt_level: 2,
        threads,
        ..Default::default()
    })
}

#[test]
fn cpu_passes_what_the_interpreter_passes() {
    let known = listed("tests/conformance/cpu-known-failures.txt");
    assert!(known.len() <= 10, "at most 10 known cpu failures");
    let dir = node_suite_dir();
    let mut lost = Vec::new();
    let mut ran = 0;
    for name in listed("tests/conformance/interp-passing.txt") {
        if known.contains(&name) {
            continue;
        }
        // -O2 at 1 and 2 threads; -O0 too (shape arithmetic unfolded,
        // results whose shapes only the run knows).
        for (level, threads) in [(2, 1), (2, 2), (0, 1)] {
            let target = Target::Cpu(CpuOptions {
                opt_level: level,
                threads,
                ..Default::default()
            });
            let r = run_test_on(&dir.join(&name), Tolerance::default(), &target);
            if r.outcome != Outcome::Pass {
                lost.push(format!(
                    "-O{level}, {threads} thread(s): {}",
                    report_line(&r)
                ));
            }
        }
        ran += 1;
    }
    assert!(
        lost.is_empty(),
        "cpu fails {}:\n{}",
        lost.len(),
        lost.join("\n")
    );
    eprintln!("{ran} node tests pass on the cpu backend at -O2 (1 and 2 threads) and -O0");
}

#[test]
fn cpu_runs_the_shared_models() {
    let tol = Tolerance {
        rtol: 1e-3,
        atol: 1e-5,
        quantized: false,
    };
    let mut failures = Vec::new();
    // The zoo too, when present (random weights: the atol 1e-4).
    let zoo_tol = Tolerance { atol: 1e-4, ..tol };
    for (m, tol) in shared_models()
        .into_iter()
        .map(|m| (m, tol))
        .chain(zoo_models().into_iter().map(|m| (m, zoo_tol)))
    {
        for threads in [1, 2] {
            let r = run_test_on(&m, tol, &cpu(threads));
            if r.outcome != Outcome::Pass {
                failures.push(format!("{threads} thread(s): {}", report_line(&r)));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The memory plan is what runs: on every shared model, the cpu
/// executable keeps every intermediate in the arena, and the arena is the
/// size the plan (made on the same lowered module with the cpu target's
/// options) says.
#[test]
fn cpu_runs_the_memory_plan() {
    use kiln_compiler::passes::memory_plan::{plan_with, PlanOptions};
    for dir in shared_models() {
        let m = kiln_compiler::load_model(&dir).expect("loads");
        let inputs = kiln_compiler::check::inputs_from_test_folder(&m, &dir)
            .expect("reads inputs")
            .expect("has test data");
        let shapes = kiln_compiler::lower::shapes_of(&inputs);
        let target = cpu(1);
        let exe = kiln_compiler::compile(&m, &target, &shapes).expect("compiles");
        let mem = exe.memory();
        assert!(
            mem.unplanned.is_empty(),
            "{}: intermediates outside the arena: {:?}",
            dir.display(),
            mem.unplanned
        );
        let lowered = kiln_compiler::compile::prepare(&m, &target, &shapes).expect("lowers");
        let opts = PlanOptions {
            align: target.buffer_alignment(),
            skip_unsized: true,
            ..Default::default()
        };
        let plan = plan_with(&lowered, &Default::default(), &opts).expect("plans");
        // Every pointwise kernel of these models may run in place, so the
        // plan without a kernel predicate is the one that runs.
        assert_eq!(
            mem.arena_bytes as u64,
            plan.arena_bytes,
            "{}: arena",
            dir.display()
        );
        assert_eq!(mem.arena_values, plan.buffers.len(), "{}", dir.display());
        assert!(
            plan.arena_bytes < plan.naive_bytes,
            "{}: no reuse",
            dir.display()
        );
    }
}
