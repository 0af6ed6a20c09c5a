//! `ai.onnx.preview.training` optimizers: `Adagrad`, `Adam`, `Momentum`
//! (plain and Nesterov), each updating several tensors at once. Operands:
//! R (learning rate), T (step count), then the groups of per-tensor inputs.

// Update `i` reads entry `i` of every group, so loops index the groups.
#![allow(clippy::needless_range_loop)]

use super::common::{from_f64, scalar_f64};
use crate::interp::kernels::ctx::{bail, tensor, Ctx, KResult, KernelFn};
use crate::tensor::Tensor;
use crate::value::Value;

pub fn lookup(op: &str) -> Option<KernelFn> {
    Some(match op {
        "ai.onnx.preview.training.Adagrad" => adagrad,
        "ai.onnx.preview.training.Adam" => adam,
        "ai.onnx.preview.training.Momentum" => momentum,
        _ => return None,
    })
}

/// Split the operands after R and T into `groups` groups of `n` tensors
/// each, checked to have one shape per index; returns (r, t, groups).
fn operands(inputs: &[Option<Value>], groups: usize) -> KResult<(f64, f64, Vec<Vec<&Tensor>>)> {
    let r = scalar_f64(inputs, 0)?;
    let t = scalar_f64(inputs, 1)?;
    let rest = inputs.len().saturating_sub(2);
    if rest == 0 || !rest.is_multiple_of(groups) {
        bail!(
            "expected R, T and {groups} groups of tensors, got {} operands",
            inputs.len()
        );
    }
    let n = rest / groups;
    let mut out = Vec::with_capacity(groups);
    for g in 0..groups {
        out.push(
            (0..n)
                .map(|i| tensor(inputs, 2 + g * n + i))
                .collect::<KResult<Vec<_>>>()?,
        );
    }
    for i in 0..n {
        if out.iter().any(|grp| grp[i].shape != out[0][i].shape) {
            bail!("the tensors of update {i} disagree in shape");
        }
    }
    Ok((r, t, out))
}

fn adagrad(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let (r, t, g) = operands(inputs, 3)?;
    let decay = ctx.attr_float("decay_factor", 0.0) as f64;
    let eps = ctx.attr_float("epsilon", 1e-6) as f64;
    let norm = ctx.attr_float("norm_coefficient", 0.0) as f64;
    let lr = r / (1.0 + t * decay);
    let (mut xs, mut hs) = (Vec::new(), Vec::new());
    for i in 0..g[0].len() {
        let (x, gr, h) = (g[0][i].to_f64(), g[1][i].to_f64(), g[2][i].to_f64());
        let mut xn = Vec::with_capacity(x.len());
        let mut hn = Vec::with_capacity(x.len());
        for k in 0..x.len() {
            let gg = norm * x[k] + gr[k];
            let hh = h[k] + gg * gg;
            xn.push(x[k] - lr * gg / (hh.sqrt() + eps));
            hn.push(hh);
        }
        xs.push(Value::tensor(from_f64(
            g[0][i].elem(),
            g[0][i].shape.clone(),
            &xn,
        )?));
        hs.push(Value::tensor(from_f64(
            g[2][i].elem(),
            g[2][i].shape.clone(),
            &hn,
        )?));
    }
    xs.extend(hs);
    Ok(xs)
}

fn adam(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let (r, t, g) = operands(inputs, 4)?;
    let alpha = ctx.attr_float("alpha", 0.9) as f64;
    let beta = ctx.attr_float("beta", 0.999) as f64;
    let eps = ctx.attr_float("epsilon", 1e-6) as f64;
    let norm = ctx.attr_float("norm_coefficient", 0.0) as f64;
    let post = ctx.attr_float("norm_coefficient_post", 0.0) as f64;
    let lr = if t > 0.0 {
        r * (1.0 - beta.powf(t)).sqrt() / (1.0 - alpha.powf(t))
    } else {
        r
    };
    let (mut xs, mut vs, mut hs) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..g[0].len() {
        let (x, gr, v, h) = (
            g[0][i].to_f64(),
            g[1][i].to_f64(),
            g[2][i].to_f64(),
            g[3][i].to_f64(),
        );
        let (mut xn, mut vn, mut hn) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..x.len() {
            let gg = norm * x[k] + gr[k];
            let vv = alpha * v[k] + (1.0 - alpha) * gg;
            let hh = beta * h[k] + (1.0 - beta) * gg * gg;
            let xx = x[k] - lr * vv / (hh.sqrt() + eps);
            xn.push((1.0 - post) * xx);
            vn.push(vv);
            hn.push(hh);
        }
        let shape = g[0][i].shape.clone();
        xs.push(Value::tensor(from_f64(g[0][i].elem(), shape.clone(), &xn)?));
        vs.push(Value::tensor(from_f64(g[2][i].elem(), shape.clone(), &vn)?));
        hs.push(Value::tensor(from_f64(g[3][i].elem(), shape, &hn)?));
    }
    xs.extend(vs);
    xs.extend(hs);
    Ok(xs)
}

fn momentum(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let (r, t, g) = operands(inputs, 3)?;
    let alpha = ctx.attr_float("alpha", 0.0) as f64;
    let beta = ctx.attr_float("beta", 0.0) as f64;
    let norm = ctx.attr_float("norm_coefficient", 0.0) as f64;
    let nesterov = match ctx.attr_str("mode").unwrap_or("standard") {
        "standard" => false,
        "nesterov" => true,
        m => bail!("unknown mode `{m}`"),
    };
    let b = if t > 0.0 { beta } else { 1.0 };
    let (mut xs, mut vs) = (Vec::new(), Vec::new());
    for i in 0..g[0].len() {
        let (x, gr, v) = (g[0][i].to_f64(), g[1][i].to_f64(), g[2][i].to_f64());
        let (mut xn, mut vn) = (Vec::new(), Vec::new());
        for k in 0..x.len() {
            let gg = norm * x[k] + gr[k];
            let vv = alpha * v[k] + b * gg;
            xn.push(if nesterov {
                x[k] - r * (gg + alpha * vv)
            } else {
                x[k] - r * vv
            });
            vn.push(vv);
        }
        xs.push(Value::tensor(from_f64(
            g[0][i].elem(),
            g[0][i].shape.clone(),
            &xn,
        )?));
        vs.push(Value::tensor(from_f64(
            g[2][i].elem(),
            g[2][i].shape.clone(),
            &vn,
        )?));
    }
    xs.extend(vs);
    Ok(xs)
}
