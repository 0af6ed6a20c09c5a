//! RoiAlign on f32 maps, the pooling of two-stage detectors (Faster and
//! Mask R-CNN's box and mask heads): per region, a table of bilinear
//! sample points (four taps and weights each) computed once in f64 by the
//! interpreter's [`RoiGrid`], then swept over every
//! channel of the region's image. Regions are independent work units.

use rayon::prelude::*;

use crate::interp::kernels::nn::vision::RoiGrid;

/// A planned RoiAlign: `x [N, C, H, W]`, `rois [R, 4]`, `batch_indices
/// [R]`, result `[R, C, out_h, out_w]`.
#[derive(Clone, Debug)]
pub struct RoiAlign {
    pub n: usize,
    pub c: usize,
    /// The sampling geometry (the interpreter's: one place for it).
    pub grid: RoiGrid,
    pub max: bool,
}

/// One sample point: its four taps (flat offsets in a plane) and weights.
type Tap = ([usize; 4], [f32; 4]);

impl RoiAlign {
    /// Runs for `rois` (`R x 4`, as x1, y1, x2, y2) of images
    /// `batch[r]`, writing all of `out`.
    pub fn run(
        &self,
        x: &[f32],
        rois: &[f32],
        batch: &[i64],
        out: &mut [f32],
        threads: usize,
    ) -> Result<(), String> {
        let g = &self.grid;
        let (c, plane, bins) = (self.c, g.h * g.w, g.out_h * g.out_w);
        let r = batch.len();
        if rois.len() != r * 4 || out.len() != r * c * bins || x.len() != self.n * c * plane {
            return Err("RoiAlign: operand sizes differ from the plan".into());
        }
        if let Some(b) = batch.iter().find(|&&b| b < 0 || b as usize >= self.n) {
            return Err(format!(
                "batch index {b} is out of range for {} images",
                self.n
            ));
        }
        if r == 0 || c == 0 {
            return Ok(());
        }
        let region = |(i, dst): (usize, &mut [f32])| {
            let roi = std::array::from_fn(|k| rois[i * 4 + k] as f64);
            let (samples, per_bin) = g.samples(roi);
            let taps: Vec<Tap> = samples
                .iter()
                .map(|(p, w)| (*p, w.map(|v| v as f32)))
                .collect();
            let img = &x[batch[i] as usize * c * plane..][..c * plane];
            for (src, o) in img.chunks_exact(plane).zip(dst.chunks_exact_mut(bins)) {
                self.pool(src, &taps, per_bin, o);
            }
        };
        if threads > 1 && r > 1 {
            out.par_chunks_mut(c * bins).enumerate().for_each(region);
        } else {
            out.chunks_mut(c * bins).enumerate().for_each(region);
        }
        Ok(())
    }

    /// One channel's bins from its plane.
    fn pool(&self, plane: &[f32], taps: &[Tap], per_bin: usize, out: &mut [f32]) {
        let value = |(pos, wt): &Tap| -> [f32; 4] {
            [
                wt[0] * plane[pos[0]],
                wt[1] * plane[pos[1]],
                wt[2] * plane[pos[2]],
                wt[3] * plane[pos[3]],
            ]
        };
        if per_bin == 0 {
            out.fill(0.0);
            return;
        }
        let count = per_bin as f32;
        for (o, bin) in out.iter_mut().zip(taps.chunks_exact(per_bin)) {
            *o = if self.max {
                // ONNX's max mode: the largest weighted tap of any sample.
                bin.iter()
                    .map(|t| value(t).into_iter().fold(f32::NEG_INFINITY, f32::max))
                    .fold(f32::NEG_INFINITY, f32::max)
            } else {
                bin.iter()
                    .map(|t| value(t).iter().sum::<f32>())
                    .sum::<f32>()
                    / count
            };
        }
    }
}
