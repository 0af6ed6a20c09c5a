//! `kiln check`: bisect miscompiles. Run the interpreter on the imported
//! module, then again after every pass that changed the module, on the same
//! inputs; report the first pass after which an output moves beyond
//! tolerance.

use std::collections::HashMap;
use std::path::Path;

use kiln_interp::interp::kernels::Rng;
use kiln_interp::{Data, Interpreter, Tensor, Value};
use kiln_ir::{Dim, ElemType, Module, Type};

use crate::conformance::{compare, Tolerance};
use crate::passes::{run_pipeline, PassEvent, RunOptions, Step};

/// What `check` found.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckOutcome {
    /// Every pass kept the outputs within tolerance.
    Ok {
        passes_run: usize,
        passes_changed: usize,
    },
    /// The first pass (1-based execution index and name) after which an
    /// output moved, and how.
    Miscompile {
        index: usize,
        pass: &'static str,
        detail: String,
    },
}

/// Inputs from a backend-test folder's `test_data_set_0`, when the model
/// path is such a folder (or a model.onnx inside one).
pub fn inputs_from_test_folder(
    m: &Module,
    model: &Path,
) -> Result<Option<HashMap<String, Value>>, String> {
    let dir = if model.is_dir() {
        model.to_path_buf()
    } else {
        model.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let set = dir.join("test_data_set_0");
    if !set.is_dir() {
        return Ok(None);
    }
    let mut inputs = HashMap::new();
    for (k, &i) in m.body.inputs.iter().enumerate() {
        let f = set.join(format!("input_{k}.pb"));
        inputs.insert(
            m.name(i).to_string(),
            crate::testdata::read_value(&f, m.ty(i))?,
        );
    }
    Ok(Some(inputs))
}

/// Seeded random inputs of the declared types; symbolic dims from `dims`
/// (default 1). Floats uniform in [-1, 1), integers in [0, 4), bools fair.
pub fn random_inputs(
    m: &Module,
    dims: &HashMap<String, u64>,
    seed: u32,
) -> Result<HashMap<String, Value>, String> {
    let mut rng = Rng::new(seed);
    let mut out = HashMap::new();
    for &i in &m.body.inputs {
        let name = m.name(i);
        let Type::Tensor(tt) = m.ty(i) else {
            return Err(format!("input %{name}: random values only for tensors"));
        };
        let shape: Vec<usize> = tt
            .shape
            .as_ref()
            .ok_or_else(|| format!("input %{name} has unknown rank"))?
            .iter()
            .map(|d| match d {
                Dim::Known(n) => Ok(*n as usize),
                Dim::Sym(e) => e
                    .eval(&|s| Some(*dims.get(s).unwrap_or(&1) as i64))
                    .map(|v| v.max(0) as usize)
                    .ok_or_else(|| format!("input %{name}: cannot size {e}")),
                Dim::Unknown => Err(format!(
                    "input %{name} has an unknown dim; give a static shape"
                )),
            })
            .collect::<Result<_, _>>()?;
        let n: usize = shape.iter().product();
        let data = match tt.elem {
            ElemType::Bool => Data::Bool((0..n).map(|_| rng.uniform() < 0.5).collect()),
            ElemType::String => return Err(format!("input %{name}: no random strings")),
            e if e.is_float() => Data::from_f64(
                e,
                &(0..n)
                    .map(|_| 2.0 * rng.uniform() - 1.0)
                    .collect::<Vec<_>>(),
            ),
            e => Data::from_i64(
                e,
                &(0..n)
                    .map(|_| (rng.uniform() * 4.0) as i64)
                    .collect::<Vec<_>>(),
            ),
        };
        out.insert(
            name.to_string(),
            Value::tensor(Tensor::new(shape, data).map_err(|e| e.to_string())?),
        );
    }
    Ok(out)
}

fn first_difference(m: &Module, got: &[Value], want: &[Value], tol: Tolerance) -> Option<String> {
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        if let Err(e) = compare(g, w, tol) {
            let name = m.body.outputs.get(k).map(|&o| m.name(o)).unwrap_or("?");
            return Some(format!("output {k} (%{name}) {e}"));
        }
    }
    None
}

/// Run `steps` on `m`, interpreting after every pass that changed it and
/// comparing with the unoptimized module's outputs on `inputs`.
pub fn check_pipeline(
    m: &mut Module,
    steps: &[Step],
    inputs: &HashMap<String, Value>,
    tol: Tolerance,
) -> Result<CheckOutcome, String> {
    let reference = Interpreter::new(m)
        .run(inputs)
        .map_err(|e| format!("the unoptimized module fails: {e}"))?;
    let mut found: Option<CheckOutcome> = None;
    let (mut run, mut changed) = (0usize, 0usize);
    let mut observer = |ev: &PassEvent| {
        run += 1;
        if !ev.changed || found.is_some() {
            return;
        }
        changed += 1;
        let detail = match Interpreter::new(ev.module).run(inputs) {
            Ok(out) => first_difference(ev.module, &out, &reference, tol),
            Err(e) => Some(format!("the module no longer runs: {e}")),
        };
        if let Some(detail) = detail {
            found = Some(CheckOutcome::Miscompile {
                index: ev.index,
                pass: ev.name,
                detail,
            });
        }
    };
    let mut opts = RunOptions {
        verify_each: true,
        observer: Some(&mut observer),
    };
    run_pipeline(m, steps, &mut opts).map_err(|e| e.to_string())?;
    Ok(found.unwrap_or(CheckOutcome::Ok {
        passes_run: run,
        passes_changed: changed,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::{Pass, Step};

    /// A deliberately wrong rewrite: every Relu becomes a Sigmoid.
    fn relu_to_sigmoid(m: &mut Module) -> Result<bool, String> {
        let mut changed = false;
        for n in &mut m.body.nodes {
            if n.op == "Relu" {
                n.op = "Sigmoid".into();
                changed = true;
            }
        }
        Ok(changed)
    }

    fn harmless(_: &mut Module) -> Result<bool, String> {
        Ok(false)
    }

    static WRONG: Pass = Pass {
        name: "wrong-rewrite",
        run: relu_to_sigmoid,
        summary: "test",
    };
    static NOTHING: Pass = Pass {
        name: "nothing",
        run: harmless,
        summary: "test",
    };

    #[test]
    fn a_wrong_rewrite_is_caught_and_named() {
        let src = "module @m opset(ai.onnx = 17) {\n  input %x: f32[2,3]\n  %y = Relu(%x) : f32[2,3]\n  %z = Neg(%y) : f32[2,3]\n  return %z\n}\n";
        let mut m = kiln_ir::parse_module(src).expect("parse");
        let inputs = random_inputs(&m, &HashMap::new(), 1).expect("inputs");
        let steps = vec![Step::Run(&NOTHING), Step::Run(&WRONG)];
        let out = check_pipeline(&mut m, &steps, &inputs, Tolerance::default()).expect("check");
        match out {
            CheckOutcome::Miscompile {
                index,
                pass,
                detail,
            } => {
                assert_eq!((index, pass), (2, "wrong-rewrite"));
                assert!(detail.starts_with("output 0 (%z) at index"), "{detail}");
            }
            other => panic!("not caught: {other:?}"),
        }
    }

    #[test]
    fn the_real_pipeline_keeps_outputs() {
        let src = "module @m opset(ai.onnx = 17) {\n  input %x: f32[N,3]\n  const %one: f32[] = dense[1.0]\n  %a = Mul(%x, %one) : f32[N,3]\n  %b = Relu(%a) : f32[N,3]\n  %c = Relu(%a) : f32[N,3]\n  %d = Add(%b, %c) : f32[N,3]\n  return %d\n}\n";
        let mut m = kiln_ir::parse_module(src).expect("parse");
        let inputs = random_inputs(&m, &[("N".to_string(), 4)].into(), 7).expect("inputs");
        let out = check_pipeline(
            &mut m,
            &crate::passes::pipeline(2),
            &inputs,
            Tolerance::default(),
        )
        .expect("check");
        assert!(matches!(out, CheckOutcome::Ok { .. }), "{out:?}");
    }
}
