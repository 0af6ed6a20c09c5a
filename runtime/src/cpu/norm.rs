//! GroupNormalization and InstanceNormalization (a group per channel) of
//! f32 NCHW... data: each (image, group) is one contiguous run, normalized
//! to zero mean and unit population variance (plus epsilon), then scaled
//! and shifted per channel. Statistics are summed in f64, as the
//! interpreter sums them, in eight independent lanes so the loops
//! vectorize; the runs are threaded.

use rayon::prelude::*;

/// The shape of a group normalization: `n` images of `c` channels of
/// `spatial` positions each, in `groups` groups of channels.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    pub n: usize,
    pub c: usize,
    pub spatial: usize,
    pub groups: usize,
    pub eps: f32,
}

impl GroupNorm {
    /// `out = scale[ch]·(x - mean)/sqrt(var + eps) + bias[ch]` per run;
    /// `scale` and `bias` hold one value per channel, or per group when
    /// `per_group`.
    pub fn run(
        &self,
        x: &[f32],
        scale: &[f32],
        bias: &[f32],
        per_group: bool,
        out: &mut [f32],
        threads: usize,
    ) -> Result<(), String> {
        let (c, g, sp) = (self.c, self.groups, self.spatial);
        if g == 0 || c % g != 0 {
            return Err(format!("{c} channels in {g} groups"));
        }
        let per = if per_group { g } else { c };
        if scale.len() != per || bias.len() != per {
            return Err(format!(
                "scale and bias of {} and {} values",
                scale.len(),
                bias.len()
            ));
        }
        let run_len = c / g * sp;
        let total = self.n * c * sp;
        if x.len() != total || out.len() != total {
            return Err("group norm: operand or result size".into());
        }
        if run_len == 0 {
            return Ok(());
        }
        let eps = self.eps as f64;
        let body = |(r, (xs, ys)): (usize, (&[f32], &mut [f32]))| {
            let (mean, inv) = stats(xs, eps);
            let grp = r % g;
            for (k, (xc, yc)) in xs
                .chunks(sp.max(1))
                .zip(ys.chunks_mut(sp.max(1)))
                .enumerate()
            {
                let p = if per_group { grp } else { grp * (c / g) + k };
                let a = (inv * scale[p] as f64) as f32;
                let b = (bias[p] as f64 - mean * inv * scale[p] as f64) as f32;
                affine(xc, a, b, yc);
            }
        };
        let runs = x.chunks(run_len).zip(out.chunks_mut(run_len)).enumerate();
        if threads > 1 && total >= 1 << 16 {
            runs.par_bridge().for_each(body);
        } else {
            runs.for_each(body);
        }
        Ok(())
    }
}

crate::cpu::simd_fn! {
    /// Mean and 1/sqrt(population variance + eps) of `x`, in f64.
    fn stats(x: &[f32], eps: f64) -> (f64, f64) {
        let len = x.len() as f64;
        let mean = lanes(x, |v| v as f64) / len;
        let var = lanes(x, |v| (v as f64 - mean) * (v as f64 - mean)) / len;
        (mean, 1.0 / (var + eps).sqrt())
    }
}

crate::cpu::simd_fn! {
    /// `y = x·a + b`, one FMA per element where the CPU has them.
    fn affine(x: &[f32], a: f32, b: f32, y: &mut [f32]) {
        for (y, &v) in y.iter_mut().zip(x) {
            *y = v.mul_add(a, b);
        }
    }
}

/// `Σ f(v)` over `x` in eight independent f64 lanes (a loop LLVM can
/// vectorize without reassociating one running sum).
#[inline(always)]
fn lanes(x: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f64>() + chunks.remainder().iter().map(|&v| f(v)).sum::<f64>()
}
