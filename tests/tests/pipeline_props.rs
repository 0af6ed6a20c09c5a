//! Random small graphs through the whole `-O2` pipeline, compared with
//! `-O0` on the interpreter: whatever the passes rewrite, results must stay
//! within tolerance and the module must stay valid.

use std::collections::HashMap;

use kiln_compiler::conformance::{compare, Tolerance};
use kiln_runtime::{Data, Interpreter, Tensor, Value};
use proptest::prelude::*;

/// A random module over f32[3,3] values: elementwise chains with
/// duplicates (for CSE), dead nodes (for DCE), identities (for simplify),
/// constants (for folding), reductions and matmuls (for fusion).
fn random_module(choices: &[u8]) -> String {
    let mut lines = vec![
        "  input %x: f32[3,3]".to_string(),
        "  input %y: f32[3,3]".to_string(),
        "  const %one: f32[] = dense[1.0]".to_string(),
        "  const %zero: f32[] = dense[0.0]".to_string(),
        "  const %w: f32[3,3] = dense[0.5, -1.0, 0.25, 2.0, 0.0, -0.5, 1.5, 0.75, -2.0]"
            .to_string(),
        "  const %c: f32[3] = dense[1.0, 2.0, 3.0]".to_string(),
    ];
    let mut vals = vec!["x".to_string(), "y".to_string()];
    for (k, &c) in choices.iter().enumerate() {
        let a = vals[(c as usize / 16) % vals.len()].clone();
        let b = vals[(c as usize / 3) % vals.len()].clone();
        let v = format!("v{k}");
        let expr = match c % 16 {
            0 => format!("Add(%{a}, %{b})"),
            1 => format!("Mul(%{a}, %{b})"),
            2 => format!("Sub(%{a}, %{b})"),
            3 => format!("Relu(%{a})"),
            4 => format!("Sigmoid(%{a})"),
            5 => format!("Tanh(%{a})"),
            6 => format!("Mul(%{a}, %one)"),
            7 => format!("Add(%{a}, %zero)"),
            8 => format!("MatMul(%{a}, %w)"),
            9 => format!("Transpose(%{a}) {{perm = [1, 0]}}"),
            10 => format!("Softmax(%{a}) {{axis = -1}}"),
            11 => format!("Add(%{a}, %c)"),
            12 => format!("Neg(%{a})"),
            13 => format!("Identity(%{a})"),
            14 => "Add(%w, %w)".to_string(),
            _ => format!("Abs(%{b})"),
        };
        lines.push(format!("  %{v} = {expr} : f32[3,3]"));
        vals.push(v);
    }
    let last = vals.last().cloned().unwrap_or_default();
    let mid = vals[vals.len() / 2].clone();
    format!(
        "module @random opset(ai.onnx = 17) {{\n{}\n  return %{last}, %{mid}\n}}\n",
        lines.join("\n")
    )
}

fn inputs(seed: u32) -> HashMap<String, Value> {
    let mut rng = kiln_runtime::interp::kernels::Rng::new(seed);
    ["x", "y"]
        .into_iter()
        .map(|n| {
            let v: Vec<f32> = (0..9).map(|_| (2.0 * rng.uniform() - 1.0) as f32).collect();
            (
                n.to_string(),
                Value::tensor(Tensor::new(vec![3, 3], Data::F32(v)).expect("tensor")),
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn o2_matches_o0(choices in proptest::collection::vec(any::<u8>(), 1..24), seed in any::<u32>()) {
        let src = random_module(&choices);
        let m0 = kiln_ir::parse_module(&src).expect("parse");
        kiln_ir::verify::verify(&m0).expect("verify");
        let mut m2 = m0.clone();
        kiln_compiler::passes::optimize(&mut m2, 2, &[]).map_err(|e| TestCaseError::fail(format!("{e}\n{src}")))?;
        kiln_ir::verify::verify(&m2).map_err(|e| TestCaseError::fail(format!("{e}\n{src}")))?;
        let ins = inputs(seed);
        let want = Interpreter::new(&m0).run(&ins).expect("run -O0");
        let got = Interpreter::new(&m2).run(&ins).map_err(|e| TestCaseError::fail(format!("{e}\n{src}")))?;
        for (g, w) in got.iter().zip(&want) {
            compare(g, w, Tolerance { rtol: 1e-4, atol: 1e-5 ,
        quantized: false,}).map_err(|e| TestCaseError::fail(format!("{e}\n{src}")))?;
        }
    }
}
