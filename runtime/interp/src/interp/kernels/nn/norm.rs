//! Normalizations: BatchNormalization (inference and training outputs),
//! InstanceNormalization, GroupNormalization (per-channel scale/bias),
//! LayerNormalization (with Mean/InvStdDev results), RMSNormalization, LRN,
//! LpNormalization and MeanVarianceNormalization.

use super::common::{need_float, out_elem, out_f64};
use crate::interp::kernels::ctx::{bail, opt_tensor, tensor, Ctx, KResult, KernelFn};
use crate::interp::kernels::shape::{broadcast_indices, broadcast_shape, norm_axis};
use crate::tensor::Tensor;
use crate::value::Value;

pub fn lookup(op: &str) -> Option<KernelFn> {
    Some(match op {
        "BatchNormalization" => batch_norm,
        "InstanceNormalization" => instance_norm,
        "GroupNormalization" => group_norm,
        "LayerNormalization" => layer_norm,
        "RMSNormalization" => rms_norm,
        "LRN" => lrn,
        "LpNormalization" => lp_norm,
        "MeanVarianceNormalization" => mvn,
        _ => return None,
    })
}

/// A per-channel operand of exactly `c` values.
fn per_channel(t: &Tensor, c: usize, what: &str) -> KResult<Vec<f64>> {
    if t.len() != c {
        bail!("{what} has {} values, expected {c}", t.len());
    }
    Ok(t.to_f64())
}

fn nc(x: &Tensor) -> KResult<(usize, usize, usize)> {
    if x.rank() < 2 {
        bail!("expected [N, C, ...] input, got {:?}", x.shape);
    }
    Ok((x.shape[0], x.shape[1], x.shape[2..].iter().product()))
}

fn batch_norm(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    need_float(x, "BatchNormalization input")?;
    let (n, c, sp) = nc(x)?;
    let scale = per_channel(tensor(inputs, 1)?, c, "scale")?;
    let bias = per_channel(tensor(inputs, 2)?, c, "B")?;
    let mean_t = tensor(inputs, 3)?;
    let var_t = tensor(inputs, 4)?;
    let mut mean = per_channel(mean_t, c, "input_mean")?;
    let mut var = per_channel(var_t, c, "input_var")?;
    let eps = cx.attr_float("epsilon", 1e-5) as f64;
    let momentum = cx.attr_float("momentum", 0.9) as f64;
    let training = cx.attr_int("training_mode", 0) != 0;
    let v = x.to_f64();
    let mut extra = Vec::new();
    if training {
        let cnt = (n * sp) as f64;
        let mut bm = vec![0.0; c];
        let mut bv = vec![0.0; c];
        for b in 0..n {
            for ch in 0..c {
                bm[ch] += v[(b * c + ch) * sp..][..sp].iter().sum::<f64>();
            }
        }
        bm.iter_mut().for_each(|m| *m /= cnt);
        for b in 0..n {
            for ch in 0..c {
                bv[ch] += v[(b * c + ch) * sp..][..sp]
                    .iter()
                    .map(|a| (a - bm[ch]).powi(2))
                    .sum::<f64>();
            }
        }
        bv.iter_mut().for_each(|s| *s /= cnt);
        let rm: Vec<f64> = (0..c)
            .map(|i| mean[i] * momentum + bm[i] * (1.0 - momentum))
            .collect();
        let rv: Vec<f64> = (0..c)
            .map(|i| var[i] * momentum + bv[i] * (1.0 - momentum))
            .collect();
        extra.push(out_f64(out_elem(cx, 1, mean_t.elem()), vec![c], &rm)?);
        extra.push(out_f64(out_elem(cx, 2, var_t.elem()), vec![c], &rv)?);
        mean = bm;
        var = bv;
    }
    let mut y = v;
    for (i, a) in y.iter_mut().enumerate() {
        let ch = (i / sp.max(1)) % c;
        *a = scale[ch] * (*a - mean[ch]) / (var[ch] + eps).sqrt() + bias[ch];
    }
    let mut res = vec![out_f64(x.elem(), x.shape.clone(), &y)?];
    res.extend(
        extra
            .into_iter()
            .take(cx.node.outputs.len().saturating_sub(1)),
    );
    Ok(res)
}

/// Normalize each consecutive run of `len` values in place to zero mean and
/// unit variance (population variance plus `eps`); returns (mean, 1/std)
/// per run.
fn normalize_runs(v: &mut [f64], len: usize, eps: f64) -> Vec<(f64, f64)> {
    if len == 0 {
        return Vec::new();
    }
    v.chunks_mut(len)
        .map(|run| {
            let mean = run.iter().sum::<f64>() / len as f64;
            let var = run.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / len as f64;
            let inv = 1.0 / (var + eps).sqrt();
            run.iter_mut().for_each(|a| *a = (*a - mean) * inv);
            (mean, inv)
        })
        .collect()
}

fn instance_norm(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    need_float(x, "InstanceNormalization input")?;
    let (_, c, sp) = nc(x)?;
    let scale = per_channel(tensor(inputs, 1)?, c, "scale")?;
    let bias = per_channel(tensor(inputs, 2)?, c, "B")?;
    let eps = cx.attr_float("epsilon", 1e-5) as f64;
    let mut v = x.to_f64();
    normalize_runs(&mut v, sp, eps);
    for (i, a) in v.iter_mut().enumerate() {
        let ch = (i / sp.max(1)) % c;
        *a = *a * scale[ch] + bias[ch];
    }
    Ok(vec![out_f64(x.elem(), x.shape.clone(), &v)?])
}

fn group_norm(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    need_float(x, "GroupNormalization input")?;
    let (n, c, sp) = nc(x)?;
    let g = cx.attr_int("num_groups", 0);
    if g <= 0 || c % g as usize != 0 {
        bail!("num_groups {g} does not divide {c} channels");
    }
    let g = g as usize;
    let scale_t = tensor(inputs, 1)?;
    let bias_t = tensor(inputs, 2)?;
    // Per-channel (opset 21); per-group (opset 18) operands are spread.
    let spread = |t: &Tensor, what: &str| -> KResult<Vec<f64>> {
        let v = t.to_f64();
        if v.len() == c {
            Ok(v)
        } else if v.len() == g {
            Ok((0..c).map(|ch| v[ch / (c / g)]).collect())
        } else {
            bail!(
                "{what} has {} values for {c} channels in {g} groups",
                v.len()
            )
        }
    };
    let scale = spread(scale_t, "scale")?;
    let bias = spread(bias_t, "bias")?;
    let eps = cx.attr_float("epsilon", 1e-5) as f64;
    let mut v = x.to_f64();
    let _ = n;
    normalize_runs(&mut v, (c / g) * sp, eps);
    for (i, a) in v.iter_mut().enumerate() {
        let ch = (i / sp.max(1)) % c;
        *a = *a * scale[ch] + bias[ch];
    }
    Ok(vec![out_f64(x.elem(), x.shape.clone(), &v)?])
}

fn layer_norm(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    need_float(x, "LayerNormalization input")?;
    let scale = tensor(inputs, 1)?;
    let bias = opt_tensor(inputs, 2)?;
    let axis = norm_axis(cx.attr_int("axis", -1), x.rank())?;
    let eps = cx.attr_float("epsilon", 1e-5) as f64;
    let len: usize = x.shape[axis..].iter().product();
    let mut v = x.to_f64();
    let stats = normalize_runs(&mut v, len, eps);
    for (t, what) in [(Some(scale), "Scale"), (bias, "B")] {
        let Some(t) = t else { continue };
        if broadcast_shape(&t.shape, &x.shape)? != x.shape {
            bail!(
                "{what} of shape {:?} does not broadcast to {:?}",
                t.shape,
                x.shape
            );
        }
        let tv = t.to_f64();
        let idx = broadcast_indices(&t.shape, &x.shape);
        for (a, &i) in v.iter_mut().zip(&idx) {
            if what == "Scale" {
                *a *= tv[i];
            } else {
                *a += tv[i];
            }
        }
    }
    let mut stat_shape = x.shape.clone();
    for d in stat_shape.iter_mut().skip(axis) {
        *d = 1;
    }
    let mut res = vec![out_f64(x.elem(), x.shape.clone(), &v)?];
    let outs = cx.node.outputs.len();
    if outs > 1 {
        let means: Vec<f64> = stats.iter().map(|s| s.0).collect();
        res.push(out_f64(
            out_elem(cx, 1, x.elem()),
            stat_shape.clone(),
            &means,
        )?);
    }
    if outs > 2 {
        let invs: Vec<f64> = stats.iter().map(|s| s.1).collect();
        res.push(out_f64(out_elem(cx, 2, x.elem()), stat_shape, &invs)?);
    }
    Ok(res)
}

/// RMSNormalization: each run of the trailing axes (from `axis`) divided
/// by its root mean square, `sqrt(mean(x^2) + epsilon)`, then times
/// `scale` (broadcast to X). Computed in f64, whatever `stash_type` says
/// (it only asks for at least f32).
fn rms_norm(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    need_float(x, "RMSNormalization input")?;
    let scale = tensor(inputs, 1)?;
    let axis = norm_axis(cx.attr_int("axis", -1), x.rank())?;
    let eps = cx.attr_float("epsilon", 1e-5) as f64;
    if broadcast_shape(&scale.shape, &x.shape)? != x.shape {
        bail!(
            "scale of shape {:?} does not broadcast to {:?}",
            scale.shape,
            x.shape
        );
    }
    let len: usize = x.shape[axis..].iter().product();
    let mut v = x.to_f64();
    if len > 0 {
        for run in v.chunks_mut(len) {
            let ms = run.iter().map(|a| a * a).sum::<f64>() / len as f64;
            let inv = 1.0 / (ms + eps).sqrt();
            run.iter_mut().for_each(|a| *a *= inv);
        }
    }
    let sv = scale.to_f64();
    let idx = broadcast_indices(&scale.shape, &x.shape);
    for (a, &i) in v.iter_mut().zip(&idx) {
        *a *= sv[i];
    }
    Ok(vec![out_f64(x.elem(), x.shape.clone(), &v)?])
}

fn lrn(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    need_float(x, "LRN input")?;
    let (n, c, sp) = nc(x)?;
    let size = cx.attr_int("size", 0);
    if size <= 0 {
        bail!("LRN needs a positive `size`");
    }
    let alpha = cx.attr_float("alpha", 1e-4) as f64;
    let beta = cx.attr_float("beta", 0.75) as f64;
    let bias = cx.attr_float("bias", 1.0) as f64;
    let lo = ((size - 1) / 2) as usize;
    let hi = (size as usize - 1).div_ceil(2);
    let v = x.to_f64();
    let mut y = vec![0.0; v.len()];
    for b in 0..n {
        for ch in 0..c {
            let from = ch.saturating_sub(lo);
            let to = (ch + hi + 1).min(c);
            for s in 0..sp {
                let sq: f64 = (from..to).map(|k| v[(b * c + k) * sp + s].powi(2)).sum();
                let i = (b * c + ch) * sp + s;
                y[i] = v[i] / (bias + alpha / size as f64 * sq).powf(beta);
            }
        }
    }
    Ok(vec![out_f64(x.elem(), x.shape.clone(), &y)?])
}

fn lp_norm(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    need_float(x, "LpNormalization input")?;
    let axis = norm_axis(cx.attr_int("axis", -1), x.rank())?;
    let p = cx.attr_int("p", 2);
    if p != 1 && p != 2 {
        bail!("LpNormalization supports p = 1 or 2, got {p}");
    }
    let n = x.shape[axis];
    let outer: usize = x.shape[..axis].iter().product();
    let inner: usize = x.shape[axis + 1..].iter().product();
    let mut v = x.to_f64();
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| o * n * inner + k * inner + i;
            let norm = if p == 1 {
                (0..n).map(|k| v[at(k)].abs()).sum::<f64>()
            } else {
                (0..n).map(|k| v[at(k)].powi(2)).sum::<f64>().sqrt()
            };
            for k in 0..n {
                v[at(k)] = if norm == 0.0 { 0.0 } else { v[at(k)] / norm };
            }
        }
    }
    Ok(vec![out_f64(x.elem(), x.shape.clone(), &v)?])
}

fn mvn(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    need_float(x, "MeanVarianceNormalization input")?;
    let rank = x.rank();
    let axes: Vec<usize> = match cx.attr_ints("axes") {
        Some(a) => a
            .iter()
            .map(|&a| norm_axis(a, rank))
            .collect::<KResult<_>>()?,
        None => [0usize, 2, 3].into_iter().filter(|&a| a < rank).collect(),
    };
    let kept: Vec<usize> = x
        .shape
        .iter()
        .enumerate()
        .map(|(d, &n)| if axes.contains(&d) { 1 } else { n })
        .collect();
    let map = broadcast_indices(&kept, &x.shape);
    let out_n: usize = kept.iter().product();
    let count = (x.len() / out_n.max(1)) as f64;
    let v = x.to_f64();
    let mut s1 = vec![0.0; out_n];
    let mut s2 = vec![0.0; out_n];
    for (&a, &o) in v.iter().zip(&map) {
        s1[o] += a;
        s2[o] += a * a;
    }
    let y: Vec<f64> = v
        .iter()
        .zip(&map)
        .map(|(&a, &o)| {
            let mean = s1[o] / count;
            let var = s2[o] / count - mean * mean;
            (a - mean) / (var.max(0.0).sqrt() + 1e-9)
        })
        .collect();
    Ok(vec![out_f64(x.elem(), x.shape.clone(), &y)?])
}
