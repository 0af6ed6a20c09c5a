//! Control flow on the CPU backend: `If`, `Loop` and `Scan` regions run
//! as compiled sub-executables (one per input shape, then one for any
//! shapes), checked against the interpreter; a branch that only fails to
//! compile for inputs it never sees does not fail the model.

use std::collections::HashMap;

use kiln_compiler::conformance::{compare, Tolerance};
use kiln_compiler::lower::cpu::CpuOptions;
use kiln_compiler::{compile, Target};
use kiln_runtime::{Data, Interpreter, Tensor, Value};

fn cpu() -> Target {
    Target::Cpu(CpuOptions {
        threads: 2,
        ..Default::default()
    })
}

fn f32s(shape: Vec<usize>) -> Value {
    let n = shape.iter().product::<usize>();
    let v = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
    Value::tensor(Tensor::new(shape, Data::F32(v)).unwrap())
}

fn scalar_bool(b: bool) -> Value {
    Value::tensor(Tensor::scalar(Data::Bool(vec![b])))
}

/// Compile `src` for the cpu with `inputs`' shapes, run it, compare with
/// the interpreter and return the backend report.
fn check(src: &str, inputs: &HashMap<String, Value>) -> String {
    let m = kiln_ir::parse_module(src).unwrap();
    kiln_ir::verify::verify(&m).unwrap();
    let want = Interpreter::new(&m).run(inputs).unwrap();
    let exe = compile(&m, &cpu(), &kiln_compiler::lower::shapes_of(inputs)).unwrap();
    // Twice: the second run reuses what the first compiled.
    for _ in 0..2 {
        let got = exe.run(inputs).unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            compare(g, w, Tolerance::default()).unwrap();
        }
    }
    exe.report()
}

/// A carried value that grows every iteration: the body is compiled for
/// each new shape up to the limit, then once for any shape.
#[test]
fn loop_with_a_growing_carried_value() {
    let src = "module @grow opset(ai.onnx = 17) {
  input %x: f32[1,4]
  input %w: f32[4,4]
  const %trips: i64[] = dense[12]
  %acc = Loop(%trips, none, %x) {
    body = graph {
      input %i: i64[]
      input %c: bool[]
      input %a: f32[?,4]
      %h = MatMul(%a, %w) : f32[?,4]
      %t = Tanh(%h) : f32[?,4]
      %g = Concat(%a, %t) {axis = 0} : f32[?,4]
      return %c, %g
    }
  } : f32[?,4]
  return %acc
}";
    let inputs = HashMap::from([
        ("x".to_string(), f32s(vec![1, 4])),
        ("w".to_string(), f32s(vec![4, 4])),
    ]);
    let report = check(src, &inputs);
    assert!(report.contains("Loop with compiled regions"), "{report}");
    assert!(report.contains("# region %acc (Loop) body:"), "{report}");
}

/// The loop's work is native inside: the body's matmul and fused
/// elementwise chain are kernel-library and generated steps, and the loop
/// step itself is not on the interpreter.
#[test]
fn loop_and_scan_bodies_are_native() {
    let src = "module @rnn opset(ai.onnx = 17) {
  input %h0: f32[1,8]
  input %xs: f32[5,1,8]
  input %w: f32[8,8]
  const %trips: i64[] = dense[3]
  %h = Loop(%trips, none, %h0) {
    body = graph {
      input %i: i64[]
      input %c: bool[]
      input %a: f32[1,8]
      %m = MatMul(%a, %w) : f32[1,8]
      %s = Sigmoid(%m) : f32[1,8]
      %y = Mul(%m, %s) : f32[1,8]
      return %c, %y
    }
  } : f32[1,8]
  %last, %ys = Scan(%h, %xs) {
    body = graph {
      input %st: f32[1,8]
      input %x: f32[1,8]
      %p = MatMul(%x, %w) : f32[1,8]
      %q = Add(%p, %st) : f32[1,8]
      %r = Tanh(%q) : f32[1,8]
      return %r, %r
    },
    num_scan_inputs = 1
  } : f32[1,8], f32[5,1,8]
  return %last, %ys
}";
    let inputs = HashMap::from([
        ("h0".to_string(), f32s(vec![1, 8])),
        ("xs".to_string(), f32s(vec![5, 1, 8])),
        ("w".to_string(), f32s(vec![8, 8])),
    ]);
    let report = check(src, &inputs);
    let last = report.lines().last().unwrap();
    assert_eq!(
        last, "# 2 steps: 2 native, 0 on the interpreter",
        "{report}"
    );
    for region in ["%h (Loop) body", "%last (Scan) body"] {
        let at = report
            .find(region)
            .unwrap_or_else(|| panic!("{region}: {report}"));
        let nested = report[at..].lines().find(|l| l.starts_with("#   # "));
        assert!(
            nested.is_some_and(|l| l.ends_with(" 0 on the interpreter")),
            "{region}: {report}"
        );
    }
}

/// Inference of the branch that is not taken fails at these shapes
/// (squeezing an axis of size 2): the model still compiles and runs, and
/// taking that branch is a run-time error, as on the interpreter.
#[test]
fn a_branch_that_cannot_compile_is_not_an_error_until_taken() {
    let src = "module @branches opset(ai.onnx = 17) {
  input %c: bool[]
  input %x: f32[N,M]
  const %axes: i64[1] = dense[1]
  %y = If(%c) {
    else_branch = graph {
      %s = ReduceSum(%x, %axes) {keepdims = 0} : f32[N]
      return %s
    },
    then_branch = graph {
      %q = Squeeze(%x, %axes) : f32[N]
      return %q
    }
  } : f32[N]
  return %y
}";
    let mut inputs = HashMap::from([
        ("c".to_string(), scalar_bool(false)),
        ("x".to_string(), f32s(vec![3, 2])),
    ]);
    check(src, &inputs);
    let m = kiln_ir::parse_module(src).unwrap();
    let exe = compile(&m, &cpu(), &kiln_compiler::lower::shapes_of(&inputs)).unwrap();
    inputs.insert("c".to_string(), scalar_bool(true));
    let err = exe.run(&inputs).unwrap_err().to_string();
    assert!(err.contains("Squeeze"), "{err}");
}
