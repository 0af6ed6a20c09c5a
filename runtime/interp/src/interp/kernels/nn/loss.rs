//! Losses: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (with
//! class weights, ignore_index and none/sum/mean reduction).

use super::common::{need_float, out_elem, out_f64};
use super::softmax::{apply, Kind};
use crate::interp::kernels::ctx::{bail, opt_tensor, tensor, Ctx, KResult, KernelFn};
use crate::tensor::Tensor;
use crate::value::Value;

pub fn lookup(op: &str) -> Option<KernelFn> {
    Some(match op {
        "NegativeLogLikelihoodLoss" => |cx, i| loss(cx, i, false),
        "SoftmaxCrossEntropyLoss" => |cx, i| loss(cx, i, true),
        _ => return None,
    })
}

fn loss(cx: &mut Ctx, inputs: &[Option<Value>], softmax: bool) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let target: &Tensor = tensor(inputs, 1)?;
    let weight = opt_tensor(inputs, 2)?;
    need_float(x, "scores")?;
    if x.rank() < 2 {
        bail!("scores must be [N, C, ...], got {:?}", x.shape);
    }
    let (n, c) = (x.shape[0], x.shape[1]);
    let d: usize = x.shape[2..].iter().product();
    let mut want = vec![n];
    want.extend(&x.shape[2..]);
    if target.shape != want {
        bail!(
            "target of shape {:?} does not fit scores {:?}",
            target.shape,
            x.shape
        );
    }
    let ignore = cx.attr("ignore_index").and_then(|a| a.as_int());
    let reduction = cx.attr_str("reduction").unwrap_or("mean").to_string();
    let mut v = x.to_f64();
    if softmax {
        apply(&mut v, &x.shape, 1, Kind::Log);
    }
    let w = match weight {
        Some(w) if w.len() != c => bail!("weights have {} values for {c} classes", w.len()),
        Some(w) => Some(w.to_f64()),
        None => None,
    };
    let t = target.to_i64();
    let mut losses = vec![0.0; n * d];
    let mut wsum = 0.0;
    for b in 0..n {
        for k in 0..d {
            let i = b * d + k;
            let cls = t[i];
            if Some(cls) == ignore {
                continue;
            }
            if cls < 0 || cls as usize >= c {
                bail!("target class {cls} is out of range for {c} classes");
            }
            let wi = w.as_ref().map_or(1.0, |w| w[cls as usize]);
            losses[i] = -wi * v[(b * c + cls as usize) * d + k];
            wsum += wi;
        }
    }
    let (shape, vals) = match reduction.as_str() {
        "none" => (target.shape.clone(), losses),
        "sum" => (vec![], vec![losses.iter().sum()]),
        "mean" => (vec![], vec![losses.iter().sum::<f64>() / wsum]),
        other => bail!("unknown reduction `{other}`"),
    };
    let mut res = vec![out_f64(out_elem(cx, 0, x.elem()), shape, &vals)?];
    if softmax && cx.node.outputs.len() > 1 {
        res.push(out_f64(out_elem(cx, 1, x.elem()), x.shape.clone(), &v)?);
    }
    Ok(res)
}
