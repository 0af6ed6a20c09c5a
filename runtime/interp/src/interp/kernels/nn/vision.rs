//! Detection ops: RoiAlign (avg/max, half_pixel or output_half_pixel, as
//! the ONNX reference samples) and NonMaxSuppression.

use kiln_ir::ElemType;

use super::common::{need_float, out_f64, out_i64};
use crate::interp::kernels::ctx::{bail, opt_tensor, tensor, Ctx, KResult, KernelFn};
use crate::value::Value;

pub fn lookup(op: &str) -> Option<KernelFn> {
    Some(match op {
        "RoiAlign" => roi_align,
        "NonMaxSuppression" => nms,
        _ => return None,
    })
}

fn roi_align(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let rois = tensor(inputs, 1)?;
    let bidx = tensor(inputs, 2)?;
    need_float(x, "RoiAlign input")?;
    if x.rank() != 4 || rois.rank() != 2 || rois.shape[1] != 4 || bidx.len() != rois.shape[0] {
        bail!(
            "RoiAlign shapes do not fit: X {:?}, rois {:?}, batch_indices {:?}",
            x.shape,
            rois.shape,
            bidx.shape
        );
    }
    let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    if h == 0 || w == 0 {
        bail!("RoiAlign input has an empty feature map: {:?}", x.shape);
    }
    let oh = cx.attr_int("output_height", 1).max(1) as usize;
    let ow = cx.attr_int("output_width", 1).max(1) as usize;
    let ratio = cx.attr_int("sampling_ratio", 0);
    let scale = cx.attr_float("spatial_scale", 1.0) as f64;
    let is_max = cx
        .attr_str("mode")
        .unwrap_or("avg")
        .eq_ignore_ascii_case("max");
    let half_pixel = cx
        .attr_str("coordinate_transformation_mode")
        .unwrap_or("half_pixel")
        .eq_ignore_ascii_case("half_pixel");
    let xv = x.to_f64();
    let rv = rois.to_f64();
    let bi = bidx.to_i64();
    let nr = rois.shape[0];
    let mut out = vec![0.0; nr * c * oh * ow];
    let grid = RoiGrid {
        h,
        w,
        out_h: oh,
        out_w: ow,
        sampling_ratio: ratio.max(0) as usize,
        spatial_scale: scale,
        half_pixel,
    };
    for r in 0..nr {
        let b = bi[r];
        if b < 0 || b as usize >= n {
            bail!("batch index {b} is out of range for {n} images");
        }
        let roi = [rv[r * 4], rv[r * 4 + 1], rv[r * 4 + 2], rv[r * 4 + 3]];
        let (pre, per_bin) = grid.samples(roi);
        let (gh_gw, count) = (per_bin, per_bin.max(1) as f64);
        for ch in 0..c {
            let plane = &xv[(b as usize * c + ch) * h * w..][..h * w];
            let mut k = 0;
            for ph in 0..oh {
                for pw in 0..ow {
                    let mut acc: Option<f64> = None;
                    let mut sum = 0.0;
                    for _ in 0..gh_gw {
                        let (pos, wt) = &pre[k];
                        k += 1;
                        if is_max {
                            let v = (0..4)
                                .map(|q| wt[q] * plane[pos[q]])
                                .fold(f64::NEG_INFINITY, f64::max);
                            acc = Some(acc.map_or(v, |a: f64| a.max(v)));
                        } else {
                            sum += (0..4).map(|q| wt[q] * plane[pos[q]]).sum::<f64>();
                        }
                    }
                    out[((r * c + ch) * oh + ph) * ow + pw] = if is_max {
                        acc.unwrap_or(0.0)
                    } else {
                        sum / count
                    };
                }
            }
        }
    }
    Ok(vec![out_f64(x.elem(), vec![nr, c, oh, ow], &out)?])
}

/// Where RoiAlign samples one region: per output bin, a grid of points,
/// each read bilinearly from four taps. The CPU backend's kernel uses the
/// same table (one place for the op's geometry).
#[derive(Clone, Copy, Debug)]
pub struct RoiGrid {
    pub h: usize,
    pub w: usize,
    pub out_h: usize,
    pub out_w: usize,
    /// Samples per bin along each axis; 0: `ceil(bin size)`.
    pub sampling_ratio: usize,
    pub spatial_scale: f64,
    /// `half_pixel` (opset 16's default) rather than `output_half_pixel`.
    pub half_pixel: bool,
}

/// A sample's four taps (flat offsets in an `h x w` plane) and weights.
pub type RoiSample = ([usize; 4], [f64; 4]);

impl RoiGrid {
    /// The samples of region `roi` (x1, y1, x2, y2), bin after bin, and
    /// how many each bin has.
    pub fn samples(&self, roi: [f64; 4]) -> (Vec<RoiSample>, usize) {
        let (h, w, oh, ow) = (self.h, self.w, self.out_h, self.out_w);
        let scale = self.spatial_scale;
        let off = if self.half_pixel { 0.5 } else { 0.0 };
        let sw = roi[0] * scale - off;
        let sh = roi[1] * scale - off;
        let mut rw = roi[2] * scale - off - sw;
        let mut rh = roi[3] * scale - off - sh;
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
        let mut pre = Vec::with_capacity(oh * ow * gh * gw);
        for ph in 0..oh {
            for pw in 0..ow {
                for iy in 0..gh {
                    let yy = sh + ph as f64 * bh + (iy as f64 + 0.5) * bh / gh as f64;
                    for ix in 0..gw {
                        let xx = sw + pw as f64 * bw + (ix as f64 + 0.5) * bw / gw as f64;
                        pre.push(bilinear(yy, xx, h, w));
                    }
                }
            }
        }
        (pre, gh * gw)
    }
}

/// The taps and weights of a sample at (`yy`, `xx`); points more than a
/// pixel outside weigh nothing.
fn bilinear(yy: f64, xx: f64, h: usize, w: usize) -> RoiSample {
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
        [hy * hx, hy * lx, ly * hx, ly * lx],
    )
}

fn nms(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let boxes = tensor(inputs, 0)?;
    let scores = tensor(inputs, 1)?;
    let max_out = opt_tensor(inputs, 2)?
        .and_then(|t| t.to_i64().first().copied())
        .unwrap_or(0)
        .max(0) as usize;
    let iou_th = opt_tensor(inputs, 3)?
        .and_then(|t| t.to_f64().first().copied())
        .unwrap_or(0.0);
    let score_th = opt_tensor(inputs, 4)?.and_then(|t| t.to_f64().first().copied());
    let center = cx.attr_int("center_point_box", 0) != 0;
    if boxes.rank() != 3
        || boxes.shape[2] != 4
        || scores.rank() != 3
        || scores.shape[0] != boxes.shape[0]
        || scores.shape[2] != boxes.shape[1]
    {
        bail!(
            "NonMaxSuppression shapes do not fit: boxes {:?}, scores {:?}",
            boxes.shape,
            scores.shape
        );
    }
    let dims = (boxes.shape[0], boxes.shape[1], scores.shape[1]);
    let out = nms_select(
        &boxes.to_f64(),
        &scores.to_f64(),
        dims,
        max_out,
        iou_th,
        score_th,
        center,
    );
    let k = out.len() / 3;
    Ok(vec![out_i64(ElemType::I64, vec![k, 3], &out)?])
}

/// NonMaxSuppression's selection: `[batch, class, box]` triples, flat, of
/// `boxes` (`[nb, nbox, 4]`) by `scores` (`[nb, ncls, nbox]`), where
/// `dims` is `(nb, nbox, ncls)`; at most `max_out` per batch and class.
/// The CPU backend's native step runs this too.
pub fn nms_select(
    bv: &[f64],
    sv: &[f64],
    (nb, nbox, ncls): (usize, usize, usize),
    max_out: usize,
    iou_th: f64,
    score_th: Option<f64>,
    center: bool,
) -> Vec<i64> {
    // Corners (y1, x1, y2, x2) ordered min/max.
    let corners = |b: usize, i: usize| -> [f64; 4] {
        let o = (b * nbox + i) * 4;
        let (a, bb, cc, d) = (bv[o], bv[o + 1], bv[o + 2], bv[o + 3]);
        if center {
            [bb - d / 2.0, a - cc / 2.0, bb + d / 2.0, a + cc / 2.0]
        } else {
            [a.min(cc), bb.min(d), a.max(cc), bb.max(d)]
        }
    };
    let mut out: Vec<i64> = Vec::new();
    for b in 0..nb {
        let boxes: Vec<[f64; 4]> = (0..nbox).map(|i| corners(b, i)).collect();
        for cl in 0..ncls {
            let s = &sv[(b * ncls + cl) * nbox..][..nbox];
            let mut cand: Vec<usize> = (0..nbox)
                .filter(|&i| score_th.is_none_or(|t| s[i] > t))
                .collect();
            cand.sort_by(|&i, &j| s[j].total_cmp(&s[i]).then(i.cmp(&j)));
            let mut sel = Selected::new(&boxes, &cand);
            for i in cand {
                if sel.len() >= max_out {
                    break;
                }
                if !sel.suppresses(&boxes, boxes[i], iou_th) {
                    sel.add(&boxes, i);
                    out.extend([b as i64, cl as i64, i as i64]);
                }
            }
        }
    }
    out
}

/// Whether box `q` (corners y1, x1, y2, x2, ordered) suppresses `p`: their
/// intersection over union exceeds `iou_th`. Boxes that do not overlap
/// never do.
fn suppresses(p: [f64; 4], q: [f64; 4], iou_th: f64) -> bool {
    let ih = p[2].min(q[2]) - p[0].max(q[0]);
    let iw = p[3].min(q[3]) - p[1].max(q[1]);
    if ih <= 0.0 || iw <= 0.0 {
        return false;
    }
    let inter = ih * iw;
    let a1 = (p[2] - p[0]) * (p[3] - p[1]);
    let a2 = (q[2] - q[0]) * (q[3] - q[1]);
    let uni = a1 + a2 - inter;
    if a1 <= 0.0 || a2 <= 0.0 || uni <= 0.0 {
        return false;
    }
    inter / uni > iou_th
}

/// The boxes NMS has selected so far for one batch and class, filed in a
/// grid of cells along x: only boxes that overlap a candidate can suppress
/// it, so a candidate is checked against the boxes in the cells its x
/// extent covers, not against every selected box. The answer does not
/// depend on the order boxes are checked in, so this is exact. (Detectors
/// run one NMS over all classes with boxes shifted apart per class, tens of
/// thousands of them: checking each against all selected was quadratic.)
struct Selected {
    count: usize,
    /// x of the grid's left edge and the width of a cell; one cell (every
    /// box in it) when the extent is not finite.
    x0: f64,
    width: f64,
    cells: Vec<Vec<usize>>,
    /// Boxes wider than [`WIDE`] cells, checked for every candidate.
    wide: Vec<usize>,
}

/// A box covering more cells than this goes to the list every candidate
/// checks.
const WIDE: usize = 16;

impl Selected {
    /// A grid for `cand` (indices into `boxes`): cells about as wide as the
    /// candidates are on average, at most 4 per candidate.
    fn new(boxes: &[[f64; 4]], cand: &[usize]) -> Selected {
        let (mut lo, mut hi, mut sum) = (f64::INFINITY, f64::NEG_INFINITY, 0.0);
        for &i in cand {
            let [_, x1, _, x2] = boxes[i];
            lo = lo.min(x1);
            hi = hi.max(x2);
            sum += x2 - x1;
        }
        let mean = sum / cand.len().max(1) as f64;
        let span = hi - lo;
        let n = if span.is_finite() && mean.is_finite() && mean > 0.0 && span > 0.0 {
            ((span / mean).ceil() as usize).clamp(1, 4 * cand.len() + 1)
        } else {
            1
        };
        Selected {
            count: 0,
            x0: if lo.is_finite() { lo } else { 0.0 },
            width: if n > 1 {
                span / n as f64
            } else {
                f64::INFINITY
            },
            cells: vec![vec![]; n],
            wide: vec![],
        }
    }

    fn len(&self) -> usize {
        self.count
    }

    /// The cells `box`'s x extent covers (NaN coordinates: cell 0; such a
    /// box never overlaps another).
    fn cells_of(&self, b: [f64; 4]) -> std::ops::RangeInclusive<usize> {
        let last = self.cells.len() - 1;
        let cell = |x: f64| {
            let c = ((x - self.x0) / self.width).floor();
            if c.is_nan() || c < 0.0 {
                0
            } else {
                (c as usize).min(last)
            }
        };
        cell(b[1])..=cell(b[3]).max(cell(b[1]))
    }

    fn add(&mut self, boxes: &[[f64; 4]], i: usize) {
        self.count += 1;
        let r = self.cells_of(boxes[i]);
        if r.end() - r.start() >= WIDE {
            self.wide.push(i);
        } else {
            for c in r {
                self.cells[c].push(i);
            }
        }
    }

    /// Whether a selected box suppresses `p`.
    fn suppresses(&self, boxes: &[[f64; 4]], p: [f64; 4], iou_th: f64) -> bool {
        let hit = |list: &[usize]| list.iter().any(|&j| suppresses(p, boxes[j], iou_th));
        if hit(&self.wide) {
            return true;
        }
        let r = self.cells_of(p);
        if r.end() - r.start() >= WIDE {
            // A wide candidate: every selected box, once each.
            return self.cells.iter().any(|c| hit(c));
        }
        r.into_iter().any(|c| hit(&self.cells[c]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The grid answers exactly what checking every selected box answers,
    /// on clustered, nested, degenerate, wide and shifted-apart boxes.
    #[test]
    fn grid_selection_equals_the_quadratic_one() {
        let mut seed = 12345u64;
        let mut rand = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        for round in 0..40 {
            let n = 50 + round * 20;
            let boxes: Vec<[f64; 4]> = (0..n)
                .map(|i| {
                    let shift = (i % 5) as f64 * 1000.0 * (round % 2) as f64;
                    let (y, x) = (rand() * 100.0, rand() * 100.0 + shift);
                    let scale = if i % 17 == 0 { 80.0 } else { 10.0 };
                    let (h, w) = (rand() * scale, rand() * scale * (i % 3) as f64);
                    [y, x, y + h, x + w]
                })
                .collect();
            let cand: Vec<usize> = (0..n).collect();
            for iou in [0.0, 0.3, 0.7] {
                let mut sel = Selected::new(&boxes, &cand);
                let mut all: Vec<usize> = vec![];
                for &i in &cand {
                    let brute = all.iter().any(|&j| suppresses(boxes[i], boxes[j], iou));
                    assert_eq!(
                        sel.suppresses(&boxes, boxes[i], iou),
                        brute,
                        "round {round}"
                    );
                    if !brute {
                        sel.add(&boxes, i);
                        all.push(i);
                    }
                }
            }
        }
    }
}
