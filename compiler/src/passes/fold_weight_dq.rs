//! Pass `fold-weight-dq`: weight-only quantized products keep their
//! weights quantized. Without it, constant folding turns each
//! `DequantizeLinear` of a constant 8- or 4-bit weight into an f32 copy 4
//! to 8 times its size, and the model is as large and as slow as its float
//! original.
//!
//! Rules, in order (each exact: the rewritten graph computes the same
//! values, rounding included):
//! 1. `Mul(Cast(W), s)` (either operand order), W a constant of 8 or 4
//!    bits, s a constant f32 of one value or of one value per index of one
//!    of W's axes → `DequantizeLinear(W, s; axis)`, the form weight-only
//!    exports of `Cast(int8) * scale` mean. (`(q - 0) · s` is `q · s`.)
//! 2. `Gather(DequantizeLinear(W), i)` → `DequantizeLinear(Gather(W, i))`
//!    when the quantization axis is not the one gathered (per tensor
//!    always), and `(Cast(Gather(W)) - Cast(Gather(z))) · Gather(s)`
//!    when it is (a scale per token); `Transpose(DequantizeLinear(W))` of
//!    a constant matrix → `DequantizeLinear(Wᵀ)`: embedding tables stay
//!    8-bit, and a tied output projection meets its weights untransposed.
//! 3. `MatMul(A, DequantizeLinear(W))` and `Gemm(A, DequantizeLinear(W),
//!    C)` (transA 0, alpha 1, beta 1; `transB` transposes the constants)
//!    → `kiln.DequantMatMul(A, W, scale, zero_point)` (+ `Add(C)`), for a
//!    constant matrix W of 8 or 4 bits quantized per tensor, per column,
//!    per row (a tied projection's transposed table) or in blocks of at
//!    least 16 rows: the forms the cpu backend's weight-only kernel runs
//!    with the weights packed as they are.
//!
//! 4. `LSTM(X, DequantizeLinear(W), DequantizeLinear(R), ...)` of constant
//!    8-bit W and R quantized per tensor, per direction (axis 0) or per
//!    direction and gate row (blocks of a whole row) → `kiln.DequantLSTM`
//!    with the scales and zero points as `[D]` or `[D, 4·hidden, 1]`, the
//!    form `DynamicQuantizeLSTM` imports as: the recurrence, re-read at
//!    every step, stays a quarter of its f32 size.
//!
//! The DequantizeLinear nodes left without users go with DCE. Targets
//! without a weight-only kernel (the gpu's) leave this pass out of their
//! pipeline (`compile::level_pipeline`), so constant folding gives them f32
//! weights as before.

use std::collections::HashMap;
use std::sync::Arc;

use kiln_ir::{Attr, ElemType, Module, Node, Region, TensorData, ValueId};

/// The smallest block of rows sharing a scale that the fold takes (the
/// kernel keeps one scale and zero point per block and column in f32).
const MIN_BLOCK: i64 = 16;

pub fn run(m: &mut Module) -> Result<bool, String> {
    let mut body = std::mem::take(&mut m.body);
    let changed = fold_region(m, &mut body);
    m.body = body;
    Ok(changed)
}

fn fold_region(m: &mut Module, r: &mut Region) -> bool {
    let mut changed = false;
    for n in &mut r.nodes {
        for sub in n.regions_mut() {
            changed |= fold_region(m, sub);
        }
    }
    for rule in [cast_scale as Rule, sink_dq, dequant_matmul, dequant_lstm] {
        changed |= apply(m, r, rule);
    }
    changed
}

/// A rule: the nodes replacing node `i` of the region, or `None`.
type Rule = fn(&mut Module, &mut Region, &HashMap<ValueId, usize>, usize) -> Option<Vec<Node>>;

fn apply(m: &mut Module, r: &mut Region, rule: Rule) -> bool {
    let mut def: HashMap<ValueId, usize> = HashMap::new();
    for (i, n) in r.nodes.iter().enumerate() {
        for &o in &n.outputs {
            def.insert(o, i);
        }
    }
    let mut replace: HashMap<usize, Vec<Node>> = HashMap::new();
    for i in 0..r.nodes.len() {
        if let Some(nodes) = rule(m, r, &def, i) {
            replace.insert(i, nodes);
        }
    }
    if replace.is_empty() {
        return false;
    }
    let old = std::mem::take(&mut r.nodes);
    for (i, n) in old.into_iter().enumerate() {
        match replace.remove(&i) {
            Some(nodes) => r.nodes.extend(nodes),
            None => r.nodes.push(n),
        }
    }
    true
}

fn elem(m: &Module, v: ValueId) -> Option<ElemType> {
    m.ty(v).as_tensor().map(|t| t.elem)
}

/// The integer types the weight-only path keeps.
fn is_narrow_int(e: Option<ElemType>) -> bool {
    matches!(
        e,
        Some(ElemType::I8 | ElemType::U8 | ElemType::I4 | ElemType::U4)
    )
}

fn int_attr(n: &Node, name: &str, default: i64) -> i64 {
    n.attr(name).and_then(Attr::as_int).unwrap_or(default)
}

/// `axis` of a rank-`rank` tensor, made non-negative, if in range.
fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    (0..rank as i64).contains(&a).then_some(a as usize)
}

fn add_const(m: &mut Module, r: &mut Region, hint: &str, d: TensorData) -> ValueId {
    let id = m.add_constant_unique(hint, Arc::new(d));
    r.constants.push(id);
    id
}

/// Rule 1: `Mul(Cast(W), s)` → `DequantizeLinear(W, s; axis)`.
fn cast_scale(
    m: &mut Module,
    r: &mut Region,
    def: &HashMap<ValueId, usize>,
    i: usize,
) -> Option<Vec<Node>> {
    let n = &r.nodes[i];
    if n.op != "Mul" || n.inputs.len() != 2 {
        return None;
    }
    let y = *n.outputs.first()?;
    let (a, b) = (n.input(0)?, n.input(1)?);
    let (cast, s) = match (def.get(&a), def.get(&b)) {
        (Some(&c), _) if r.nodes[c].op == "Cast" => (c, b),
        (_, Some(&c)) if r.nodes[c].op == "Cast" => (c, a),
        _ => return None,
    };
    let w = r.nodes[cast].input(0)?;
    let wd = m.constant(w)?;
    if !is_narrow_int(Some(wd.elem))
        || elem(m, s) != Some(ElemType::F32)
        || elem(m, r.nodes[cast].outputs[0]) != Some(ElemType::F32)
    {
        return None;
    }
    let sd = m.constant(s)?;
    let (ws, ss) = (wd.shape.clone(), sd.shape.clone());
    if ss.len() > ws.len() {
        return None;
    }
    // Right-align s against W: at most one dim of s may be more than 1,
    // and it must be W's.
    let off = ws.len() - ss.len();
    let mut axis = None;
    for (j, &d) in ss.iter().enumerate() {
        if d != 1 {
            if axis.is_some() || d != ws[off + j] {
                return None;
            }
            axis = Some(off + j);
        }
    }
    let sbytes = sd.bytes()?.to_vec();
    let (shape, attrs) = match axis {
        None => (vec![], vec![]),
        Some(ax) => (vec![ws[ax]], vec![("axis", ax as i64)]),
    };
    let scale = add_const(
        m,
        r,
        "scale",
        TensorData::from_bytes(ElemType::F32, shape, sbytes).ok()?,
    );
    let mut dq = Node::new("DequantizeLinear", vec![Some(w), Some(scale)], vec![y]);
    for (k, v) in attrs {
        dq.attrs.insert(k.into(), Attr::Int(v));
    }
    dq.name = r.nodes[i].name.clone();
    Some(vec![dq])
}

/// A `DequantizeLinear` not in blocks: its operands and axis.
struct Dq {
    w: ValueId,
    scale: ValueId,
    zero: Option<ValueId>,
    /// The axis, non-negative; `None` per tensor.
    axis: Option<usize>,
}

fn dq_at(m: &Module, r: &Region, def: &HashMap<ValueId, usize>, v: ValueId) -> Option<Dq> {
    let n = &r.nodes[*def.get(&v)?];
    if n.op != "DequantizeLinear" || int_attr(n, "block_size", 0) != 0 {
        return None;
    }
    let w = n.input(0)?;
    let scale = n.input(1)?;
    let rank = m.ty(w).as_tensor()?.shape.as_ref()?.len();
    let per_tensor = m.constant(scale)?.numel() == 1 && m.constant(scale)?.shape.len() <= 1;
    let axis = if per_tensor {
        None
    } else {
        Some(norm_axis(int_attr(n, "axis", 1), rank)?)
    };
    Some(Dq {
        w,
        scale,
        zero: n.input(2),
        axis,
    })
}

/// Rule 2: a Gather of a dequantized 8-bit table gathers the integers; a
/// Transpose of a dequantized constant matrix transposes the integers.
fn sink_dq(
    m: &mut Module,
    r: &mut Region,
    def: &HashMap<ValueId, usize>,
    i: usize,
) -> Option<Vec<Node>> {
    let n = r.nodes[i].clone();
    if n.op != "Gather" && n.op != "Transpose" {
        return None;
    }
    let y = *n.outputs.first()?;
    let d = dq_at(m, r, def, n.input(0)?)?;
    let we = elem(m, d.w)?;
    if !matches!(we, ElemType::I8 | ElemType::U8) {
        return None;
    }
    let ys = m.ty(y).as_tensor()?.shape.clone()?;
    let mut dq_attrs = vec![];
    let moved = if n.op == "Gather" {
        let rank = m.ty(d.w).as_tensor()?.shape.as_ref()?.len();
        let g = norm_axis(int_attr(&n, "axis", 0), rank)?;
        let idx_rank = m.ty(n.input(1)?).as_tensor()?.shape.as_ref()?.len();
        if let Some(a) = d.axis {
            if a == g {
                return gather_rows(m, r, &n, &d, we, g, rank, idx_rank, ys);
            }
            let a = if a < g { a } else { a + idx_rank - 1 };
            dq_attrs.push(("axis", a as i64));
        }
        let t = m.add_value_unique(
            "gathered",
            kiln_ir::Type::Tensor(kiln_ir::TensorType::new(we, ys)),
        );
        let mut gather = n.clone();
        gather.inputs[0] = Some(d.w);
        gather.outputs = vec![t];
        Some((gather, t))
    } else {
        // A constant matrix, transposed here.
        let perm = n.attr("perm").and_then(Attr::as_ints);
        if perm.is_some_and(|p| p != [1, 0]) {
            return None;
        }
        let wt = transpose_2d(m.constant(d.w)?)?;
        let t = add_const(m, r, "weights_t", wt);
        if let Some(a) = d.axis {
            dq_attrs.push(("axis", 1 - a as i64));
        }
        let mut dq = Node::new(
            "DequantizeLinear",
            vec![Some(t), Some(d.scale), d.zero],
            vec![y],
        );
        for (k, v) in dq_attrs {
            dq.attrs.insert(k.into(), Attr::Int(v));
        }
        dq.name = n.name.clone();
        return Some(vec![dq]);
    };
    let (gather, t) = moved?;
    let mut dq = Node::new(
        "DequantizeLinear",
        vec![Some(t), Some(d.scale), d.zero],
        vec![y],
    );
    for (k, v) in dq_attrs {
        dq.attrs.insert(k.into(), Attr::Int(v));
    }
    dq.name = n.name.clone();
    Some(vec![gather, dq])
}

/// `Gather(DequantizeLinear(W, s, z; axis g), i; axis g)`: each gathered
/// slice has its own scale, so the scales (and zero points) are gathered
/// with it: `(Cast(Gather(W)) - Cast(Gather(z))) · Gather(s)`, the
/// parameters unsqueezed to broadcast over the slice. An embedding table
/// with a scale per token stays 8-bit this way. Exact: `q - z` is exact in
/// f32 and the product rounds once, as in DequantizeLinear.
#[allow(clippy::too_many_arguments)]
fn gather_rows(
    m: &mut Module,
    r: &mut Region,
    n: &Node,
    d: &Dq,
    we: ElemType,
    g: usize,
    rank: usize,
    idx_rank: usize,
    ys: Vec<kiln_ir::Dim>,
) -> Option<Vec<Node>> {
    use kiln_ir::{Dim, TensorType, Type};
    let y = *n.outputs.first()?;
    let idx = n.input(1)?;
    if elem(m, d.scale) != Some(ElemType::F32) {
        return None;
    }
    let idx_shape = m.ty(idx).as_tensor()?.shape.clone()?;
    let tensor = |e: ElemType, dims: Vec<Dim>| Type::Tensor(TensorType::new(e, dims));
    let mut nodes = vec![];
    let value = |m: &mut Module, hint: &str, ty: Type| m.add_value_unique(hint, ty);
    // Gather a parameter by the same indices, unsqueezed over the dims
    // after the gathered axis, in f32.
    let trailing = rank - g - 1;
    let mut pshape = idx_shape.clone();
    pshape.extend(std::iter::repeat_n(Dim::Known(1), trailing));
    let axes = if trailing > 0 {
        let v: Vec<u8> = (idx_rank..idx_rank + trailing)
            .flat_map(|a| (a as i64).to_le_bytes())
            .collect();
        let data = TensorData::from_bytes(ElemType::I64, vec![trailing as u64], v).ok()?;
        Some(add_const(m, r, "axes", data))
    } else {
        None
    };
    let param = |m: &mut Module, nodes: &mut Vec<Node>, p: ValueId, cast: bool| {
        let pe = elem(m, p)?;
        let gp = value(m, "gathered_param", tensor(pe, idx_shape.clone()));
        nodes.push(Node::new("Gather", vec![Some(p), Some(idx)], vec![gp]));
        let mut v = gp;
        if cast {
            let c = value(m, "param_f32", tensor(ElemType::F32, idx_shape.clone()));
            let mut node = Node::new("Cast", vec![Some(v)], vec![c]);
            node.attrs.insert("to".into(), Attr::Int(1));
            nodes.push(node);
            v = c;
        }
        if let Some(axes) = axes {
            let u = value(m, "param_bcast", tensor(ElemType::F32, pshape.clone()));
            nodes.push(Node::new("Unsqueeze", vec![Some(v), Some(axes)], vec![u]));
            v = u;
        }
        Some(v)
    };
    let gw = value(m, "gathered", tensor(we, ys.clone()));
    let mut gather = n.clone();
    gather.inputs[0] = Some(d.w);
    gather.outputs = vec![gw];
    nodes.push(gather);
    let mut q = value(m, "gathered_f32", tensor(ElemType::F32, ys.clone()));
    let mut cast = Node::new("Cast", vec![Some(gw)], vec![q]);
    cast.attrs.insert("to".into(), Attr::Int(1));
    nodes.push(cast);
    if let Some(z) = d.zero {
        let zf = param(m, &mut nodes, z, true)?;
        let diff = value(m, "centered", tensor(ElemType::F32, ys.clone()));
        nodes.push(Node::new("Sub", vec![Some(q), Some(zf)], vec![diff]));
        q = diff;
    }
    let sf = param(m, &mut nodes, d.scale, false)?;
    let mut mul = Node::new("Mul", vec![Some(q), Some(sf)], vec![y]);
    mul.name = n.name.clone();
    nodes.push(mul);
    Some(nodes)
}

/// Rule 3: MatMul and Gemm of a dequantized constant matrix.
fn dequant_matmul(
    m: &mut Module,
    r: &mut Region,
    def: &HashMap<ValueId, usize>,
    i: usize,
) -> Option<Vec<Node>> {
    let n = r.nodes[i].clone();
    if n.op != "MatMul" && n.op != "Gemm" {
        return None;
    }
    let y = *n.outputs.first()?;
    let a = n.input(0)?;
    if elem(m, a) != Some(ElemType::F32) {
        return None;
    }
    let dn = &r.nodes[*def.get(&n.input(1)?)?];
    if dn.op != "DequantizeLinear" {
        return None;
    }
    let (w, scale, zero) = (dn.input(0)?, dn.input(1)?, dn.input(2));
    let (wd, sd) = (m.constant(w)?, m.constant(scale)?);
    if !is_narrow_int(Some(wd.elem)) || sd.elem != ElemType::F32 || wd.shape.len() != 2 {
        return None;
    }
    if let Some(z) = zero {
        m.constant(z)?;
    }
    let block = int_attr(dn, "block_size", 0);
    let mut axis = norm_axis(int_attr(dn, "axis", 1), 2)?;
    let per_tensor = sd.numel() == 1 && block == 0;
    let trans_b = n.op == "Gemm" && int_attr(&n, "transB", 0) != 0;
    if n.op == "Gemm" {
        let one = |k: &str| n.attr(k).and_then(Attr::as_float).unwrap_or(1.0) == 1.0;
        if int_attr(&n, "transA", 0) != 0 || !one("alpha") || (n.input(2).is_some() && !one("beta"))
        {
            return None;
        }
    }
    // In the product's orientation (W as [K, N]), the scales must be per
    // tensor, per column (axis 1), per row (axis 0) or in blocks of rows.
    let k_axis = if trans_b { 1 } else { 0 };
    let grid_ok = per_tensor || block == 0 || (block >= MIN_BLOCK && axis == k_axis);
    if !grid_ok {
        return None;
    }
    let (mut w, mut scale, mut zero) = (w, scale, zero);
    if trans_b {
        w = add_const(m, r, "weights_t", transpose_2d(m.constant(w)?)?);
        if block > 0 {
            scale = add_const(m, r, "scale_t", transpose_2d(m.constant(scale)?)?);
            if let Some(z) = zero {
                zero = Some(add_const(
                    m,
                    r,
                    "zero_point_t",
                    transpose_2d(m.constant(z)?)?,
                ));
            }
        }
        axis = 1 - axis;
    }
    let out = if n.op == "Gemm" && n.input(2).is_some() {
        m.add_value_unique("product", m.ty(y).clone())
    } else {
        y
    };
    let mut mm = Node::new(
        "kiln.DequantMatMul",
        vec![Some(a), Some(w), Some(scale), zero],
        vec![out],
    );
    mm.name = n.name.clone();
    if !per_tensor {
        mm.attrs.insert("axis".into(), Attr::Int(axis as i64));
    }
    if block > 0 {
        mm.attrs.insert("block_size".into(), Attr::Int(block));
    }
    let mut nodes = vec![mm];
    if out != y {
        nodes.push(Node::new("Add", vec![Some(out), n.input(2)], vec![y]));
    }
    Some(nodes)
}

/// The transpose of a constant matrix of 1-, 2-, 4- or 8-byte or 4-bit
/// elements.
fn transpose_2d(d: &TensorData) -> Option<TensorData> {
    let [rows, cols] = d.shape[..] else {
        return None;
    };
    let (rows, cols) = (rows as usize, cols as usize);
    let b = d.bytes()?;
    let out = match d.elem {
        ElemType::I4 | ElemType::U4 => {
            let nib = |i: usize| (b[i / 2] >> (4 * (i % 2))) & 15;
            let mut out = vec![0u8; (rows * cols).div_ceil(2)];
            for i in 0..rows {
                for j in 0..cols {
                    let t = j * rows + i;
                    out[t / 2] |= nib(i * cols + j) << (4 * (t % 2));
                }
            }
            out
        }
        e => {
            let size = e.storage_bytes(1)? as usize;
            if b.len() != rows * cols * size {
                return None;
            }
            let mut out = vec![0u8; b.len()];
            for i in 0..rows {
                for j in 0..cols {
                    let (src, dst) = ((i * cols + j) * size, (j * rows + i) * size);
                    out[dst..dst + size].copy_from_slice(&b[src..src + size]);
                }
            }
            out
        }
    };
    TensorData::from_bytes(d.elem, vec![cols as u64, rows as u64], out).ok()
}

/// Rule 4: an LSTM of two dequantized constant 8-bit weights.
fn dequant_lstm(
    m: &mut Module,
    r: &mut Region,
    def: &HashMap<ValueId, usize>,
    i: usize,
) -> Option<Vec<Node>> {
    let n = r.nodes[i].clone();
    if n.op != "LSTM" || elem(m, n.input(0)?) != Some(ElemType::F32) {
        return None;
    }
    let w = lstm_weight(m, r, def, n.input(1)?)?;
    let rw = lstm_weight(m, r, def, n.input(2)?)?;
    let mut inputs: Vec<Option<ValueId>> = (0..8).map(|k| n.input(k)).collect();
    inputs[1] = Some(w.q);
    inputs[2] = Some(rw.q);
    for p in [w, rw] {
        let scale = add_const(m, r, "scale", p.scale);
        let zero = add_const(m, r, "zero_point", p.zero);
        inputs.extend([Some(scale), Some(zero)]);
    }
    let mut out = Node::new("kiln.DequantLSTM", inputs, n.outputs.clone());
    out.attrs = n.attrs.clone();
    out.name = n.name.clone();
    Some(vec![out])
}

/// A recurrent weight's 8-bit constant and its parameters, `[D]` or `[D,
/// rows, 1]`.
struct LstmWeight {
    q: ValueId,
    scale: TensorData,
    zero: TensorData,
}

/// The parts of `v = DequantizeLinear(q, scale, zero)` for a constant
/// 8-bit `q [D, rows, cols]` whose constant parameters are per tensor,
/// per direction (axis 0) or per row (axis 2 in one block per row).
fn lstm_weight(
    m: &Module,
    r: &Region,
    def: &HashMap<ValueId, usize>,
    v: ValueId,
) -> Option<LstmWeight> {
    let dq = &r.nodes[*def.get(&v)?];
    if dq.op != "DequantizeLinear" {
        return None;
    }
    let q = dq.input(0)?;
    let qd = m.constant(q)?;
    if !matches!(qd.elem, ElemType::I8 | ElemType::U8) || qd.shape.len() != 3 {
        return None;
    }
    let (d, rows, cols) = (qd.shape[0], qd.shape[1], qd.shape[2]);
    let sd = m.constant(dq.input(1)?)?;
    if sd.elem != ElemType::F32 {
        return None;
    }
    let axis = norm_axis(int_attr(dq, "axis", 1), 3)?;
    let block = int_attr(dq, "block_size", 0);
    let (shape, per_row) = match (&sd.shape[..], axis, block) {
        (s, _, 0) if sd.numel() == 1 && s.len() <= 1 => (vec![d], false),
        ([x], 0, 0) if *x == d => (vec![d], false),
        ([x, y, 1], 2, b) if *x == d && *y == rows && b as u64 >= cols => (vec![d, rows, 1], true),
        _ => return None,
    };
    let numel = if per_row { d * rows } else { d };
    // A per-tensor parameter repeats for every direction.
    let spread = |t: &TensorData, elem: ElemType| -> Option<TensorData> {
        let b = t.bytes()?;
        let bytes = if t.numel() == numel {
            b.to_vec()
        } else if t.numel() == 1 {
            b.repeat(numel as usize)
        } else {
            return None;
        };
        TensorData::from_bytes(elem, shape.clone(), bytes).ok()
    };
    let scale = spread(sd, ElemType::F32)?;
    let zero = match dq.input(2) {
        Some(z) => {
            let zd = m.constant(z)?;
            if zd.elem != qd.elem || zd.shape != sd.shape {
                return None;
            }
            spread(zd, qd.elem)?
        }
        None => TensorData::from_bytes(qd.elem, shape.clone(), vec![0; numel as usize]).ok()?,
    };
    Some(LstmWeight { q, scale, zero })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_nibbles_and_words() {
        // 2 x 3 of 4-bit values 1..6, packed low nibble first.
        let d = TensorData::from_bytes(ElemType::U4, vec![2, 3], vec![0x21, 0x43, 0x65]).unwrap();
        let t = transpose_2d(&d).unwrap();
        assert_eq!(t.shape, vec![3, 2]);
        // [[1,4],[2,5],[3,6]]
        assert_eq!(t.bytes().unwrap(), &[0x41, 0x52, 0x63]);
        let f: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let d = TensorData::from_bytes(ElemType::F32, vec![1, 4], f.clone()).unwrap();
        let t = transpose_2d(&d).unwrap();
        assert_eq!(t.shape, vec![4, 1]);
        assert_eq!(t.bytes().unwrap(), &f[..]);
    }
}
