//! Calibration: the range each activation is quantized over, from the
//! values it takes on calibration inputs.
//!
//! Memory is tensors × bins, never samples × activations: a first pass
//! over the data keeps each tensor's minimum and maximum; for the methods
//! that need a distribution, a second pass fills a fixed histogram of
//! [`BINS`] bins over that range. A method then picks a clipping range
//! from the histogram:
//! - `minmax`: the whole observed range;
//! - `percentile`: the range holding the central `p` % of the values
//!   (one-sided for non-negative tensors);
//! - `entropy`: the clipping that minimizes the KL divergence between the
//!   histogram and its quantized form (TensorRT's method, for the two-sided
//!   u8 grid: outliers fold into the edge bins of the reference, not of
//!   the candidate);
//! - `mse`: the clipping that minimizes the expected squared quantization
//!   error, clipping included.
//!
//! Every range contains zero (an asymmetric u8 grid represents 0 exactly,
//! which padding and Relu need).

/// Histogram bins per tensor (TensorRT's and onnxruntime's count).
pub const BINS: usize = 2048;

/// Levels of the u8 grid activations are quantized to.
const LEVELS: f64 = 255.0;

/// How a tensor's range is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    MinMax,
    Percentile(f64),
    Entropy,
    Mse,
}

impl Method {
    /// Whether the method needs the histogram pass.
    pub fn needs_histogram(self) -> bool {
        self != Method::MinMax
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::MinMax => "minmax",
            Method::Percentile(_) => "percentile",
            Method::Entropy => "entropy",
            Method::Mse => "mse",
        }
    }
}

/// What calibration has seen of one tensor.
#[derive(Clone, Debug)]
pub struct Observer {
    pub min: f32,
    pub max: f32,
    /// Non-finite values seen (left out of the range).
    pub non_finite: u64,
    hist: Vec<u64>,
    /// The histogram's range, fixed when it starts: [`Observer::range_lo`],
    /// [`Observer::range_hi`] of the first pass.
    hist_lo: f64,
    hist_hi: f64,
}

impl Default for Observer {
    fn default() -> Self {
        Observer {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            non_finite: 0,
            hist: Vec::new(),
            hist_lo: 0.0,
            hist_hi: 0.0,
        }
    }
}

impl Observer {
    /// First pass: the extremes.
    pub fn observe_range(&mut self, xs: &[f32]) {
        let (mut lo, mut hi) = (self.min, self.max);
        for &x in xs {
            if x.is_finite() {
                lo = lo.min(x);
                hi = hi.max(x);
            } else {
                self.non_finite += 1;
            }
        }
        self.min = lo;
        self.max = hi;
    }

    /// The observed range widened to contain zero.
    pub fn range_lo(&self) -> f64 {
        if self.min.is_finite() {
            (self.min as f64).min(0.0)
        } else {
            0.0
        }
    }

    pub fn range_hi(&self) -> f64 {
        if self.max.is_finite() {
            (self.max as f64).max(0.0)
        } else {
            0.0
        }
    }

    /// Second pass: the histogram over the first pass's range (values
    /// outside it, from inputs the first pass did not see, land in the
    /// edge bins).
    pub fn observe_histogram(&mut self, xs: &[f32]) {
        if self.hist.is_empty() {
            self.hist = vec![0; BINS];
            self.hist_lo = self.range_lo();
            self.hist_hi = self.range_hi();
        }
        let width = self.hist_hi - self.hist_lo;
        if width <= 0.0 {
            self.hist[0] += xs.len() as u64;
            return;
        }
        let k = BINS as f64 / width;
        for &x in xs {
            if x.is_finite() {
                let b = ((x as f64 - self.hist_lo) * k) as i64;
                self.hist[b.clamp(0, BINS as i64 - 1) as usize] += 1;
            }
        }
    }

    /// The range `method` picks (`lo <= 0 <= hi`).
    pub fn range(&self, method: Method) -> (f32, f32) {
        let (lo, hi) = (self.range_lo(), self.range_hi());
        if hi - lo <= 0.0 || self.hist.is_empty() || method == Method::MinMax {
            return (lo as f32, hi as f32);
        }
        let (lo, hi) = match method {
            Method::MinMax => (lo, hi),
            Method::Percentile(p) => self.percentile_range(p),
            Method::Entropy => self.search(kl_cost),
            Method::Mse => self.search(mse_cost),
        };
        (lo.min(0.0) as f32, hi.max(0.0) as f32)
    }

    fn bin_width(&self) -> f64 {
        (self.hist_hi - self.hist_lo) / BINS as f64
    }

    fn percentile_range(&self, p: f64) -> (f64, f64) {
        let total: u64 = self.hist.iter().sum();
        if total == 0 {
            return (self.hist_lo, self.hist_hi);
        }
        let tail = total as f64 * (1.0 - p / 100.0).max(0.0);
        let w = self.bin_width();
        // Each side drops at most `tail` values; a side that is zero (a
        // non-negative tensor) stays zero.
        let mut lo = self.hist_lo;
        if self.hist_lo < 0.0 {
            let mut cum = 0u64;
            for (b, &c) in self.hist.iter().enumerate() {
                if (cum + c) as f64 > tail {
                    lo = self.hist_lo + b as f64 * w;
                    break;
                }
                cum += c;
            }
        }
        let mut hi = self.hist_hi;
        if self.hist_hi > 0.0 {
            let mut cum = 0u64;
            for (b, &c) in self.hist.iter().enumerate().rev() {
                if (cum + c) as f64 > tail {
                    hi = self.hist_lo + (b + 1) as f64 * w;
                    break;
                }
                cum += c;
            }
        }
        (lo, hi)
    }

    /// The candidate clipping (the histogram's range scaled by `t`, for
    /// `t` from 1/8 — one bin per grid level — to 1) with the least cost.
    fn search(&self, cost: fn(&Observer, f64, f64) -> f64) -> (f64, f64) {
        let mut best = (f64::INFINITY, self.hist_lo, self.hist_hi);
        let first = BINS / 8;
        for k in (first..=BINS).step_by(8) {
            let t = k as f64 / BINS as f64;
            let (lo, hi) = (self.hist_lo * t, self.hist_hi * t);
            let c = cost(self, lo, hi);
            // Ties go to the wider range (less clipping).
            if c <= best.0 {
                best = (c, lo, hi);
            }
        }
        (best.1, best.2)
    }

    /// Bin centers with their counts.
    fn bins(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let w = self.bin_width();
        self.hist
            .iter()
            .enumerate()
            .map(move |(b, &c)| (self.hist_lo + (b as f64 + 0.5) * w, c))
    }
}

/// The u8 grid of a range: scale and zero point (onnxruntime's formula).
pub fn u8_params(lo: f32, hi: f32) -> (f32, u8) {
    let (lo, hi) = (lo.min(0.0) as f64, hi.max(0.0) as f64);
    if hi - lo <= 0.0 {
        return (1.0, 0);
    }
    let scale = (hi - lo) / LEVELS;
    let zero = (-lo / scale).round_ties_even().clamp(0.0, LEVELS);
    (scale as f32, zero as u8)
}

/// `x` quantized to the u8 grid and back.
pub fn fake_quant_u8(x: f32, scale: f32, zero: u8) -> f32 {
    let q = (x / scale).round_ties_even() + zero as f32;
    (q.clamp(0.0, 255.0) - zero as f32) * scale
}

fn mse_cost(o: &Observer, lo: f64, hi: f64) -> f64 {
    let (scale, zero) = u8_params(lo as f32, hi as f32);
    o.bins()
        .filter(|&(_, c)| c > 0)
        .map(|(x, c)| {
            let e = x - fake_quant_u8(x as f32, scale, zero) as f64;
            c as f64 * e * e
        })
        .sum()
}

fn kl_cost(o: &Observer, lo: f64, hi: f64) -> f64 {
    let w = o.bin_width();
    // The bins inside the candidate range.
    let b0 = (((lo - o.hist_lo) / w).round() as usize).min(BINS - 1);
    let b1 = (((hi - o.hist_lo) / w).round() as usize).clamp(b0 + 1, BINS);
    let inside = &o.hist[b0..b1];
    // Reference: outliers folded into the edge bins.
    let mut p: Vec<f64> = inside.iter().map(|&c| c as f64).collect();
    let below: u64 = o.hist[..b0].iter().sum();
    let above: u64 = o.hist[b1..].iter().sum();
    p[0] += below as f64;
    let last = p.len() - 1;
    p[last] += above as f64;
    // Candidate: the unfolded bins merged per grid level, spread evenly
    // over each level's non-empty bins.
    let (scale, zero) = u8_params(lo as f32, hi as f32);
    let level = |b: usize| {
        let x = o.hist_lo + (b0 + b) as f64 * w + w / 2.0;
        ((x / scale as f64).round_ties_even() + zero as f64).clamp(0.0, LEVELS) as usize
    };
    let mut sums = [0f64; 256];
    let mut nonzero = [0u32; 256];
    for (b, &c) in inside.iter().enumerate() {
        let l = level(b);
        sums[l] += c as f64;
        if c > 0 {
            nonzero[l] += 1;
        }
    }
    let ptotal: f64 = p.iter().sum();
    let qtotal: f64 = inside.iter().map(|&c| c as f64).sum();
    if ptotal == 0.0 || qtotal == 0.0 {
        return f64::INFINITY;
    }
    let mut kl = 0.0;
    for (b, &pb) in p.iter().enumerate() {
        if pb == 0.0 {
            continue;
        }
        let l = level(b);
        let q = if inside[b] > 0 {
            sums[l] / nonzero[l] as f64
        } else {
            0.0
        };
        // A reference bin the candidate leaves empty (an edge bin holding
        // only outliers) costs as if it had a tiny share.
        let q = (q / qtotal).max(1e-12);
        let pn = pb / ptotal;
        kl += pn * (pn / q).ln();
    }
    kl
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observe(xs: &[f32]) -> Observer {
        let mut o = Observer::default();
        o.observe_range(xs);
        o.observe_histogram(xs);
        o
    }

    /// A bell of values with a few far outliers: minmax keeps the
    /// outliers, every other method clips them.
    #[test]
    fn methods_clip_outliers_minmax_keeps() {
        let mut xs: Vec<f32> = (0..20000)
            .map(|i| {
                let u = (i as f32 + 0.5) / 20000.0;
                // A triangle distribution on [-1, 1].
                if u < 0.5 {
                    -1.0 + (2.0 * u).sqrt()
                } else {
                    1.0 - (2.0 - 2.0 * u).sqrt()
                }
            })
            .collect();
        xs.extend([40.0, -30.0]);
        let o = observe(&xs);
        assert_eq!(o.range(Method::MinMax), (-30.0, 40.0));
        for m in [Method::Percentile(99.9), Method::Entropy] {
            let (lo, hi) = o.range(m);
            assert!(lo < -0.5 && hi > 0.5, "{m:?} clipped the bulk: {lo} {hi}");
            assert!(
                lo > -15.0 && hi < 15.0,
                "{m:?} kept the outliers: {lo} {hi}"
            );
        }
        // Clipping two values by ~35 costs more squared error than the
        // coarser grid: mse keeps (nearly) the whole range here.
        let (lo, hi) = o.range(Method::Mse);
        assert!(lo >= -30.0 && hi <= 40.0 && hi > 20.0, "{lo} {hi}");
    }

    /// A long exponential tail: every method but minmax trims it.
    #[test]
    fn long_tails_are_trimmed() {
        let xs: Vec<f32> = (0..100_000)
            .map(|i| -((i as f32 + 0.5) / 100_000.0).ln())
            .collect();
        let o = observe(&xs);
        let (_, max) = o.range(Method::MinMax);
        for m in [Method::Percentile(99.99), Method::Entropy, Method::Mse] {
            let (lo, hi) = o.range(m);
            assert_eq!(lo, 0.0);
            assert!(hi < 0.95 * max && hi > 0.5 * max, "{m:?}: {hi} of {max}");
        }
    }

    #[test]
    fn non_negative_tensors_stay_one_sided_and_ranges_hold_zero() {
        let xs: Vec<f32> = (0..5000).map(|i| (i % 100) as f32 / 10.0 + 1.0).collect();
        let o = observe(&xs);
        for m in [
            Method::MinMax,
            Method::Percentile(99.0),
            Method::Entropy,
            Method::Mse,
        ] {
            let (lo, hi) = o.range(m);
            assert_eq!(lo, 0.0, "{m:?}");
            assert!(hi > 5.0, "{m:?}: {hi}");
        }
        let o = observe(&[0.0; 10]);
        assert_eq!(o.range(Method::Entropy), (0.0, 0.0));
        assert_eq!(u8_params(0.0, 0.0), (1.0, 0));
    }

    #[test]
    fn u8_grid_represents_zero_exactly() {
        let (s, z) = u8_params(-1.3, 2.9);
        assert_eq!(fake_quant_u8(0.0, s, z), 0.0);
        assert!((fake_quant_u8(2.9, s, z) - 2.9).abs() <= s / 2.0 + 1e-6);
        assert_eq!(fake_quant_u8(100.0, s, z), (255.0 - z as f32) * s);
    }
}
