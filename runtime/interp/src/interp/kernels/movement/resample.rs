//! Resampling kernels: Resize, GridSample and AffineGrid, following the
//! ONNX reference implementation (op_resize.py, op_grid_sample.py,
//! op_affine_grid.py) step by step, including its coordinate rounding.
//!
//! Resize is separable: for each dim and each output coordinate we compute
//! the taps (clamped source index, weight) once, or "extrapolate" for
//! tf_crop_and_resize outside the image; an output element is then the
//! nested weighted sum over the dims' taps, outermost dim first, exactly
//! as the reference nests its 1-D interpolations.

use super::axes::{map_indices, norm_axes};
use crate::interp::kernels::ctx::{bail, one, opt_tensor, tensor, Ctx, KResult};
use crate::tensor::{strides, Data, Tensor};
use crate::value::Value;
use kiln_ir::Attr;

/// Taps of one output coordinate along one dim: `None` means the
/// extrapolation value.
pub type Taps = Option<Vec<(usize, f64)>>;

struct DimPlan {
    in_size: usize,
    out_size: usize,
    scale: f64,
    /// `scale * in_size` as the reference computes it (f32 when the scale
    /// came from the f32 `scales` operand).
    out_width: f64,
    roi: (f64, f64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Nearest,
    Linear,
    Cubic,
}

/// A Resize planned for an input shape: the result's shape and, per dim
/// and output coordinate, the taps (source index, weight), or `None` for
/// the extrapolation value. The interpreter and the cpu backend's native
/// Resize both evaluate this plan, so they share every rule above.
pub struct ResizePlan {
    pub shape: Vec<usize>,
    pub taps: Vec<Vec<Taps>>,
    pub extrapolation: f64,
}

/// Plan a Resize node for an input of `x_shape` and its `roi`, `scales`
/// and `sizes` operands (empty ones as `None`).
pub fn resize_plan(
    node: &kiln_ir::Node,
    x_shape: &[usize],
    roi_in: Option<Vec<f64>>,
    scales_in: Option<Vec<f64>>,
    sizes_in: Option<Vec<i64>>,
) -> KResult<ResizePlan> {
    let attr = |name: &str| node.attrs.get(name);
    let attr_str = |name: &str| attr(name).and_then(Attr::as_str);
    let attr_int = |name: &str, d: i64| attr(name).and_then(Attr::as_int).unwrap_or(d);
    let attr_float = |name: &str, d: f32| attr(name).and_then(Attr::as_float).unwrap_or(d);
    let r = x_shape.len();
    let axes = match attr("axes").and_then(Attr::as_ints) {
        Some(a) => norm_axes(a, r)?,
        None => (0..r).collect(),
    };
    let mode = match attr_str("mode").unwrap_or("nearest") {
        "nearest" => Mode::Nearest,
        "linear" | "bilinear" | "trilinear" => Mode::Linear,
        "cubic" | "bicubic" => Mode::Cubic,
        m => bail!("Resize: unknown mode `{m}`"),
    };
    let ctm = attr_str("coordinate_transformation_mode")
        .unwrap_or("half_pixel")
        .to_string();
    let nearest_mode = attr_str("nearest_mode")
        .unwrap_or("round_prefer_floor")
        .to_string();
    let cubic_a = attr_float("cubic_coeff_a", -0.75) as f64;
    let exclude_outside = attr_int("exclude_outside", 0) != 0;
    let extrapolation = attr_float("extrapolation_value", 0.0) as f64;
    let policy = attr_str("keep_aspect_ratio_policy")
        .unwrap_or("stretch")
        .to_string();
    let antialias = attr_int("antialias", 0) != 0 && mode != Mode::Nearest;

    let mut plans: Vec<DimPlan> = x_shape
        .iter()
        .map(|&n| DimPlan {
            in_size: n,
            out_size: n,
            scale: 1.0,
            out_width: n as f64,
            roi: (0.0, 1.0),
        })
        .collect();
    if let Some(roi) = &roi_in {
        if roi.len() != 2 * axes.len() {
            bail!(
                "Resize: roi has {} values for {} axes",
                roi.len(),
                axes.len()
            );
        }
        for (i, &a) in axes.iter().enumerate() {
            plans[a].roi = (roi[i], roi[axes.len() + i]);
        }
    }
    match (&scales_in, &sizes_in) {
        (Some(s), None) => {
            if s.len() != axes.len() {
                bail!("Resize: {} scales for {} axes", s.len(), axes.len());
            }
            for (i, &a) in axes.iter().enumerate() {
                let p = &mut plans[a];
                if s[i].partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                    bail!("Resize: scale {} must be positive", s[i]);
                }
                p.scale = s[i];
                let out = (s[i] * p.in_size as f64).floor();
                if out > 1e9 {
                    bail!("Resize: output dim {out} too large");
                }
                p.out_size = out as usize;
                p.out_width = ((s[i] as f32) * (p.in_size as f32)) as f64;
            }
        }
        (None, Some(sz)) => {
            if sz.len() != axes.len() {
                bail!("Resize: {} sizes for {} axes", sz.len(), axes.len());
            }
            for (i, &a) in axes.iter().enumerate() {
                if sz[i] < 0 || sz[i] > 1_000_000_000 {
                    bail!("Resize: bad size {}", sz[i]);
                }
                let p = &mut plans[a];
                if p.in_size == 0 {
                    bail!("Resize: cannot resize an empty dim");
                }
                p.out_size = sz[i] as usize;
                p.scale = sz[i] as f64 / p.in_size as f64;
            }
            if policy != "stretch" {
                let it = axes.iter().map(|&a| plans[a].scale);
                let s = match policy.as_str() {
                    "not_larger" => it.fold(f64::INFINITY, f64::min),
                    "not_smaller" => it.fold(f64::NEG_INFINITY, f64::max),
                    p => bail!("Resize: unknown keep_aspect_ratio_policy `{p}`"),
                };
                for &a in &axes {
                    let p = &mut plans[a];
                    p.scale = s;
                    p.out_size = (s * p.in_size as f64 + 0.5) as usize;
                }
            }
            for &a in &axes {
                let p = &mut plans[a];
                p.out_width = p.scale * p.in_size as f64;
            }
        }
        _ => bail!("Resize: exactly one of scales and sizes must be given"),
    }

    let shape: Vec<usize> = plans.iter().map(|p| p.out_size).collect();
    // Scales or sizes come from data; the result is computed in f64.
    crate::limits::alloc(
        || format!("the result of shape {shape:?}"),
        kiln_ir::ElemType::F64,
        &shape,
    )?;
    let mut taps: Vec<Vec<Taps>> = Vec::with_capacity(r);
    for p in &plans {
        if p.in_size == 0 && p.out_size > 0 {
            bail!("Resize: cannot resize an empty dim");
        }
        let t = (0..p.out_size)
            .map(|o| {
                dim_taps(
                    p,
                    o,
                    mode,
                    &ctm,
                    &nearest_mode,
                    cubic_a,
                    antialias,
                    exclude_outside,
                )
            })
            .collect::<KResult<Vec<_>>>()?;
        taps.push(t);
    }
    Ok(ResizePlan {
        shape,
        taps,
        extrapolation,
    })
}

pub fn resize(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let roi_in = opt_tensor(inputs, 1)?
        .filter(|t| !t.is_empty())
        .map(|t| t.to_f64());
    let scales_in = opt_tensor(inputs, 2)?
        .filter(|t| !t.is_empty())
        .map(|t| t.to_f64());
    let sizes_in = opt_tensor(inputs, 3)?
        .filter(|t| !t.is_empty())
        .map(|t| t.to_i64());
    let plan = resize_plan(cx.node, &x.shape, roi_in, scales_in, sizes_in)?;
    let (shape, taps, extrapolation) = (plan.shape, plan.taps, plan.extrapolation);
    let v = x.to_f64();
    let st = strides(&x.shape);
    fn eval(
        d: usize,
        base: usize,
        o: &[usize],
        taps: &[Vec<Taps>],
        st: &[usize],
        v: &[f64],
        ex: f64,
    ) -> f64 {
        if d == taps.len() {
            return v[base];
        }
        match &taps[d][o[d]] {
            None => ex,
            Some(list) => list
                .iter()
                .map(|&(i, w)| w * eval(d + 1, base + i * st[d], o, taps, st, v, ex))
                .sum(),
        }
    }
    let out = map_indices(&shape, |o| Ok(eval(0, 0, o, &taps, &st, &v, extrapolation)))?;
    one(Tensor::new(shape, Data::from_f64(x.elem(), &out))?)
}

#[allow(clippy::too_many_arguments)]
fn dim_taps(
    p: &DimPlan,
    x: usize,
    mode: Mode,
    ctm: &str,
    nearest_mode: &str,
    a: f64,
    antialias: bool,
    exclude_outside: bool,
) -> KResult<Taps> {
    let xf = x as f64;
    let inw = p.in_size as f64;
    let ow = p.out_width;
    let s = p.scale;
    let x_ori = match ctm {
        "align_corners" => {
            if ow == 1.0 {
                0.0
            } else {
                xf * (inw - 1.0) / (ow - 1.0)
            }
        }
        "asymmetric" => xf / s,
        "tf_crop_and_resize" => {
            let (r0, r1) = p.roi;
            let mut xo = if ow == 1.0 {
                (r1 - r0) * (inw - 1.0) / 2.0
            } else {
                xf * (r1 - r0) * (inw - 1.0) / (ow - 1.0)
            };
            xo += r0 * (inw - 1.0);
            if xo < 0.0 || xo > inw - 1.0 {
                return Ok(None);
            }
            xo
        }
        "pytorch_half_pixel" => {
            if ow == 1.0 {
                -0.5
            } else {
                (xf + 0.5) / s - 0.5
            }
        }
        "half_pixel" => (xf + 0.5) / s - 0.5,
        "half_pixel_symmetric" => {
            let adjustment = p.out_size as f64 / ow;
            let center = inw / 2.0;
            let offset = center * (1.0 - adjustment);
            offset + (xf + 0.5) / s - 0.5
        }
        m => bail!("Resize: unknown coordinate_transformation_mode `{m}`"),
    };
    let fl = x_ori.floor();
    let ratio = if x_ori == fl { 1.0 } else { x_ori - fl };
    let x_int = if x_ori == fl { fl - 1.0 } else { fl };
    let mut coeffs: Vec<f64> = match mode {
        Mode::Nearest => {
            if ratio == 1.0 {
                vec![0.0, 1.0]
            } else {
                let b = match nearest_mode {
                    "round_prefer_floor" => ratio > 0.5,
                    "round_prefer_ceil" => ratio >= 0.5,
                    "floor" => false,
                    "ceil" => true,
                    m => bail!("Resize: unknown nearest_mode `{m}`"),
                };
                if b {
                    vec![0.0, 1.0]
                } else {
                    vec![1.0, 0.0]
                }
            }
        }
        Mode::Linear if antialias => {
            let sc = s.min(1.0);
            let start = (-1.0 / sc).floor() as i64 + 1;
            let foot = 2 - 2 * start;
            if foot > 1 << 20 {
                bail!("Resize: scale {s} too small for antialiasing");
            }
            let c: Vec<f64> = (start..start + foot)
                .map(|i| (1.0 - ((i as f64 - ratio) * sc).abs()).clamp(0.0, 1.0))
                .collect();
            let sum: f64 = c.iter().sum();
            c.iter().map(|v| v / sum).collect()
        }
        Mode::Linear => vec![1.0 - ratio, ratio],
        Mode::Cubic if antialias => {
            let sc = s.min(1.0);
            let i_start = (-2.0 / sc).floor() as i64 + 1;
            let i_end = 2 - i_start;
            if i_end - i_start > 1 << 20 {
                bail!("Resize: scale {s} too small for antialiasing");
            }
            let f = |x: f64| {
                let x = x.abs();
                let (x2, x3) = (x * x, x * x * x);
                if x <= 1.0 {
                    (a + 2.0) * x3 - (a + 3.0) * x2 + 1.0
                } else if x < 2.0 {
                    a * x3 - 5.0 * a * x2 + 8.0 * a * x - 4.0 * a
                } else {
                    0.0
                }
            };
            let c: Vec<f64> = (i_start..i_end)
                .map(|i| f(sc * (i as f64 - ratio)))
                .collect();
            let sum: f64 = c.iter().sum();
            c.iter().map(|v| v / sum).collect()
        }
        Mode::Cubic => {
            let r = ratio;
            vec![
                ((a * (r + 1.0) - 5.0 * a) * (r + 1.0) + 8.0 * a) * (r + 1.0) - 4.0 * a,
                ((a + 2.0) * r - (a + 3.0)) * r * r + 1.0,
                ((a + 2.0) * (1.0 - r) - (a + 3.0)) * (1.0 - r) * (1.0 - r) + 1.0,
                ((a * ((1.0 - r) + 1.0) - 5.0 * a) * ((1.0 - r) + 1.0) + 8.0 * a)
                    * ((1.0 - r) + 1.0)
                    - 4.0 * a,
            ]
        }
    };
    let n = coeffs.len() as i64;
    // The n nearest indexes of an edge-padded copy (pad = ceil(n/2)), as
    // the reference picks them: a window starting n/2 - 1 left of x_int,
    // pushed inside the padded range.
    let pad = (n + 1) / 2;
    let padded_len = p.in_size as i64 + 2 * pad;
    let ideal = x_int as i64 - n / 2 + 1 + pad;
    let start = ideal.clamp(0, (padded_len - n).max(0));
    let idx: Vec<i64> = (0..n).map(|k| start + k - pad).collect();
    if exclude_outside {
        for (k, &i) in idx.iter().enumerate() {
            if i < 0 || i >= p.in_size as i64 {
                coeffs[k] = 0.0;
            }
        }
        let sum: f64 = coeffs.iter().sum();
        for c in &mut coeffs {
            *c /= sum;
        }
    }
    let last = p.in_size as i64 - 1;
    Ok(Some(
        idx.iter()
            .zip(&coeffs)
            .filter(|(_, &c)| c != 0.0)
            .map(|(&i, &c)| (i.clamp(0, last) as usize, c))
            .collect(),
    ))
}

// ---------------------------------------------------------------- GridSample

fn gs_reflect(x: f64, lo: f64, hi: f64) -> f64 {
    let rng = hi - lo;
    if x < lo {
        let dx = lo - x;
        let n = (dx / rng) as i64;
        let r = dx - n as f64 * rng;
        if n % 2 == 0 {
            lo + r
        } else {
            hi - r
        }
    } else if x > hi {
        let dx = x - hi;
        let n = (dx / rng) as i64;
        let r = dx - n as f64 * rng;
        if n % 2 == 0 {
            hi - r
        } else {
            lo + r
        }
    } else {
        x
    }
}

fn cubic_coeffs(x: f64) -> [f64; 4] {
    let a = -0.75;
    let x = x.abs();
    [
        ((a * (x + 1.0) - 5.0 * a) * (x + 1.0) + 8.0 * a) * (x + 1.0) - 4.0 * a,
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
        ((a + 2.0) * (1.0 - x) - (a + 3.0)) * (1.0 - x) * (1.0 - x) + 1.0,
        ((a * (2.0 - x) - 5.0 * a) * (2.0 - x) + 8.0 * a) * (2.0 - x) - 4.0 * a,
    ]
}

/// GridSample's attributes: how to interpolate, where pixel centres lie
/// (`align_corners`), and what lies outside the image.
#[derive(Clone, Debug)]
pub struct GridSpec {
    mode: Mode,
    align: bool,
    padding: Padding,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Padding {
    Zeros,
    Border,
    Reflection,
}

impl GridSpec {
    /// The spec of GridSample's attributes (any opset's mode spelling).
    pub fn parse(align_corners: i64, mode: &str, padding: &str) -> KResult<GridSpec> {
        let mode = match mode {
            "nearest" => Mode::Nearest,
            "linear" | "bilinear" => Mode::Linear,
            "cubic" | "bicubic" => Mode::Cubic,
            m => bail!("GridSample: unknown mode `{m}`"),
        };
        let padding = match padding {
            "zeros" => Padding::Zeros,
            "border" => Padding::Border,
            "reflection" => Padding::Reflection,
            p => bail!("GridSample: unknown padding_mode `{p}`"),
        };
        Ok(GridSpec {
            mode,
            align: align_corners != 0,
            padding,
        })
    }

    /// Check image `x` against `grid`; the result's shape.
    pub fn result_shape(&self, x: &[usize], grid: &[usize]) -> KResult<Vec<usize>> {
        let r = x.len();
        if !(3..=10).contains(&r) || grid.len() != r || grid[0] != x[0] || grid[r - 1] != r - 2 {
            bail!("GridSample: input {x:?} and grid {grid:?} do not fit");
        }
        if self.padding != Padding::Zeros && x[2..].contains(&0) {
            bail!(
                "GridSample: cannot sample an empty image with {:?} padding",
                self.padding
            );
        }
        let mut shape = vec![x[0], x[1]];
        shape.extend_from_slice(&grid[1..r - 1]);
        Ok(shape)
    }

    /// Taps per spatial dim at most: 1 (nearest), 2 (linear), 4 (cubic).
    pub fn taps_per_dim(&self) -> usize {
        match self.mode {
            Mode::Nearest => 1,
            Mode::Linear => 2,
            Mode::Cubic => 4,
        }
    }

    /// The taps of one grid point in an image of spatial `dims`: (offset
    /// in one channel's plane, weight) pairs whose weighted sum is the
    /// sample, with the padding rule applied (a tap outside a zero-padded
    /// image is left out), written over `taps`. `coord(d)` is the point's
    /// normalized coordinate for spatial dim `d` (outermost first).
    pub fn point_taps(
        &self,
        dims: &[usize],
        coord: impl Fn(usize) -> f64,
        taps: &mut Vec<(usize, f64)>,
    ) {
        let (mode, align, padding) = (self.mode, self.align, self.padding);
        let k = dims.len();
        taps.clear();
        // Per dim: up to 4 (index, weight) pairs.
        let mut per = [[(0i64, 0f64); 4]; 8];
        let mut counts = [0usize; 8];
        let bounds = |d: usize| {
            if align {
                (0.0, dims[d] as f64 - 1.0)
            } else {
                (-0.5, dims[d] as f64 - 0.5)
            }
        };
        for d in 0..k {
            let (lo, hi) = bounds(d);
            let nv = coord(d) as f32;
            let len = dims[d] as f32;
            let mut xv = if align {
                (nv + 1.0) / 2.0 * (len - 1.0)
            } else {
                ((nv + 1.0) * len - 1.0) / 2.0
            };
            if mode == Mode::Nearest {
                xv = xv.round_ties_even();
            }
            let x64 = xv as f64;
            if x64 < lo || x64 > hi {
                if padding == Padding::Border {
                    xv = x64.clamp(0.0, dims[d] as f64 - 1.0) as f32;
                } else if padding == Padding::Reflection {
                    xv = gs_reflect(x64, lo, hi) as f32;
                }
            }
            let x0 = xv.floor();
            let t = (xv - x0) as f64;
            counts[d] = match mode {
                Mode::Nearest => {
                    per[d][0] = (xv as i64, 1.0);
                    1
                }
                Mode::Linear => {
                    per[d][0] = (x0 as i64, 1.0 - t);
                    per[d][1] = (x0 as i64 + 1, t);
                    2
                }
                Mode::Cubic => {
                    for (j, c) in cubic_coeffs(t).into_iter().enumerate() {
                        per[d][j] = (x0 as i64 - 1 + j as i64, c);
                    }
                    4
                }
            };
            // The padding rule on each integer position.
            let size = dims[d] as i64;
            for tap in &mut per[d][..counts[d]] {
                tap.0 = match padding {
                    Padding::Zeros if tap.0 < 0 || tap.0 >= size => -1,
                    Padding::Zeros => tap.0,
                    Padding::Border => tap.0.clamp(0, size - 1),
                    Padding::Reflection => {
                        (gs_reflect(tap.0 as f64, lo, hi) as i64).clamp(0, size - 1)
                    }
                };
            }
        }
        // Every combination of the dims' taps (an odometer over them).
        let dst = strides(dims);
        let mut at = [0usize; 8];
        let total: usize = counts[..k].iter().product();
        for _ in 0..total {
            let (mut lin, mut w, mut inside) = (0usize, 1.0, true);
            for d in 0..k {
                let (i, c) = per[d][at[d]];
                inside &= i >= 0;
                lin += i.max(0) as usize * dst[d];
                w *= c;
            }
            if inside {
                taps.push((lin, w));
            }
            for d in (0..k).rev() {
                at[d] += 1;
                if at[d] < counts[d] {
                    break;
                }
                at[d] = 0;
            }
        }
    }
}

pub fn grid_sample(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let grid = tensor(inputs, 1)?;
    let spec = GridSpec::parse(
        cx.attr_int("align_corners", 0),
        cx.attr_str("mode").unwrap_or("linear"),
        cx.attr_str("padding_mode").unwrap_or("zeros"),
    )?;
    let shape = spec.result_shape(&x.shape, &grid.shape)?;
    let (g, v) = (grid.to_f64(), x.to_f64());
    let (n, c, dims) = (x.shape[0], x.shape[1], &x.shape[2..]);
    let k = dims.len();
    let plane: usize = dims.iter().product();
    let npts: usize = shape[2..].iter().product();
    let mut out = vec![0.0; shape.iter().product()];
    let mut taps = Vec::new();
    for b in 0..n {
        for p in 0..npts {
            // The grid holds coordinates innermost dim first.
            let at = (b * npts + p) * k;
            spec.point_taps(dims, |d| g[at + k - 1 - d], &mut taps);
            for ch in 0..c {
                let base = (b * c + ch) * plane;
                out[(b * c + ch) * npts + p] = taps.iter().map(|&(i, w)| w * v[base + i]).sum();
            }
        }
    }
    one(Tensor::new(shape, Data::from_f64(x.elem(), &out))?)
}

// ---------------------------------------------------------------- AffineGrid

pub fn affine_grid(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let theta = tensor(inputs, 0)?;
    let size: Vec<i64> = tensor(inputs, 1)?.to_i64();
    let align = cx.attr_int("align_corners", 0) != 0;
    if size.len() != 4 && size.len() != 5 || size.iter().any(|&s| s < 0) {
        bail!(
            "AffineGrid: size must be [N,C,H,W] or [N,C,D,H,W] with no negative dims, got {size:?}"
        );
    }
    let k = size.len() - 2;
    let n = size[0] as usize;
    if theta.shape != [n, k, k + 1] {
        bail!(
            "AffineGrid: theta {:?} does not fit size {size:?}",
            theta.shape
        );
    }
    let dims: Vec<usize> = size[2..].iter().map(|&s| s as usize).collect();
    if dims
        .iter()
        .chain([&n, &k])
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .is_none_or(|t| t > 1 << 32)
    {
        bail!("AffineGrid: size {size:?} is too large");
    }
    let axis_coords: Vec<Vec<f64>> = dims
        .iter()
        .map(|&d| {
            if align {
                let step = 2.0 / (d as f64 - 1.0);
                (0..d)
                    .map(|i| if d == 1 { -1.0 } else { -1.0 + i as f64 * step })
                    .collect()
            } else {
                let step = 2.0 / d as f64;
                let start = -1.0 + step / 2.0;
                (0..d).map(|i| start + i as f64 * step).collect()
            }
        })
        .collect();
    let th = theta.to_f64();
    let npts: usize = dims.iter().product();
    let mut out = Vec::with_capacity(n * npts * k);
    let pts = map_indices(&dims, |o| Ok(o.to_vec()))?;
    for b in 0..n {
        for o in &pts {
            // Homogeneous point: innermost dim first (x, y[, z]), then 1.
            let mut h: Vec<f64> = (0..k)
                .map(|j| axis_coords[k - 1 - j][o[k - 1 - j]])
                .collect();
            h.push(1.0);
            for row in 0..k {
                let t = &th[(b * k + row) * (k + 1)..(b * k + row + 1) * (k + 1)];
                out.push(t.iter().zip(&h).map(|(a, b)| a * b).sum::<f64>());
            }
        }
    }
    let mut shape = vec![n];
    shape.extend_from_slice(&dims);
    shape.push(k);
    one(Tensor::new(shape, Data::from_f64(theta.elem(), &out))?)
}
