//! `kiln conformance`: run ONNX backend-test folders (`model.onnx` plus
//! `test_data_set_*/{input,output}_N.pb`) and compare with ONNX's rule,
//! `|got - want| <= atol + rtol * |want|` elementwise, exact for integers,
//! bools and strings, NaN matching NaN; or, for quantized models
//! ([`Tolerance::quantized`]), by statistics over each numeric output.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_interp::{Data, Executable, Tensor, Value};
use kiln_ir::Module;

pub use crate::compile::Target;

use crate::testdata::read_value;

/// Comparison tolerances.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
    /// Judge numeric outputs as quantized models are judged instead of
    /// element by element: integer kernels may differ from the reference
    /// by a few quantization steps through a deep network (a sum within
    /// f32 rounding of a step's midpoint rounds to the other side, and the
    /// difference spreads), so an output passes when its mean absolute
    /// error is at most [`QUANT_MEAN_ERROR`] of the expected output's range
    /// and its argmax along the last axis agrees on at least
    /// [`QUANT_ARGMAX_AGREEMENT`] of the rows (issue 17's criterion).
    pub quantized: bool,
}

/// The quantized criterion's bound on the mean absolute error, as a
/// fraction of the expected output's range (max - min).
pub const QUANT_MEAN_ERROR: f64 = 1e-3;
/// The quantized criterion's least argmax agreement over the rows of the
/// last axis.
pub const QUANT_ARGMAX_AGREEMENT: f64 = 0.99;

impl Default for Tolerance {
    /// ONNX's own defaults for its backend tests.
    fn default() -> Tolerance {
        Tolerance {
            rtol: 1e-3,
            atol: 1e-7,
            quantized: false,
        }
    }
}

/// The quantized criterion on `a` (got) against `b` (expected), shaped
/// `shape`: `Err` with the measured figures when it fails.
fn quantized_close(a: &[f64], b: &[f64], shape: &[usize]) -> Result<(), String> {
    if a.is_empty() {
        return Ok(());
    }
    let (lo, hi) = b
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    let range = (hi - lo).max(f64::MIN_POSITIVE);
    let mean = a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64;
    if mean.is_nan() || mean > QUANT_MEAN_ERROR * range {
        return Err(format!(
            "mean |error| {:.2e} of the range (at most {QUANT_MEAN_ERROR:.0e})",
            mean / range
        ));
    }
    let last = shape.last().copied().unwrap_or(1);
    if last > 1 {
        let argmax = |row: &[f64]| {
            row.iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv {
                        (i, v)
                    } else {
                        (bi, bv)
                    }
                })
                .0
        };
        let rows = a.len() / last;
        let agree = a
            .chunks_exact(last)
            .zip(b.chunks_exact(last))
            .filter(|(x, y)| argmax(x) == argmax(y))
            .count();
        let share = agree as f64 / rows.max(1) as f64;
        if share < QUANT_ARGMAX_AGREEMENT {
            return Err(format!(
                "argmax agrees on {:.1} % of {rows} rows (at least {:.0} %)",
                100.0 * share,
                100.0 * QUANT_ARGMAX_AGREEMENT
            ));
        }
    }
    Ok(())
}

/// Graph inputs by name.
type Inputs = std::collections::HashMap<String, Value>;
/// Runs a model on inputs.
type RunFn<'a> = &'a dyn Fn(&Inputs) -> Result<Vec<Value>, String>;
/// An executable compiled for some (sorted) input shapes.
type Compiled = Option<(Vec<(String, Vec<usize>)>, Box<dyn Executable>)>;

/// The outcome of one test folder.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

/// One test's result.
#[derive(Clone, Debug)]
pub struct TestResult {
    pub name: String,
    pub outcome: Outcome,
    pub millis: f64,
}

/// The test folders under each path: the path itself when it holds
/// `model.onnx`, else its subfolders that do, sorted.
pub fn collect_tests(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.join("model.onnx").is_file() {
            out.push(p.clone());
            continue;
        }
        let rd = std::fs::read_dir(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let mut sub: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|d| d.join("model.onnx").is_file())
            .collect();
        if sub.is_empty() {
            return Err(format!(
                "{}: no model.onnx in it or in its subfolders",
                p.display()
            ));
        }
        sub.sort();
        out.extend(sub);
    }
    Ok(out)
}

/// Compare a result with the expected value; `Err` says where they differ.
pub fn compare(got: &Value, want: &Value, tol: Tolerance) -> Result<(), String> {
    match (got, want) {
        (Value::Tensor(g), Value::Tensor(w)) => compare_tensors(g, w, tol),
        (Value::Sequence(g), Value::Sequence(w)) => {
            if g.len() != w.len() {
                return Err(format!(
                    "sequence of {} values, expected {}",
                    g.len(),
                    w.len()
                ));
            }
            for (i, (a, b)) in g.iter().zip(w).enumerate() {
                compare(a, b, tol).map_err(|e| format!("sequence item {i}: {e}"))?;
            }
            Ok(())
        }
        (Value::Optional(g), Value::Optional(w)) => match (g, w) {
            (None, None) => Ok(()),
            (Some(a), Some(b)) => compare(a, b, tol),
            _ => Err(format!(
                "got {}, expected {}",
                got.describe(),
                want.describe()
            )),
        },
        // A tensor result where the test stores an optional holding one.
        (g, Value::Optional(Some(w))) => compare(g, w, tol),
        (Value::Optional(Some(g)), w) => compare(g, w, tol),
        _ => Err(format!(
            "got {}, expected {}",
            got.describe(),
            want.describe()
        )),
    }
}

fn index_of(shape: &[usize], mut i: usize) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        if shape[d] > 0 {
            idx[d] = i % shape[d];
            i /= shape[d];
        }
    }
    idx
}

fn compare_tensors(g: &Tensor, w: &Tensor, tol: Tolerance) -> Result<(), String> {
    if g.elem() != w.elem() {
        return Err(format!("element type {}, expected {}", g.elem(), w.elem()));
    }
    if g.shape != w.shape {
        return Err(format!("shape {:?}, expected {:?}", g.shape, w.shape));
    }
    let mismatch = |i: usize, a: String, b: String| {
        format!(
            "at index {:?}: got {a}, expected {b}",
            index_of(&w.shape, i)
        )
    };
    match (&g.data, &w.data) {
        (Data::Str(a), Data::Str(b)) => {
            if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
                return Err(mismatch(i, format!("{:?}", a[i]), format!("{:?}", b[i])));
            }
        }
        (Data::C64(a), Data::C64(b)) => {
            let flat = |v: &[[f32; 2]]| {
                v.iter()
                    .flat_map(|c| [c[0] as f64, c[1] as f64])
                    .collect::<Vec<_>>()
            };
            close_all(&flat(a), &flat(b), tol).map_err(|i| {
                mismatch(i / 2, format!("{:?}", a[i / 2]), format!("{:?}", b[i / 2]))
            })?;
        }
        (Data::C128(a), Data::C128(b)) => {
            let flat = |v: &[[f64; 2]]| v.iter().flat_map(|c| [c[0], c[1]]).collect::<Vec<_>>();
            close_all(&flat(a), &flat(b), tol).map_err(|i| {
                mismatch(i / 2, format!("{:?}", a[i / 2]), format!("{:?}", b[i / 2]))
            })?;
        }
        _ if tol.quantized && g.elem() != kiln_ir::ElemType::Bool => {
            quantized_close(&g.to_f64(), &w.to_f64(), &w.shape)?;
        }
        _ if g.elem().is_float() => {
            let (a, b) = (g.to_f64(), w.to_f64());
            close_all(&a, &b, tol).map_err(|i| mismatch(i, a[i].to_string(), b[i].to_string()))?;
        }
        _ => {
            let (a, b) = (g.to_i64(), w.to_i64());
            if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
                return Err(mismatch(i, a[i].to_string(), b[i].to_string()));
            }
        }
    }
    Ok(())
}

/// Index of the first element outside tolerance.
fn close_all(a: &[f64], b: &[f64], tol: Tolerance) -> Result<(), usize> {
    for i in 0..a.len() {
        let (x, y) = (a[i], b[i]);
        let ok =
            (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= tol.atol + tol.rtol * y.abs();
        if !ok {
            return Err(i);
        }
    }
    Ok(())
}

fn numbered(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter_map(|p| {
                    let stem = p.file_stem()?.to_str()?;
                    let n = stem.strip_prefix(prefix)?.parse().ok()?;
                    Some((n, p))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

/// Run one data set of a test against a loaded module.
fn run_data_set(m: &Module, run: RunFn, dir: &Path, tol: Tolerance) -> Outcome {
    let mut inputs = std::collections::HashMap::new();
    let files = numbered(dir, "input_");
    if files.len() != m.body.inputs.len() {
        return Outcome::Fail(format!(
            "{} input files for {} graph inputs",
            files.len(),
            m.body.inputs.len()
        ));
    }
    for (f, &i) in files.iter().zip(&m.body.inputs) {
        match read_value(f, m.ty(i)) {
            Ok(v) => {
                inputs.insert(m.name(i).to_string(), v);
            }
            Err(e) => return Outcome::Fail(e),
        }
    }
    let got = match run(&inputs) {
        Ok(v) => v,
        Err(e) if e.contains("has no kernel for") => return Outcome::Skip(e),
        Err(e) => return Outcome::Fail(e),
    };
    let outs = numbered(dir, "output_");
    if outs.len() != m.body.outputs.len() {
        return Outcome::Fail(format!(
            "{} output files for {} graph outputs",
            outs.len(),
            m.body.outputs.len()
        ));
    }
    for (k, (f, &o)) in outs.iter().zip(&m.body.outputs).enumerate() {
        let want = match read_value(f, m.ty(o)) {
            Ok(v) => v,
            Err(e) => return Outcome::Fail(e),
        };
        if let Err(e) = compare(&got[k], &want, tol) {
            return Outcome::Fail(format!("output {k} (%{}) {e}", m.name(o)));
        }
    }
    Outcome::Pass
}

/// Run one test folder: import, verify, then every `test_data_set_*`.
/// A panic inside a kernel is caught and reported as a failure.
pub fn run_test(dir: &Path, tol: Tolerance) -> TestResult {
    run_test_at(dir, tol, 0)
}

/// [`run_test`] with the module first optimized at `opt_level`.
pub fn run_test_at(dir: &Path, tol: Tolerance, opt_level: u8) -> TestResult {
    let target = Target::Interp(crate::compile::InterpOptions {
        opt_level,
        verify_each: true,
        ..Default::default()
    });
    run_test_on(dir, tol, &target)
}

/// [`run_test_at`] on any target, compiled for each data set's input
/// shapes (data sets of one test usually share them, so the last
/// executable is kept).
pub fn run_test_on(dir: &Path, tol: Tolerance, target: &Target) -> TestResult {
    let start = Instant::now();
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("?")
        .to_string();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let m = match crate::load_model(&dir.join("model.onnx")) {
            Ok(m) => m,
            Err(e) => return Outcome::Fail(e.to_string()),
        };
        let cache: std::cell::RefCell<Compiled> = Default::default();
        let run = |inputs: &Inputs| {
            let shapes = crate::lower::shapes_of(inputs);
            let mut key: Vec<(String, Vec<usize>)> = shapes.clone().into_iter().collect();
            key.sort();
            let mut c = cache.borrow_mut();
            if c.as_ref().map(|(k, _)| k != &key).unwrap_or(true) {
                let exe = crate::compile::compile(&m, target, &shapes).map_err(|e| {
                    match target {
                        // The interpreter's compile is the pass pipeline.
                        Target::Interp(_) => e,
                        _ => format!("compile: {e}"),
                    }
                })?;
                *c = Some((key, exe));
            }
            match c.as_ref() {
                Some((_, exe)) => exe.run(inputs).map_err(|e| e.to_string()),
                None => Err("no executable".into()),
            }
        };
        let run: RunFn = &run;
        let sets = numbered_sets(dir);
        if sets.is_empty() {
            return Outcome::Skip("no test_data_set_* folders".into());
        }
        for s in sets {
            match run_data_set(&m, run, &s, tol) {
                Outcome::Pass => {}
                other => {
                    let set = s
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or("")
                        .to_string();
                    return match other {
                        Outcome::Fail(e) => Outcome::Fail(format!("{set}: {e}")),
                        o => o,
                    };
                }
            }
        }
        Outcome::Pass
    }))
    .unwrap_or_else(|p| Outcome::Fail(format!("panicked: {}", kiln_interp::panic_message(&*p))));
    TestResult {
        name,
        outcome,
        millis: start.elapsed().as_secs_f64() * 1e3,
    }
}

fn numbered_sets(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_dir()
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("test_data_set_"))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The one-line report of a result.
pub fn report_line(r: &TestResult) -> String {
    match &r.outcome {
        Outcome::Pass => format!("PASS {}", r.name),
        Outcome::Fail(e) => format!("FAIL {}: {}", r.name, e.replace('\n', " ")),
        Outcome::Skip(e) => format!("SKIP {}: {}", r.name, e.replace('\n', " ")),
    }
}

/// Results as a JSON array.
pub fn results_json(results: &[TestResult], backend: &str, opt_level: u8) -> serde_json::Value {
    serde_json::json!({
        "backend": backend,
        "opt_level": opt_level,
        "tests": results.iter().map(|r| {
            let (status, message) = match &r.outcome {
                Outcome::Pass => ("pass", None),
                Outcome::Fail(e) => ("fail", Some(e.clone())),
                Outcome::Skip(e) => ("skip", Some(e.clone())),
            };
            serde_json::json!({ "test": r.name, "status": status, "message": message, "ms": r.millis })
        }).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quantized criterion: a few steps of error spread thin pass; a
    /// shifted output or a moved argmax fails, with the figure measured.
    #[test]
    fn quantized_criterion_judges_mean_error_and_argmax() {
        // 100 rows of 10 logits in [0, 9].
        let want: Vec<f64> = (0..1000).map(|i| ((i * 7) % 10) as f64).collect();
        let shape = [100, 10];
        // One element in a hundred off by a step of 0.05: mean 5e-4 of 9.
        let mut got = want.clone();
        for i in (0..1000).step_by(100) {
            got[i] += 0.05;
        }
        assert!(quantized_close(&got, &want, &shape).is_ok());
        // Everything off by 0.02: mean 2.2e-3 of the range.
        let shifted: Vec<f64> = want.iter().map(|v| v + 0.02).collect();
        let e = quantized_close(&shifted, &want, &shape).unwrap_err();
        assert!(e.contains("mean |error|"), "{e}");
        // Two rows whose maximum moves: 98 % agreement.
        let mut moved = want.clone();
        for row in [3, 40] {
            let r = &mut moved[row * 10..row * 10 + 10];
            let at = r.iter().position(|&v| v == 8.0).unwrap();
            r[at] = 9.01;
        }
        let e = quantized_close(&moved, &want, &shape).unwrap_err();
        assert!(e.contains("argmax agrees on 98.0 %"), "{e}");
    }
}
