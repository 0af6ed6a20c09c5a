//! Pass `fold-qdq`: a quantized model written in QDQ form (float ops
//! between `DequantizeLinear` and `QuantizeLinear`) becomes integer ops,
//! the way onnxruntime and TensorRT fold QDQ.
//!
//! - `Q(Conv(DQ(x), DQ(w), DQ(b)?))` → `QLinearConv(x, .., w, .., y_scale,
//!   y_zero, b)`: 8-bit activations, constant 8-bit weights per tensor or
//!   per output channel, an i32 bias whose scale is `x_scale · w_scale`
//!   (the form quantization tools write).
//! - `Q(op(DQ(x)))` for an op that only moves or selects values (the op
//!   traits' `selects`: Reshape, Transpose, Slice, Gather, Concat, Expand,
//!   MaxPool, ...; a maximum commutes with a monotonic map), where the DQ
//!   and the Q have the same scale and zero point → the op on the 8-bit
//!   values. The operands after the first (shapes, axes, indices) are
//!   untouched; Concat takes every operand as data.
//!
//! It runs before constant folding, which would otherwise turn each
//! quantized weight's `DequantizeLinear` into an f32 copy: folded, the
//! weights stay 8-bit. Why it keeps meaning only up to rounding: the
//! float graph rounds `Σ DQ(x)·DQ(w)` in f32, the integer op sums exactly
//! and rounds once; the outputs differ where a sum lies within f32
//! rounding of a quantization step's midpoint (one step, rarely).
//!
//! - `MatMul(DQ(x), DQ(w))` with a constant 8-bit `w` (one scale, or one
//!   per column with zero points 0) and `x` on one scale →
//!   `Cast(MatMulInteger(x, w, x_zero, w_zero)) · (x_scale · w_scale)`: the
//!   product in integers, its f32 result scaled once (whatever reads it,
//!   a QuantizeLinear or a float op). It is not `QLinearMatMul`: ONNX
//!   defines that op's result as wrapping around where `QuantizeLinear`
//!   saturates, so that fold would change outputs that reach the type's
//!   bounds; here a following QuantizeLinear still saturates.
//!
//! The DQ nodes are left for DCE; a pattern's float op is removed only when
//! the Q is its one user.
//!
//! Some tools write weights as f32 with their `QuantizeLinear` in the
//! graph (`DQ(Q(w))`; onnxruntime's `quantize_static` did before 1.12).
//! Such a `QuantizeLinear` of constants becomes its 8-bit constant first,
//! evaluated by the interpreter like any constant fold, so those convs
//! fold too and their weights are stored 8-bit.

use std::collections::HashMap;

use kiln_ir::{Attr, ElemType, Module, Node, Region, TensorData, ValueId};

pub fn run(m: &mut Module) -> Result<bool, String> {
    let mut uses: HashMap<ValueId, usize> = HashMap::new();
    count_uses(&m.body, &mut uses);
    let mut body = std::mem::take(&mut m.body);
    let changed = fold_region(m, &mut body, &uses);
    m.body = body;
    Ok(changed)
}

/// Uses of every value anywhere: operands and region outputs.
pub(super) fn count_uses(r: &Region, uses: &mut HashMap<ValueId, usize>) {
    for n in &r.nodes {
        for &v in n.inputs.iter().flatten() {
            *uses.entry(v).or_default() += 1;
        }
        for (_, sub) in n.regions() {
            count_uses(sub, uses);
        }
    }
    for &v in &r.outputs {
        *uses.entry(v).or_default() += 1;
    }
}

/// A `DequantizeLinear`'s parts.
struct Dq {
    /// The integer operand.
    q: ValueId,
    scale: ValueId,
    zero: Option<ValueId>,
    /// The scale's values.
    scales: Vec<f64>,
    /// The zero point's values (zeros without one).
    zeros: Vec<i64>,
    axis: i64,
}

fn elem(m: &Module, v: ValueId) -> Option<ElemType> {
    m.ty(v).as_tensor().map(|t| t.elem)
}

fn is_int8(e: Option<ElemType>) -> bool {
    matches!(e, Some(ElemType::U8 | ElemType::I8))
}

/// The DequantizeLinear defining `v` in this region, with constant f32
/// scales and constant zero points, not blocked.
fn dq_of(m: &Module, r: &Region, def: &HashMap<ValueId, usize>, v: ValueId) -> Option<Dq> {
    let n = &r.nodes[*def.get(&v)?];
    if n.op != "DequantizeLinear" || n.attr("block_size").and_then(Attr::as_int).unwrap_or(0) != 0 {
        return None;
    }
    let q = n.input(0)?;
    let scale = n.input(1)?;
    if elem(m, scale) != Some(ElemType::F32) {
        return None;
    }
    let scales = m.constant(scale)?.to_f64_vec()?;
    let zero = n.input(2);
    let zeros = match zero {
        Some(z) => m.constant(z)?.to_i64_vec()?,
        None => vec![0; scales.len()],
    };
    if zeros.len() != scales.len() {
        return None;
    }
    let axis = n.attr("axis").and_then(Attr::as_int).unwrap_or(1);
    Some(Dq {
        q,
        scale,
        zero,
        scales,
        zeros,
        axis,
    })
}

/// A zero point operand for `d`: its own, or a new constant zero of the
/// integer operand's type (shaped like the scale).
fn zero_of(m: &mut Module, r: &mut Region, d: &Dq, e: ElemType) -> Option<ValueId> {
    match d.zero {
        Some(z) => Some(z),
        None => zero_like(m, r, d.scale, e),
    }
}

/// A new constant zero of 8-bit type `e`, shaped like the constant
/// `scale`, listed in `r`.
fn zero_like(m: &mut Module, r: &mut Region, scale: ValueId, e: ElemType) -> Option<ValueId> {
    let shape = m.constant(scale)?.shape.clone();
    let n = m.constant(scale)?.numel() as usize;
    let data = TensorData::from_bytes(e, shape, vec![0u8; n]).ok()?;
    let id = m.add_constant_unique("zero_point", std::sync::Arc::new(data));
    r.constants.push(id);
    Some(id)
}

/// Whether the scale `s` equals `a · b` as f32 arithmetic makes it (the
/// bias scale quantization tools write), to a relative 1e-6.
fn product_scale(s: f64, a: f64, b: f64) -> bool {
    let p = (a as f32 * b as f32) as f64;
    (s - p).abs() <= 1e-6 * p.abs()
}

fn fold_region(m: &mut Module, r: &mut Region, uses: &HashMap<ValueId, usize>) -> bool {
    let mut changed = false;
    for n in &mut r.nodes {
        for sub in n.regions_mut() {
            changed |= fold_region(m, sub, uses);
        }
    }
    changed |= quantize_constants(m, r);
    let mut def: HashMap<ValueId, usize> = HashMap::new();
    for (i, n) in r.nodes.iter().enumerate() {
        for &o in &n.outputs {
            def.insert(o, i);
        }
    }
    // (index of the Q node, its replacement, index of the float op removed)
    let mut rewrites: Vec<(usize, Node, usize)> = vec![];
    for qi in 0..r.nodes.len() {
        if let Some((node, p)) = match_q(m, r, &def, uses, qi) {
            rewrites.push((qi, node, p));
        }
    }
    let absorbed: std::collections::HashSet<usize> = rewrites.iter().map(|r| r.2).collect();
    let mut expand: HashMap<usize, Vec<Node>> = HashMap::new();
    for i in 0..r.nodes.len() {
        if r.nodes[i].op == "MatMul" && !absorbed.contains(&i) {
            if let Some(nodes) = matmul_integer(m, r, &def, i) {
                expand.insert(i, nodes);
            }
        }
    }
    if rewrites.is_empty() && expand.is_empty() {
        return changed;
    }
    let mut replace: HashMap<usize, Node> = HashMap::new();
    let mut removed = std::collections::HashSet::new();
    for (qi, node, p) in rewrites {
        replace.insert(qi, node);
        removed.insert(p);
    }
    let old = std::mem::take(&mut r.nodes);
    for (i, n) in old.into_iter().enumerate() {
        if removed.contains(&i) {
            continue;
        }
        if let Some(nodes) = expand.remove(&i) {
            r.nodes.extend(nodes);
            continue;
        }
        r.nodes.push(replace.remove(&i).unwrap_or(n));
    }
    true
}

/// Replaces each `QuantizeLinear` whose operands are all constants by its
/// 8-bit result (see the module comment).
fn quantize_constants(m: &mut Module, r: &mut Region) -> bool {
    let mut changed = false;
    let nodes = std::mem::take(&mut r.nodes);
    for node in nodes {
        let constant = node.op == "QuantizeLinear"
            && node.outputs.len() == 1
            && node
                .inputs
                .iter()
                .flatten()
                .all(|&v| m.constant(v).is_some_and(|d| !d.is_elided()));
        let data = constant
            .then(|| super::constant_fold::run_one_node(m, &node))
            .flatten()
            .and_then(|mut d| d.pop());
        match data {
            Some(d) if elem(m, node.outputs[0]) == Some(d.elem) => {
                let o = node.outputs[0];
                if let Some(t) = m.ty(o).as_tensor() {
                    let ty = kiln_ir::Type::Tensor(kiln_ir::TensorType {
                        quant: t.quant.clone(),
                        ..kiln_ir::TensorType::known(d.elem, &d.shape)
                    });
                    m.set_ty(o, ty);
                }
                m.set_constant(o, Some(std::sync::Arc::new(d)));
                r.constants.push(o);
                changed = true;
            }
            _ => r.nodes.push(node),
        }
    }
    changed
}

/// `MatMul(DQ(x), DQ(w))` at `i` as `Cast(MatMulInteger) · scale`, where
/// `x` has one scale and `w` is a constant 8-bit matrix with one scale,
/// or one per column and zero points 0.
fn matmul_integer(
    m: &mut Module,
    r: &mut Region,
    def: &HashMap<ValueId, usize>,
    i: usize,
) -> Option<Vec<Node>> {
    let p = r.nodes[i].clone();
    let y = *p.outputs.first()?;
    let dx = dq_of(m, r, def, p.input(0)?)?;
    let dw = dq_of(m, r, def, p.input(1)?)?;
    let (xe, we) = (elem(m, dx.q), elem(m, dw.q));
    let wshape = m.constant(dw.q)?.shape.clone();
    if !is_int8(xe) || !is_int8(we) || dx.scales.len() != 1 || wshape.len() != 2 {
        return None;
    }
    let cols = wshape[1] as usize;
    let per_column = dw.scales.len() != 1;
    if per_column
        && (dw.scales.len() != cols
            || !(dw.axis == 1 || dw.axis == -1)
            || dw.zeros.iter().any(|&z| z != 0))
    {
        return None;
    }
    let yt = m.ty(y).as_tensor()?.clone();
    if yt.elem != ElemType::F32 {
        return None;
    }
    // x_scale · w_scale in f32, as the float graph's two dequantizations
    // would scale each term.
    let scale: Vec<f32> = dw
        .scales
        .iter()
        .map(|&sw| dx.scales[0] as f32 * sw as f32)
        .collect();
    let sshape = if per_column {
        vec![cols as u64]
    } else {
        vec![]
    };
    let scale_id = m.add_constant_unique(
        "matmul_scale",
        std::sync::Arc::new(TensorData::from_f32(sshape, &scale).ok()?),
    );
    r.constants.push(scale_id);
    let mut int_ty = yt.clone();
    int_ty.elem = ElemType::I32;
    let acc = m.add_value_unique(
        &format!("{}_int32", m.name(y)),
        kiln_ir::Type::Tensor(int_ty),
    );
    let flt = m.add_value_unique(
        &format!("{}_unscaled", m.name(y)),
        kiln_ir::Type::Tensor(yt),
    );
    let w_zero = if per_column { None } else { dw.zero };
    let mut mm = Node::new(
        "MatMulInteger",
        vec![Some(dx.q), Some(dw.q), dx.zero, w_zero],
        vec![acc],
    );
    mm.name = p.name.clone();
    let mut cast = Node::new("Cast", vec![Some(acc)], vec![flt]);
    // ONNX type code 1: float.
    cast.attrs.insert("to".into(), Attr::Int(1));
    let mul = Node::new("Mul", vec![Some(flt), Some(scale_id)], vec![y]);
    Some(vec![mm, cast, mul])
}

/// The integer node replacing the QuantizeLinear at `qi`, and the index of
/// the float op it absorbs.
fn match_q(
    m: &mut Module,
    r: &mut Region,
    def: &HashMap<ValueId, usize>,
    uses: &HashMap<ValueId, usize>,
    qi: usize,
) -> Option<(Node, usize)> {
    let qn = &r.nodes[qi];
    if qn.op != "QuantizeLinear" || qn.attr("block_size").and_then(Attr::as_int).unwrap_or(0) != 0 {
        return None;
    }
    let x = qn.input(0)?;
    let y = *qn.outputs.first()?;
    let ys = qn.input(1)?;
    let yz = qn.input(2);
    let y_scales = m.constant(ys)?.to_f64_vec()?;
    if y_scales.len() != 1 || elem(m, ys) != Some(ElemType::F32) || !is_int8(elem(m, y)) {
        return None;
    }
    let y_zero = match yz {
        Some(z) => *m.constant(z)?.to_i64_vec()?.first()?,
        None => 0,
    };
    if uses.get(&x) != Some(&1) {
        return None;
    }
    let pi = *def.get(&x)?;
    let p = r.nodes[pi].clone();
    let qname = qn.name.clone();
    let node = match p.op.as_str() {
        "Conv" => conv(m, r, def, &p, ys, yz, y)?,
        op if kiln_ir::ops::traits(op).selects && p.outputs.len() == 1 => {
            let data: Vec<usize> = if op == "Concat" {
                (0..p.inputs.len()).collect()
            } else {
                vec![0]
            };
            let mut node = p.clone();
            for k in data {
                let d = dq_of(m, r, def, p.input(k)?)?;
                // Same quantization on both sides: the op commutes.
                if d.scales != y_scales || d.zeros != [y_zero] || elem(m, d.q) != elem(m, y) {
                    return None;
                }
                node.inputs[k] = Some(d.q);
            }
            node.outputs = vec![y];
            node
        }
        _ => return None,
    };
    let mut node = node;
    if node.name.is_empty() {
        node.name = qname;
    }
    Some((node, pi))
}

/// The i32 bias of a folded conv from its float bias `b`: the integer
/// operand of `DQ(i32 constant)` at scale `x_scale · w_scale` (the form
/// tools write) as it is; otherwise, a bias whose values are constants
/// (an f32 constant, or the DQ of a constant at another scale, through
/// `Identity`s: exporters share equal biases that way) rounded to the
/// nearest step of that scale, within half a step of the accumulator,
/// far below one step of the 8-bit result.
fn bias_operand(
    m: &mut Module,
    r: &mut Region,
    def: &HashMap<ValueId, usize>,
    b: ValueId,
    dx: &Dq,
    dw: &Dq,
    out_ch: usize,
) -> Option<ValueId> {
    let mut b = b;
    while let Some(n) = def.get(&b).map(|&i| &r.nodes[i]) {
        if n.op != "Identity" {
            break;
        }
        b = n.input(0)?;
    }
    let step = |c: usize| {
        let sw = dw.scales[if dw.scales.len() == 1 { 0 } else { c }];
        (dx.scales[0] as f32 * sw as f32) as f64
    };
    let values: Vec<f64> = match dq_of(m, r, def, b) {
        Some(db) => {
            let exact = elem(m, db.q) == Some(ElemType::I32)
                && m.constant(db.q).is_some()
                && db.zeros.iter().all(|&z| z == 0)
                && (0..out_ch).all(|c| {
                    let sb = db.scales[if db.scales.len() == 1 { 0 } else { c }];
                    product_scale(
                        sb,
                        dx.scales[0],
                        dw.scales[if dw.scales.len() == 1 { 0 } else { c }],
                    )
                });
            if exact {
                return Some(db.q);
            }
            let q = m.constant(db.q)?.to_i64_vec()?;
            if q.len() != out_ch || !(db.scales.len() == 1 || db.scales.len() == out_ch) {
                return None;
            }
            let pick = |v: &[f64], c: usize| v[if v.len() == 1 { 0 } else { c }];
            let zeros: Vec<f64> = db.zeros.iter().map(|&z| z as f64).collect();
            (0..out_ch)
                .map(|c| (q[c] as f64 - pick(&zeros, c)) * pick(&db.scales, c))
                .collect()
        }
        None if elem(m, b) == Some(ElemType::F32) => m.constant(b)?.to_f64_vec()?,
        None => return None,
    };
    if values.len() != out_ch {
        return None;
    }
    let ints: Vec<i32> = (0..out_ch)
        .map(|c| {
            let v = (values[c] / step(c)).round();
            (v.is_finite() && v.abs() < i32::MAX as f64).then_some(v as i32)
        })
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = ints.iter().flat_map(|v| v.to_le_bytes()).collect();
    let data = TensorData::from_bytes(ElemType::I32, vec![out_ch as u64], bytes).ok()?;
    let id = m.add_constant_unique("bias_quantized", std::sync::Arc::new(data));
    r.constants.push(id);
    Some(id)
}

fn conv(
    m: &mut Module,
    r: &mut Region,
    def: &HashMap<ValueId, usize>,
    p: &Node,
    ys: ValueId,
    yz: Option<ValueId>,
    y: ValueId,
) -> Option<Node> {
    let dx = dq_of(m, r, def, p.input(0)?)?;
    let dw = dq_of(m, r, def, p.input(1)?)?;
    let (xe, we) = (elem(m, dx.q), elem(m, dw.q));
    if !is_int8(xe) || !is_int8(we) || dx.scales.len() != 1 || m.constant(dw.q).is_none() {
        return None;
    }
    let out_ch = m.constant(dw.q)?.shape.first().copied()? as usize;
    let per_channel = dw.scales.len() != 1;
    if per_channel && (dw.scales.len() != out_ch || !(dw.axis == 0 || dw.axis == -4)) {
        return None;
    }
    let bias = match p.input(2) {
        None => None,
        Some(b) => Some(bias_operand(m, r, def, b, &dx, &dw, out_ch)?),
    };
    let zx = zero_of(m, r, &dx, xe?)?;
    let zw = zero_of(m, r, &dw, we?)?;
    let zy = match yz {
        Some(z) => z,
        None => zero_like(m, r, ys, elem(m, y)?)?,
    };
    let mut n = Node::new(
        "QLinearConv",
        vec![
            Some(dx.q),
            Some(dx.scale),
            Some(zx),
            Some(dw.q),
            Some(dw.scale),
            Some(zw),
            Some(ys),
            Some(zy),
            bias,
        ],
        vec![y],
    );
    n.attrs = p.attrs.clone();
    n.name = p.name.clone();
    Some(n)
}
