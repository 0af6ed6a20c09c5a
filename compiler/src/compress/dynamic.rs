//! Writing a float ONNX model with dynamic int8 quantization, the form
//! onnxruntime's `quantize_dynamic` writes for transformers: each MatMul
//! (and plain Gemm) with a constant weight becomes
//!
//! ```text
//! DynamicQuantizeLinear(A) → a_q, a_scale, a_zero      (shared by readers of A)
//! MatMulInteger(a_q, W_s8, a_zero, W_zero) → i32
//! Cast(to f32) · (a_scale · W_scale) [+ bias]
//! ```
//!
//! Activations are quantized at run time from their own range (u8, no
//! calibration); weights are s8, symmetric, one scale per output column
//! (or per tensor). Standard ops only, opset 11.

use std::collections::{HashMap, HashSet};

use crate::compress::onnx_edit::{
    f32_tensor, int_attr, node, raw_tensor, remove_dead, Constants, Names,
};
use crate::compress::qdq::{is_plain_product, weight_kn, Plan, SymmetricS8, Written, WrittenLayer};
use crate::onnx::proto::{self, tensor_proto::DataType};

/// Rewrite `model` (whose graph `plan` was made on); the MatMul/Gemm
/// nodes of the plan not in `excluded` become integer products.
pub fn write(
    model: &proto::ModelProto,
    plan: &Plan,
    excluded: &HashSet<String>,
    per_tensor: bool,
    consts: Constants<'_>,
) -> Result<Written, String> {
    let mut model = model.clone();
    let mut graph = model.graph.take().ok_or("the model has no graph")?;
    let mut names = Names::of(&graph);
    let included: HashMap<usize, &crate::compress::qdq::QNode> = plan
        .nodes
        .iter()
        .filter(|q| !excluded.contains(&q.name) && is_plain_product(&graph.node[q.index], q))
        .map(|q| (q.index, q))
        .collect();
    let mut init = Vec::new();
    let mut nodes = Vec::with_capacity(graph.node.len() * 2);
    // One DynamicQuantizeLinear per activation, placed where it is first
    // read.
    let mut dql: HashMap<String, [String; 3]> = HashMap::new();
    let mut layers = Vec::new();
    for (i, n) in std::mem::take(&mut graph.node).into_iter().enumerate() {
        let Some(q) = included.get(&i) else {
            nodes.push(n);
            continue;
        };
        let a = n.input[0].clone();
        // MatMulInteger has no transpose: the weight as [K, N].
        let (w, k, cols) = weight_kn(&n, consts)?;
        let shape = vec![k, cols];
        let axis = (!per_tensor).then_some(1);
        let s8 = SymmetricS8::of(&w, &shape, axis);
        let tag = n.name().to_string();
        let fresh = |names: &mut Names, what: &str| names.fresh(&format!("{tag}_{what}"));
        let wq = fresh(&mut names, "weight_quantized");
        let ws = fresh(&mut names, "weight_scale");
        let wz = fresh(&mut names, "weight_zero_point");
        let dims: Vec<i64> = shape.iter().map(|&x| x as i64).collect();
        let sdims: Vec<i64> = if axis.is_some() {
            vec![s8.scales.len() as i64]
        } else {
            vec![]
        };
        init.push(raw_tensor(&wq, DataType::Int8, &dims, s8.bytes()));
        init.push(f32_tensor(&ws, &sdims, &s8.scales));
        init.push(raw_tensor(
            &wz,
            DataType::Int8,
            &sdims,
            vec![0; s8.scales.len()],
        ));
        let [aq, asc, az] = match dql.get(&a) {
            Some(x) => x.clone(),
            None => {
                let x = [
                    names.fresh(&format!("{a}_quantized")),
                    names.fresh(&format!("{a}_scale")),
                    names.fresh(&format!("{a}_zero_point")),
                ];
                nodes.push(node(
                    "DynamicQuantizeLinear",
                    &names.fresh(&format!("{a}_DynamicQuantizeLinear")),
                    &[&a],
                    &[&x[0], &x[1], &x[2]],
                ));
                dql.insert(a.clone(), x.clone());
                x
            }
        };
        let yi = fresh(&mut names, "int32");
        let yf = fresh(&mut names, "float");
        let scale = fresh(&mut names, "output_scale");
        nodes.push(node(
            "MatMulInteger",
            &fresh(&mut names, "MatMulInteger"),
            &[&aq, &wq, &az, &wz],
            &[&yi],
        ));
        let mut cast = node("Cast", &fresh(&mut names, "Cast"), &[&yi], &[&yf]);
        cast.attribute.push(int_attr("to", DataType::Float as i64));
        nodes.push(cast);
        nodes.push(node(
            "Mul",
            &fresh(&mut names, "ScaleMul"),
            &[&asc, &ws],
            &[&scale],
        ));
        let out = n.output[0].clone();
        let bias = n
            .input
            .get(2)
            .filter(|b| !b.is_empty() && n.op_type() == "Gemm");
        match bias {
            Some(b) => {
                let scaled = fresh(&mut names, "scaled");
                nodes.push(node(
                    "Mul",
                    &fresh(&mut names, "Mul"),
                    &[&yf, &scale],
                    &[&scaled],
                ));
                nodes.push(node(
                    "Add",
                    &fresh(&mut names, "BiasAdd"),
                    &[&scaled, b],
                    &[&out],
                ));
            }
            None => nodes.push(node(
                "Mul",
                &fresh(&mut names, "Mul"),
                &[&yf, &scale],
                &[&out],
            )),
        }
        layers.push(WrittenLayer {
            node: q.name.clone(),
            op: q.op.clone(),
            weight_sqnr_db: s8.sqnr_db,
            output: out,
            output_grid: None,
            seen_as: None,
        });
    }
    graph.node = nodes;
    graph.initializer.extend(init);
    remove_dead(&mut graph);
    model.graph = Some(graph);
    crate::compress::onnx_edit::allow_free_initializers(&mut model);
    Ok(Written {
        model,
        layers,
        grids: HashMap::new(),
    })
}
