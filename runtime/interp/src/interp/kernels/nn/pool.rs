//! Pooling: MaxPool (with the indices result), AveragePool, LpPool, their
//! Global forms, and MaxUnpool. Output sizes and padding follow the ONNX
//! reference implementation, including its ceil_mode rules.

use kiln_ir::ops::geometry::{self, AutoPad, Window};
use kiln_ir::ElemType;

use super::common::{attr_sizes, buffer, checked_numel, need_float, next_index, out_f64, out_i64};
use crate::interp::kernels::ctx::{bail, opt_tensor, tensor, Ctx, KResult, KernelFn};
use crate::tensor::Tensor;
use crate::value::Value;

pub fn lookup(op: &str) -> Option<KernelFn> {
    Some(match op {
        "MaxPool" => max_pool,
        "AveragePool" => |cx, i| avg_pool(cx, i, None),
        "LpPool" => |cx, i| {
            let p = cx.attr_int("p", 2) as f64;
            avg_pool(cx, i, Some(p))
        },
        "GlobalAveragePool" => |_, i| global(i, Global::Avg),
        "GlobalMaxPool" => |_, i| global(i, Global::Max),
        "GlobalLpPool" => |cx, i| {
            let p = cx.attr_int("p", 2) as f64;
            global(i, Global::Lp(p))
        },
        "MaxUnpool" => max_unpool,
        _ => return None,
    })
}

struct Plan {
    kernel: Vec<usize>,
    strides: Vec<usize>,
    dil: Vec<usize>,
    pad_begin: Vec<i64>,
    out: Vec<usize>,
}

/// (spatial rank, kernel, strides, dilations).
type Common = (usize, Vec<usize>, Vec<usize>, Vec<usize>);

fn common(cx: &Ctx, x: &Tensor) -> KResult<Common> {
    if x.rank() < 3 {
        bail!("pooling needs [N, C, spatial...] input, got {:?}", x.shape);
    }
    let nd = x.rank() - 2;
    let kernel = match cx.attr_ints("kernel_shape") {
        Some(k) if k.len() == nd && k.iter().all(|&a| a > 0) => {
            k.iter().map(|&a| a as usize).collect()
        }
        _ => bail!("kernel_shape must list {nd} positive sizes"),
    };
    let strides = attr_sizes(cx, "strides", nd, 1)?;
    let dil = attr_sizes(cx, "dilations", nd, 1)?;
    if strides.contains(&0) || dil.contains(&0) {
        bail!("strides and dilations must be positive");
    }
    Ok((nd, kernel, strides, dil))
}

/// Pool geometry: pads resolved and output sizes computed by ONNX's rule
/// (`kiln_ir::ops::geometry`: auto_pad, dilations, and ceil_mode, whose
/// last window is dropped when it would start in the end padding). A
/// window larger than the padded input gives an empty output.
fn plan(cx: &Ctx, x: &Tensor) -> KResult<Plan> {
    let (nd, kernel, strides, dil) = common(cx, x)?;
    let pads = attr_sizes(cx, "pads", 2 * nd, 0)?;
    let ceil = cx.attr_int("ceil_mode", 0) != 0;
    let auto_pad = AutoPad::parse(cx.attr_str("auto_pad"))?;
    let mut pad_begin = vec![0i64; nd];
    let mut out = vec![0usize; nd];
    for i in 0..nd {
        let w = Window::new(kernel[i] as u64, strides[i] as u64, dil[i] as u64);
        let n = x.shape[i + 2] as u64;
        let given = [pads[i] as i64, pads[i + nd] as i64];
        pad_begin[i] = geometry::resolve_pads(auto_pad, n, w, given)[0];
        out[i] = geometry::output_size(auto_pad, n, w, given, ceil).unwrap_or(0) as usize;
    }
    Ok(Plan {
        kernel,
        strides,
        dil,
        pad_begin,
        out,
    })
}

/// MaxPool geometry: [`plan`].
fn max_plan(cx: &Ctx, x: &Tensor) -> KResult<Plan> {
    plan(cx, x)
}

/// AveragePool/LpPool geometry: [`plan`], with the reference's placement
/// of a ceil_mode overhang: when the last window reaches past the end
/// padding, half of the overhang is taken from the beginning (the windows
/// shift left by it).
fn avg_plan(cx: &Ctx, x: &Tensor) -> KResult<Plan> {
    let mut p = plan(cx, x)?;
    if AutoPad::parse(cx.attr_str("auto_pad"))? != AutoPad::NotSet {
        return Ok(p);
    }
    let nd = p.kernel.len();
    let pads = attr_sizes(cx, "pads", 2 * nd, 0)?;
    for i in 0..nd {
        let (n, s, o) = (x.shape[i + 2] as i64, p.strides[i] as i64, p.out[i] as i64);
        let ext = (p.kernel[i] as i64 - 1) * p.dil[i] as i64 + 1;
        let extra = (o - 1) * s + ext - n - pads[i] as i64 - pads[i + nd] as i64;
        if o > 0 && extra > 0 {
            p.pad_begin[i] += extra / 2;
        }
    }
    Ok(p)
}

/// Visit every (plane, output position): `f(plane, out_index, taps)` where
/// taps are the in-bounds input offsets (within the plane) of the window,
/// in row-major window order, and the window's total size.
fn windows(x: &Tensor, p: &Plan, mut f: impl FnMut(usize, usize, &[usize])) -> KResult<usize> {
    let nd = p.kernel.len();
    let input = &x.shape[2..];
    let planes = x.shape[0] * x.shape[1];
    let out_n = checked_numel(&p.out)?;
    checked_numel(&[planes, out_n])?;
    let in_strides = crate::tensor::strides(input);
    let k_n: usize = p.kernel.iter().product();
    let mut taps = Vec::with_capacity(k_n);
    for plane in 0..planes {
        let mut oidx = vec![0usize; nd];
        for o in 0..out_n {
            taps.clear();
            let mut kidx = vec![0usize; nd];
            for _ in 0..k_n {
                let mut off = 0usize;
                let mut ok = true;
                for d in 0..nd {
                    let c = oidx[d] as i64 * p.strides[d] as i64 - p.pad_begin[d]
                        + (kidx[d] * p.dil[d]) as i64;
                    if c < 0 || c >= input[d] as i64 {
                        ok = false;
                        break;
                    }
                    off += c as usize * in_strides[d];
                }
                if ok {
                    taps.push(off);
                }
                next_index(&mut kidx, &p.kernel);
            }
            f(plane, o, &taps);
            next_index(&mut oidx, &p.out);
        }
    }
    Ok(out_n)
}

fn out_shape(x: &Tensor, p: &Plan) -> Vec<usize> {
    let mut s = vec![x.shape[0], x.shape[1]];
    s.extend(&p.out);
    s
}

fn max_pool(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let p = max_plan(cx, x)?;
    let col_major = cx.attr_int("storage_order", 0) != 0;
    let input = x.shape[2..].to_vec();
    let in_n: usize = input.iter().product();
    let v = x.to_f64();
    let mut vals = Vec::new();
    let mut idx = Vec::new();
    let elem = x.elem();
    let fill = if elem.is_float() { f64::NAN } else { 0.0 };
    windows(x, &p, |plane, _, taps| {
        let base = plane * in_n;
        let mut best: Option<(f64, usize)> = None;
        for &t in taps {
            let xv = v[base + t];
            // NaN propagates, as numpy's and PyTorch's max does (the ONNX
            // reference keeps a NaN only when it is the window's first
            // tap: an accident of its loop, not a stated rule).
            if best.is_none_or(|(b, _)| xv > b || (xv.is_nan() && !b.is_nan())) {
                best = Some((xv, t));
            }
        }
        let (bv, bt) = best.unwrap_or((fill, 0));
        let flat = if col_major {
            // Re-express the in-plane offset column-major.
            let mut rem = bt;
            let mut off = 0usize;
            let mut mult = 1usize;
            let st = crate::tensor::strides(&input);
            let mut coords = vec![0usize; input.len()];
            for d in 0..input.len() {
                coords[d] = rem / st[d];
                rem %= st[d];
            }
            for d in 0..input.len() {
                off += coords[d] * mult;
                mult *= input[d];
            }
            off
        } else {
            bt
        };
        vals.push(bv);
        idx.push((base + flat) as i64);
    })?;
    let shape = out_shape(x, &p);
    let mut res = vec![out_f64(elem, shape.clone(), &vals)?];
    if cx.node.outputs.len() > 1 {
        res.push(out_i64(ElemType::I64, shape, &idx)?);
    }
    Ok(res)
}

/// AveragePool, or LpPool when `lp` is Some(p).
fn avg_pool(cx: &mut Ctx, inputs: &[Option<Value>], lp: Option<f64>) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    need_float(x, "pooling input")?;
    let p = avg_plan(cx, x)?;
    let include_pad = cx.attr_int("count_include_pad", 0) != 0;
    let in_n: usize = x.shape[2..].iter().product();
    let k_n: usize = p.kernel.iter().product();
    let v = x.to_f64();
    let mut vals = Vec::new();
    windows(x, &p, |plane, _, taps| {
        let base = plane * in_n;
        let count = if include_pad { k_n } else { taps.len() };
        let r = match lp {
            None => taps.iter().map(|&t| v[base + t]).sum::<f64>() / count as f64,
            // Padding contributes zeros: (sum of |x|^p over the window)^(1/p).
            Some(pw) => taps
                .iter()
                .map(|&t| v[base + t].abs().powf(pw))
                .sum::<f64>()
                .powf(1.0 / pw),
        };
        vals.push(r);
    })?;
    Ok(vec![out_f64(x.elem(), out_shape(x, &p), &vals)?])
}

enum Global {
    Avg,
    Max,
    Lp(f64),
}

fn global(inputs: &[Option<Value>], kind: Global) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    need_float(x, "pooling input")?;
    if x.rank() < 2 {
        bail!("global pooling needs [N, C, ...] input, got {:?}", x.shape);
    }
    let in_n: usize = x.shape[2..].iter().product();
    let planes = x.shape[0] * x.shape[1];
    let v = x.to_f64();
    let vals: Vec<f64> = (0..planes)
        .map(|pl| {
            let s = &v[pl * in_n..(pl + 1) * in_n];
            match kind {
                Global::Avg => s.iter().sum::<f64>() / in_n as f64,
                Global::Max => s.iter().copied().fold(f64::NEG_INFINITY, |a, b| {
                    if b > a || b.is_nan() {
                        b
                    } else {
                        a
                    }
                }),
                Global::Lp(p) => s.iter().map(|a| a.abs().powf(p)).sum::<f64>().powf(1.0 / p),
            }
        })
        .collect();
    let mut shape = x.shape.clone();
    for d in shape.iter_mut().skip(2) {
        *d = 1;
    }
    Ok(vec![out_f64(x.elem(), shape, &vals)?])
}

fn max_unpool(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let ind = tensor(inputs, 1)?;
    let (nd, kernel, strides, _) = common(cx, x)?;
    if ind.shape != x.shape {
        bail!(
            "indices of shape {:?} do not match input {:?}",
            ind.shape,
            x.shape
        );
    }
    let shape: Vec<usize> = match opt_tensor(inputs, 2)? {
        Some(s) => s
            .to_i64()
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| format!("bad output_shape {d}")))
            .collect::<Result<_, _>>()?,
        None => {
            let pads = attr_sizes(cx, "pads", 2 * nd, 0)?;
            let mut s = vec![x.shape[0], x.shape[1]];
            for i in 0..nd {
                let o = (x.shape[i + 2] as i64 - 1) * strides[i] as i64 + kernel[i] as i64
                    - pads[i] as i64
                    - pads[i + nd] as i64;
                s.push(o.max(0) as usize);
            }
            s
        }
    };
    if shape.len() != x.rank() {
        bail!("output_shape {shape:?} has the wrong rank");
    }
    // Indices address the inferred (unpadded) shape; that block is then
    // placed at the origin of a larger `output_shape`, as the reference does.
    let pads = attr_sizes(cx, "pads", 2 * nd, 0)?;
    let mut inferred = vec![x.shape[0], x.shape[1]];
    for i in 0..nd {
        let o = (x.shape[i + 2] as i64 - 1) * strides[i] as i64 + kernel[i] as i64
            - pads[i] as i64
            - pads[i + nd] as i64;
        inferred.push(o.max(0) as usize);
    }
    if inferred.iter().zip(&shape).any(|(a, b)| a > b) {
        bail!("output_shape {shape:?} is smaller than the unpooled shape {inferred:?}");
    }
    let mut block = buffer::<f64>("the MaxUnpool block", &inferred)?;
    let n_inf = block.len();
    let v = x.to_f64();
    for (&i, &val) in ind.to_i64().iter().zip(&v) {
        if i < 0 || i as usize >= n_inf {
            bail!("MaxUnpool index {i} is out of range for shape {inferred:?}");
        }
        block[i as usize] = val;
    }
    let mut out = buffer::<f64>("the MaxUnpool result", &shape)?;
    let ost = crate::tensor::strides(&shape);
    let mut idx = vec![0usize; inferred.len()];
    for &val in &block {
        out[idx.iter().zip(&ost).map(|(a, b)| a * b).sum::<usize>()] = val;
        next_index(&mut idx, &inferred);
    }
    Ok(vec![out_f64(x.elem(), shape, &out)?])
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::interp::Interpreter;
    use crate::tensor::Tensor;
    use crate::value::Value;

    /// Run one pool node over `x` (shape [1, 1, len]); the result's values.
    fn pool1d(op_and_attrs: &str, x: &[f32], out: usize) -> Vec<f64> {
        let text = format!(
            "module @p opset(ai.onnx = 22) {{\n  input %x: f32[1,1,{}]\n  \
             %y = {op_and_attrs} : f32[1,1,{out}]\n  return %y\n}}",
            x.len()
        );
        let m = kiln_ir::parse_module(&text).expect("parse");
        let t = Tensor::from_f32(vec![1, 1, x.len()], x.to_vec()).expect("tensor");
        let ins = HashMap::from([("x".to_string(), Value::tensor(t))]);
        let got = Interpreter::new(&m).run(&ins).expect("run");
        let y = got[0].as_tensor().expect("tensor");
        assert_eq!(y.shape, vec![1, 1, out], "{op_and_attrs}");
        y.to_f64()
    }

    /// ceil_mode drops a last window that would start in the end padding
    /// for AveragePool as for MaxPool (and shape inference): it would see
    /// no input (a 0/0 without count_include_pad).
    #[test]
    fn ceil_mode_drops_a_window_in_the_end_padding() {
        let x = [1.0, 2.0, 3.0, 4.0];
        let attrs = "{ceil_mode = 1, kernel_shape = [1], pads = [0, 1], strides = [2]}";
        assert_eq!(
            pool1d(&format!("AveragePool(%x) {attrs}"), &x, 2),
            [1.0, 3.0]
        );
        assert_eq!(pool1d(&format!("MaxPool(%x) {attrs}"), &x, 2), [1.0, 3.0]);
    }

    /// SAME padding covers the dilated window: k=2, d=3 spans 4 inputs,
    /// so n=4, s=1 pads 3 in all, 2 before with SAME_LOWER (the extent
    /// without dilation, 2, would pad 1 in all and let the last window
    /// reach past the padding).
    #[test]
    fn same_padding_uses_the_dilated_extent() {
        let x = [1.0, 2.0, 3.0, 4.0];
        let attrs = "{auto_pad = \"SAME_LOWER\", dilations = [3], kernel_shape = [2]}";
        // Windows over positions (-2, 1), (-1, 2), (0, 3), (1, 4).
        assert_eq!(
            pool1d(&format!("AveragePool(%x) {attrs}"), &x, 4),
            [2.0, 3.0, 2.5, 2.0]
        );
        assert_eq!(
            pool1d(&format!("MaxPool(%x) {attrs}"), &x, 4),
            [2.0, 3.0, 4.0, 2.0]
        );
    }
}
