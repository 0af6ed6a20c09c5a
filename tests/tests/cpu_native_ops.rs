//! Ops the CPU backend runs natively once their parameters are constants
//! (the node suite passes them as graph inputs, so there they run on the
//! interpreter): each case is checked against the interpreter and must
//! have no interpreted step.

use std::collections::HashMap;

use kiln_compiler::conformance::{compare, Tolerance};
use kiln_compiler::lower::cpu::CpuOptions;
use kiln_compiler::{compile, Target};
use kiln_runtime::{Data, Interpreter, Tensor, Value};

/// Compile `src` (one input `%x` of `shape`) for the cpu, compare with the
/// interpreter, and require every step native.
fn native_matches_interpreter(src: &str, shape: Vec<usize>) {
    let m = kiln_ir::parse_module(src).unwrap_or_else(|e| panic!("{src}: {e:?}"));
    kiln_ir::verify::verify(&m).unwrap_or_else(|e| panic!("{src}: {e}"));
    let n = shape.iter().product::<usize>();
    let v = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
    let inputs = HashMap::from([(
        "x".to_string(),
        Value::tensor(Tensor::new(shape, Data::F32(v)).unwrap()),
    )]);
    let want = Interpreter::new(&m).run(&inputs).unwrap();
    let target = Target::Cpu(CpuOptions {
        threads: 1,
        ..Default::default()
    });
    let exe = compile(&m, &target, &kiln_compiler::lower::shapes_of(&inputs)).unwrap();
    let got = exe.run(&inputs).unwrap();
    for (g, w) in got.iter().zip(&want) {
        compare(g, w, Tolerance::default()).unwrap_or_else(|e| panic!("{src}: {e}"));
    }
    let report = exe.report();
    assert!(
        report.ends_with(" 0 on the interpreter\n"),
        "{src}\n{report}"
    );
}

#[test]
fn pad_in_every_mode() {
    let cases = [
        // mode, pads, axes (or none), result shape
        ("constant", "[1, 2, 0, 3]", None, "[4, 9]"),
        ("constant", "[0, -1, 0, 2]", None, "[3, 5]"),
        ("reflect", "[2, 3, 1, 3]", None, "[6, 10]"),
        ("reflect", "[0, 9, 0, 9]", None, "[3, 22]"),
        ("edge", "[2, 1, 2, 4]", None, "[7, 9]"),
        ("wrap", "[1, 6, 3, 7]", None, "[7, 17]"),
        ("constant", "[2, 1]", Some("[-1]"), "[3, 7]"),
        ("edge", "[1, 1]", Some("[0]"), "[5, 4]"),
    ];
    for (mode, pads, axes, out) in cases {
        let n = pads.split(',').count();
        let (axes_const, axes_operand) = match axes {
            Some(a) => (
                format!("  const %axes: i64[{}] = dense{a}\n", n / 2),
                ", %axes",
            ),
            None => (String::new(), ""),
        };
        let fill = if mode == "constant" { "%fill" } else { "none" };
        let src = format!(
            "module @pad opset(ai.onnx = 19) {{
  input %x: f32[3,4]
  const %pads: i64[{n}] = dense{pads}
  const %fill: f32[] = dense[1.5]
{axes_const}  %y = Pad(%x, %pads, {fill}{axes_operand}) {{mode = \"{mode}\"}} : f32{out}
  return %y
}}"
        );
        native_matches_interpreter(&src, vec![3, 4]);
    }
}

/// Where selects whole elements of any width a view holds (f16, bf16 and
/// f64 included: half-precision transformer exports mask attention scores
/// with a Where of f16): native, and equal to the interpreter. The
/// lowering once called every Where native and the step then refused f16
/// and f64 at run time.
#[test]
fn where_selects_elements_of_every_width() {
    for (ty, code) in [
        ("f16", 10),
        ("bf16", 16),
        ("f64", 11),
        ("i16", 5),
        ("u32", 12),
        ("u64", 13),
        ("f32", 1),
        ("i8", 3),
    ] {
        let src = format!(
            "module @w opset(ai.onnx = 17) {{
  input %x: f32[3,4]
  const %zero: f32[] = dense[0.0]
  const %row: f32[4] = dense[1.5, -2.0, 3.25, 0.5]
  %c = Greater(%x, %zero) : bool[3,4]
  %a = Cast(%x) {{to = {code}}} : {ty}[3,4]
  %b = Cast(%row) {{to = {code}}} : {ty}[4]
  %s = Where(%c, %a, %b) : {ty}[3,4]
  %y = Cast(%s) {{to = 1}} : f32[3,4]
  return %y, %s
}}"
        );
        native_matches_interpreter(&src, vec![3, 4]);
    }
}

/// A model stored in f16 (what onnxconverter-common writes: f16 inputs,
/// weights, activations and outputs) computes in f32 on the cpu: every
/// step native (each f16 op ran on the interpreter, 9-16x slower than
/// onnxruntime), the outputs f16 again, and within f16 precision of the
/// interpreter's per-op f16 arithmetic. Tolerance: f16 rounds each op's
/// result to 2^-11 relative; through five ops and a 16-term sum the
/// per-op results drift by a few of those, so rtol 1e-2, atol 1e-3.
#[test]
fn f16_models_compute_in_f32_natively() {
    let w: Vec<String> = (0..64)
        .map(|i| format!("{:.3}", ((i * 37) % 17) as f32 / 17.0 - 0.5))
        .collect();
    let src = format!(
        "module @half opset(ai.onnx = 17) {{
  input %x: f16[4,16]
  const %w32: f32[16,4] = dense[{}]
  const %b32: f32[4] = dense[0.25, -0.5, 0.125, 1.0]
  const %zero: f16[] = hex\"0000\"
  %w = Cast(%w32) {{to = 10}} : f16[16,4]
  %b = Cast(%b32) {{to = 10}} : f16[4]
  %p = MatMul(%x, %w) : f16[4,4]
  %q = Add(%p, %b) : f16[4,4]
  %s = Sigmoid(%q) : f16[4,4]
  %c = Greater(%q, %zero) : bool[4,4]
  %t = Where(%c, %s, %q) : f16[4,4]
  %y = Softmax(%t) {{axis = -1}} : f16[4,4]
  %y32 = Cast(%y) {{to = 1}} : f32[4,4]
  return %y, %y32
}}",
        w.join(", ")
    );
    let m = kiln_ir::parse_module(&src).unwrap_or_else(|e| panic!("{e:?}"));
    kiln_ir::verify::verify(&m).unwrap_or_else(|e| panic!("{e}"));
    let v: Vec<f64> = (0..64)
        .map(|i| ((i * 13) % 29) as f64 / 29.0 * 4.0 - 2.0)
        .collect();
    let inputs = HashMap::from([(
        "x".to_string(),
        Value::tensor(
            Tensor::new(vec![4, 16], Data::from_f64(kiln_ir::ElemType::F16, &v)).unwrap(),
        ),
    )]);
    let want = Interpreter::new(&m).run(&inputs).unwrap();
    for threads in [1, 2] {
        let target = Target::Cpu(CpuOptions {
            threads,
            ..Default::default()
        });
        let exe = compile(&m, &target, &kiln_compiler::lower::shapes_of(&inputs)).unwrap();
        let report = exe.report();
        assert!(report.ends_with(" 0 on the interpreter\n"), "{report}");
        let got = exe.run(&inputs).unwrap();
        assert!(
            matches!(got[0].as_tensor().map(|t| &t.data), Some(Data::F16(_))),
            "f16 output"
        );
        let tol = Tolerance {
            rtol: 1e-2,
            atol: 1e-3,
            quantized: false,
        };
        for (g, w) in got.iter().zip(&want) {
            compare(g, w, tol).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

/// TensorScatter's linear mode refuses a write past the cache's end, on
/// the interpreter and natively: an error naming the index, not a panic
/// or a silent wrap.
#[test]
fn tensor_scatter_refuses_writes_past_the_cache() {
    let src = "module @kv opset(ai.onnx = 24) {
  input %x: f32[2,6,4]
  input %at: i64[2]
  const %upd: f32[2,2,4] = dense[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0]
  %y = TensorScatter(%x, %upd, %at) {axis = 1} : f32[2,6,4]
  return %y
}";
    let m = kiln_ir::parse_module(src).unwrap_or_else(|e| panic!("{e:?}"));
    kiln_ir::verify::verify(&m).unwrap_or_else(|e| panic!("{e}"));
    let x = Value::tensor(Tensor::new(vec![2, 6, 4], Data::F32(vec![0.5; 48])).unwrap());
    let target = Target::Cpu(CpuOptions {
        threads: 1,
        ..Default::default()
    });
    for (at, ok) in [([4i64, 0], true), ([5, 0], false), ([0, -1], false)] {
        let inputs = HashMap::from([
            ("x".to_string(), x.clone()),
            (
                "at".to_string(),
                Value::tensor(Tensor::new(vec![2], Data::I64(at.to_vec())).unwrap()),
            ),
        ]);
        let want = Interpreter::new(&m).run(&inputs);
        let exe = compile(&m, &target, &kiln_compiler::lower::shapes_of(&inputs)).unwrap();
        assert!(
            exe.report().ends_with(" 0 on the interpreter\n"),
            "{}",
            exe.report()
        );
        let got = exe.run(&inputs);
        match (ok, want, got) {
            (true, Ok(w), Ok(g)) => {
                for (g, w) in g.iter().zip(&w) {
                    compare(g, w, Tolerance::default()).unwrap_or_else(|e| panic!("{e}"));
                }
            }
            (false, Err(w), Err(g)) => {
                assert!(format!("{w}").contains("write index"), "{w}");
                assert!(format!("{g}").contains("write index"), "{g}");
            }
            (_, w, g) => panic!("{at:?}: interpreter {:?}, cpu {:?}", w.is_ok(), g.is_ok()),
        }
    }
}
