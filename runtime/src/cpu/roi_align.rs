//! RoiAlign on f32 maps, the pooling of two-stage detectors (Faster and
//! Mask R-CNN's box and mask heads): per region, a table of bilinear
//! sample points (four taps and weights each) computed once in f64 exactly
//! as the interpreter's kernel computes them, then swept over every
//! channel of the region's image. Regions are independent work units.

use rayon::prelude::*;

/// A planned RoiAlign: `x [N, C, H, W]`, `rois [R, 4]`, `batch_indices
/// [R]`, result `[R, C, out_h, out_w]`.
#[derive(Clone, Debug)]
pub struct RoiAlign {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub out_h: usize,
    pub out_w: usize,
    /// Samples per bin along each axis; 0: `ceil(bin size)`.
    pub sampling_ratio: usize,
    pub spatial_scale: f64,
    pub max: bool,
    /// `half_pixel` (opset 16's default) rather than `output_half_pixel`.
    pub half_pixel: bool,
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
        let (c, plane, bins) = (self.c, self.h * self.w, self.out_h * self.out_w);
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
            let (taps, per_bin) = self.taps(&rois[i * 4..i * 4 + 4]);
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

    /// The sample table of one region, bin by bin, and samples per bin.
    fn taps(&self, roi: &[f32]) -> (Vec<Tap>, usize) {
        let (h, w) = (self.h, self.w);
        let (oh, ow) = (self.out_h, self.out_w);
        let scale = self.spatial_scale;
        let off = if self.half_pixel { 0.5 } else { 0.0 };
        let sw = roi[0] as f64 * scale - off;
        let sh = roi[1] as f64 * scale - off;
        let mut rw = roi[2] as f64 * scale - off - sw;
        let mut rh = roi[3] as f64 * scale - off - sh;
        if !self.half_pixel {
            rw = rw.max(1.0);
            rh = rh.max(1.0);
        }
        let (bh, bw) = (rh / oh as f64, rw / ow as f64);
        let grid = |extent: f64| match self.sampling_ratio {
            0 => extent.ceil().max(0.0) as usize,
            s => s,
        };
        let (gh, gw) = (grid(bh), grid(bw));
        let mut taps = Vec::with_capacity(oh * ow * gh * gw);
        for ph in 0..oh {
            for pw in 0..ow {
                for iy in 0..gh {
                    let yy = sh + ph as f64 * bh + (iy as f64 + 0.5) * bh / gh as f64;
                    for ix in 0..gw {
                        let xx = sw + pw as f64 * bw + (ix as f64 + 0.5) * bw / gw as f64;
                        taps.push(bilinear(yy, xx, h, w));
                    }
                }
            }
        }
        (taps, gh * gw)
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

/// The four taps and weights of a sample at (`yy`, `xx`) of an `h x w`
/// plane; points more than a pixel outside weigh nothing.
fn bilinear(yy: f64, xx: f64, h: usize, w: usize) -> Tap {
    if yy < -1.0 || yy > h as f64 || xx < -1.0 || xx > w as f64 {
        return ([0; 4], [0.0; 4]);
    }
    let (mut y, mut x) = (yy.max(0.0), xx.max(0.0));
    let (mut yl, mut xl) = (y as usize, x as usize);
    let yh = if yl + 1 >= h {
        yl = h - 1;
        y = yl as f64;
        yl
    } else {
        yl + 1
    };
    let xh = if xl + 1 >= w {
        xl = w - 1;
        x = xl as f64;
        xl
    } else {
        xl + 1
    };
    let (ly, lx) = (y - yl as f64, x - xl as f64);
    let (hy, hx) = (1.0 - ly, 1.0 - lx);
    (
        [yl * w + xl, yl * w + xh, yh * w + xl, yh * w + xh],
        [
            (hy * hx) as f32,
            (hy * lx) as f32,
            (ly * hx) as f32,
            (ly * lx) as f32,
        ],
    )
}
