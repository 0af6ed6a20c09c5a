//! Attention (opsets 23-24) and RotaryEmbedding (opset 23), as the ONNX
//! spec and its reference implementation define them: the oracle that the
//! `expand-composites` pass's decompositions are checked against. Both
//! compute in f64 and round once to the operands' type.

use super::common::{need_float, out_f64};
use crate::interp::kernels::ctx::{bail, opt_tensor, tensor, Ctx, KResult, KernelFn};
use crate::interp::kernels::shape::broadcast_indices;
use crate::tensor::Tensor;
use crate::value::Value;

pub fn lookup(op: &str) -> Option<KernelFn> {
    Some(match op {
        "Attention" => attention,
        "RotaryEmbedding" => rotary_embedding,
        _ => return None,
    })
}

/// A `[batch, heads, seq, head]` operand in f64.
struct Heads {
    v: Vec<f64>,
    b: usize,
    h: usize,
    s: usize,
    d: usize,
}

impl Heads {
    fn at(&self, b: usize, h: usize, s: usize) -> &[f64] {
        let o = ((b * self.h + h) * self.s + s) * self.d;
        &self.v[o..o + self.d]
    }

    /// A 4-D operand as it is; a 3-D `[batch, seq, heads * head]` one
    /// split into `heads`.
    fn of(t: &Tensor, heads: Option<i64>, what: &str) -> KResult<Heads> {
        let v = t.to_f64();
        match t.shape[..] {
            [b, h, s, d] => Ok(Heads { v, b, h, s, d }),
            [b, s, hidden] => {
                let h = match heads {
                    Some(h) if h > 0 && hidden % h as usize == 0 => h as usize,
                    _ => bail!(
                        "3-D {what} of hidden size {hidden} needs a head count that divides it"
                    ),
                };
                let d = hidden / h;
                let mut out = vec![0.0; v.len()];
                for bi in 0..b {
                    for si in 0..s {
                        for hi in 0..h {
                            let from = (bi * s + si) * hidden + hi * d;
                            let to = ((bi * h + hi) * s + si) * d;
                            out[to..to + d].copy_from_slice(&v[from..from + d]);
                        }
                    }
                }
                Ok(Heads { v: out, b, h, s, d })
            }
            _ => bail!("{what} must be 3-D or 4-D, got {:?}", t.shape),
        }
    }

    /// `self` with `new` appended along the sequence.
    fn append(self, new: Heads, what: &str) -> KResult<Heads> {
        if (self.b, self.h, self.d) != (new.b, new.h, new.d) {
            bail!("past {what} does not match the new one's batch, heads or head size");
        }
        let s = self.s + new.s;
        let mut v = Vec::with_capacity(self.v.len() + new.v.len());
        for bh in 0..self.b * self.h {
            v.extend_from_slice(&self.v[bh * self.s * self.d..][..self.s * self.d]);
            v.extend_from_slice(&new.v[bh * new.s * new.d..][..new.s * new.d]);
        }
        Ok(Heads { v, s, ..self })
    }

    fn into_tensor(self, t: &Tensor) -> KResult<Value> {
        out_f64(t.elem(), vec![self.b, self.h, self.s, self.d], &self.v)
    }
}

fn attention(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let (qt, kt, vt) = (tensor(inputs, 0)?, tensor(inputs, 1)?, tensor(inputs, 2)?);
    need_float(qt, "Attention Q")?;
    let rank = qt.rank();
    if kt.rank() != rank || vt.rank() != rank {
        bail!("Q, K and V must have one rank");
    }
    let heads = |name: &str| cx.attr(name).and_then(|a| a.as_int());
    let q = Heads::of(qt, heads("q_num_heads"), "Q")?;
    let mut k = Heads::of(kt, heads("kv_num_heads"), "K")?;
    let mut v = Heads::of(vt, heads("kv_num_heads"), "V")?;
    let mask = opt_tensor(inputs, 3)?;
    let past_key = opt_tensor(inputs, 4)?;
    let past_value = opt_tensor(inputs, 5)?;
    let nonpad = opt_tensor(inputs, 6)?.map(Tensor::to_i64);
    let past_len = match (past_key, past_value) {
        (Some(pk), Some(pv)) => {
            let pk = Heads::of(pk, None, "past_key")?;
            let pv = Heads::of(pv, None, "past_value")?;
            let n = pk.s;
            k = pk.append(k, "key")?;
            v = pv.append(v, "value")?;
            Some(n)
        }
        (None, None) => None,
        _ => bail!("past_key and past_value must be given together"),
    };
    let (b, hq, sq, total) = (q.b, q.h, q.s, k.s);
    if k.b != b || v.b != b || v.s != total || k.h != v.h || k.d != q.d {
        bail!("Q, K and V shapes do not fit together");
    }
    if k.h == 0 || hq % k.h != 0 {
        bail!("{hq} query heads cannot share {} key/value heads", k.h);
    }
    let group = hq / k.h;
    if let Some(np) = &nonpad {
        if past_len.is_some() {
            bail!("nonpad_kv_seqlen cannot be combined with past_key/past_value");
        }
        if np.len() != b {
            bail!("nonpad_kv_seqlen has {} values for batch {b}", np.len());
        }
    }
    let scale = match cx.attr("scale").and_then(|a| a.as_float()) {
        Some(s) => s as f64,
        None => 1.0 / (q.d as f64).sqrt(),
    };
    let softcap = cx.attr_float("softcap", 0.0) as f64;
    let causal = cx.attr_int("is_causal", 0) != 0;
    let mode = cx.attr_int("qk_matmul_output_mode", 0);
    if !(0..=3).contains(&mode) {
        bail!("qk_matmul_output_mode {mode} is not 0-3");
    }

    // The mask broadcast to [b, hq, sq, total]; a shorter last axis is
    // padded with masked positions. Boolean: false masks (-inf).
    let full = [b, hq, sq, total];
    let bias: Option<Vec<f64>> = match mask {
        None => None,
        Some(m) => {
            if m.rank() == 0 || m.rank() > 4 {
                bail!("attn_mask must have rank 1 to 4, got {:?}", m.shape);
            }
            let last = m.shape[m.rank() - 1];
            if last > total {
                bail!("attn_mask's last axis {last} is longer than the keys ({total})");
            }
            let is_bool = m.elem() == kiln_ir::ElemType::Bool;
            let mv = m.to_f64();
            let mut padded_shape = m.shape.clone();
            if let Some(l) = padded_shape.last_mut() {
                *l = total;
            }
            let lead = 4 - m.rank();
            for (i, &d) in padded_shape.iter().enumerate() {
                if d != 1 && d != full[lead + i] {
                    bail!(
                        "attn_mask of shape {:?} does not broadcast to {full:?}",
                        m.shape
                    );
                }
            }
            let idx = broadcast_indices(&padded_shape, &full);
            Some(
                idx.iter()
                    .map(|&i| {
                        let (row, j) = (i / total, i % total);
                        if j >= last {
                            f64::NEG_INFINITY
                        } else {
                            let x = mv[row * last + j];
                            if is_bool {
                                if x != 0.0 {
                                    0.0
                                } else {
                                    f64::NEG_INFINITY
                                }
                            } else {
                                x
                            }
                        }
                    })
                    .collect(),
            )
        }
    };
    let allowed = |bi: usize, i: usize, j: usize| -> bool {
        let mut ok = true;
        if causal {
            let offset = match (&nonpad, past_len) {
                (Some(np), None) => np[bi] - sq as i64,
                (_, Some(p)) => p as i64,
                (None, None) => 0,
            };
            ok &= j as i64 <= i as i64 + offset;
        }
        if let Some(np) = &nonpad {
            ok &= (j as i64) < np[bi];
        }
        ok
    };

    let (dv, hidden_out) = (v.d, hq * v.d);
    let mut y = vec![0.0; b * hq * sq * dv];
    let mut qk_out = vec![0.0; b * hq * sq * total];
    let mut row = vec![0.0; total];
    let mut raw = vec![0.0; total];
    for bi in 0..b {
        for h in 0..hq {
            let kvh = h / group;
            for i in 0..sq {
                let qi = q.at(bi, h, i);
                let base = ((bi * hq + h) * sq + i) * total;
                let mut any = false;
                for j in 0..total {
                    let kj = k.at(bi, kvh, j);
                    let dot: f64 = qi.iter().zip(kj).map(|(a, c)| a * c).sum();
                    raw[j] = dot * scale;
                    let capped = if softcap > 0.0 {
                        softcap * (raw[j] / softcap).tanh()
                    } else {
                        raw[j]
                    };
                    let mut bj = bias.as_ref().map_or(0.0, |m| m[base + j]);
                    if !allowed(bi, i, j) {
                        bj = f64::NEG_INFINITY;
                    }
                    any |= bj != f64::NEG_INFINITY;
                    row[j] = capped + bj;
                    qk_out[base + j] = match mode {
                        0 => raw[j],
                        1 => capped,
                        _ => row[j],
                    };
                }
                // Softmax; a row with every key masked is all zeros.
                if any {
                    let mx = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let mut sum = 0.0;
                    for r in row.iter_mut() {
                        *r = (*r - mx).exp();
                        sum += *r;
                    }
                    row.iter_mut().for_each(|r| *r /= sum);
                } else {
                    row.iter_mut().for_each(|r| *r = 0.0);
                }
                if mode == 3 {
                    qk_out[base..base + total].copy_from_slice(&row);
                }
                let yo = ((bi * hq + h) * sq + i) * dv;
                for (j, &p) in row.iter().enumerate() {
                    if p != 0.0 {
                        for (acc, x) in y[yo..yo + dv].iter_mut().zip(v.at(bi, kvh, j)) {
                            *acc += p * x;
                        }
                    }
                }
            }
        }
    }
    let y = if rank == 3 {
        // Back to [batch, seq, heads * head].
        let mut out = vec![0.0; y.len()];
        for bi in 0..b {
            for h in 0..hq {
                for i in 0..sq {
                    let from = ((bi * hq + h) * sq + i) * dv;
                    let to = (bi * sq + i) * hidden_out + h * dv;
                    out[to..to + dv].copy_from_slice(&y[from..from + dv]);
                }
            }
        }
        out_f64(qt.elem(), vec![b, sq, hidden_out], &out)?
    } else {
        out_f64(qt.elem(), vec![b, hq, sq, dv], &y)?
    };
    let mut res = vec![y];
    let outs = cx.node.outputs.len();
    if outs > 1 {
        res.push(k.into_tensor(kt)?);
    }
    if outs > 2 {
        res.push(v.into_tensor(vt)?);
    }
    if outs > 3 {
        res.push(out_f64(qt.elem(), full.to_vec(), &qk_out)?);
    }
    Ok(res)
}

/// RotaryEmbedding: in each head, feature pairs (x1, x2), the two halves
/// of the first `rotary_embedding_dim` features or, `interleaved`, even
/// and odd ones, become (x1·cos - x2·sin, x1·sin + x2·cos) with cos/sin
/// read at the token's position (`cos_cache[position_ids[b, s]]`, or
/// `cos_cache[b, s]` without position ids). The other features pass.
fn rotary_embedding(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let xt = tensor(inputs, 0)?;
    need_float(xt, "RotaryEmbedding input")?;
    let (cos_t, sin_t) = (tensor(inputs, 1)?, tensor(inputs, 2)?);
    let pos = opt_tensor(inputs, 3)?.map(|p| (p.to_i64(), p.shape.clone()));
    let interleaved = cx.attr_int("interleaved", 0) != 0;
    let x = xt.to_f64();
    // Element (b, s, h, f) of X is at b*sb + s*ss + h*sh + f.
    let (b, s, h, d, sb, ss, sh) = match xt.shape[..] {
        [b, h, s, d] => (b, s, h, d, h * s * d, d, s * d),
        [b, s, hidden] => {
            let h = cx.attr_int("num_heads", 0);
            if h <= 0 || hidden % h as usize != 0 {
                bail!("3-D RotaryEmbedding input needs num_heads dividing {hidden}");
            }
            let h = h as usize;
            let d = hidden / h;
            (b, s, h, d, s * hidden, hidden, d)
        }
        _ => bail!(
            "RotaryEmbedding input must be 3-D or 4-D, got {:?}",
            xt.shape
        ),
    };
    let rot = match cx.attr_int("rotary_embedding_dim", 0) {
        0 => d,
        r if r > 0 && r as usize <= d && r % 2 == 0 => r as usize,
        r => bail!("rotary_embedding_dim {r} does not fit head size {d}"),
    };
    let half = rot / 2;
    if cos_t.shape.last() != Some(&half) || sin_t.shape != cos_t.shape {
        bail!(
            "cos/sin caches of shapes {:?}, {:?} need a last axis of {half}",
            cos_t.shape,
            sin_t.shape
        );
    }
    let (cos, sin) = (cos_t.to_f64(), sin_t.to_f64());
    // The cache row of token (b, s).
    let row = |bi: usize, si: usize| -> KResult<usize> {
        match &pos {
            Some((p, shape)) => {
                if shape[..] != [b, s] {
                    bail!("position_ids of shape {shape:?} is not [{b}, {s}]");
                }
                let r = p[bi * s + si];
                let max = cos_t.shape[0];
                if cos_t.rank() != 2 || r < 0 || r as usize >= max {
                    bail!("position {r} is outside the {max}-row cos/sin caches");
                }
                Ok(r as usize)
            }
            None => {
                if cos_t.shape[..] != [b, s, half] {
                    bail!("without position_ids the caches must be [{b}, {s}, {half}]");
                }
                Ok(bi * s + si)
            }
        }
    };
    let mut y = x.clone();
    for bi in 0..b {
        for si in 0..s {
            let r = row(bi, si)? * half;
            for hi in 0..h {
                let o = bi * sb + si * ss + hi * sh;
                for i in 0..half {
                    let (i1, i2) = if interleaved {
                        (o + 2 * i, o + 2 * i + 1)
                    } else {
                        (o + i, o + half + i)
                    };
                    let (c, sn) = (cos[r + i], sin[r + i]);
                    y[i1] = x[i1] * c - x[i2] * sn;
                    y[i2] = x[i1] * sn + x[i2] * c;
                }
            }
        }
    }
    Ok(vec![out_f64(xt.elem(), xt.shape.clone(), &y)?])
}
