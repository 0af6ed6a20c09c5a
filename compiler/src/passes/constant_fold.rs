//! Pass `constant-fold`: replace nodes whose results are known before the
//! model runs by constants.
//!
//! Why: exported models are full of work that does not depend on the
//! inputs — shape arithmetic (`Shape` → `Gather` → `Unsqueeze` → `Concat` →
//! `Reshape`), reshapes and casts of weights, `Constant`-only subgraphs.
//! Folding them removes nodes, exposes constant operands to `simplify` and
//! fusion, and lets `dce` drop what fed them.
//!
//! A folded node disappears; its result values keep their ids and names and
//! become constants of the node's region (`Module::set_constant`), with the
//! type set to the constant's exact static type. A result equal to a
//! constant the module already has shares its buffer ([`ConstantPool`]).
//!
//! What folds (the [`RULES`] table, tried in order, one small function
//! each):
//! - `Shape` / `Size` of a value whose (selected) dims are statically known,
//!   even though the value itself is not a constant;
//! - reshape-like ops of a constant (`Identity`, `Reshape`, `Squeeze`,
//!   `Unsqueeze`, `Flatten`): the new constant shares the operand's bytes;
//! - any other node whose operands are all constants, evaluated by the
//!   reference interpreter on a one-node module (the interpreter is the
//!   oracle, so folding cannot disagree with it).
//!
//! What never folds: random ops (their value is not a constant), nodes with
//! regions, nodes with sequence/optional/map results, constants whose data
//! was elided, and results that would bloat the model: no folded constant
//! is larger than [`MAX_BYTES`], and results larger than [`GROWTH`] times
//! their constant operands (`Expand`, `Tile`, `ConstantOfShape`, broadcasts)
//! only fold while they stay under [`SMALL_BYTES`]. Weights (the op
//! traits' weight operands: operand 1 of Conv/ConvTranspose/MatMul/Gemm,
//! the filters of the integer and quantized forms, the matrices of
//! RNN/GRU/LSTM) are the exception: a backend materializes them at compile
//! time anyway, so they fold up to [`WEIGHT_MAX_BYTES`]. Which ops are
//! random, reshape-like or have data-dependent shapes also comes from the
//! op traits (`kiln_ir::ops::traits`), not from lists here. A graph output
//! folds only if its declared type is already the constant's exact type
//! (graph output types never change).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kiln_interp::{Interpreter, Value};
use kiln_ir::{ConstantPool, Module, Node, Payload, Region, TensorData, TensorType, Type, ValueId};

/// No folded constant is larger than this.
pub const MAX_BYTES: u64 = 1 << 20;
/// Results may be at most this many times the bytes of the constant
/// operands ...
pub const GROWTH: u64 = 4;
/// ... unless they are this small anyway.
pub const SMALL_BYTES: u64 = 64 << 10;

/// A folding rule: the data of every result of `node`, or `None` when the
/// rule does not apply.
type Rule = fn(&Module, &Node, &Budget) -> Option<Vec<TensorData>>;

/// How large a node's results may grow.
struct Budget {
    /// The results feed a weight operand (the op traits' `weights`: operand
    /// 1 of Conv/ConvTranspose/MatMul/Gemm, ...): a backend materializes and
    /// pre-packs weights at compile time anyway, so they fold up to
    /// [`WEIGHT_MAX_BYTES`] whatever they grew from (ResNet exports build
    /// weights with ConstantOfShape).
    weight: bool,
}

/// The cap for folded weights.
pub const WEIGHT_MAX_BYTES: u64 = 64 << 20;

/// Values used as weight operands (the op traits' `weights`: the
/// right-hand matrix, the filters, recurrent matrices) anywhere in the
/// region (nested included).
fn weight_values(r: &Region, out: &mut HashSet<ValueId>) {
    for n in &r.nodes {
        for &k in kiln_ir::ops::traits(&n.op).weights {
            out.extend(n.input(k));
        }
        for (_, sub) in n.regions() {
            weight_values(sub, out);
        }
    }
}

/// The rules, tried in order; the first that applies wins.
const RULES: &[(&str, Rule)] = &[
    ("shape-of-static", shape_of_static),
    ("size-of-static", size_of_static),
    ("reshape-of-constant", reshape_of_constant),
    ("constant-of-shape", constant_of_shape),
    ("evaluate", evaluate),
];

pub fn run(m: &mut Module) -> Result<bool, String> {
    let mut body = std::mem::take(&mut m.body);
    let graph_outputs: HashSet<ValueId> = body.outputs.iter().copied().collect();
    let mut weights = HashSet::new();
    weight_values(&body, &mut weights);
    let mut pool = ConstantPool::of_module(m);
    let changed = fold_region(m, &mut body, &graph_outputs, &weights, &mut pool);
    m.body = body;
    Ok(changed)
}

// ---------------------------------------------------------------------------
// Machinery

fn fold_region(
    m: &mut Module,
    r: &mut Region,
    graph_outputs: &HashSet<ValueId>,
    weights: &HashSet<ValueId>,
    pool: &mut ConstantPool,
) -> bool {
    let mut changed = false;
    let nodes = std::mem::take(&mut r.nodes);
    let mut kept = Vec::with_capacity(nodes.len());
    for mut node in nodes {
        for sub in node.regions_mut() {
            changed |= fold_region(m, sub, graph_outputs, weights, pool);
        }
        let budget = Budget {
            weight: node.outputs.iter().all(|o| weights.contains(o)),
        };
        match fold_node(m, &node, graph_outputs, &budget) {
            Some(results) => {
                for (&o, (ty, data)) in node.outputs.iter().zip(results) {
                    m.set_ty(o, ty);
                    pool.set_constant(m, o, data);
                    r.constants.push(o);
                }
                changed = true;
            }
            None => kept.push(node),
        }
    }
    r.nodes = kept;
    changed
}

/// The new type and data of every result, when the node folds.
fn fold_node(
    m: &Module,
    node: &Node,
    graph_outputs: &HashSet<ValueId>,
    budget: &Budget,
) -> Option<Vec<(Type, TensorData)>> {
    if never_folds(m, node) {
        return None;
    }
    let datas = RULES.iter().find_map(|(_, rule)| rule(m, node, budget))?;
    if datas.len() != node.outputs.len() {
        return None;
    }
    let mut out = Vec::with_capacity(datas.len());
    for (&o, d) in node.outputs.iter().zip(datas) {
        let old = m.ty(o).as_tensor()?;
        if old.elem != d.elem || d.is_elided() {
            return None;
        }
        let ty = Type::Tensor(TensorType {
            quant: old.quant.clone(),
            ..TensorType::known(d.elem, &d.shape)
        });
        if !kiln_ir::types::types_compatible(m.ty(o), &ty) {
            return None;
        }
        if graph_outputs.contains(&o) && *m.ty(o) != ty {
            return None;
        }
        out.push((ty, d));
    }
    Some(out)
}

/// Ops whose results are not constants even with constant operands, and
/// nodes this pass leaves alone. Random ops include `Dropout` unless it is
/// known to be in inference mode (the op traits' `random`, resolved for
/// this node by `kiln_ir`).
fn never_folds(m: &Module, node: &Node) -> bool {
    kiln_ir::ops::traits::is_random(m, node)
        || node.regions().next().is_some()
        || node.outputs.is_empty()
        || node
            .outputs
            .iter()
            .any(|&o| !matches!(m.ty(o), Type::Tensor(_)))
}

/// The constant data of every present operand, or `None` if one is not a
/// constant (or its data was elided).
fn constant_operands<'a>(m: &'a Module, node: &Node) -> Option<Vec<&'a Arc<TensorData>>> {
    node.inputs
        .iter()
        .flatten()
        .map(|&v| m.constant(v).filter(|d| !d.is_elided()))
        .collect()
}

/// The static shape of result `i`: from its declared type, else inferred.
fn static_result_shapes(m: &Module, node: &Node) -> Option<Vec<Vec<u64>>> {
    let declared: Option<Vec<Vec<u64>>> = node
        .outputs
        .iter()
        .map(|&o| m.ty(o).as_tensor()?.static_shape())
        .collect();
    if declared.is_some() {
        return declared;
    }
    let inferred = kiln_ir::ops::infer_node(m, node).ok()?;
    inferred
        .iter()
        .take(node.outputs.len())
        .map(|t| t.as_tensor()?.static_shape())
        .collect::<Option<Vec<_>>>()
        .filter(|v| v.len() == node.outputs.len())
}

/// May results of `out` bytes be made from constant operands of `inp`
/// bytes?
fn size_ok(out: u64, inp: u64, budget: &Budget) -> bool {
    if budget.weight {
        return out <= WEIGHT_MAX_BYTES;
    }
    out <= MAX_BYTES && (out <= SMALL_BYTES || out <= inp.saturating_mul(GROWTH))
}

fn elem_bytes(ty: &Type, numel: u64) -> Option<u64> {
    let t = ty.as_tensor()?;
    match t.elem {
        kiln_ir::ElemType::String => None,
        e => e.storage_bytes(numel),
    }
}

// ---------------------------------------------------------------------------
// Rules

/// `Shape(x)` where the selected dims of `x` are static.
fn shape_of_static(m: &Module, node: &Node, _: &Budget) -> Option<Vec<TensorData>> {
    if node.op != "Shape" {
        return None;
    }
    let dims = m.ty(node.input(0)?).as_tensor()?.shape.as_ref()?;
    let r = dims.len() as i64;
    let clamp = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) };
    let start = clamp(node.attr("start").and_then(|a| a.as_int()).unwrap_or(0)) as usize;
    let end = clamp(node.attr("end").and_then(|a| a.as_int()).unwrap_or(r)) as usize;
    let sel = dims.get(start..end.max(start))?;
    let vals: Vec<i64> = sel
        .iter()
        .map(|d| d.as_known().and_then(|k| i64::try_from(k).ok()))
        .collect::<Option<_>>()?;
    Some(vec![
        TensorData::from_i64(vec![vals.len() as u64], &vals).ok()?
    ])
}

/// `Size(x)` where every dim of `x` is static.
fn size_of_static(m: &Module, node: &Node, _: &Budget) -> Option<Vec<TensorData>> {
    if node.op != "Size" {
        return None;
    }
    let n = m.ty(node.input(0)?).as_tensor()?.num_elements()?;
    Some(vec![TensorData::from_i64(
        vec![],
        &[i64::try_from(n).ok()?],
    )
    .ok()?])
}

/// `ConstantOfShape(shape)`: the value's bytes repeated, without a trip
/// through the interpreter (exports build whole weight tensors this way).
fn constant_of_shape(m: &Module, node: &Node, budget: &Budget) -> Option<Vec<TensorData>> {
    if node.op != "ConstantOfShape" {
        return None;
    }
    let shape_data = m.constant(node.input(0)?)?;
    let shape: Vec<u64> = shape_data
        .to_i64_vec()?
        .into_iter()
        .map(|d| u64::try_from(d).ok())
        .collect::<Option<_>>()?;
    let value = match node.attr("value") {
        Some(kiln_ir::Attr::Tensor(t)) => (**t).clone(),
        None => TensorData::from_f32(vec![1], &[0.0]).ok()?,
        _ => return None,
    };
    let one = value.bytes()?;
    if value.numel() != 1 || value.elem.bit_width()? < 8 {
        return None;
    }
    let n = kiln_ir::tensor::shape_numel(&shape)?;
    let out = (one.len() as u64).checked_mul(n)?;
    if !size_ok(out, shape_data.byte_size() + one.len() as u64, budget) {
        return None;
    }
    let bytes = kiln_ir::tensor::build_bytes(usize::try_from(out).ok()?, |b| {
        kiln_ir::tensor::fill_repeating(b, one)
    });
    TensorData::from_bytes(value.elem, shape, bytes)
        .ok()
        .map(|d| vec![d])
}

/// Reshape-like ops of a constant: same bytes, new (inferred) shape; the
/// payload is shared, not copied, so no size cap applies.
fn reshape_of_constant(m: &Module, node: &Node, _: &Budget) -> Option<Vec<TensorData>> {
    if !kiln_ir::ops::traits(&node.op).view {
        return None;
    }
    let ops = constant_operands(m, node)?;
    let data = ops.first()?;
    let shape = static_result_shapes(m, node)?.into_iter().next()?;
    if kiln_ir::tensor::shape_numel(&shape)? != data.numel() {
        return None;
    }
    Some(vec![TensorData {
        elem: data.elem,
        shape,
        payload: data.payload.clone(),
    }])
}

/// Any node whose operands are all constants: run it on the interpreter.
fn evaluate(m: &Module, node: &Node, budget: &Budget) -> Option<Vec<TensorData>> {
    let ops = constant_operands(m, node)?;
    let in_bytes: u64 = ops.iter().map(|d| d.byte_size()).sum();
    if in_bytes > 16 * MAX_BYTES {
        return None;
    }
    // Refuse before computing when the result size is known to be too big;
    // without a static shape, only ops bounded by their operands run.
    match static_result_shapes(m, node) {
        Some(shapes) => {
            let mut out = 0u64;
            for (&o, s) in node.outputs.iter().zip(&shapes) {
                let n = kiln_ir::tensor::shape_numel(s)?;
                out = out.saturating_add(elem_bytes(m.ty(o), n).unwrap_or(0));
            }
            if !size_ok(out, in_bytes, budget) {
                return None;
            }
        }
        // Ops whose result shape depends on operand values (the op traits'
        // `data_dependent_shape`: NonZero, Unique, ...) run without one, as
        // their results are bounded by their operands.
        None if kiln_ir::ops::traits(&node.op).data_dependent_shape => {}
        None => return None,
    }
    let results = run_one_node(m, node)?;
    let out: u64 = results.iter().map(|d| d.byte_size()).sum();
    if !size_ok(out, in_bytes, budget) {
        return None;
    }
    Some(results)
}

/// Run `node` alone: a module whose constants are its operands and whose
/// outputs are its results (declared types kept, so the interpreter checks
/// the kernel's results against them). Kernel errors and panics mean "do
/// not fold": the node stays and fails at run time as it would have.
pub(crate) fn run_one_node(m: &Module, node: &Node) -> Option<Vec<TensorData>> {
    let mut t = Module::new("constant-fold");
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    for &v in node.inputs.iter().flatten() {
        if map.contains_key(&v) {
            continue;
        }
        let id = t.add_value(m.name(v), m.ty(v).clone()).ok()?;
        t.set_constant(id, m.constant(v).cloned());
        t.body.constants.push(id);
        map.insert(v, id);
    }
    let mut n = node.clone();
    n.inputs = node
        .inputs
        .iter()
        .map(|v| v.and_then(|v| map.get(&v).copied()))
        .collect();
    n.outputs = node
        .outputs
        .iter()
        .map(|&o| t.add_value(m.name(o), m.ty(o).clone()).ok())
        .collect::<Option<_>>()?;
    t.body.outputs = n.outputs.clone();
    t.body.nodes.push(n);
    let values = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Interpreter::new(&t).run(&HashMap::new())
    }))
    .ok()?
    .ok()?;
    values
        .iter()
        .map(|v| match v {
            Value::Tensor(t) => {
                let d = t.to_data();
                matches!(d.payload, Payload::Bytes(_) | Payload::Strings(_)).then_some(d)
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    /// Weight operands come from the op traits: the recurrent matrices of
    /// an LSTM (operands 1 and 2) and the filters of a ConvInteger fold past
    /// the growth cap like a Conv's (the list here named only
    /// Conv/ConvTranspose/MatMul/Gemm); the LSTM's input does not.
    #[test]
    fn weights_of_every_op_with_weights_fold_past_the_growth_cap() {
        let mut m = kiln_ir::parse_module(
            r#"module @w opset(ai.onnx = 22) {
  input %x: f32[2,1,64]
  input %q: u8[1,64,8,8]
  const %wshape: i64[3] = dense[1, 512, 64]
  const %rshape: i64[3] = dense[1, 512, 128]
  const %xshape: i64[3] = dense[512, 1, 64]
  const %cshape: i64[4] = dense[256, 64, 3, 3]
  %w = ConstantOfShape(%wshape) {value = tensor<f32[1]> dense[0.01]} : f32[1,512,64]
  %r = ConstantOfShape(%rshape) {value = tensor<f32[1]> dense[0.02]} : f32[1,512,128]
  %big = ConstantOfShape(%xshape) {value = tensor<f32[1]> dense[1.0]} : f32[512,1,64]
  %cw = ConstantOfShape(%cshape) {value = tensor<u8[1]> dense[1]} : u8[256,64,3,3]
  %y = LSTM(%big, %w, %r) {hidden_size = 128} : f32[512,1,1,128]
  %c = ConvInteger(%q, %cw) : i32[1,256,6,6]
  return %y, %c
}"#,
        )
        .expect("parse");
        assert!(super::run(&mut m).unwrap());
        let constants: Vec<&str> = m.body.constants.iter().map(|&v| m.name(v)).collect();
        for v in ["w", "r", "cw"] {
            assert!(constants.contains(&v), "{v} folds: {constants:?}");
        }
        assert!(!constants.contains(&"big"), "{constants:?}");
    }
}
