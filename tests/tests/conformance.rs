//! The interpreter against the ONNX backend node suite and the shared
//! models. `tests/conformance/interp-passing.txt` lists the node tests
//! known to pass: any of them failing is a regression and fails the test.
//! Refresh it with
//! `kiln conformance ../shared/onnx-backend-node --write-passing tests/conformance/interp-passing.txt`.

use kiln_compiler::conformance::{run_test, run_test_at, Outcome, Tolerance};
use kiln_tests::{node_suite_dir, repo_root, shared_models};

fn expected_passing() -> Vec<String> {
    let list = std::fs::read_to_string(repo_root().join("tests/conformance/interp-passing.txt"))
        .expect("read the expectation list");
    list.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// The optimizer loses no conformance: every test that passes on the
/// imported module passes after the -O1 and -O2 pipelines.
#[test]
fn optimized_node_suite_loses_nothing() {
    let dir = node_suite_dir();
    for level in [1, 2] {
        let mut lost = Vec::new();
        for name in expected_passing() {
            let r = run_test_at(&dir.join(&name), Tolerance::default(), level);
            if r.outcome != Outcome::Pass {
                lost.push(kiln_compiler::conformance::report_line(&r));
            }
        }
        assert!(
            lost.is_empty(),
            "-O{level} loses {}:\n{}",
            lost.len(),
            lost.join("\n")
        );
    }
}

#[test]
fn node_suite_has_no_regressions() {
    let list = std::fs::read_to_string(repo_root().join("tests/conformance/interp-passing.txt"))
        .expect("read the expectation list");
    let expected: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let dir = node_suite_dir();
    let mut regressions = Vec::new();
    for name in &expected {
        let r = run_test(&dir.join(name), Tolerance::default());
        if r.outcome != Outcome::Pass {
            regressions.push(kiln_compiler::conformance::report_line(&r));
        }
    }
    assert!(
        regressions.is_empty(),
        "{} regressions:\n{}",
        regressions.len(),
        regressions.join("\n")
    );
    eprintln!("{} expected node tests pass", expected.len());
}

#[test]
fn shared_models_match_onnxruntime() {
    // The expected outputs are another engine's: the models' README sets
    // atol 1e-5 for them.
    let tol = Tolerance {
        rtol: 1e-3,
        atol: 1e-5,
        quantized: false,
    };
    let mut failures = Vec::new();
    for m in shared_models() {
        for level in [0, 2] {
            let r = run_test_at(&m, tol, level);
            if r.outcome != Outcome::Pass {
                failures.push(format!(
                    "-O{level} {}",
                    kiln_compiler::conformance::report_line(&r)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
