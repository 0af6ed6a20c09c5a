//! Random generators: `RandomNormal(Like)`, `RandomUniform(Like)`,
//! `Bernoulli` and `Multinomial`, drawn from the node's deterministic
//! source (`Ctx::rng`), so runs repeat.

use kiln_ir::ElemType;

use super::common::{from_f64, out_elem};
use crate::interp::kernels::ctx::{bail, tensor, Ctx, KResult, KernelFn};
use crate::interp::kernels::rng::Rng;
use crate::value::Value;

pub fn lookup(op: &str) -> Option<KernelFn> {
    Some(match op {
        "RandomNormal" => random_normal,
        "RandomNormalLike" => random_normal_like,
        "RandomUniform" => random_uniform,
        "RandomUniformLike" => random_uniform_like,
        "Bernoulli" => bernoulli,
        "Multinomial" => multinomial,
        _ => return None,
    })
}

fn shape_attr(ctx: &Ctx) -> KResult<Vec<usize>> {
    let s = ctx
        .attr_ints("shape")
        .ok_or("attribute `shape` is required")?;
    s.iter()
        .map(|&d| {
            if d < 0 {
                bail!("negative dimension {d} in `shape`")
            } else {
                Ok(d as usize)
            }
        })
        .collect()
}

/// `shape` filled by `draw`, of the declared (else `default`) type.
fn fill(
    ctx: &Ctx,
    shape: Vec<usize>,
    default: ElemType,
    draw: impl Fn(&mut Rng) -> f64,
) -> KResult<Vec<Value>> {
    let elem = out_elem(ctx, 0, default);
    if !elem.is_float() {
        bail!("random values must be floats, the result is {elem}");
    }
    // Drawn as f64 first: checked at 8 bytes an element.
    let n = crate::limits::alloc(
        || format!("random values of shape {shape:?}"),
        ElemType::F64,
        &shape,
    )?;
    let mut rng = ctx.rng();
    let v: Vec<f64> = (0..n).map(|_| draw(&mut rng)).collect();
    Ok(vec![Value::tensor(from_f64(elem, shape, &v)?)])
}

fn normal(ctx: &Ctx) -> (f64, f64) {
    (
        ctx.attr_float("mean", 0.0) as f64,
        ctx.attr_float("scale", 1.0) as f64,
    )
}

fn uniform(ctx: &Ctx) -> (f64, f64) {
    (
        ctx.attr_float("low", 0.0) as f64,
        ctx.attr_float("high", 1.0) as f64,
    )
}

fn random_normal(ctx: &mut Ctx, _: &[Option<Value>]) -> KResult<Vec<Value>> {
    let (mean, scale) = normal(ctx);
    fill(ctx, shape_attr(ctx)?, ElemType::F32, |r| {
        mean + scale * r.normal()
    })
}

fn random_normal_like(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let (mean, scale) = normal(ctx);
    fill(ctx, x.shape.clone(), x.elem(), |r| {
        mean + scale * r.normal()
    })
}

fn random_uniform(ctx: &mut Ctx, _: &[Option<Value>]) -> KResult<Vec<Value>> {
    let (low, high) = uniform(ctx);
    fill(ctx, shape_attr(ctx)?, ElemType::F32, |r| {
        low + (high - low) * r.uniform()
    })
}

fn random_uniform_like(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let (low, high) = uniform(ctx);
    fill(ctx, x.shape.clone(), x.elem(), |r| {
        low + (high - low) * r.uniform()
    })
}

fn bernoulli(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let p = x.to_f64();
    if let Some(bad) = p.iter().find(|&&q| !(0.0..=1.0).contains(&q)) {
        bail!("probability {bad} is outside [0, 1]");
    }
    let elem = out_elem(ctx, 0, x.elem());
    let mut rng = ctx.rng();
    // `u < p` with numpy's uniform stream: how ONNX's seeded test data
    // was made (its binomial-based reference disagrees with that data).
    let v: Vec<f64> = p
        .iter()
        .map(|&q| if rng.uniform() < q { 1.0 } else { 0.0 })
        .collect();
    Ok(vec![Value::tensor(from_f64(elem, x.shape.clone(), &v)?)])
}

fn multinomial(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let [batch, classes] = x.shape[..] else {
        bail!("input must be [batch, classes], got {:?}", x.shape)
    };
    if classes == 0 {
        bail!("cannot sample from zero classes");
    }
    let n = ctx.attr_int("sample_size", 1);
    if n < 0 {
        bail!("sample_size {n} is negative");
    }
    let n = n as usize;
    let logits = x.to_f64();
    let elem = out_elem(ctx, 0, ElemType::I32);
    let mut rng = ctx.rng();
    let mut out = Vec::with_capacity(batch * n);
    for row in logits.chunks_exact(classes) {
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let cum: Vec<f64> = row
            .iter()
            .scan(0.0, |acc, &l| {
                *acc += (l - m).exp();
                Some(*acc)
            })
            .collect();
        let total = cum[classes - 1];
        for _ in 0..n {
            let u = rng.uniform() * total;
            out.push(cum.iter().position(|&c| u < c).unwrap_or(classes - 1) as i64);
        }
    }
    Ok(vec![Value::tensor(crate::tensor::Tensor::new(
        vec![batch, n],
        crate::tensor::Data::from_i64(elem, &out),
    )?)])
}
