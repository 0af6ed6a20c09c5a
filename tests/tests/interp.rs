//! The reference interpreter on small hand-written programs: control flow
//! (If, Loop, Scan, SequenceMap), type rules, and run-time errors.

use std::collections::HashMap;

use kiln_runtime::{Data, Interpreter, Tensor, Value};

fn run(src: &str, inputs: Vec<(&str, Tensor)>) -> Result<Vec<Value>, String> {
    let m = kiln_ir::parse_module(src).map_err(|e| e.to_string())?;
    kiln_ir::verify::verify(&m).map_err(|e| e.to_string())?;
    let inputs: HashMap<String, Value> = inputs
        .into_iter()
        .map(|(k, t)| (k.to_string(), Value::tensor(t)))
        .collect();
    Interpreter::new(&m).run(&inputs).map_err(|e| e.to_string())
}

fn f32s(shape: Vec<usize>, v: Vec<f32>) -> Tensor {
    Tensor::new(shape, Data::F32(v)).expect("tensor")
}

fn scalar<T>(d: fn(Vec<T>) -> Data, v: T) -> Tensor {
    Tensor::new(vec![], d(vec![v])).expect("scalar")
}

fn data(v: &Value) -> &Data {
    &v.as_tensor().expect("tensor").data
}

const IF: &str = "module @m opset(ai.onnx = 17) {
  input %c: bool[]
  input %x: f32[3]
  %y = If(%c) {
    else_branch = graph {
      %e = Neg(%x) : f32[3]
      return %e
    },
    then_branch = graph {
      %t = Abs(%x) : f32[3]
      return %t
    }
  } : f32[3]
  return %y
}
";

#[test]
fn if_runs_the_branch_its_condition_picks() {
    let x = f32s(vec![3], vec![-1.0, 2.0, -3.0]);
    let t = run(IF, vec![("c", scalar(Data::Bool, true)), ("x", x.clone())]).expect("then");
    assert_eq!(data(&t[0]), &Data::F32(vec![1.0, 2.0, 3.0]));
    let e = run(IF, vec![("c", scalar(Data::Bool, false)), ("x", x)]).expect("else");
    assert_eq!(data(&e[0]), &Data::F32(vec![1.0, -2.0, 3.0]));
}

#[test]
fn loop_carries_values_stacks_scan_outputs_and_stops_on_condition() {
    // acc doubles each trip; the body stops once i reaches 2 (3 trips of 10).
    let src = "module @m opset(ai.onnx = 17) {
  input %n: i64[]
  input %acc0: f32[1]
  const %two: i64[] = dense[2]
  %acc, %trace = Loop(%n, none, %acc0) {
    body = graph {
      input %i: i64[]
      input %cond: bool[]
      input %a: f32[1]
      %b = Add(%a, %a) : f32[1]
      %go = Less(%i, %two) : bool[]
      return %go, %b, %b
    }
  } : f32[1], f32[?,1]
  return %acc, %trace
}
";
    let out = run(
        src,
        vec![
            ("n", scalar(Data::I64, 10)),
            ("acc0", f32s(vec![1], vec![1.0])),
        ],
    )
    .expect("run");
    assert_eq!(data(&out[0]), &Data::F32(vec![8.0]));
    let trace = out[1].as_tensor().expect("tensor");
    assert_eq!(trace.shape, vec![3, 1]);
    assert_eq!(trace.data, Data::F32(vec![2.0, 4.0, 8.0]));
}

#[test]
fn scan_sums_rows_with_a_running_state() {
    let src = "module @m opset(ai.onnx = 17) {
  input %init: f32[2]
  input %xs: f32[3,2]
  %sum, %partials = Scan(%init, %xs) {
    body = graph {
      input %s: f32[2]
      input %x: f32[2]
      %t = Add(%s, %x) : f32[2]
      %u = Identity(%t) : f32[2]
      return %t, %u
    },
    num_scan_inputs = 1
  } : f32[2], f32[3,2]
  return %sum, %partials
}
";
    let xs = f32s(vec![3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let out = run(
        src,
        vec![("init", f32s(vec![2], vec![0.0, 0.0])), ("xs", xs)],
    )
    .expect("run");
    assert_eq!(data(&out[0]), &Data::F32(vec![9.0, 12.0]));
    assert_eq!(
        data(&out[1]),
        &Data::F32(vec![1.0, 2.0, 4.0, 6.0, 9.0, 12.0])
    );
}

#[test]
fn sequence_map_applies_its_body_to_every_item() {
    let src = "module @m opset(ai.onnx = 17) {
  input %a: f32[2]
  input %b: f32[3]
  const %one: i64[] = dense[1]
  %s = SequenceConstruct(%a, %b) : seq<f32[?]>
  %m = SequenceMap(%s) {
    body = graph {
      input %x: f32[?]
      %y = Mul(%x, %x) : f32[?]
      return %y
    }
  } : seq<f32[?]>
  %n = SequenceLength(%m) : i64[]
  %last = SequenceAt(%m, %one) : f32[?]
  return %n, %last
}
";
    let out = run(
        src,
        vec![
            ("a", f32s(vec![2], vec![1.0, 2.0])),
            ("b", f32s(vec![3], vec![3.0, 4.0, 5.0])),
        ],
    )
    .expect("run");
    assert_eq!(data(&out[0]), &Data::I64(vec![2]));
    assert_eq!(data(&out[1]), &Data::F32(vec![9.0, 16.0, 25.0]));
}

#[test]
fn types_do_not_promote_implicitly() {
    // ONNX has no implicit promotion: Add of i32 and f32 is rejected...
    let add = "module @m opset(ai.onnx = 17) {\n  input %a: i32[2]\n  input %b: f32[2]\n  %c = Add(%a, %b) : f32[2]\n  return %c\n}\n";
    assert!(run(add, vec![]).is_err());
    // ...while Pow keeps its base's type whatever the exponent's.
    let pow = "module @m opset(ai.onnx = 17) {\n  input %a: f32[2]\n  input %b: i64[2]\n  %c = Pow(%a, %b) : f32[2]\n  return %c\n}\n";
    let b = Tensor::new(vec![2], Data::I64(vec![2, 3])).expect("t");
    let out = run(pow, vec![("a", f32s(vec![2], vec![3.0, 2.0])), ("b", b)]).expect("pow");
    assert_eq!(data(&out[0]), &Data::F32(vec![9.0, 8.0]));
}

#[test]
fn run_time_errors_name_the_node() {
    let gather = "module @m opset(ai.onnx = 17) {\n  input %x: f32[3]\n  input %i: i64[1]\n  %y = Gather(%x, %i) : f32[1] loc(\"pick\")\n  return %y\n}\n";
    let i = Tensor::new(vec![1], Data::I64(vec![7])).expect("t");
    let err = run(
        gather,
        vec![("x", f32s(vec![3], vec![1.0, 2.0, 3.0])), ("i", i)],
    )
    .expect_err("out of range");
    assert!(err.starts_with("Gather \"pick\": "), "{err}");
    let div = "module @m opset(ai.onnx = 17) {\n  input %a: i32[2]\n  input %b: i32[2]\n  %c = Div(%a, %b) : i32[2]\n  return %c\n}\n";
    let a = Tensor::new(vec![2], Data::I32(vec![4, 5])).expect("t");
    let b = Tensor::new(vec![2], Data::I32(vec![2, 0])).expect("t");
    let err = run(div, vec![("a", a), ("b", b)]).expect_err("division by zero");
    assert!(err.starts_with("Div: ") && err.contains("zero"), "{err}");
}
