//! Measurements of `constant-fold`, `cse` and `dce` on real models (run
//! with `--ignored --nocapture`): node and constant counts before/after on
//! the shared models, and the node suite with the passes applied (every
//! test of `tests/conformance/interp-passing.txt` must still pass).

use std::path::Path;

use kiln_compiler::conformance::{compare, Tolerance};
use kiln_compiler::passes::run_named;
use kiln_compiler::testdata::read_value;
use kiln_ir::Module;
use kiln_runtime::Interpreter;
use kiln_tests::{node_suite_dir, repo_root, shared_models};

const PASSES: &[&str] = &["constant-fold", "cse", "dce"];

fn count_consts(m: &Module) -> usize {
    fn go(r: &kiln_ir::Region) -> usize {
        r.constants.len()
            + r.nodes
                .iter()
                .flat_map(|n| n.regions())
                .map(|(_, s)| go(s))
                .sum::<usize>()
    }
    go(&m.body)
}

/// The three passes to a fixed point (at most 8 rounds); per-pass change log.
fn optimize(m: &mut Module) -> Result<Vec<String>, String> {
    let mut log = vec![];
    for _ in 0..8 {
        let mut any = false;
        for p in PASSES {
            let t = std::time::Instant::now();
            let changed = run_named(m, p)?;
            log.push(format!(
                "{p}:{}{}({:.0}ms)",
                m.body.node_count(),
                if changed { "*" } else { "" },
                t.elapsed().as_secs_f64() * 1e3
            ));
            any |= changed;
        }
        if !any {
            break;
        }
    }
    Ok(log)
}

fn numbered(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<(usize, std::path::PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter_map(|p| {
                    let n = p
                        .file_stem()?
                        .to_str()?
                        .strip_prefix(prefix)?
                        .parse()
                        .ok()?;
                    Some((n, p))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

/// Load, optimize, and run every test_data_set against its expected outputs.
fn run_optimized(dir: &Path, tol: Tolerance) -> Result<(usize, usize), String> {
    let mut m =
        kiln_compiler::load_model(&dir.join("model.onnx")).map_err(|e| format!("load: {e}"))?;
    let before = m.body.node_count();
    optimize(&mut m)?;
    let after = m.body.node_count();
    let interp = Interpreter::new(&m);
    let mut sets: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("test_data_set_"))
        })
        .collect();
    sets.sort();
    for s in sets {
        let mut inputs = std::collections::HashMap::new();
        for (f, &i) in numbered(&s, "input_").iter().zip(&m.body.inputs) {
            inputs.insert(m.name(i).to_string(), read_value(f, m.ty(i))?);
        }
        let got = interp.run(&inputs).map_err(|e| e.to_string())?;
        for (k, (f, &o)) in numbered(&s, "output_")
            .iter()
            .zip(&m.body.outputs)
            .enumerate()
        {
            let want = read_value(f, m.ty(o))?;
            compare(&got[k], &want, tol).map_err(|e| format!("output {k}: {e}"))?;
        }
    }
    Ok((before, after))
}

#[test]
#[ignore]
fn shared_models_before_after() {
    for dir in shared_models() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let mut m = kiln_compiler::load_model(&dir.join("model.onnx")).unwrap();
        let (n0, c0, b0) = (m.body.node_count(), count_consts(&m), m.constants_bytes());
        let t = std::time::Instant::now();
        let log = optimize(&mut m).unwrap_or_else(|e| panic!("{name}: {e}"));
        let el = t.elapsed();
        eprintln!(
            "{name}: nodes {n0} -> {}, constants {c0} -> {}, constant bytes {b0} -> {} ({:.0} ms)\n  {}",
            m.body.node_count(),
            count_consts(&m),
            m.constants_bytes(),
            el.as_secs_f64() * 1e3,
            log.join(" ")
        );
        let r = run_optimized(
            &dir,
            Tolerance {
                rtol: 1e-3,
                atol: 1e-5,
                quantized: false,
            },
        );
        eprintln!("  expected outputs: {:?}", r.map(|_| "match"));
    }
}

#[test]
#[ignore]
fn node_suite_with_passes() {
    let list =
        std::fs::read_to_string(repo_root().join("tests/conformance/interp-passing.txt")).unwrap();
    let dir = node_suite_dir();
    let mut fails = vec![];
    let (mut changed, mut total) = (0, 0);
    for name in list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let r = std::panic::catch_unwind(|| run_optimized(&dir.join(name), Tolerance::default()))
            .unwrap_or_else(|_| Err("panicked".into()));
        total += 1;
        match r {
            Ok((b, a)) => changed += (b != a) as usize,
            Err(e) => fails.push(format!("{name}: {e}")),
        }
    }
    // Every model of the suite (passing or not) optimizes to a valid module.
    for dir in kiln_tests::node_tests() {
        let Ok(mut m) = kiln_compiler::load_model(&dir.join("model.onnx")) else {
            continue;
        };
        let r = std::panic::catch_unwind(move || optimize(&mut m).map(|_| ()))
            .unwrap_or_else(|_| Err("panicked".into()));
        if let Err(e) = r {
            fails.push(format!("{}: {e}", dir.display()));
        }
    }
    eprintln!(
        "{total} tests, {changed} changed node count, {} failures",
        fails.len()
    );
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}
