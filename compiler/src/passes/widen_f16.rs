//! Pass `widen-f16` (cpu preparation): a model stored in f16 computes in
//! f32, with f16 only at its interface.
//!
//! Why: CPUs without half-precision arithmetic (and the cpu backend's
//! kernels, which are f32) ran every op of an f16 model on the
//! interpreter, 9-16x slower than onnxruntime (half-precision exports of
//! GoogLeNet, MobileNetV2, Swin). onnxruntime's CPU provider does the
//! same thing per node (its `InsertCastTransformer` runs f16 nodes in f32
//! between casts). Here the whole graph widens once: every f16 tensor
//! value inside becomes f32, f16 constants are converted, casts and
//! dtype attributes that name f16 name f32, f16 graph inputs are cast up
//! where the graph starts and f16 graph outputs cast down where it ends.
//! The results carry one f16 rounding (at the outputs) instead of one per
//! op: within f16's own precision of the per-op results, and closer to the
//! model's f32 original.
//!
//! Left alone: modules without f16 tensors, modules with f16 inside a
//! sequence, optional or map type (their element types would need the
//! same treatment through sequence ops), and modules where a QLinear op
//! reads f16 scales: its integer results depend on the f16 rounding of
//! the requantization multiplier (the node suite's
//! `test_qlinearmatmul_*_float16` come out a step off in f32), and the
//! backend's integer kernels read f16 scales themselves.

use std::collections::HashMap;
use std::sync::Arc;

use kiln_ir::{Attr, ElemType, Module, Node, Region, TensorData, Type, ValueId};

/// ONNX data-type codes.
const F16: i64 = 10;
const F32: i64 = 1;

/// Ops whose integer attribute names the element type of a result.
const DTYPE_ATTRS: &[(&str, &str)] = &[
    ("Cast", "to"),
    ("EyeLike", "dtype"),
    ("RandomNormal", "dtype"),
    ("RandomUniform", "dtype"),
    ("RandomNormalLike", "dtype"),
    ("RandomUniformLike", "dtype"),
    ("Bernoulli", "dtype"),
    ("Multinomial", "dtype"),
];

pub fn run(m: &mut Module) -> Result<bool, String> {
    let mut f16_values = vec![];
    for i in 0..m.num_values() {
        let v = ValueId(i as u32);
        match m.ty(v) {
            Type::Tensor(t) if t.elem == ElemType::F16 => f16_values.push(v),
            Type::Tensor(_) => {}
            other if mentions_f16(other) => return Ok(false),
            _ => {}
        }
    }
    if f16_values.is_empty() || quantized_reads_f16(m, &m.body) {
        return Ok(false);
    }
    let (inputs, outputs) = (m.body.inputs.clone(), m.body.outputs.clone());
    // Graph inputs: an f32 copy made first; every use inside reads it.
    let mut uses: HashMap<ValueId, ValueId> = HashMap::new();
    let mut head = vec![];
    for &x in &inputs {
        if is_f16(m, x) {
            let ty = widened(m.ty(x));
            let name = format!("{}_f32", m.name(x));
            let x32 = m.add_value_unique(&name, ty);
            head.push(cast(x, x32, F32));
            uses.insert(x, x32);
        }
    }
    // Graph outputs (not inputs passed through): their producer writes an
    // f32 stand-in, cast down at the end.
    let mut defs: HashMap<ValueId, ValueId> = HashMap::new();
    let mut tail = vec![];
    for &y in &outputs {
        if is_f16(m, y) && !inputs.contains(&y) && !defs.contains_key(&y) {
            let ty = widened(m.ty(y));
            let name = format!("{}_f32", m.name(y));
            let y32 = m.add_value_unique(&name, ty);
            tail.push(cast(y32, y, F16));
            defs.insert(y, y32);
        }
    }
    // Every other f16 value widens in place; f16 constants convert.
    for &v in &f16_values {
        if inputs.contains(&v) || outputs.contains(&v) {
            continue;
        }
        if let Some(d) = m.constant(v) {
            let data = widened_data(d)?;
            m.set_constant(v, Some(data));
        }
        let ty = widened(m.ty(v));
        m.set_ty(v, ty);
    }
    let mut body = std::mem::take(&mut m.body);
    rewrite_region(&mut body, &uses, &defs, true)?;
    let nodes = std::mem::take(&mut body.nodes);
    body.nodes = head.into_iter().chain(nodes).chain(tail).collect();
    m.body = body;
    Ok(true)
}

/// Does a QLinear op (QLinearConv, QLinearMatMul, the com.microsoft
/// ones) of `r` or a region in it read an f16 value?
fn quantized_reads_f16(m: &Module, r: &Region) -> bool {
    r.nodes.iter().any(|n| {
        (n.op.contains("QLinear") && n.inputs.iter().flatten().any(|&v| is_f16(m, v)))
            || n.regions().any(|(_, sub)| quantized_reads_f16(m, sub))
    })
}

fn is_f16(m: &Module, v: ValueId) -> bool {
    m.ty(v).as_tensor().is_some_and(|t| t.elem == ElemType::F16)
}

fn mentions_f16(t: &Type) -> bool {
    match t {
        Type::Tensor(t) => t.elem == ElemType::F16,
        Type::Sequence(e) | Type::Optional(e) => mentions_f16(e),
        Type::Map(k, v) => *k == ElemType::F16 || mentions_f16(v),
    }
}

/// `t` with f16 elements made f32 (its shape kept).
fn widened(t: &Type) -> Type {
    match t {
        Type::Tensor(t) => {
            let mut t = t.clone();
            t.elem = ElemType::F32;
            Type::Tensor(t)
        }
        other => other.clone(),
    }
}

/// f16 data as f32 (exact: every f16 value is an f32 value).
fn widened_data(d: &TensorData) -> Result<Arc<TensorData>, String> {
    let vals = d.to_f64_vec().ok_or("f16 data without values")?;
    let f: Vec<f32> = vals.iter().map(|&x| x as f32).collect();
    Ok(Arc::new(
        TensorData::from_f32(d.shape.clone(), &f).map_err(|e| e.to_string())?,
    ))
}

fn cast(from: ValueId, to: ValueId, code: i64) -> Node {
    let mut n = Node::new("Cast", vec![Some(from)], vec![to]);
    n.attrs.insert("to".into(), Attr::Int(code));
    n
}

/// Operands through `uses`, the results in `defs` renamed, and dtype
/// attributes and f16 tensor attributes widened, in `r` and the regions
/// nested in it (region outputs read through `uses` too, but for the
/// module's own outputs, which stay the interface).
fn rewrite_region(
    r: &mut Region,
    uses: &HashMap<ValueId, ValueId>,
    defs: &HashMap<ValueId, ValueId>,
    top: bool,
) -> Result<(), String> {
    for n in &mut r.nodes {
        for v in n.inputs.iter_mut().flatten() {
            if let Some(&w) = uses.get(v).or_else(|| defs.get(v)) {
                *v = w;
            }
        }
        for o in &mut n.outputs {
            if let Some(&w) = defs.get(o) {
                *o = w;
            }
        }
        if let Some(&(_, name)) = DTYPE_ATTRS.iter().find(|(op, _)| *op == n.op) {
            if n.attrs.get(name).and_then(Attr::as_int) == Some(F16) {
                n.attrs.insert(name.into(), Attr::Int(F32));
            }
        }
        for a in n.attrs.values_mut() {
            if let Attr::Tensor(t) = a {
                if t.elem == ElemType::F16 {
                    *a = Attr::Tensor(widened_data(t)?);
                }
            }
        }
        for sub in n.regions_mut() {
            rewrite_region(sub, uses, defs, false)?;
        }
    }
    if !top {
        for v in &mut r.outputs {
            if let Some(&w) = uses.get(v).or_else(|| defs.get(v)) {
                *v = w;
            }
        }
    }
    Ok(())
}
