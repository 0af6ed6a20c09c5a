//! The CPU backend against the ONNX backend node suite and the shared
//! models. It must pass every node test the interpreter passes
//! (`tests/conformance/interp-passing.txt`) except those listed with a
//! reason in `tests/conformance/cpu-known-failures.txt`, and all four
//! shared models.

use kiln_compiler::conformance::{report_line, run_test_on, Outcome, Tolerance};
use kiln_compiler::lower::cpu::CpuOptions;
use kiln_compiler::Target;
use kiln_tests::{node_suite_dir, repo_root, shared_models};

fn names(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join(file)).expect("read list");
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

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
    let known = names("tests/conformance/cpu-known-failures.txt");
    assert!(known.len() <= 10, "at most 10 known cpu failures");
    let dir = node_suite_dir();
    let mut lost = Vec::new();
    let mut ran = 0;
    for name in names("tests/conformance/interp-passing.txt") {
        if known.contains(&name) {
            continue;
        }
        for threads in [1, 2] {
            let r = run_test_on(&dir.join(&name), Tolerance::default(), &cpu(threads));
            if r.outcome != Outcome::Pass {
                lost.push(format!("{threads} thread(s): {}", report_line(&r)));
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
    eprintln!("{ran} node tests pass on the cpu backend at 1 and 2 threads");
}

#[test]
fn cpu_runs_the_shared_models() {
    let tol = Tolerance {
        rtol: 1e-3,
        atol: 1e-5,
    };
    let mut failures = Vec::new();
    for m in shared_models() {
        for threads in [1, 2] {
            let r = run_test_on(&m, tol, &cpu(threads));
            if r.outcome != Outcome::Pass {
                failures.push(format!("{threads} thread(s): {}", report_line(&r)));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
