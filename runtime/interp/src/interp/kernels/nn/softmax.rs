//! Softmax, LogSoftmax (both max-subtracting) and Hardmax along one axis.

use super::common::{need_float, out_f64};
use crate::interp::kernels::ctx::{tensor, Ctx, KResult, KernelFn};
use crate::interp::kernels::shape::norm_axis;
use crate::value::Value;

pub fn lookup(op: &str) -> Option<KernelFn> {
    Some(match op {
        "Softmax" => |cx, i| run(cx, i, Kind::Soft),
        "LogSoftmax" => |cx, i| run(cx, i, Kind::Log),
        "Hardmax" => |cx, i| run(cx, i, Kind::Hard),
        _ => return None,
    })
}

/// Which of the three: the CPU backend's Hardmax step runs [`apply`] too.
#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Soft,
    Log,
    Hard,
}

fn run(cx: &mut Ctx, inputs: &[Option<Value>], kind: Kind) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    need_float(x, "input")?;
    let axis = if x.rank() == 0 {
        0
    } else {
        norm_axis(cx.attr_int("axis", -1), x.rank())?
    };
    let shape = if x.rank() == 0 {
        vec![1]
    } else {
        x.shape.clone()
    };
    let mut v = x.to_f64();
    apply(&mut v, &shape, axis, kind);
    Ok(vec![out_f64(x.elem(), x.shape.clone(), &v)?])
}

/// Apply (log-)softmax or hardmax in place along `axis` of `shape`.
pub fn apply(v: &mut [f64], shape: &[usize], axis: usize, kind: Kind) {
    let n = shape[axis];
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    if n == 0 {
        return;
    }
    let mut buf = vec![0.0; n];
    for o in 0..outer {
        for i in 0..inner {
            let base = o * n * inner + i;
            for (k, b) in buf.iter_mut().enumerate() {
                *b = v[base + k * inner];
            }
            let mut mx = f64::NEG_INFINITY;
            let mut arg = 0;
            for (k, &b) in buf.iter().enumerate() {
                if b > mx || (k == 0 && b.is_nan()) {
                    mx = b;
                    arg = k;
                }
            }
            match kind {
                Kind::Hard => {
                    for (k, b) in buf.iter_mut().enumerate() {
                        *b = if k == arg { 1.0 } else { 0.0 };
                    }
                }
                Kind::Soft | Kind::Log => {
                    let shift = if mx.is_finite() { mx } else { 0.0 };
                    let sum: f64 = buf.iter().map(|&b| (b - shift).exp()).sum();
                    for b in buf.iter_mut() {
                        *b = if kind == Kind::Soft {
                            (*b - shift).exp() / sum
                        } else {
                            *b - shift - sum.ln()
                        };
                    }
                }
            }
            for (k, &b) in buf.iter().enumerate() {
                v[base + k * inner] = b;
            }
        }
    }
}
