//! Convolutions: Conv (im2col + blocked matrix product, 1-D/2-D/3-D,
//! groups, dilations, auto_pad), ConvInteger, QLinearConv, ConvTranspose
//! (col2im) and DeformConv (bilinear sampling at learned offsets).

use std::ops::AddAssign;

use kiln_ir::ops::geometry::{self, AutoPad, Transposed, Window};
use kiln_ir::ElemType;

use super::common::{
    attr_sizes, buffer, check_buffer, checked_numel, from_f32, need_float, next_index, out_elem,
    out_f64, out_i64, to_f32,
};
use super::gemm::gemm;
use super::linalg::quantize;
use crate::interp::kernels::ctx::{bail, opt_tensor, tensor, Ctx, KResult, KernelFn};
use crate::tensor::{Data, Tensor};
use crate::value::Value;

pub fn lookup(op: &str) -> Option<KernelFn> {
    Some(match op {
        "Conv" => conv,
        "ConvInteger" => conv_integer,
        "QLinearConv" => qlinear_conv,
        "ConvTranspose" => conv_transpose,
        "DeformConv" => deform_conv,
        _ => return None,
    })
}

/// Spatial geometry of a convolution.
pub(crate) struct Geo {
    pub input: Vec<usize>,
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dil: Vec<usize>,
    pub pad_begin: Vec<i64>,
    pub out: Vec<usize>,
}

/// Read strides/dilations/pads/auto_pad and compute the output size of a
/// forward convolution over `input` with `kernel` (ONNX's rule, from
/// `kiln_ir::ops::geometry`). A window larger than the padded input gives
/// an empty output.
pub(crate) fn conv_geo(cx: &Ctx, input: &[usize], kernel: &[usize]) -> KResult<Geo> {
    let nd = input.len();
    let strides = attr_sizes(cx, "strides", nd, 1)?;
    let dil = attr_sizes(cx, "dilations", nd, 1)?;
    if strides.contains(&0) || dil.contains(&0) {
        bail!("strides and dilations must be positive");
    }
    let auto_pad = AutoPad::parse(cx.attr_str("auto_pad"))?;
    let mut pad_begin = vec![0i64; nd];
    let mut out = vec![0usize; nd];
    let pads = attr_sizes(cx, "pads", 2 * nd, 0)?;
    for i in 0..nd {
        let w = Window::new(kernel[i] as u64, strides[i] as u64, dil[i] as u64);
        let given = [pads[i] as i64, pads[i + nd] as i64];
        let n = input[i] as u64;
        pad_begin[i] = geometry::resolve_pads(auto_pad, n, w, given)[0];
        out[i] = geometry::output_size(auto_pad, n, w, given, false).unwrap_or(0) as usize;
    }
    Ok(Geo {
        input: input.to_vec(),
        kernel: kernel.to_vec(),
        strides,
        dil,
        pad_begin,
        out,
    })
}

/// im2col for one image's channels `x` ([c, input...]): returns
/// [c * prod(kernel), prod(out)], zeros where the window is in the padding.
fn im2col<T: Copy + Default>(x: &[T], c: usize, g: &Geo) -> Vec<T> {
    let nd = g.input.len();
    let in_n: usize = g.input.iter().product();
    let k_n: usize = g.kernel.iter().product();
    let p_n: usize = g.out.iter().product();
    let mut cols = vec![T::default(); c * k_n * p_n];
    if p_n == 0 {
        return cols;
    }
    let last = nd - 1;
    let (ow_n, iw_n) = (g.out[last], g.input[last]);
    let (sw, dw, pw) = (
        g.strides[last] as i64,
        g.dil[last] as i64,
        g.pad_begin[last],
    );
    let in_strides = crate::tensor::strides(&g.input);
    let outer_shape = &g.out[..last];
    let outer_n: usize = outer_shape.iter().product();
    let mut kidx = vec![0usize; nd];
    for kk in 0..k_n {
        let kw = kidx[last] as i64;
        // Valid range of output columns for this kernel column.
        let mut ow_lo = 0usize;
        let mut ow_hi = ow_n;
        while ow_lo < ow_n && (ow_lo as i64 * sw - pw + kw * dw) < 0 {
            ow_lo += 1;
        }
        while ow_hi > ow_lo && ((ow_hi - 1) as i64 * sw - pw + kw * dw) >= iw_n as i64 {
            ow_hi -= 1;
        }
        let mut oidx = vec![0usize; last];
        for orow in 0..outer_n {
            // Input offset of the outer coordinates, if inside.
            let mut base = Some(0usize);
            for d in 0..last {
                let ic = oidx[d] as i64 * g.strides[d] as i64 - g.pad_begin[d]
                    + kidx[d] as i64 * g.dil[d] as i64;
                if ic < 0 || ic >= g.input[d] as i64 {
                    base = None;
                    break;
                }
                base = base.map(|b| b + ic as usize * in_strides[d]);
            }
            if let (Some(base), true) = (base, ow_lo < ow_hi) {
                for ch in 0..c {
                    let src = &x[ch * in_n + base..];
                    let dst = &mut cols[(ch * k_n + kk) * p_n + orow * ow_n..][..ow_n];
                    if sw == 1 {
                        let start = (ow_lo as i64 - pw + kw * dw) as usize;
                        dst[ow_lo..ow_hi].copy_from_slice(&src[start..start + (ow_hi - ow_lo)]);
                    } else {
                        for ow in ow_lo..ow_hi {
                            dst[ow] = src[(ow as i64 * sw - pw + kw * dw) as usize];
                        }
                    }
                }
            }
            if last > 0 {
                next_index(&mut oidx, outer_shape);
            }
        }
        next_index(&mut kidx, &g.kernel);
    }
    cols
}

/// A grouped convolution of `x` [n, c, input...] with `w` [m, c/group,
/// kernel...] through im2col and `mm` (c += a * b); returns [n, m, out...].
fn conv_core<T: Copy + Default + AddAssign>(
    x: &[T],
    xs: &[usize],
    w: &[T],
    ws: &[usize],
    g: &Geo,
    group: usize,
    mm: impl Fn(usize, usize, usize, &[T], &[T], &mut [T]),
) -> KResult<Vec<T>> {
    let (n, c, m) = (xs[0], xs[1], ws[0]);
    if group == 0 || c % group != 0 || m % group != 0 || ws[1] * group != c {
        bail!("Conv channels do not fit: input {xs:?}, weights {ws:?}, group {group}");
    }
    let cg = c / group;
    let mg = m / group;
    let in_n: usize = g.input.iter().product();
    let k_n: usize = g.kernel.iter().product();
    let p_n = checked_numel(&g.out)?;
    let kk = cg * k_n;
    check_buffer::<T>("the Conv patches", &[cg, k_n, p_n])?;
    let direct = k_n == 1
        && g.strides.iter().all(|&s| s == 1)
        && g.pad_begin.iter().all(|&p| p == 0)
        && g.out == g.input;
    let mut out = buffer::<T>("the Conv result", &[n, m, p_n])?;
    for b in 0..n {
        for gi in 0..group {
            let xg = &x[(b * c + gi * cg) * in_n..(b * c + (gi + 1) * cg) * in_n];
            let cols_buf;
            let cols: &[T] = if direct {
                xg
            } else {
                cols_buf = im2col(xg, cg, g);
                &cols_buf
            };
            let wg = &w[gi * mg * kk..(gi + 1) * mg * kk];
            let og = &mut out[(b * m + gi * mg) * p_n..(b * m + (gi + 1) * mg) * p_n];
            mm(mg, p_n, kk, wg, cols, og);
        }
    }
    Ok(out)
}

fn kernel_of(cx: &Ctx, w: &Tensor, nd: usize) -> KResult<Vec<usize>> {
    let k = w.shape[2..].to_vec();
    if let Some(ks) = cx.attr_ints("kernel_shape") {
        if ks.len() != nd || ks.iter().zip(&k).any(|(&a, &b)| a != b as i64) {
            bail!("kernel_shape {ks:?} does not match weights {:?}", w.shape);
        }
    }
    Ok(k)
}

fn check_ranks(x: &Tensor, w: &Tensor) -> KResult<usize> {
    if x.rank() < 3 || w.rank() != x.rank() {
        bail!(
            "Conv needs [N, C, spatial...] input and weights of the same rank, got {:?} and {:?}",
            x.shape,
            w.shape
        );
    }
    Ok(x.rank() - 2)
}

fn conv(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let w = tensor(inputs, 1)?;
    let bias = opt_tensor(inputs, 2)?;
    need_float(x, "Conv input")?;
    let nd = check_ranks(x, w)?;
    let kernel = kernel_of(cx, w, nd)?;
    let g = conv_geo(cx, &x.shape[2..], &kernel)?;
    let group = cx.attr_int("group", 1).max(0) as usize;
    let m = w.shape[0];
    if let Some(b) = bias {
        if b.len() != m {
            bail!("Conv bias has {} values for {m} output channels", b.len());
        }
    }
    let mut shape = vec![x.shape[0], m];
    shape.extend(&g.out);
    let p_n: usize = g.out.iter().product();
    let data = if x.elem() == ElemType::F64 {
        let mut r = conv_core(
            &x.to_f64(),
            &x.shape,
            &w.to_f64(),
            &w.shape,
            &g,
            group,
            gemm,
        )?;
        if let Some(b) = bias {
            add_bias(&mut r, &b.to_f64(), p_n);
        }
        Data::F64(r)
    } else {
        let mut r = conv_core(
            &to_f32(&x.data),
            &x.shape,
            &to_f32(&w.data),
            &w.shape,
            &g,
            group,
            gemm,
        )?;
        if let Some(b) = bias {
            add_bias(&mut r, &to_f32(&b.data), p_n);
        }
        from_f32(x.elem(), r)
    };
    Ok(vec![Value::tensor(Tensor::new(shape, data)?)])
}

fn add_bias<T: Copy + AddAssign>(out: &mut [T], b: &[T], p_n: usize) {
    let m = b.len();
    if p_n == 0 || m == 0 {
        return;
    }
    for (i, chunk) in out.chunks_mut(p_n).enumerate() {
        let bv = b[i % m];
        chunk.iter_mut().for_each(|v| *v += bv);
    }
}

fn int_mm(m: usize, n: usize, k: usize, a: &[i64], b: &[i64], c: &mut [i64]) {
    for i in 0..m {
        for t in 0..k {
            let av = a[i * k + t];
            if av == 0 {
                continue;
            }
            let (brow, crow) = (&b[t * n..(t + 1) * n], &mut c[i * n..(i + 1) * n]);
            for (cv, &bv) in crow.iter_mut().zip(brow) {
                *cv = cv.wrapping_add(av.wrapping_mul(bv));
            }
        }
    }
}

/// Integer convolution of zero-point-adjusted operands: (shape, values).
fn int_conv(
    cx: &Ctx,
    x: &Tensor,
    xzp: Option<&Tensor>,
    w: &Tensor,
    wzp: Option<&Tensor>,
) -> KResult<(Vec<usize>, Vec<i64>)> {
    let nd = check_ranks(x, w)?;
    let kernel = kernel_of(cx, w, nd)?;
    let g = conv_geo(cx, &x.shape[2..], &kernel)?;
    let group = cx.attr_int("group", 1).max(0) as usize;
    let mut xv = x.to_i64();
    if let Some(z) = xzp {
        let z = z.to_i64();
        if z.len() != 1 {
            bail!("x_zero_point must be a scalar");
        }
        xv.iter_mut().for_each(|a| *a -= z[0]);
    }
    let mut wv = w.to_i64();
    if let Some(z) = wzp {
        let z = z.to_i64();
        let m = w.shape[0];
        let per = w.len() / m.max(1);
        if z.len() == 1 {
            wv.iter_mut().for_each(|a| *a -= z[0]);
        } else if z.len() == m {
            for (i, a) in wv.iter_mut().enumerate() {
                *a -= z[i / per];
            }
        } else {
            bail!(
                "w_zero_point has {} values for {m} output channels",
                z.len()
            );
        }
    }
    let r = conv_core(&xv, &x.shape, &wv, &w.shape, &g, group, int_mm)?;
    let mut shape = vec![x.shape[0], w.shape[0]];
    shape.extend(&g.out);
    Ok((shape, r))
}

fn conv_integer(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let w = tensor(inputs, 1)?;
    let (shape, r) = int_conv(cx, x, opt_tensor(inputs, 2)?, w, opt_tensor(inputs, 3)?)?;
    Ok(vec![out_i64(ElemType::I32, shape, &r)?])
}

fn qlinear_conv(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let x_scale = tensor(inputs, 1)?;
    let w = tensor(inputs, 3)?;
    let w_scale = tensor(inputs, 4)?;
    let y_scale = tensor(inputs, 6)?;
    let y_zp = opt_tensor(inputs, 7)?;
    let bias = opt_tensor(inputs, 8)?;
    let (shape, mut r) = int_conv(cx, x, opt_tensor(inputs, 2)?, w, opt_tensor(inputs, 5)?)?;
    let m = shape[1];
    let p_n: usize = shape[2..].iter().product();
    if let Some(b) = bias {
        let bv = b.to_i64();
        if bv.len() != m {
            bail!("QLinearConv bias has {} values for {m} channels", bv.len());
        }
        for (i, v) in r.iter_mut().enumerate() {
            *v += bv[(i / p_n.max(1)) % m];
        }
    }
    let (xs, ys) = (to_f32(&x_scale.data), to_f32(&y_scale.data));
    let ws = to_f32(&w_scale.data);
    if xs.len() != 1 || ys.len() != 1 || (ws.len() != 1 && ws.len() != m) {
        bail!("QLinearConv scales must be scalars (w_scale may be per output channel)");
    }
    let out_elem = out_elem(cx, 0, y_zp.map_or(x.elem(), |t| t.elem()));
    let zp = y_zp.map_or(0.0, |z| z.to_f64().first().copied().unwrap_or(0.0));
    let out: Vec<f64> = r
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / p_n.max(1)) % m;
            let s = (xs[0] * ws[if ws.len() == 1 { 0 } else { ch }] / ys[0]) as f64;
            quantize(v as f64 * s + zp, out_elem)
        })
        .collect();
    Ok(vec![out_f64(out_elem, shape, &out)?])
}

fn conv_transpose(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let w = tensor(inputs, 1)?;
    let bias = opt_tensor(inputs, 2)?;
    need_float(x, "ConvTranspose input")?;
    let nd = check_ranks(x, w)?;
    let kernel = kernel_of(cx, w, nd)?;
    let group = cx.attr_int("group", 1).max(1) as usize;
    let (n, c) = (x.shape[0], x.shape[1]);
    if w.shape[0] != c || c % group != 0 {
        bail!(
            "ConvTranspose weights {:?} do not fit input {:?} with group {group}",
            w.shape,
            x.shape
        );
    }
    let mg = w.shape[1];
    let m = mg * group;
    let cg = c / group;
    let strides = attr_sizes(cx, "strides", nd, 1)?;
    let dil = attr_sizes(cx, "dilations", nd, 1)?;
    if strides.contains(&0) || dil.contains(&0) {
        bail!("strides and dilations must be positive");
    }
    let opad = attr_sizes(cx, "output_padding", nd, 0)?;
    let auto_pad = AutoPad::parse(cx.attr_str("auto_pad"))?;
    let out_attr: Option<Vec<usize>> = cx.attr_ints("output_shape").map(|v| {
        let v = if v.len() > nd { &v[v.len() - nd..] } else { v };
        v.iter().map(|&a| a.max(0) as usize).collect()
    });
    if out_attr.as_ref().is_some_and(|o| o.len() != nd) {
        bail!("output_shape has the wrong length");
    }
    let input = &x.shape[2..];
    let pads = cx
        .attr_ints("pads")
        .is_some_and(|p| !p.is_empty())
        .then(|| attr_sizes(cx, "pads", 2 * nd, 0))
        .transpose()?;
    let mut pad_begin = vec![0i64; nd];
    let mut out = vec![0usize; nd];
    for i in 0..nd {
        let axis = Transposed {
            auto_pad,
            window: Window::new(kernel[i] as u64, strides[i] as u64, dil[i] as u64),
            pads: pads.as_ref().map(|p| [p[i] as i64, p[i + nd] as i64]),
            output_padding: opad[i] as u64,
            output_shape: out_attr.as_ref().map(|v| v[i] as u64),
        };
        pad_begin[i] = axis.resolve_pads(input[i] as u64)[0];
        out[i] = axis.output_size(input[i] as u64) as usize;
    }
    let in_n: usize = input.iter().product();
    let k_n: usize = kernel.iter().product();
    let o_n = checked_numel(&out)?;
    check_buffer::<f64>("the ConvTranspose columns", &[mg, k_n, in_n])?;
    let xv = if x.elem() == ElemType::F64 {
        x.to_f64()
    } else {
        to_f32(&x.data).into_iter().map(f64::from).collect()
    };
    let wv = w.to_f64();
    let mut res = buffer::<f64>("the ConvTranspose result", &[n, m, o_n])?;
    let out_strides = crate::tensor::strides(&out);
    // cols[(mo, kk), p] = sum_c w[c, mo, kk] * x[c, p]; then scatter.
    for b in 0..n {
        for gi in 0..group {
            // wt: [mg * k_n, cg]
            let mut wt = vec![0.0f64; mg * k_n * cg];
            for ci in 0..cg {
                for r in 0..mg * k_n {
                    wt[r * cg + ci] = wv[(gi * cg + ci) * mg * k_n + r];
                }
            }
            let xg = &xv[(b * c + gi * cg) * in_n..(b * c + (gi + 1) * cg) * in_n];
            let mut cols = vec![0.0f64; mg * k_n * in_n];
            gemm(mg * k_n, in_n, cg, &wt, xg, &mut cols);
            for mo in 0..mg {
                let dst = &mut res[(b * m + gi * mg + mo) * o_n..][..o_n];
                let mut kidx = vec![0usize; nd];
                for kk in 0..k_n {
                    let src = &cols[(mo * k_n + kk) * in_n..][..in_n];
                    let mut iidx = vec![0usize; nd];
                    for &v in src.iter() {
                        let mut off = 0usize;
                        let mut ok = true;
                        for d in 0..nd {
                            let o = iidx[d] as i64 * strides[d] as i64 - pad_begin[d]
                                + kidx[d] as i64 * dil[d] as i64;
                            if o < 0 || o >= out[d] as i64 {
                                ok = false;
                                break;
                            }
                            off += o as usize * out_strides[d];
                        }
                        if ok {
                            dst[off] += v;
                        }
                        next_index(&mut iidx, input);
                    }
                    next_index(&mut kidx, &kernel);
                }
            }
        }
    }
    if let Some(bt) = bias {
        let bv = bt.to_f64();
        if bv.len() != m {
            bail!(
                "ConvTranspose bias has {} values for {m} channels",
                bv.len()
            );
        }
        add_bias(&mut res, &bv, o_n);
    }
    let mut shape = vec![n, m];
    shape.extend(&out);
    Ok(vec![out_f64(x.elem(), shape, &res)?])
}

fn deform_conv(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let w = tensor(inputs, 1)?;
    let offset = tensor(inputs, 2)?;
    let bias = opt_tensor(inputs, 3)?;
    let mask = opt_tensor(inputs, 4)?;
    need_float(x, "DeformConv input")?;
    if x.rank() != 4 || w.rank() != 4 || offset.rank() != 4 {
        bail!(
            "DeformConv supports 2-D convolution only, got {:?}",
            x.shape
        );
    }
    let (n, c, ih, iw) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (m, cg, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
    let group = cx.attr_int("group", 1).max(1) as usize;
    let og = cx.attr_int("offset_group", 1).max(1) as usize;
    if cg * group != c || m % group != 0 || c % og != 0 {
        bail!(
            "DeformConv channels do not fit: {:?}, {:?}, group {group}, offset_group {og}",
            x.shape,
            w.shape
        );
    }
    let strides = attr_sizes(cx, "strides", 2, 1)?;
    let dil = attr_sizes(cx, "dilations", 2, 1)?;
    let pads = attr_sizes(cx, "pads", 4, 0)?;
    let (oh, ow) = (offset.shape[2], offset.shape[3]);
    let k_n = kh * kw;
    if offset.shape[0] != n || offset.shape[1] != og * 2 * k_n {
        bail!("offset of shape {:?} does not fit", offset.shape);
    }
    if let Some(mk) = mask {
        if mk.shape != [n, og * k_n, oh, ow] {
            bail!("mask of shape {:?} does not fit", mk.shape);
        }
    }
    let xv = x.to_f64();
    let wv = w.to_f64();
    let ov = offset.to_f64();
    let mv = mask.map(|t| t.to_f64());
    let mg = m / group;
    let cpo = c / og;
    let p_n = oh * ow;
    let mut res = buffer::<f64>("the DeformConv result", &[n, m, p_n])?;
    check_buffer::<f64>("the DeformConv samples", &[c, k_n, p_n])?;
    // Sample each input channel at each kernel tap: cols[(ci, kk), p].
    let sample = |plane: &[f64], y: f64, xx: f64| -> f64 {
        let (y0, x0) = (y.floor(), xx.floor());
        let (dy, dx) = (y - y0, xx - x0);
        let mut s = 0.0;
        for (yy, wy) in [(y0, 1.0 - dy), (y0 + 1.0, dy)] {
            for (xc, wx) in [(x0, 1.0 - dx), (x0 + 1.0, dx)] {
                if yy >= 0.0 && yy < ih as f64 && xc >= 0.0 && xc < iw as f64 && wy * wx != 0.0 {
                    s += wy * wx * plane[yy as usize * iw + xc as usize];
                }
            }
        }
        s
    };
    for b in 0..n {
        let mut cols = vec![0.0; c * k_n * p_n];
        for ci in 0..c {
            let gi = ci / cpo;
            let plane = &xv[(b * c + ci) * ih * iw..][..ih * iw];
            for ki in 0..kh {
                for kj in 0..kw {
                    let kk = ki * kw + kj;
                    let off_h = &ov[((b * og + gi) * 2 * k_n + 2 * kk) * p_n..][..p_n];
                    let off_w = &ov[((b * og + gi) * 2 * k_n + 2 * kk + 1) * p_n..][..p_n];
                    for i in 0..oh {
                        for j in 0..ow {
                            let p = i * ow + j;
                            let y = (i * strides[0]) as f64 - pads[0] as f64
                                + (ki * dil[0]) as f64
                                + off_h[p];
                            let xx = (j * strides[1]) as f64 - pads[1] as f64
                                + (kj * dil[1]) as f64
                                + off_w[p];
                            let mut v = sample(plane, y, xx);
                            if let Some(mv) = &mv {
                                v *= mv[((b * og + gi) * k_n + kk) * p_n + p];
                            }
                            cols[(ci * k_n + kk) * p_n + p] = v;
                        }
                    }
                }
            }
        }
        for gi in 0..group {
            let wg = &wv[gi * mg * cg * k_n..(gi + 1) * mg * cg * k_n];
            let cg_cols = &cols[gi * cg * k_n * p_n..(gi + 1) * cg * k_n * p_n];
            let og_out = &mut res[(b * m + gi * mg) * p_n..(b * m + (gi + 1) * mg) * p_n];
            gemm(mg, p_n, cg * k_n, wg, cg_cols, og_out);
        }
    }
    if let Some(bt) = bias {
        let bv = bt.to_f64();
        if bv.len() != m {
            bail!("DeformConv bias has {} values for {m} channels", bv.len());
        }
        add_bias(&mut res, &bv, p_n);
    }
    Ok(vec![out_f64(x.elem(), vec![n, m, oh, ow], &res)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(input: &[usize], kernel: &[usize], s: usize, p: i64) -> Geo {
        let out = input
            .iter()
            .zip(kernel)
            .map(|(&i, &k)| ((i as i64 + 2 * p - k as i64) / s as i64 + 1) as usize)
            .collect();
        Geo {
            input: input.to_vec(),
            kernel: kernel.to_vec(),
            strides: vec![s; input.len()],
            dil: vec![1; input.len()],
            pad_begin: vec![p; input.len()],
            out,
        }
    }

    /// Direct definition of convolution, for checking im2col.
    fn naive(x: &[f64], xs: &[usize], w: &[f64], ws: &[usize], g: &Geo, group: usize) -> Vec<f64> {
        let (n, c, m) = (xs[0], xs[1], ws[0]);
        let (cg, mg) = (c / group, m / group);
        let (ih, iw, kh, kw, oh, ow) = (
            g.input[0],
            g.input[1],
            g.kernel[0],
            g.kernel[1],
            g.out[0],
            g.out[1],
        );
        let mut out = vec![0.0; n * m * oh * ow];
        for b in 0..n {
            for mo in 0..m {
                let gi = mo / mg;
                for i in 0..oh {
                    for j in 0..ow {
                        let mut s = 0.0;
                        for ci in 0..cg {
                            for u in 0..kh {
                                for v in 0..kw {
                                    let y = (i * g.strides[0]) as i64 - g.pad_begin[0]
                                        + (u * g.dil[0]) as i64;
                                    let xx = (j * g.strides[1]) as i64 - g.pad_begin[1]
                                        + (v * g.dil[1]) as i64;
                                    if y >= 0 && xx >= 0 && (y as usize) < ih && (xx as usize) < iw
                                    {
                                        s += x[((b * c + gi * cg + ci) * ih + y as usize) * iw
                                            + xx as usize]
                                            * w[((mo * cg + ci) * kh + u) * kw + v];
                                    }
                                }
                            }
                        }
                        out[((b * m + mo) * oh + i) * ow + j] = s;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn im2col_conv_matches_direct_definition() {
        for &(c, m, group, h, k, s, p, d) in &[
            (3, 4, 1, 7, 3, 1, 1, 1),
            (4, 6, 2, 9, 3, 2, 0, 1),
            (4, 4, 4, 8, 3, 2, 1, 2),
            (2, 5, 1, 6, 1, 1, 0, 1),
            (2, 3, 1, 5, 2, 3, 2, 1),
        ] {
            let mut g = geo(&[h, h + 1], &[k, k], s, p);
            g.dil = vec![d, d];
            let ext = (k - 1) * d + 1;
            g.out = vec![
                (h + 2 * p as usize - ext) / s + 1,
                (h + 1 + 2 * p as usize - ext) / s + 1,
            ];
            let xs = [2, c, h, h + 1];
            let ws = [m, c / group, k, k];
            let x: Vec<f64> = (0..xs.iter().product::<usize>())
                .map(|i| ((i * 7) % 11) as f64 - 5.0)
                .collect();
            let w: Vec<f64> = (0..ws.iter().product::<usize>())
                .map(|i| ((i * 5) % 7) as f64 - 3.0)
                .collect();
            let got = conv_core(&x, &xs, &w, &ws, &g, group, gemm).expect("conv");
            assert_eq!(got, naive(&x, &xs, &w, &ws, &g, group));
        }
    }

    /// Throughput on ResNet-50 layer shapes: `cargo test --release -p
    /// kiln-runtime conv_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn conv_speed() {
        for &(c, m, h, k, s, p) in &[
            (64, 64, 56, 3, 1, 1),
            (256, 64, 56, 1, 1, 0),
            (512, 512, 7, 3, 1, 1),
            (3, 64, 224, 7, 2, 3),
            (128, 128, 28, 3, 1, 1),
        ] {
            let g = geo(&[h, h], &[k, k], s, p as i64);
            let xs = [1, c, h, h];
            let ws = [m, c, k, k];
            let x = vec![0.5f32; c * h * h];
            let w = vec![0.25f32; m * c * k * k];
            let t = std::time::Instant::now();
            let r = conv_core(&x, &xs, &w, &ws, &g, 1, gemm).expect("conv");
            let dt = t.elapsed().as_secs_f64();
            let flop = 2.0 * (m * c * k * k * g.out[0] * g.out[1]) as f64;
            eprintln!(
                "c={c} m={m} h={h} k={k}: {:.1} ms, {:.2} GFLOP/s ({})",
                dt * 1e3,
                flop / dt / 1e9,
                r[0]
            );
        }
    }
}
