//! Folding rules: an inference BatchNormalization is a per-channel affine
//! map `y = (x - mean) * s + b` with `s = scale / sqrt(var + eps)`, so it
//! folds into the weights and bias of a preceding Conv (channel = output
//! channel) or Gemm/MatMul (channel = output feature). And a 2-D MatMul
//! followed by a bias Add is one Gemm.

use super::cx::{
    attr_float, attr_int, broadcasts_into, float_data, node_from, Action, Cx, Rewrite, Use,
};
use kiln_ir::{Attr, ElemType, Node, TensorData};

/// A BatchNormalization in inference mode over constant statistics:
/// `(s, t)` with `y = x*s + t` per channel.
struct Affine {
    s: Vec<f64>,
    t: Vec<f64>,
}

fn bn_affine(cx: &Cx, bn: &Node) -> Option<Affine> {
    if bn.op != "BatchNormalization" || attr_int(bn, "training_mode", 0) != 0 {
        return None;
    }
    let get = |k: usize| cx.const_f64(bn.input(k)?);
    let (scale, bias, mean, var) = (get(1)?, get(2)?, get(3)?, get(4)?);
    let c = scale.len();
    if [bias.len(), mean.len(), var.len()].iter().any(|&l| l != c) {
        return None;
    }
    let eps = attr_float(bn, "epsilon", 1e-5) as f64;
    let s: Vec<f64> = (0..c).map(|k| scale[k] / (var[k] + eps).sqrt()).collect();
    let t = (0..c).map(|k| bias[k] - mean[k] * s[k]).collect();
    s.iter().all(|v| v.is_finite()).then_some(Affine { s, t })
}

fn float_elem(e: ElemType) -> bool {
    matches!(
        e,
        ElemType::F32 | ElemType::F64 | ElemType::F16 | ElemType::BF16
    )
}

/// `BatchNormalization(Conv(x, W, B?))`, W, B and the statistics constant,
/// the Conv result used only by the BN → `Conv(x, W*s, (B-mean)*s + bias)`.
pub(super) fn bn_into_conv(cx: &mut Cx, i: usize) -> Option<Rewrite> {
    let bn = cx.node(i);
    let y = bn.input(0)?;
    let p = cx.producer(y, "Conv")?;
    if !cx.single_use_by(y, i) {
        return None;
    }
    let aff = bn_affine(cx, bn)?;
    let conv = cx.node(p);
    let w = conv.input(1)?;
    let wd = cx.m.constant(w)?;
    let elem = wd.elem;
    if !float_elem(elem) || wd.shape.first().copied() != Some(aff.s.len() as u64) {
        return None;
    }
    let m_out = aff.s.len();
    let b0 = match conv.input(2) {
        Some(b) => cx.const_f64(b)?,
        None => vec![0.0; m_out],
    };
    if b0.len() != m_out {
        return None;
    }
    let bv: Vec<f64> = (0..m_out).map(|k| b0[k] * aff.s[k] + aff.t[k]).collect();
    let (x, outs) = (conv.input(0)?, vec![*bn.outputs.first()?]);
    let mut new = conv.clone();
    let bias = float_data(elem, vec![m_out as u64], &bv)?;
    let bc = cx.new_const(&format!("{}_bias", cx.name(outs[0])), bias);
    // The Conv result is used by the BN alone and the Conv has no regions,
    // so the rewrite returned below always applies: a weight this Conv
    // alone uses, whose bytes nothing else shares, is scaled where it lies
    // instead of copied.
    let wc = if cx.uses(w) == [Use::Node(p)] && cx.r.constants.contains(&w) {
        scale_rows_in_place(cx.m, w, &aff.s).then_some(w)
    } else {
        None
    };
    let wc = match wc {
        Some(w) => w,
        None => {
            let scaled = scale_rows(cx.m.constant(w)?, &aff.s)?;
            cx.new_const(&format!("{}_bn", cx.name(w)), scaled)
        }
    };
    new.inputs = vec![Some(x), Some(wc), Some(bc)];
    new.outputs = outs;
    Some(Rewrite {
        pattern: vec![p, i],
        action: Action::Node(new),
    })
}

/// Scale f32 constant `w`'s k-th slice along the first axis by `s[k]` in
/// place (the same arithmetic as [`scale_rows`]); false, touching nothing,
/// when `w` is not f32 or its bytes are shared.
fn scale_rows_in_place(m: &mut kiln_ir::Module, w: kiln_ir::ValueId, s: &[f64]) -> bool {
    let Some(data) = m.constant_mut(w).and_then(std::sync::Arc::get_mut) else {
        return false;
    };
    let per = usize::try_from(data.numel()).unwrap_or(0) / s.len().max(1);
    if data.elem != ElemType::F32 || per == 0 {
        return false;
    }
    let kiln_ir::tensor::Payload::Bytes(bytes) = &mut data.payload else {
        return false;
    };
    let Some(b) = std::sync::Arc::get_mut(bytes) else {
        return false;
    };
    for (row, &sk) in b.chunks_exact_mut(per * 4).zip(s) {
        for o in row.chunks_exact_mut(4) {
            let x = f32::from_le_bytes([o[0], o[1], o[2], o[3]]) as f64;
            o.copy_from_slice(&((x * sk) as f32).to_le_bytes());
        }
    }
    true
}

/// `w` with its k-th slice along the first axis scaled by `s[k]`, computed
/// in f64 and rounded once to `w`'s type. f32 (every exported CNN) goes
/// straight from bytes to bytes: ResNet-50 folds 100 MB of weights here.
fn scale_rows(w: &TensorData, s: &[f64]) -> Option<TensorData> {
    let n = usize::try_from(w.numel()).ok()?;
    let per = n / s.len().max(1);
    if w.elem == ElemType::F32 {
        let src = w.bytes()?;
        let out = kiln_ir::tensor::build_bytes(src.len(), |b| {
            let rows = b.chunks_exact_mut(per * 4).zip(src.chunks_exact(per * 4));
            for ((o, i), &sk) in rows.zip(s) {
                for (o, i) in o.chunks_exact_mut(4).zip(i.chunks_exact(4)) {
                    let x = f32::from_le_bytes([i[0], i[1], i[2], i[3]]) as f64;
                    o.copy_from_slice(&((x * sk) as f32).to_le_bytes());
                }
            }
        });
        return TensorData::from_bytes(w.elem, w.shape.clone(), out).ok();
    }
    let mut v = w.to_f64_vec()?;
    for (k, chunk) in v.chunks_mut(per.max(1)).enumerate() {
        chunk.iter_mut().for_each(|x| *x *= s[k]);
    }
    float_data(w.elem, w.shape.clone(), &v)
}

/// `BatchNormalization` over a 2-D `[N, M]` result of `Gemm(A, B, C?)` or
/// `MatMul(A, B)` with constant `B` (and `C`), used only by the BN →
/// `Gemm(A, B', C')` with `B'` scaled per output column and
/// `C' = (beta*C - mean)*s + bias`, `beta = 1`.
pub(super) fn bn_into_gemm(cx: &mut Cx, i: usize) -> Option<Rewrite> {
    let bn = cx.node(i);
    let y = bn.input(0)?;
    let p = cx
        .producer(y, "Gemm")
        .or_else(|| cx.producer(y, "MatMul"))?;
    if !cx.single_use_by(y, i) || cx.rank(y)? != 2 {
        return None;
    }
    let aff = bn_affine(cx, bn)?;
    let mm = cx.node(p);
    let a = mm.input(0)?;
    if cx.rank(a)? != 2 {
        return None;
    }
    let b = mm.input(1)?;
    let bd = cx.m.constant(b)?;
    let elem = bd.elem;
    if !float_elem(elem) || bd.shape.len() != 2 {
        return None;
    }
    let is_gemm = mm.op == "Gemm";
    let trans_b = is_gemm && attr_int(mm, "transB", 0) != 0;
    let beta = if is_gemm {
        attr_float(mm, "beta", 1.0) as f64
    } else {
        1.0
    };
    let (rows, cols) = (bd.shape[0] as usize, bd.shape[1] as usize);
    let m_out = if trans_b { rows } else { cols };
    if m_out != aff.s.len() {
        return None;
    }
    let mut bv = cx.const_f64(b)?;
    for r in 0..rows {
        for c in 0..cols {
            bv[r * cols + c] *= aff.s[if trans_b { r } else { c }];
        }
    }
    // C must be per-column: absent, one element, [M] or [1, M].
    let c0: Vec<f64> = match is_gemm.then(|| mm.input(2)).flatten() {
        None => vec![0.0; m_out],
        Some(c) => {
            let cd = cx.m.constant(c)?;
            let v = cx.const_f64(c)?;
            let numel = v.len();
            let rowlike = cd.shape.iter().rev().skip(1).all(|&d| d == 1);
            if numel == 1 {
                vec![v[0]; m_out]
            } else if numel == m_out && rowlike {
                v
            } else {
                return None;
            }
        }
    };
    let cv: Vec<f64> = (0..m_out)
        .map(|k| beta * c0[k] * aff.s[k] + aff.t[k])
        .collect();
    let mut new = node_from(mm, "Gemm", vec![], vec![*bn.outputs.first()?]);
    if is_gemm {
        new.attrs = mm.attrs.clone();
    }
    new.attrs.insert("beta".into(), Attr::Float(1.0));
    let bshape = bd.shape.clone();
    let (bh, ch) = (
        format!("{}_bn", cx.name(b)),
        format!("{}_bias", cx.name(new.outputs[0])),
    );
    let bc = cx.new_const(&bh, float_data(elem, bshape, &bv)?);
    let cc = cx.new_const(&ch, float_data(elem, vec![m_out as u64], &cv)?);
    new.inputs = vec![Some(a), Some(bc), Some(cc)];
    Some(Rewrite {
        pattern: vec![p, i],
        action: Action::Node(new),
    })
}

/// `Add(MatMul(A, B), c)` (either order) with 2-D `A`, `B` and a constant
/// `c` that broadcasts into the `[N, M]` result, MatMul used only by the Add
/// → `Gemm(A, B, c)`. N-D MatMuls are left alone.
pub(super) fn matmul_add_to_gemm(cx: &mut Cx, i: usize) -> Option<Rewrite> {
    let n = cx.node(i);
    if n.op != "Add" {
        return None;
    }
    let (l, r) = (n.input(0)?, n.input(1)?);
    let (y, c, p) = match (cx.producer(l, "MatMul"), cx.producer(r, "MatMul")) {
        (Some(p), _) if cx.m.constant(r).is_some() => (l, r, p),
        (_, Some(p)) if cx.m.constant(l).is_some() => (r, l, p),
        _ => return None,
    };
    if !cx.single_use_by(y, i) || !float_elem(cx.elem(y)?) {
        return None;
    }
    let mm = cx.node(p);
    let (a, b) = (mm.input(0)?, mm.input(1)?);
    if cx.rank(a)? != 2 || cx.rank(b)? != 2 || !broadcasts_into(cx, c, y) {
        return None;
    }
    let gemm = node_from(
        mm,
        "Gemm",
        vec![Some(a), Some(b), Some(c)],
        vec![*n.outputs.first()?],
    );
    Some(Rewrite {
        pattern: vec![p, i],
        action: Action::Node(gemm),
    })
}
