//! Pass `expand-composites`: the ops that ONNX defines as functions of
//! other ops become those ops, so that the simplifier, fusion and every
//! backend see ops they already lower:
//!
//! - `Swish(x, alpha)` → `x * Sigmoid(alpha * x)` (SiLU when alpha = 1,
//!   which fusion puts into a conv/matmul epilogue);
//! - `RMSNormalization` → `x / Sqrt(ReduceMean(x * x) + epsilon) * scale`
//!   over the trailing axes, in f32 for f16/bf16 inputs (`stash_type`);
//! - `RotaryEmbedding` → cos/sin rows gathered at the positions, the
//!   rotated halves (or even/odd features) as `Slice`, `Mul`, `Sub`,
//!   `Add` and `Concat`;
//! - `Attention` → per-head `MatMul`s with the scale, softcap, masks and
//!   causal bias as elementwise ops and `Softmax` between them: 3-D
//!   operands split into heads by `Reshape`/`Transpose`, the key/value
//!   cache by `Concat`, grouped-query heads shared by `Expand`.
//!
//! Why: these arrive from exporters at opset 23-24 (PyTorch's dynamo
//! exporter writes `Attention` for `scaled_dot_product_attention` and
//! `RMSNormalization` for `RMSNorm`). No backend has kernels of their
//! own; as their parts they run natively and fuse.
//!
//! Applies (Swish aside, which needs no shapes) where the operands' shapes are static (backends compile per
//! shape, so after specialization they are) and the element type is a
//! float (Attention and RotaryEmbedding: f32, f64). Attention's
//! `nonpad_kv_seqlen` (each sample's count of valid keys in a static
//! cache, known only at run time) becomes comparisons of constant key
//! positions with it. Cases that fail the checks below stay for the
//! interpreter, which reports their errors.

use std::sync::Arc;

use kiln_ir::{Attr, ElemType, Module, Node, TensorData, TensorType, Type, ValueId};

use super::simplify::cx::float_data;
use super::Expansion;

pub fn run(m: &mut Module) -> Result<bool, String> {
    let mut body = std::mem::take(&mut m.body);
    let changed = super::expand_nodes(m, &mut body, &mut |m, n| match n.op.as_str() {
        "Swish" => swish(m, n),
        "RMSNormalization" => rms_norm(m, n),
        "RotaryEmbedding" => rotary(m, n),
        "Attention" => attention(m, n),
        _ => None,
    });
    m.body = body;
    Ok(changed)
}

/// The ONNX data-type code of a float type (`Cast`'s `to`).
fn onnx_code(e: ElemType) -> Option<i64> {
    Some(match e {
        ElemType::F32 => 1,
        ElemType::F16 => 10,
        ElemType::F64 => 11,
        ElemType::BF16 => 16,
        _ => return None,
    })
}

/// Builds the replacement of one node.
struct Build<'a> {
    m: &'a mut Module,
    hint: String,
    name: String,
    nodes: Vec<Node>,
    consts: Vec<ValueId>,
}

impl<'a> Build<'a> {
    fn new(m: &'a mut Module, n: &Node) -> Build<'a> {
        let hint = n
            .outputs
            .first()
            .map(|&o| m.name(o).to_string())
            .unwrap_or_default();
        Build {
            m,
            hint,
            name: n.name.clone(),
            nodes: vec![],
            consts: vec![],
        }
    }

    fn value(&mut self, elem: ElemType, dims: &[usize]) -> ValueId {
        let dims: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        let ty = Type::Tensor(TensorType::known(elem, &dims));
        let hint = format!("{}_x", self.hint);
        self.m.add_value_unique(&hint, ty)
    }

    fn constant(&mut self, data: TensorData) -> ValueId {
        let hint = format!("{}_c", self.hint);
        let id = self.m.add_constant_unique(&hint, Arc::new(data));
        self.consts.push(id);
        id
    }

    fn ints(&mut self, v: &[i64]) -> Option<ValueId> {
        let data = TensorData::from_i64(vec![v.len() as u64], v).ok()?;
        Some(self.constant(data))
    }

    /// A float constant of type `elem` and shape `dims`.
    fn floats(&mut self, elem: ElemType, dims: &[usize], v: &[f64]) -> Option<ValueId> {
        let data = float_data(elem, dims.iter().map(|&d| d as u64).collect(), v)?;
        Some(self.constant(data))
    }

    fn scalar(&mut self, elem: ElemType, x: f64) -> Option<ValueId> {
        self.floats(elem, &[], &[x])
    }

    /// `op(inputs)` into `out`.
    fn emit(&mut self, op: &str, inputs: &[ValueId], attrs: Vec<(&str, Attr)>, out: ValueId) {
        let mut n = Node::new(op, inputs.iter().map(|&v| Some(v)).collect(), vec![out]);
        for (k, a) in attrs {
            n.attrs.insert(k.into(), a);
        }
        n.name = self.name.clone();
        self.nodes.push(n);
    }

    /// `op(inputs)` into a new value of `elem` and `dims`.
    fn op(
        &mut self,
        op: &str,
        inputs: &[ValueId],
        attrs: Vec<(&str, Attr)>,
        elem: ElemType,
        dims: &[usize],
    ) -> ValueId {
        let out = self.value(elem, dims);
        self.emit(op, inputs, attrs, out);
        out
    }

    fn cast(&mut self, x: ValueId, to: ElemType, dims: &[usize]) -> Option<ValueId> {
        let code = onnx_code(to)?;
        Some(self.op("Cast", &[x], vec![("to", Attr::Int(code))], to, dims))
    }

    fn reshape(&mut self, x: ValueId, elem: ElemType, to: &[usize]) -> Option<ValueId> {
        let shape = self.ints(&to.iter().map(|&d| d as i64).collect::<Vec<_>>())?;
        Some(self.op("Reshape", &[x, shape], vec![], elem, to))
    }

    fn transpose(&mut self, x: ValueId, elem: ElemType, dims: &[usize], perm: &[usize]) -> ValueId {
        let out: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
        let perm = Attr::Ints(perm.iter().map(|&p| p as i64).collect());
        self.op("Transpose", &[x], vec![("perm", perm)], elem, &out)
    }

    /// `x[..., from..to]` along `axis` with `step`.
    fn slice(
        &mut self,
        x: ValueId,
        elem: ElemType,
        dims: &[usize],
        axis: usize,
        (from, to, step): (usize, usize, usize),
    ) -> Option<ValueId> {
        let mut out = dims.to_vec();
        out[axis] = (to - from).div_ceil(step);
        let s = self.ints(&[from as i64])?;
        let e = self.ints(&[to as i64])?;
        let a = self.ints(&[axis as i64])?;
        let st = self.ints(&[step as i64])?;
        Some(self.op("Slice", &[x, s, e, a, st], vec![], elem, &out))
    }

    fn finish(self) -> Option<Expansion> {
        Some((self.nodes, self.consts))
    }
}

fn float_attr(n: &Node, name: &str) -> Option<f64> {
    n.attr(name).and_then(Attr::as_float).map(f64::from)
}

fn int_attr(n: &Node, name: &str, default: i64) -> i64 {
    n.attr(name).and_then(Attr::as_int).unwrap_or(default)
}

fn elem_of(m: &Module, v: ValueId) -> Option<ElemType> {
    Some(m.ty(v).as_tensor()?.elem)
}

fn swish(m: &mut Module, n: &Node) -> Option<Expansion> {
    let x = (*n.inputs.first()?)?;
    let y = *n.outputs.first()?;
    let elem = elem_of(m, x)?;
    if !elem.is_float() || elem.is_float8() {
        return None;
    }
    // Elementwise: the parts have X's type, symbolic dims and all.
    let ty = m.ty(x).clone();
    let alpha = float_attr(n, "alpha").unwrap_or(1.0);
    let mut b = Build::new(m, n);
    let like_x = |b: &mut Build, op: &str, inputs: &[ValueId]| {
        let hint = format!("{}_x", b.hint);
        let out = b.m.add_value_unique(&hint, ty.clone());
        b.emit(op, inputs, vec![], out);
        out
    };
    let arg = if alpha == 1.0 {
        x
    } else {
        let a = b.scalar(elem, alpha)?;
        like_x(&mut b, "Mul", &[x, a])
    };
    let s = like_x(&mut b, "Sigmoid", &[arg]);
    b.emit("Mul", &[x, s], vec![], y);
    b.finish()
}

fn rms_norm(m: &mut Module, n: &Node) -> Option<Expansion> {
    let (x, scale) = ((*n.inputs.first()?)?, (*n.inputs.get(1)?)?);
    let y = *n.outputs.first()?;
    let elem = elem_of(m, x)?;
    let dims = m.static_shape(x).ok()?;
    let rank = dims.len();
    let axis = int_attr(n, "axis", -1);
    let axis = if axis < 0 { axis + rank as i64 } else { axis };
    if !(0..rank as i64).contains(&axis) || elem_of(m, scale)? != elem {
        return None;
    }
    let axis = axis as usize;
    // The statistics in f32 at least (stash_type's default); f64 stays.
    let calc = match elem {
        ElemType::F32 | ElemType::F64 => elem,
        ElemType::F16 | ElemType::BF16 => ElemType::F32,
        _ => return None,
    };
    let eps = float_attr(n, "epsilon").unwrap_or(1e-5);
    let mut b = Build::new(m, n);
    let xc = if calc != elem {
        b.cast(x, calc, &dims)?
    } else {
        x
    };
    let mut stat = dims.clone();
    stat[axis..].iter_mut().for_each(|d| *d = 1);
    let sq = b.op("Mul", &[xc, xc], vec![], calc, &dims);
    let axes = b.ints(&(axis as i64..rank as i64).collect::<Vec<_>>())?;
    let ms = b.op(
        "ReduceMean",
        &[sq, axes],
        vec![("keepdims", Attr::Int(1))],
        calc,
        &stat,
    );
    let e = b.scalar(calc, eps)?;
    let var = b.op("Add", &[ms, e], vec![], calc, &stat);
    let rms = b.op("Sqrt", &[var], vec![], calc, &stat);
    let normed = b.op("Div", &[xc, rms], vec![], calc, &dims);
    let normed = if calc != elem {
        b.cast(normed, elem, &dims)?
    } else {
        normed
    };
    b.emit("Mul", &[normed, scale], vec![], y);
    b.finish()
}

/// RotaryEmbedding on a 4-D `[batch, heads, seq, head]` or 3-D
/// `[batch, seq, heads * head]` input: worked on as
/// `[batch, heads, seq, head]` (3-D: `[batch, seq, heads, head]` with the
/// caches broadcast over the heads axis instead).
fn rotary(m: &mut Module, n: &Node) -> Option<Expansion> {
    let x = (*n.inputs.first()?)?;
    let (cos, sin) = ((*n.inputs.get(1)?)?, (*n.inputs.get(2)?)?);
    let pos = n.inputs.get(3).copied().flatten();
    let y = *n.outputs.first()?;
    let elem = elem_of(m, x)?;
    if !matches!(elem, ElemType::F32 | ElemType::F64) {
        return None;
    }
    let xd = m.static_shape(x).ok()?;
    let cd = m.static_shape(cos).ok()?;
    if m.static_shape(sin).ok()? != cd || elem_of(m, cos)? != elem || elem_of(m, sin)? != elem {
        return None;
    }
    // Work shape [batch, A, B, head] and where seq is (1 or 2).
    let (work, seq_axis) = match xd[..] {
        [_, _, _, _] => (xd.clone(), 2),
        [bt, s, hidden] => {
            let h = usize::try_from(int_attr(n, "num_heads", 0)).ok()?;
            if h == 0 || hidden % h != 0 {
                return None;
            }
            (vec![bt, s, h, hidden / h], 1)
        }
        _ => return None,
    };
    let (batch, seq, head) = (work[0], work[seq_axis], work[3]);
    let rot = match int_attr(n, "rotary_embedding_dim", 0) {
        0 => head,
        r if r > 0 && (r as usize) <= head && r % 2 == 0 => r as usize,
        _ => return None,
    };
    let half = rot / 2;
    let interleaved = int_attr(n, "interleaved", 0) != 0;
    // Cache rows [batch, seq, half].
    match (pos, &cd[..]) {
        (Some(p), [_, h]) if *h == half => {
            if m.static_shape(p).ok()? != [batch, seq] || elem_of(m, p)? != ElemType::I64 {
                return None;
            }
        }
        (None, [bt, s, h]) if (*bt, *s, *h) == (batch, seq, half) => {}
        _ => return None,
    }
    let mut b = Build::new(m, n);
    let xw = if xd.len() == 3 {
        b.reshape(x, elem, &work)?
    } else {
        x
    };
    // Caches broadcast against [batch, A, B, half]: a 1 on the heads axis.
    let heads_axis = 3 - seq_axis;
    let mut cache_dims = vec![batch, seq];
    cache_dims.insert(heads_axis, 1);
    cache_dims.push(half);
    let rows = |c: ValueId, b: &mut Build| -> Option<ValueId> {
        let g = match pos {
            Some(p) => b.op("Gather", &[c, p], vec![], elem, &[batch, seq, half]),
            None => c,
        };
        b.reshape(g, elem, &cache_dims)
    };
    let cr = rows(cos, &mut b)?;
    let sr = rows(sin, &mut b)?;
    let (x1, x2) = if interleaved {
        (
            b.slice(xw, elem, &work, 3, (0, rot, 2))?,
            b.slice(xw, elem, &work, 3, (1, rot, 2))?,
        )
    } else {
        (
            b.slice(xw, elem, &work, 3, (0, half, 1))?,
            b.slice(xw, elem, &work, 3, (half, rot, 1))?,
        )
    };
    let mut hd = work.clone();
    hd[3] = half;
    let a = b.op("Mul", &[x1, cr], vec![], elem, &hd);
    let c = b.op("Mul", &[x2, sr], vec![], elem, &hd);
    let real = b.op("Sub", &[a, c], vec![], elem, &hd);
    let d = b.op("Mul", &[x1, sr], vec![], elem, &hd);
    let e = b.op("Mul", &[x2, cr], vec![], elem, &hd);
    let imag = b.op("Add", &[d, e], vec![], elem, &hd);
    let mut rd = work.clone();
    rd[3] = rot;
    let rotated = if interleaved {
        let mut pd = hd.clone();
        pd.push(1);
        let axis = b.ints(&[4])?;
        let r = b.op("Unsqueeze", &[real, axis], vec![], elem, &pd);
        let i = b.op("Unsqueeze", &[imag, axis], vec![], elem, &pd);
        pd[4] = 2;
        let pairs = b.op("Concat", &[r, i], vec![("axis", Attr::Int(4))], elem, &pd);
        b.reshape(pairs, elem, &rd)?
    } else {
        b.op(
            "Concat",
            &[real, imag],
            vec![("axis", Attr::Int(3))],
            elem,
            &rd,
        )
    };
    let whole = if rot < head {
        let rest = b.slice(xw, elem, &work, 3, (rot, head, 1))?;
        b.op(
            "Concat",
            &[rotated, rest],
            vec![("axis", Attr::Int(3))],
            elem,
            &work,
        )
    } else {
        rotated
    };
    if xd.len() == 3 {
        let shape = b.ints(&xd.iter().map(|&d| d as i64).collect::<Vec<_>>())?;
        b.emit("Reshape", &[whole, shape], vec![], y);
    } else {
        b.emit("Identity", &[whole], vec![], y);
    }
    b.finish()
}

/// Attention without `nonpad_kv_seqlen`, on static shapes.
fn attention(m: &mut Module, n: &Node) -> Option<Expansion> {
    let input = |i: usize| n.inputs.get(i).copied().flatten();
    let output = |i: usize| n.outputs.get(i).copied();
    let (q, k, v) = (input(0)?, input(1)?, input(2)?);
    let (mask, past_k, past_v) = (input(3), input(4), input(5));
    // The per-sample count of valid keys of a static cache (not with a
    // past, which the spec forbids).
    let nonpad = input(6);
    if nonpad.is_some() && past_k.is_some() {
        return None;
    }
    let elem = elem_of(m, q)?;
    if !matches!(elem, ElemType::F32 | ElemType::F64)
        || elem_of(m, k)? != elem
        || elem_of(m, v)? != elem
        || past_k.is_some() != past_v.is_some()
    {
        return None;
    }
    let (qd, kd, vd) = (
        m.static_shape(q).ok()?,
        m.static_shape(k).ok()?,
        m.static_shape(v).ok()?,
    );
    let rank = qd.len();
    if kd.len() != rank || vd.len() != rank {
        return None;
    }
    let heads = |name: &str| usize::try_from(int_attr(n, name, 0)).ok();
    // [batch, heads, seq, head] of each operand.
    let split = |d: &[usize], h: Option<usize>| -> Option<[usize; 4]> {
        match *d {
            [b, hh, s, e] => Some([b, hh, s, e]),
            [b, s, hidden] => {
                let h = h.filter(|&h| h > 0 && hidden % h == 0)?;
                Some([b, h, s, hidden / h])
            }
            _ => None,
        }
    };
    let [batch, hq, sq, dq] = split(&qd, heads("q_num_heads"))?;
    let [kb, hkv, skv, dk] = split(&kd, heads("kv_num_heads"))?;
    let [vb, vh, vs, dv] = split(&vd, heads("kv_num_heads"))?;
    if kb != batch || vb != batch || vh != hkv || vs != skv || dk != dq || hkv == 0 || hq % hkv != 0
    {
        return None;
    }
    let past_len = match past_k {
        Some(pk) => {
            let pd = m.static_shape(pk).ok()?;
            let pvd = m.static_shape(past_v?).ok()?;
            if pd.len() != 4 || pd[..2] != [batch, hkv] || pd[3] != dk {
                return None;
            }
            if pvd.len() != 4 || pvd[..3] != pd[..3] || pvd[3] != dv {
                return None;
            }
            pd[2]
        }
        None => 0,
    };
    let total = past_len + skv;
    let mode = int_attr(n, "qk_matmul_output_mode", 0);
    if !(0..=3).contains(&mode) {
        return None;
    }
    let causal = int_attr(n, "is_causal", 0) != 0;
    let softcap = float_attr(n, "softcap").unwrap_or(0.0);
    let scale = float_attr(n, "scale").unwrap_or(1.0 / (dq as f64).sqrt());
    let soft_elem = match n.attr("softmax_precision").and_then(Attr::as_int) {
        None => elem,
        Some(code) => match kiln_ir::ops::elem_from_onnx(code)? {
            e @ (ElemType::F32 | ElemType::F64) => e,
            _ => return None,
        },
    };
    let full = [batch, hq, sq, total];
    if let Some(np) = nonpad {
        if m.static_shape(np).ok()? != [batch] || elem_of(m, np)? != ElemType::I64 {
            return None;
        }
    }
    // The mask, checked: rank 1-4, broadcasting to `full` once its last
    // axis (which may be shorter) is padded.
    let mask_info = match mask {
        Some(mv) => {
            let md = m.static_shape(mv).ok()?;
            let me = elem_of(m, mv)?;
            if md.is_empty() || md.len() > 4 || !(me == ElemType::Bool || me == elem) {
                return None;
            }
            let last = *md.last()?;
            if last > total {
                return None;
            }
            // Every axis but the last broadcasts to `full`; the last is
            // padded to the keys' length (as the reference pads it, even
            // from 1).
            let lead = 4 - md.len();
            let fits = md[..md.len() - 1]
                .iter()
                .enumerate()
                .all(|(i, &d)| d == 1 || d == full[lead + i]);
            if !fits {
                return None;
            }
            Some((mv, md, me == ElemType::Bool))
        }
        None => None,
    };

    let mut b = Build::new(m, n);
    // Q, K, V as [batch, heads, seq, head].
    let heads4 = |x: ValueId, d: [usize; 4], b: &mut Build| -> Option<ValueId> {
        if rank == 4 {
            return Some(x);
        }
        let r = b.reshape(x, elem, &[d[0], d[2], d[1], d[3]])?;
        Some(b.transpose(r, elem, &[d[0], d[2], d[1], d[3]], &[0, 2, 1, 3]))
    };
    let q4 = heads4(q, [batch, hq, sq, dq], &mut b)?;
    let mut k4 = heads4(k, [batch, hkv, skv, dk], &mut b)?;
    let mut v4 = heads4(v, [batch, hkv, skv, dv], &mut b)?;
    // The cache: past and new tokens along the sequence.
    let present = |b: &mut Build, past: Option<ValueId>, new: ValueId, d: usize, out| {
        let dims = [batch, hkv, total, d];
        match (past, out) {
            (Some(p), Some(o)) => {
                b.emit("Concat", &[p, new], vec![("axis", Attr::Int(2))], o);
                o
            }
            (Some(p), None) => b.op(
                "Concat",
                &[p, new],
                vec![("axis", Attr::Int(2))],
                elem,
                &dims,
            ),
            (None, Some(o)) => {
                b.emit("Identity", &[new], vec![], o);
                o
            }
            (None, None) => new,
        }
    };
    k4 = present(&mut b, past_k, k4, dk, output(1));
    v4 = present(&mut b, past_v, v4, dv, output(2));
    // Grouped-query attention: each key/value head serves `group`
    // consecutive query heads.
    let group = hq / hkv;
    let share = |x: ValueId, d: usize, b: &mut Build| -> Option<ValueId> {
        if group == 1 {
            return Some(x);
        }
        let u = b.reshape(x, elem, &[batch, hkv, 1, total, d])?;
        let shape = b.ints(&[
            batch as i64,
            hkv as i64,
            group as i64,
            total as i64,
            d as i64,
        ])?;
        let e = b.op(
            "Expand",
            &[u, shape],
            vec![],
            elem,
            &[batch, hkv, group, total, d],
        );
        b.reshape(e, elem, &[batch, hq, total, d])
    };
    let kq = share(k4, dk, &mut b)?;
    let vq = share(v4, dv, &mut b)?;
    let kt = b.transpose(kq, elem, &[batch, hq, total, dk], &[0, 1, 3, 2]);
    let qk = b.op("MatMul", &[q4, kt], vec![], elem, &full);
    let sc = b.scalar(elem, scale)?;
    let raw = b.op("Mul", &[qk, sc], vec![], elem, &full);
    let capped = if softcap > 0.0 {
        let inv = b.scalar(elem, 1.0 / softcap)?;
        let c = b.scalar(elem, softcap)?;
        let t = b.op("Mul", &[raw, inv], vec![], elem, &full);
        let t = b.op("Tanh", &[t], vec![], elem, &full);
        b.op("Mul", &[t, c], vec![], elem, &full)
    } else {
        raw
    };
    // The additive bias: the mask (booleans as 0 / -inf), its last axis
    // padded with masked positions, plus the causal frontier
    // `j <= i + past_len` as a constant.
    let mut bias: Option<(ValueId, Vec<usize>)> = None;
    if let Some((mv, md, is_bool)) = mask_info {
        let mut add = if is_bool {
            let zero = b.scalar(elem, 0.0)?;
            let ninf = b.scalar(elem, f64::NEG_INFINITY)?;
            b.op("Where", &[mv, zero, ninf], vec![], elem, &md)
        } else {
            mv
        };
        let last = *md.last()?;
        let mut pd = md.clone();
        if last < total {
            let r = md.len();
            let mut pads = vec![0i64; 2 * r];
            pads[2 * r - 1] = (total - last) as i64;
            let pads = b.ints(&pads)?;
            let ninf = b.scalar(elem, f64::NEG_INFINITY)?;
            *pd.last_mut()? = total;
            add = b.op("Pad", &[add, pads, ninf], vec![], elem, &pd);
        }
        bias = Some((add, pd));
    }
    let add_bias =
        |b: &mut Build, bias: Option<(ValueId, Vec<usize>)>, part: ValueId, pd: Vec<usize>| {
            match bias {
                None => (part, pd),
                Some((bv, bd)) => {
                    let od = broadcast(&bd, &pd);
                    (b.op("Add", &[bv, part], vec![], elem, &od), od)
                }
            }
        };
    // A boolean [batch, rows, total] as 0 / -inf, reshaped to
    // [batch, 1, rows, total].
    let bool_bias = |b: &mut Build, ok: ValueId, rows: usize| -> Option<ValueId> {
        let zero = b.scalar(elem, 0.0)?;
        let ninf = b.scalar(elem, f64::NEG_INFINITY)?;
        let w = b.op(
            "Where",
            &[ok, zero, ninf],
            vec![],
            elem,
            &[batch, rows, total],
        );
        b.reshape(w, elem, &[batch, 1, rows, total])
    };
    // The key counts as f32 (exact below 2^24) so that the comparisons
    // are float ops every backend runs (the gpu keeps i64 data on the
    // host).
    // Shaped [batch, 1, 1] against the key positions.
    let counts = match nonpad {
        Some(np) => {
            let f = b.cast(np, ElemType::F32, &[batch])?;
            Some(b.reshape(f, ElemType::F32, &[batch, 1, 1])?)
        }
        None => None,
    };
    match (causal, counts) {
        (false, _) => {}
        (true, None) => {
            // The frontier j <= i + past_len, a constant.
            let mut c = vec![0.0; sq * total];
            for i in 0..sq {
                for j in (i + past_len + 1).min(total)..total {
                    c[i * total + j] = f64::NEG_INFINITY;
                }
            }
            let cv = b.floats(elem, &[sq, total], &c)?;
            bias = Some(add_bias(&mut b, bias, cv, vec![sq, total]));
        }
        (true, Some(counts)) => {
            // j <= i + nonpad[b] - q_seq, as j - i + q_seq <= nonpad[b].
            let d: Vec<f64> = (0..sq)
                .flat_map(|i| (0..total).map(move |j| (j + sq) as f64 - i as f64))
                .collect();
            let dv = b.floats(ElemType::F32, &[1, sq, total], &d)?;
            let ok = b.op(
                "LessOrEqual",
                &[dv, counts],
                vec![],
                ElemType::Bool,
                &[batch, sq, total],
            );
            let cb = bool_bias(&mut b, ok, sq)?;
            bias = Some(add_bias(&mut b, bias, cb, vec![batch, 1, sq, total]));
        }
    }
    if let Some(counts) = counts {
        // Keys past each sample's count are padding: j < nonpad[b].
        // (Shaped so that no boolean is reshaped: the gpu keeps booleans
        // on the host.)
        let js: Vec<f64> = (0..total).map(|j| j as f64).collect();
        let jv = b.floats(ElemType::F32, &[1, 1, total], &js)?;
        let ok = b.op(
            "Less",
            &[jv, counts],
            vec![],
            ElemType::Bool,
            &[batch, 1, total],
        );
        let pb = bool_bias(&mut b, ok, 1)?;
        bias = Some(add_bias(&mut b, bias, pb, vec![batch, 1, 1, total]));
    }
    let biased = match &bias {
        Some((bv, _)) => b.op("Add", &[capped, *bv], vec![], elem, &full),
        None => capped,
    };
    let sm_in = if soft_elem != elem {
        b.cast(biased, soft_elem, &full)?
    } else {
        biased
    };
    let mut probs = b.op(
        "Softmax",
        &[sm_in],
        vec![("axis", Attr::Int(-1))],
        soft_elem,
        &full,
    );
    // A query whose every key is masked attends nothing: zeros, not the
    // NaN a softmax of -inf gives. Only a mask or key counts given at run
    // time can do that (the constant causal frontier always admits key 0).
    if let (Some((bv, bd)), true) = (&bias, mask.is_some() || nonpad.is_some()) {
        let axes = b.ints(&[-1])?;
        let mut rd = bd.clone();
        *rd.last_mut()? = 1;
        let mx = b.op(
            "ReduceMax",
            &[*bv, axes],
            vec![("keepdims", Attr::Int(1))],
            elem,
            &rd,
        );
        let dead = b.op(
            "IsInf",
            &[mx],
            vec![("detect_positive", Attr::Int(0))],
            ElemType::Bool,
            &rd,
        );
        let zero = b.scalar(soft_elem, 0.0)?;
        probs = b.op("Where", &[dead, zero, probs], vec![], soft_elem, &full);
    }
    let probs = if soft_elem != elem {
        b.cast(probs, elem, &full)?
    } else {
        probs
    };
    if let Some(o) = output(3) {
        let src = match mode {
            0 => raw,
            1 => capped,
            2 => biased,
            _ => probs,
        };
        b.emit("Identity", &[src], vec![], o);
    }
    let y = output(0)?;
    if rank == 4 {
        b.emit("MatMul", &[probs, vq], vec![], y);
    } else {
        let o = b.op("MatMul", &[probs, vq], vec![], elem, &[batch, hq, sq, dv]);
        let t = b.transpose(o, elem, &[batch, hq, sq, dv], &[0, 2, 1, 3]);
        let shape = b.ints(&[batch as i64, sq as i64, (hq * dv) as i64])?;
        b.emit("Reshape", &[t, shape], vec![], y);
    }
    b.finish()
}

/// The numpy broadcast of two shapes that are known to broadcast.
fn broadcast(a: &[usize], b: &[usize]) -> Vec<usize> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let pick = |s: &[usize]| (i + s.len()).checked_sub(r).map_or(1, |j| s[j]);
            pick(a).max(pick(b))
        })
        .collect()
}
