//! Rules of the neural-network ops: convolutions (Conv, DeformConv,
//! ConvInteger, QLinearConv, ConvTranspose) and pooling (window
//! arithmetic from `geometry.rs`), MaxUnpool, BatchNormalization and
//! LayerNormalization, RNN/GRU/LSTM, the losses, and the detection ops
//! (RoiAlign, MaxRoiPool, NonMaxSuppression).

use super::common::{
    axis_of, bad_attr, dtype_attr, elem, err, fill, k, known_u64, shape_of, shape_operand, t,
    t_opt, tensor, ty, unknown_dims, unranked, R,
};
use crate::attr::Attr;
use crate::ops::dims::{add_const, mul_const};
use crate::ops::geometry::{self, AutoPad};
use crate::ops::schema::{InferCtx, InferError};
use crate::types::{Dim, ElemType, Type};

struct Window {
    kernel: Vec<u64>,
    strides: Vec<u64>,
    dilations: Vec<u64>,
    pads: Vec<i64>,
    auto_pad: AutoPad,
}

impl Window {
    fn axis(&self, i: usize) -> geometry::Window {
        geometry::Window::new(self.kernel[i], self.strides[i], self.dilations[i])
    }
}

fn ints_u64(c: &InferCtx, name: &str, n: usize, default: u64) -> Result<Vec<u64>, InferError> {
    match c.attr_ints(name) {
        None => Ok(vec![default; n]),
        Some(v) if v.len() == n => v
            .iter()
            .map(|&x| {
                u64::try_from(x)
                    .ok()
                    .filter(|&x| x > 0)
                    .ok_or_else(|| bad_attr(name, "values must be positive"))
            })
            .collect(),
        Some(v) => Err(bad_attr(
            name,
            format!("{} values for {n} spatial dims", v.len()),
        )),
    }
}

fn window(
    c: &InferCtx,
    spatial: usize,
    kernel: Option<Vec<u64>>,
) -> Result<Option<Window>, InferError> {
    let kernel = match c.attr_ints("kernel_shape") {
        Some(_) => ints_u64(c, "kernel_shape", spatial, 1)?,
        None => match kernel {
            Some(k) => k,
            None => return Ok(None),
        },
    };
    if kernel.len() != spatial {
        return Err(bad_attr(
            "kernel_shape",
            format!("{} values for {spatial} spatial dims", kernel.len()),
        ));
    }
    if kernel.contains(&0) {
        return Err(bad_attr("kernel_shape", "kernel sizes must be positive"));
    }
    let pads = match c.attr_ints("pads") {
        None => vec![0; 2 * spatial],
        Some(p) if p.len() == 2 * spatial => p.to_vec(),
        Some(p) => {
            return Err(bad_attr(
                "pads",
                format!("{} values for {spatial} spatial dims", p.len()),
            ))
        }
    };
    Ok(Some(Window {
        kernel,
        strides: ints_u64(c, "strides", spatial, 1)?,
        dilations: ints_u64(c, "dilations", spatial, 1)?,
        pads,
        auto_pad: AutoPad::parse(c.attr_str("auto_pad")).map_err(|e| bad_attr("auto_pad", e))?,
    }))
}

/// Output dim `i` of a forward window over input dim `d` (`geometry.rs`).
fn window_out(w: &Window, i: usize, d: &Dim, ceil_mode: bool) -> Result<Dim, InferError> {
    let n = w.pads.len() / 2;
    geometry::output_dim(
        w.auto_pad,
        d,
        w.axis(i),
        [w.pads[i], w.pads[i + n]],
        ceil_mode,
    )
    .map_err(err)
}

fn conv_shape(
    c: &InferCtx,
    x: usize,
    wi: usize,
    ceil: bool,
) -> Result<Option<Vec<Dim>>, InferError> {
    let (Some(xs), Some(ws)) = (shape_of(c, x)?, shape_of(c, wi)?) else {
        return Ok(None);
    };
    if xs.len() < 3 || ws.len() != xs.len() {
        return Err(err("conv input and weight must have the same rank >= 3"));
    }
    let spatial = xs.len() - 2;
    let kernel: Option<Vec<u64>> = ws[2..].iter().map(|d| d.as_known()).collect();
    let group = u64::try_from(c.attr_int("group", 1))
        .ok()
        .filter(|&g| g > 0)
        .ok_or_else(|| bad_attr("group", "must be positive"))?;
    if let (Dim::Known(ci), Dim::Known(wc)) = (&xs[1], &ws[1]) {
        if wc.checked_mul(group) != Some(*ci) {
            return Err(err(format!(
                "input channels {ci} != weight channels {wc} * group {group}"
            )));
        }
    }
    let mut out = vec![xs[0].clone(), ws[0].clone()];
    match window(c, spatial, kernel)? {
        Some(w) => {
            for i in 0..spatial {
                out.push(window_out(&w, i, &xs[2 + i], ceil)?);
            }
        }
        None => out.extend(unknown_dims(spatial)),
    }
    Ok(Some(out))
}

pub(super) fn conv(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    Ok(vec![t_opt(e, conv_shape(c, 0, 1, false)?)])
}

/// `kiln.FusedConv`: Conv's result; the residual Z, when given, has the
/// result's element type and shape (it is added element by element, no
/// broadcast), and the activation is one the op knows.
pub(super) fn fused_conv(c: &InferCtx) -> R {
    let out = conv(c)?;
    if let (Some(z), Some(Type::Tensor(y))) = (c.input(3), out.first()) {
        let Type::Tensor(zt) = z else {
            return Err(err("the residual Z must be a tensor"));
        };
        if zt.elem != y.elem {
            return Err(err(format!(
                "the residual Z is {}, the result {}",
                zt.elem, y.elem
            )));
        }
        if let (Some(zs), Some(ys)) = (&zt.shape, &y.shape) {
            let differ = zs.len() != ys.len()
                || zs
                    .iter()
                    .zip(ys)
                    .any(|(a, b)| matches!((a, b), (Dim::Known(p), Dim::Known(q)) if p != q));
            if differ {
                return Err(err("the residual Z must have the result's shape"));
            }
        }
    }
    if let Some(a) = c.attr_str("activation") {
        if !crate::ops::kiln::FUSED_CONV_ACTIVATIONS.contains(&a) {
            return Err(bad_attr(
                "activation",
                format!("`{a}` is not one of Relu, Clip"),
            ));
        }
    }
    Ok(out)
}

pub(super) fn conv_integer(c: &InferCtx) -> R {
    Ok(vec![t_opt(ElemType::I32, conv_shape(c, 0, 1, false)?)])
}

pub(super) fn qlinear_conv(c: &InferCtx) -> R {
    let e = elem(c, 7)?;
    Ok(vec![t_opt(e, conv_shape(c, 0, 3, false)?)])
}

pub(super) fn conv_transpose(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let (Some(xs), Some(ws)) = (shape_of(c, 0)?, shape_of(c, 1)?) else {
        return Ok(vec![unranked(e)]);
    };
    if xs.len() < 3 || ws.len() != xs.len() {
        return Err(err("conv input and weight must have the same rank >= 3"));
    }
    let sp = xs.len() - 2;
    let group = u64::try_from(c.attr_int("group", 1))
        .ok()
        .filter(|&g| g > 0)
        .ok_or_else(|| bad_attr("group", "must be positive"))?;
    let mut out = vec![xs[0].clone(), mul_const(&ws[1], group)];
    if let Some(os) = c.attr_ints("output_shape") {
        let os = if os.len() == xs.len() { &os[2..] } else { os };
        if os.len() != sp {
            return Err(bad_attr("output_shape", "wrong length"));
        }
        for &d in os {
            out.push(known_u64(d).ok_or_else(|| bad_attr("output_shape", "negative"))?);
        }
        return Ok(vec![t(e, out)]);
    }
    let kernel: Option<Vec<u64>> = ws[2..].iter().map(|d| d.as_known()).collect();
    let Some(w) = window(c, sp, kernel)? else {
        out.extend(unknown_dims(sp));
        return Ok(vec![t(e, out)]);
    };
    let opad = match c.attr_ints("output_padding") {
        None => vec![0; sp],
        Some(p) if p.len() == sp => p.to_vec(),
        Some(_) => return Err(bad_attr("output_padding", "wrong length")),
    };
    let pads = c.attr_ints("pads").is_some_and(|p| !p.is_empty());
    for i in 0..sp {
        let axis = geometry::Transposed {
            auto_pad: w.auto_pad,
            window: w.axis(i),
            pads: pads.then(|| [w.pads[i], w.pads[i + sp]]),
            output_padding: u64::try_from(opad[i])
                .map_err(|_| bad_attr("output_padding", "negative"))?,
            output_shape: None,
        };
        out.push(axis.output_dim(&xs[2 + i]));
    }
    Ok(vec![t(e, out)])
}

fn pool_shape(c: &InferCtx) -> Result<Option<Vec<Dim>>, InferError> {
    let Some(xs) = shape_of(c, 0)? else {
        return Ok(None);
    };
    if xs.len() < 3 {
        return Err(err("pooling input must have rank >= 3"));
    }
    let sp = xs.len() - 2;
    let w = window(c, sp, None)?.ok_or_else(|| bad_attr("kernel_shape", "required"))?;
    let ceil = c.attr_int("ceil_mode", 0) != 0;
    let mut out = xs[..2].to_vec();
    for i in 0..sp {
        out.push(window_out(&w, i, &xs[2 + i], ceil)?);
    }
    Ok(Some(out))
}

pub(super) fn pool(c: &InferCtx) -> R {
    Ok(vec![t_opt(elem(c, 0)?, pool_shape(c)?)])
}

pub(super) fn max_pool(c: &InferCtx) -> R {
    let s = pool_shape(c)?;
    Ok(fill(
        vec![t_opt(elem(c, 0)?, s.clone()), t_opt(ElemType::I64, s)],
        c.num_outputs,
    ))
}

pub(super) fn global_pool(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let s = shape_of(c, 0)?.map(|s| {
        s.iter()
            .enumerate()
            .map(|(i, d)| if i < 2 { d.clone() } else { k(1) })
            .collect()
    });
    Ok(vec![t_opt(e, s)])
}

pub(super) fn max_unpool(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    if c.has_input(2) {
        return Ok(vec![t_opt(e, shape_operand(c, 2)?)]);
    }
    let Some(xs) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e)]);
    };
    if xs.len() < 3 {
        return Err(err("MaxUnpool input must have rank >= 3"));
    }
    let sp = xs.len() - 2;
    let w = window(c, sp, None)?.ok_or_else(|| bad_attr("kernel_shape", "required"))?;
    let mut out = xs[..2].to_vec();
    for i in 0..sp {
        let pads = w.pads[i].saturating_add(w.pads[i + sp]);
        out.push(add_const(
            &mul_const(&add_const(&xs[2 + i], -1), w.strides[i]),
            (w.kernel[i] as i64).saturating_sub(pads),
        ));
    }
    Ok(vec![t(e, out)])
}

pub(super) fn batch_norm(c: &InferCtx) -> R {
    let x = ty(c, 0)?.clone();
    let stat = |i: usize| -> Result<Type, InferError> { Ok(ty(c, i)?.clone()) };
    let mut v = vec![x];
    if c.num_outputs > 1 {
        v.push(stat(3)?);
        v.push(stat(4)?);
    }
    Ok(fill(v, c.num_outputs))
}

pub(super) fn layer_norm(c: &InferCtx) -> R {
    let x = tensor(c, 0)?;
    let stash = dtype_attr(c, "stash_type")?.unwrap_or(ElemType::F32);
    let stats = match &x.shape {
        Some(s) => {
            let a = axis_of(c, "axis", -1, s.len())?;
            Some(
                s.iter()
                    .enumerate()
                    .map(|(i, d)| if i < a { d.clone() } else { k(1) })
                    .collect(),
            )
        }
        None => None,
    };
    Ok(fill(
        vec![
            Type::Tensor(x.clone()),
            t_opt(stash, stats.clone()),
            t_opt(stash, stats),
        ],
        c.num_outputs,
    ))
}

pub(super) fn rnn(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let xs = shape_of(c, 0)?;
    let ws = shape_of(c, 1)?;
    let layout = c.attr_int("layout", 0);
    let dirs = match c.attr_str("direction") {
        Some("bidirectional") => k(2),
        Some("forward") | Some("reverse") | None => k(1),
        Some(d) => return Err(bad_attr("direction", format!("unknown `{d}`"))),
    };
    let hidden = match c.attr("hidden_size").and_then(Attr::as_int) {
        Some(h) => known_u64(h).ok_or_else(|| bad_attr("hidden_size", "negative"))?,
        None => shape_of(c, 2)?
            .and_then(|r| r.get(2).cloned())
            .unwrap_or(Dim::Unknown),
    };
    let _ = ws;
    let (seq, batch) = match xs {
        Some(s) if s.len() == 3 => {
            if layout == 0 {
                (s[0].clone(), s[1].clone())
            } else {
                (s[1].clone(), s[0].clone())
            }
        }
        Some(_) => return Err(err("RNN input must have rank 3")),
        None => (Dim::Unknown, Dim::Unknown),
    };
    let (y, h) = if layout == 0 {
        (
            vec![seq, dirs.clone(), batch.clone(), hidden.clone()],
            vec![dirs, batch, hidden],
        )
    } else {
        (
            vec![batch.clone(), seq, dirs.clone(), hidden.clone()],
            vec![batch, dirs, hidden],
        )
    };
    Ok(fill(vec![t(e, y), t(e, h.clone()), t(e, h)], c.num_outputs))
}

pub(super) fn roi_align(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let ch = shape_of(c, 0)?
        .and_then(|s| s.get(1).cloned())
        .unwrap_or(Dim::Unknown);
    let n = shape_of(c, 1)?
        .and_then(|s| s.first().cloned())
        .unwrap_or(Dim::Unknown);
    let oh = known_u64(c.attr_int("output_height", 1)).unwrap_or(Dim::Unknown);
    let ow = known_u64(c.attr_int("output_width", 1)).unwrap_or(Dim::Unknown);
    Ok(vec![t(e, vec![n, ch, oh, ow])])
}

pub(super) fn nms(_c: &InferCtx) -> R {
    Ok(vec![t(ElemType::I64, vec![Dim::Unknown, k(3)])])
}

fn loss_shape(c: &InferCtx, target: usize) -> Result<Option<Vec<Dim>>, InferError> {
    match c.attr_str("reduction").unwrap_or("mean") {
        "none" => Ok(shape_of(c, target)?.map(|s| s.to_vec())),
        "mean" | "sum" => Ok(Some(vec![])),
        r => Err(bad_attr("reduction", format!("unknown `{r}`"))),
    }
}

pub(super) fn nll_loss(c: &InferCtx) -> R {
    Ok(vec![t_opt(elem(c, 0)?, loss_shape(c, 1)?)])
}

pub(super) fn sce_loss(c: &InferCtx) -> R {
    let x = ty(c, 0)?.clone();
    Ok(fill(
        vec![t_opt(elem(c, 0)?, loss_shape(c, 1)?), x],
        c.num_outputs,
    ))
}

pub(super) fn max_roi_pool(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let ch = shape_of(c, 0)?
        .and_then(|s| s.get(1).cloned())
        .unwrap_or(Dim::Unknown);
    let n = shape_of(c, 1)?
        .and_then(|s| s.first().cloned())
        .unwrap_or(Dim::Unknown);
    let ps = c
        .attr_ints("pooled_shape")
        .ok_or_else(|| bad_attr("pooled_shape", "required"))?;
    let mut out = vec![n, ch];
    for &p in ps {
        out.push(known_u64(p).ok_or_else(|| bad_attr("pooled_shape", "negative"))?);
    }
    Ok(vec![t(e, out)])
}

/// RMSNormalization: the result is X's type; `axis` must be in range.
pub(super) fn rms_norm(c: &InferCtx) -> R {
    let x = tensor(c, 0)?;
    if let Some(s) = &x.shape {
        axis_of(c, "axis", -1, s.len())?;
    }
    if !x.elem.is_float() {
        return Err(err("RMSNormalization input must be a float tensor"));
    }
    Ok(vec![Type::Tensor(x.clone())])
}

/// Attention (opsets 23-24). 4-D operands are `[batch, heads, seq, head]`;
/// 3-D ones `[batch, seq, heads * head]`, with the head counts in
/// `q_num_heads` and `kv_num_heads`. Results: Y in Q's layout with V's
/// head size, the key/value caches with the new tokens appended
/// (`[batch, kv_heads, past + kv_seq, head]`), and the attention scores
/// `[batch, q_heads, q_seq, past + kv_seq]`.
pub(super) fn attention(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    if !e.is_float() {
        return Err(err("Attention operands must be float tensors"));
    }
    for i in [1, 2] {
        if elem(c, i)? != e {
            return Err(InferError::BadInput {
                index: i,
                msg: format!("{} is not {}", elem(c, i)?.name(), e.name()),
            });
        }
    }
    let (q, kk, v) = match (shape_of(c, 0)?, shape_of(c, 1)?, shape_of(c, 2)?) {
        (Some(q), Some(k), Some(v)) => (q, k, v),
        _ => return Ok(fill(vec![unranked(e); 4], c.num_outputs)),
    };
    let rank = q.len();
    if !(rank == 3 || rank == 4) || kk.len() != rank || v.len() != rank {
        return Err(err(format!(
            "Attention operands must all be 3-D or all 4-D, got ranks {}, {}, {}",
            q.len(),
            kk.len(),
            v.len()
        )));
    }
    let heads_attr = |name: &str| -> Result<Option<u64>, InferError> {
        match c.attr(name).and_then(Attr::as_int) {
            None => Ok(None),
            Some(h) if h > 0 => Ok(Some(h as u64)),
            Some(h) => Err(bad_attr(name, format!("{h} heads"))),
        }
    };
    let (qh, kvh) = (heads_attr("q_num_heads")?, heads_attr("kv_num_heads")?);
    // Per operand: batch, heads, sequence, head size.
    let split = |s: &[Dim], heads: Option<u64>, what: &str| -> Result<[Dim; 4], InferError> {
        if rank == 4 {
            return Ok([s[0].clone(), s[1].clone(), s[2].clone(), s[3].clone()]);
        }
        let h = heads.ok_or_else(|| {
            err(format!(
                "3-D Attention needs q_num_heads and kv_num_heads ({what})"
            ))
        })?;
        if let Dim::Known(n) = s[2] {
            if n % h != 0 {
                return Err(err(format!(
                    "{what} hidden size {n} is not a multiple of {h} heads"
                )));
            }
        }
        Ok([s[0].clone(), k(h), s[1].clone(), s[2].div_floor(h)])
    };
    let [b, q_heads, q_seq, _] = split(q, qh, "Q")?;
    let [_, kv_heads, kv_seq, k_head] = split(kk, kvh, "K")?;
    let [_, _, _, v_head] = split(v, kvh, "V")?;
    if let (Dim::Known(a), Dim::Known(g)) = (&q_heads, &kv_heads) {
        if *g == 0 || a % g != 0 {
            return Err(err(format!(
                "{a} query heads cannot share {g} key/value heads"
            )));
        }
    }
    let past = shape_of(c, 4)
        .ok()
        .flatten()
        .and_then(|p| p.get(2).cloned());
    let total = match (c.input(4), past) {
        (None, _) => kv_seq,
        (Some(_), Some(p)) => p.add(&kv_seq),
        (Some(_), None) => Dim::Unknown,
    };
    let y = if rank == 4 {
        vec![b.clone(), q_heads.clone(), q_seq.clone(), v_head.clone()]
    } else {
        vec![b.clone(), q_seq.clone(), q_heads.mul(&v_head)]
    };
    Ok(fill(
        vec![
            t(e, y),
            t(e, vec![b.clone(), kv_heads.clone(), total.clone(), k_head]),
            t(e, vec![b.clone(), kv_heads, total.clone(), v_head]),
            t(e, vec![b, q_heads, q_seq, total]),
        ],
        c.num_outputs,
    ))
}
