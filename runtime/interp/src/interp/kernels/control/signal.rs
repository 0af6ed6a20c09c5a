//! Signal processing: `DFT`, `STFT`, the window generators and
//! `MelWeightMatrix`. Complex tensors are real tensors with a trailing
//! dimension of 2 (real, imaginary) or 1 (real only).

use std::f64::consts::PI;

use kiln_ir::ElemType;

use super::common::{from_f64, opt_scalar_i64, out_elem, scalar_f64};
use crate::interp::kernels::ctx::{bail, opt_tensor, tensor, Ctx, KResult, KernelFn};
use crate::interp::kernels::shape::norm_axis;
use crate::tensor::numel;
use crate::value::Value;

pub fn lookup(op: &str) -> Option<KernelFn> {
    Some(match op {
        "DFT" => dft,
        "STFT" => stft,
        "HannWindow" => hann,
        "HammingWindow" => hamming,
        "BlackmanWindow" => blackman,
        "MelWeightMatrix" => mel_weight_matrix,
        _ => return None,
    })
}

/// One-dimensional DFT of `input` (`n` complex points) to `len` points
/// (zero-padded or truncated input), forward or inverse (scaled by 1/len).
/// Direct summation with a twiddle table: O(len * n).
fn dft_line(
    input: &[[f64; 2]],
    len: usize,
    inverse: bool,
    twiddle: &[[f64; 2]],
    out: &mut [[f64; 2]],
) {
    let n = input.len().min(len);
    let sign = if inverse { 1.0 } else { -1.0 };
    for (k, o) in out.iter_mut().enumerate() {
        let (mut re, mut im) = (0.0, 0.0);
        for (t, x) in input[..n].iter().enumerate() {
            let [c, s] = twiddle[(k * t) % len];
            let s = sign * s;
            re += x[0] * c - x[1] * s;
            im += x[0] * s + x[1] * c;
        }
        if inverse {
            re /= len as f64;
            im /= len as f64;
        }
        *o = [re, im];
    }
}

fn twiddles(len: usize) -> Vec<[f64; 2]> {
    (0..len)
        .map(|j| {
            let a = 2.0 * PI * j as f64 / len as f64;
            [a.cos(), a.sin()]
        })
        .collect()
}

fn complex_points(v: &[f64], last: usize) -> KResult<Vec<[f64; 2]>> {
    match last {
        1 => Ok(v.iter().map(|&r| [r, 0.0]).collect()),
        2 => Ok(v.chunks_exact(2).map(|c| [c[0], c[1]]).collect()),
        d => bail!("the last dimension must be 1 (real) or 2 (complex), got {d}"),
    }
}

fn dft(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let r = x.rank();
    if r < 2 {
        bail!(
            "the input must have rank 2 or more, got shape {:?}",
            x.shape
        );
    }
    let axis = norm_axis(opt_scalar_i64(inputs, 2)?.unwrap_or(-2), r)?;
    if axis == r - 1 {
        bail!("the DFT axis cannot be the last (real/imaginary) dimension");
    }
    let inverse = ctx.attr_int("inverse", 0) != 0;
    let onesided = ctx.attr_int("onesided", 0) != 0;
    let n = x.shape[axis];
    let len = match opt_scalar_i64(inputs, 1)? {
        Some(l) if l > 0 => l as usize,
        Some(l) => bail!("dft_length {l} must be positive"),
        None => n,
    };
    let pts = complex_points(&x.to_f64(), x.shape[r - 1])?;
    let outer = numel(&x.shape[..axis]);
    let inner = numel(&x.shape[axis + 1..r - 1]);
    let keep = if onesided { len / 2 + 1 } else { len };
    let tw = twiddles(len);
    let mut out = vec![0.0; outer * keep * inner * 2];
    let mut line = vec![[0.0; 2]; n];
    let mut res = vec![[0.0; 2]; len];
    for o in 0..outer {
        for i in 0..inner {
            for (t, p) in line.iter_mut().enumerate() {
                *p = pts[(o * n + t) * inner + i];
            }
            dft_line(&line, len, inverse, &tw, &mut res);
            for (k, c) in res[..keep].iter().enumerate() {
                let at = ((o * keep + k) * inner + i) * 2;
                out[at] = c[0];
                out[at + 1] = c[1];
            }
        }
    }
    let mut shape = x.shape.clone();
    shape[axis] = keep;
    shape[r - 1] = 2;
    Ok(vec![Value::tensor(from_f64(x.elem(), shape, &out)?)])
}

fn stft(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let [batch, length, last] = x.shape[..] else {
        bail!(
            "the signal must have shape [batch, length, 1 or 2], got {:?}",
            x.shape
        )
    };
    let step = opt_scalar_i64(inputs, 1)?.ok_or("operand 1 (frame_step) is required")?;
    if step <= 0 {
        bail!("frame_step {step} must be positive");
    }
    let step = step as usize;
    let window = opt_tensor(inputs, 2)?.map(|w| w.to_f64());
    let frame_length = match (opt_scalar_i64(inputs, 3)?, &window) {
        (Some(l), _) if l > 0 => l as usize,
        (Some(l), _) => bail!("frame_length {l} must be positive"),
        (None, Some(w)) => w.len(),
        (None, None) => length,
    };
    let window = window.unwrap_or_else(|| vec![1.0; frame_length]);
    if frame_length > length {
        bail!("frame_length {frame_length} exceeds the signal length {length}");
    }
    let onesided = ctx.attr_int("onesided", 1) != 0;
    let frames = 1 + (length - frame_length) / step;
    let bins = if onesided {
        frame_length / 2 + 1
    } else {
        frame_length
    };
    let pts = complex_points(&x.to_f64(), last)?;
    let tw = twiddles(frame_length);
    let mut out = vec![0.0; batch * frames * bins * 2];
    let mut line = vec![[0.0; 2]; window.len()];
    let mut res = vec![[0.0; 2]; frame_length];
    for b in 0..batch {
        for f in 0..frames {
            let begin = f * step;
            for (t, (p, w)) in line.iter_mut().zip(&window).enumerate() {
                *p = match pts.get(b * length + begin + t) {
                    Some(c) if begin + t < length => [c[0] * w, c[1] * w],
                    _ => [0.0, 0.0],
                };
            }
            dft_line(&line, frame_length, false, &tw, &mut res);
            for (k, c) in res[..bins].iter().enumerate() {
                let at = ((b * frames + f) * bins + k) * 2;
                out[at] = c[0];
                out[at + 1] = c[1];
            }
        }
    }
    Ok(vec![Value::tensor(from_f64(
        x.elem(),
        vec![batch, frames, bins, 2],
        &out,
    )?)])
}

/// A window of `size` points `f(n, N)` with `N` the period (size, or
/// size - 1 for a symmetric window).
fn window(ctx: &mut Ctx, inputs: &[Option<Value>], f: fn(f64, f64) -> f64) -> KResult<Vec<Value>> {
    let size = opt_scalar_i64(inputs, 0)?.ok_or("operand 0 (size) is required")?;
    if size < 0 {
        bail!("window size {size} is negative");
    }
    let periodic = ctx.attr_int("periodic", 1) != 0;
    let n = if periodic { size } else { size - 1 } as f64;
    let v: Vec<f64> = (0..size).map(|i| f(i as f64, n)).collect();
    Ok(vec![Value::tensor(from_f64(
        out_elem(ctx, 0, ElemType::F32),
        vec![size as usize],
        &v,
    )?)])
}

fn hann(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    window(ctx, inputs, |i, n| (PI * i / n).sin().powi(2))
}

fn hamming(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    window(ctx, inputs, |i, n| {
        let a = 25.0 / 46.0;
        a - (1.0 - a) * (2.0 * PI * i / n).cos()
    })
}

fn blackman(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    window(ctx, inputs, |i, n| {
        0.42 - 0.5 * (2.0 * PI * i / n).cos() + 0.08 * (4.0 * PI * i / n).cos()
    })
}

fn mel_weight_matrix(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let num_mel = opt_scalar_i64(inputs, 0)?.ok_or("num_mel_bins is required")?;
    let dft_length = opt_scalar_i64(inputs, 1)?.ok_or("dft_length is required")?;
    let sample_rate = opt_scalar_i64(inputs, 2)?.ok_or("sample_rate is required")?;
    let lower = scalar_f64(inputs, 3)?;
    let upper = scalar_f64(inputs, 4)?;
    if num_mel <= 0 || dft_length <= 0 || sample_rate <= 0 {
        bail!("num_mel_bins, dft_length and sample_rate must be positive");
    }
    let (num_mel, spec_bins) = (num_mel as usize, (dft_length / 2 + 1) as usize);
    let mel = |hz: f64| 2595.0 * (1.0 + hz / 700.0).log10();
    let (lo, hi) = (mel(lower), mel(upper));
    let step = (hi - lo) / (num_mel + 2) as f64;
    let bins: Vec<i64> = (0..num_mel + 2)
        .map(|i| {
            let hz = 700.0 * (10f64.powf((i as f64 * step + lo) / 2595.0) - 1.0);
            (((dft_length + 1) as f64 * hz) / sample_rate as f64).floor() as i64
        })
        .collect();
    let mut out = vec![0.0; spec_bins * num_mel];
    let mut set = |j: i64, i: usize, v: f64| -> KResult<()> {
        if j < 0 || j as usize >= spec_bins {
            bail!("frequency bin {j} is outside the {spec_bins} spectrogram bins");
        }
        out[j as usize * num_mel + i] = v;
        Ok(())
    };
    for i in 0..num_mel {
        let (l, c, h) = (bins[i], bins[i + 1], bins[i + 2]);
        if c == l {
            set(c, i, 1.0)?;
        } else {
            for j in l..=c {
                set(j, i, (j - l) as f64 / (c - l) as f64)?;
            }
        }
        if h > c {
            for j in c..h {
                set(j, i, (h - j) as f64 / (h - c) as f64)?;
            }
        }
    }
    Ok(vec![Value::tensor(from_f64(
        out_elem(ctx, 0, ElemType::F32),
        vec![spec_bins, num_mel],
        &out,
    )?)])
}
