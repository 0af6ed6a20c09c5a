//! The quantized path's steps: QuantizeLinear, DequantizeLinear and
//! DynamicQuantizeLinear between f32 and 8-bit tensors (per tensor or per
//! axis, ONNX's arithmetic: `x / scale` rounded half to even in f32), and
//! the integer products: QLinearConv/ConvInteger on [`QConvPlan`],
//! QLinearMatMul/MatMulInteger on the integer GEMM. Scales and zero points
//! that are not part of a plan are read from their operands at run time
//! (a dynamic quantization's come from the step before).

use std::sync::Arc;

use kiln_ir::ElemType;

use super::{operand, result};
use crate::cpu::exec::NativeKernel;
use crate::cpu::kernels::for_each_unit;
use crate::cpu::kernels::qconv::QConvPlan;
use crate::cpu::kernels::qgemm::{qgemm, shifted_zero, Int8, Packed, QGemm, QOut};
use crate::cpu::view::{In, Out};

/// The 8-bit type of a view, or why it is not one.
pub fn int8_of(e: ElemType) -> Result<Int8, String> {
    match e {
        ElemType::U8 => Ok(Int8::U8),
        ElemType::I8 => Ok(Int8::I8),
        e => Err(format!("{e} is not an 8-bit integer type")),
    }
}

/// An 8-bit operand's bytes.
fn bytes8<'a>(x: &In<'a>) -> Result<(&'a [u8], Int8), String> {
    let t = int8_of(x.elem())?;
    // SAFETY: the view holds `len` one-byte elements, valid for 'a, not
    // written while this step reads it (the step is not in place).
    Ok((
        unsafe { std::slice::from_raw_parts(x.bytes_ptr(), x.len()) },
        t,
    ))
}

/// An integer operand's values (zero points: u8, i8 or i32).
fn ints_of(x: &In) -> Result<Vec<i32>, String> {
    Ok(match x.elem() {
        ElemType::U8 => x.u8s()?.iter().map(|&v| v as i32).collect(),
        ElemType::I8 => x.i8s()?.iter().map(|&v| v as i32).collect(),
        ElemType::I32 => x.i32s()?.to_vec(),
        e @ (ElemType::U4 | ElemType::I4) => nibbles(x, e == ElemType::I4),
        e => return Err(format!("zero point of type {e}")),
    })
}

/// A 4-bit tensor's values: views of 4-bit tensors hold one value per
/// byte (the interpreter's form), sign-extended when `signed`.
fn nibbles(x: &In, signed: bool) -> Vec<i32> {
    // SAFETY: a 4-bit view holds `len` bytes, valid while the step runs.
    let bytes = unsafe { std::slice::from_raw_parts(x.bytes_ptr(), x.len()) };
    if signed {
        bytes.iter().map(|&b| b as i8 as i32).collect()
    } else {
        bytes.iter().map(|&b| b as i32).collect()
    }
}

/// An optional zero point operand's values; zero when omitted.
fn zero_points(inputs: &[Option<In>], i: usize) -> Result<Vec<i32>, String> {
    match inputs.get(i).copied().flatten() {
        Some(z) => ints_of(&z),
        None => Ok(vec![0]),
    }
}

/// The saturation range of an 8-bit result.
fn range_of(e: ElemType) -> Result<(i32, i32), String> {
    match e {
        ElemType::U8 => Ok((0, 255)),
        ElemType::I8 => Ok((-128, 127)),
        e => Err(format!("no native quantization to {e}")),
    }
}

/// Where a per-axis parameter applies: the flat tensor as `outer × axis ×
/// inner`; a per-tensor one has `axis == 1`.
#[derive(Clone, Copy, Debug)]
pub struct AxisSplit {
    pub outer: usize,
    pub axis: usize,
    pub inner: usize,
}

impl AxisSplit {
    fn check(&self, what: &str, n: usize) -> Result<(), String> {
        if n == 1 || n == self.axis {
            Ok(())
        } else {
            Err(format!(
                "{what} has {n} values for an axis of {}",
                self.axis
            ))
        }
    }

    /// Scales (`scales` of them) and zero points (`zeros`) that fit this
    /// split: one or one per index along the axis, the zero points one or
    /// as many as the scales.
    fn check_params(&self, scales: usize, zeros: usize) -> Result<(), String> {
        self.check("scale", scales)?;
        if zeros != 1 && zeros != scales {
            return Err("zero point and scale lengths differ".into());
        }
        Ok(())
    }

    /// Calls `f(param index, flat range)` over the tensor.
    fn for_each(&self, params: usize, mut f: impl FnMut(usize, std::ops::Range<usize>)) {
        if params == 1 {
            f(0, 0..self.outer * self.axis * self.inner);
            return;
        }
        for o in 0..self.outer {
            for a in 0..self.axis {
                let at = (o * self.axis + a) * self.inner;
                f(a, at..at + self.inner);
            }
        }
    }
}

/// A dequantizing row loop: `(flat range, its output, scale, zero point)`.
type RowFn<'a> = dyn Fn(std::ops::Range<usize>, &mut [f32], f32, i32) + Sync + 'a;

/// Elements per chunk when a row loop is threaded. Ranges under four
/// chunks run on one worker: the loops move 20-30 GB/s, so a smaller range
/// takes a few microseconds, what waking a second worker costs (split at
/// two chunks, mobilenet_v3's Q/DQ steps ran no faster on 2 threads).
const CHUNK: usize = 1 << 15;

/// Calls `f(parameter, flat range, out[range])` for chunks of each
/// parameter's range of a tensor split as `split` (see
/// [`AxisSplit::for_each`]), threaded as [`in_chunks`].
fn per_param_chunks<T: Send>(
    split: &AxisSplit,
    params: usize,
    threads: usize,
    out: &mut [T],
    f: impl Fn(usize, std::ops::Range<usize>, &mut [T]) + Sync + Send,
) {
    let (dst, len) = (out.as_mut_ptr().expose_provenance(), out.len());
    split.for_each(params, |p, range| {
        in_chunks(range, threads, |r| {
            assert!(r.end <= len, "per_param_chunks: range past the output");
            // SAFETY: `out` (mutably borrowed for the call) holds r's
            // elements (asserted); the ranges of different parameters and
            // the chunks of one range are disjoint, so each element is
            // handed to one worker once.
            let o = unsafe {
                std::slice::from_raw_parts_mut(
                    std::ptr::with_exposed_provenance_mut::<T>(dst).add(r.start),
                    r.len(),
                )
            };
            f(p, r, o);
        });
    });
}

/// Runs `f` on chunks of `range` (the whole range when `threads` is 1 or
/// the range is short), on the current pool's workers.
fn in_chunks(
    range: std::ops::Range<usize>,
    threads: usize,
    f: impl Fn(std::ops::Range<usize>) + Sync + Send,
) {
    let len = range.len();
    if threads <= 1 || len < 4 * CHUNK {
        f(range);
        return;
    }
    let chunks = len
        .div_ceil(CHUNK)
        .min(threads * crate::cpu::UNITS_PER_THREAD);
    for_each_unit(true, chunks, |c| {
        f(range.start + c * len / chunks..range.start + (c + 1) * len / chunks)
    });
}

/// The row loops, compiled for AVX-512 or AVX2 where the host has them
/// (the crate's SSE2 baseline has no rounding or 8-to-32-bit widening
/// instructions, so the loops ran scalar, at 1-2 GB/s) and plain
/// otherwise. Each computes exactly what its scalar form says.
mod rows {
    use crate::cpu::kernels::qgemm::round_clamped;

    crate::cpu::simd_fn! {
        /// `d[i] = saturate(round_half_even(x[i] / s) + z)` into `lo..=hi`;
        /// NaN becomes the zero point, as the reference rounds it.
        pub(super) fn quantize(x: &[f32], d: &mut [u8], s: f32, z: i32, lo: i32, hi: i32) {
            let (flo, fhi) = ((lo - z) as f32, (hi - z) as f32);
            for (d, &v) in d.iter_mut().zip(x) {
                let r = round_clamped(v / s, flo, fhi);
                *d = (if v.is_nan() { z } else { r + z }) as u8;
            }
        }
    }

    crate::cpu::simd_fn! {
        /// `o[i] = (x[i] - z) · s`.
        pub(super) fn dequantize_u8(x: &[u8], o: &mut [f32], s: f32, z: i32) {
            for (o, &v) in o.iter_mut().zip(x) {
                *o = (v as i32 - z) as f32 * s;
            }
        }
    }

    crate::cpu::simd_fn! {
        /// `o[i] = (x[i] - z) · s`.
        pub(super) fn dequantize_i8(x: &[i8], o: &mut [f32], s: f32, z: i32) {
            for (o, &v) in o.iter_mut().zip(x) {
                *o = (v as i32 - z) as f32 * s;
            }
        }
    }

    crate::cpu::simd_fn! {
        /// The least and greatest of 0 and `x` (NaN skipped), in 16 lanes
        /// so the loop vectorizes.
        pub(super) fn min_max(x: &[f32]) -> (f32, f32) {
            let (mut lo, mut hi) = ([0.0f32; 16], [0.0f32; 16]);
            let mut chunks = x.chunks_exact(16);
            for c in &mut chunks {
                for j in 0..16 {
                    // A NaN compares false and is skipped; written as a
                    // select (one vminps/vmaxps), not f32::min's NaN
                    // handling, which the loop spent most of its time on.
                    let v = c[j];
                    lo[j] = if v < lo[j] { v } else { lo[j] };
                    hi[j] = if v > hi[j] { v } else { hi[j] };
                }
            }
            for &v in chunks.remainder() {
                lo[0] = lo[0].min(v);
                hi[0] = hi[0].max(v);
            }
            (
                lo.iter().fold(0.0f32, |a, &b| a.min(b)),
                hi.iter().fold(0.0f32, |a, &b| a.max(b)),
            )
        }
    }
}

/// QuantizeLinear from f32 to u8/i8.
pub struct Quantize {
    pub split: AxisSplit,
}

impl NativeKernel for Quantize {
    fn run(
        &self,
        inputs: &[Option<In>],
        outputs: &mut [Out],
        threads: usize,
    ) -> Result<(), String> {
        let x = operand(inputs, 0)?.f32s()?;
        let scale = operand(inputs, 1)?.f32s()?;
        let zero = zero_points(inputs, 2)?;
        let out = result(outputs, 0)?;
        let (lo, hi) = range_of(out.elem())?;
        self.split.check_params(scale.len(), zero.len())?;
        if out.len() != x.len() {
            return Err("QuantizeLinear changes the element count".into());
        }
        // SAFETY: `out` holds as many bytes as `x` has elements and does
        // not alias it (the step is not in place).
        let d = unsafe { std::slice::from_raw_parts_mut(out.bytes_ptr(), x.len()) };
        per_param_chunks(&self.split, scale.len(), threads, d, |p, r, d| {
            let z = zero[if zero.len() == 1 { 0 } else { p }];
            rows::quantize(&x[r], d, scale[p], z, lo, hi);
        });
        Ok(())
    }
}

/// DequantizeLinear from u8/i8/i32 (and blocked 4-bit) to f32.
pub struct Dequantize {
    pub split: AxisSplit,
    /// Blocked quantization (0: per tensor or per axis): each run of
    /// `block` along the axis has its own parameters, which have the
    /// input's shape with the axis shortened to its block count.
    pub block: usize,
}

impl NativeKernel for Dequantize {
    fn run(
        &self,
        inputs: &[Option<In>],
        outputs: &mut [Out],
        threads: usize,
    ) -> Result<(), String> {
        let x = operand(inputs, 0)?;
        let scale = operand(inputs, 1)?.f32s()?;
        let zero = zero_points(inputs, 2)?;
        let out = result(outputs, 0)?.f32s()?;
        if out.len() != x.len() {
            return Err("DequantizeLinear changes the element count".into());
        }
        if self.block > 0 {
            return self.blocked(x, scale, &zero, out);
        }
        self.split.check_params(scale.len(), zero.len())?;
        let mut each = |f: &RowFn<'_>| {
            per_param_chunks(&self.split, scale.len(), threads, out, |p, r, o| {
                f(r, o, scale[p], zero[if zero.len() == 1 { 0 } else { p }]);
            });
        };
        match x.elem() {
            ElemType::U8 => {
                let src = x.u8s()?;
                each(&|r, o, s, z| rows::dequantize_u8(&src[r], o, s, z));
            }
            ElemType::I8 => {
                let src = x.i8s()?;
                each(&|r, o, s, z| rows::dequantize_i8(&src[r], o, s, z));
            }
            ElemType::I32 => {
                // `x - z` is exact in i64 for i32 values.
                let src = x.i32s()?;
                each(&|r, o, s, z| {
                    for (o, &v) in o.iter_mut().zip(&src[r]) {
                        *o = (v as i64 - z as i64) as f32 * s;
                    }
                });
            }
            e => return Err(format!("no native DequantizeLinear of {e}")),
        }
        Ok(())
    }
}

impl Dequantize {
    /// Blocked: the parameters of element `(o, a, i)` of the
    /// `outer × axis × inner` input are at `(o, a / block, i)`.
    fn blocked(&self, x: In, scale: &[f32], zero: &[i32], out: &mut [f32]) -> Result<(), String> {
        let AxisSplit { outer, axis, inner } = self.split;
        let blocks = axis.div_ceil(self.block);
        if scale.len() != outer * blocks * inner || (zero.len() != 1 && zero.len() != scale.len()) {
            return Err("blocked DequantizeLinear: parameter shapes do not match".into());
        }
        let values = ints_of(&x)?;
        // One zero point per scale, so each run of `inner` zips three slices.
        let zero = if zero.len() == 1 {
            vec![zero[0]; scale.len()]
        } else {
            zero.to_vec()
        };
        for o in 0..outer {
            for a in 0..axis {
                let at = (o * axis + a) * inner;
                let p = (o * blocks + a / self.block) * inner;
                let params = scale[p..p + inner].iter().zip(&zero[p..p + inner]);
                for ((d, &v), (&s, &z)) in out[at..at + inner]
                    .iter_mut()
                    .zip(&values[at..at + inner])
                    .zip(params)
                {
                    *d = (v - z) as f32 * s;
                }
            }
        }
        Ok(())
    }
}

/// DynamicQuantizeLinear: u8 with the scale and zero point of the
/// tensor's range (widened to hold 0).
pub struct DynamicQuantize;

impl NativeKernel for DynamicQuantize {
    fn run(
        &self,
        inputs: &[Option<In>],
        outputs: &mut [Out],
        threads: usize,
    ) -> Result<(), String> {
        let x = operand(inputs, 0)?.f32s()?;
        if x.is_empty() {
            return Err("DynamicQuantizeLinear: empty input".into());
        }
        // The range includes 0; f32::min/max skip NaN, as the reference's
        // fold does.
        let parts = std::sync::Mutex::new(vec![]);
        in_chunks(0..x.len(), threads, |r| {
            let mm = rows::min_max(&x[r]);
            parts.lock().unwrap_or_else(|e| e.into_inner()).push(mm);
        });
        let (mut min, mut max) = (0.0f32, 0.0f32);
        for (lo, hi) in parts.into_inner().unwrap_or_else(|e| e.into_inner()) {
            min = min.min(lo);
            max = max.max(hi);
        }
        let scale = if max == min { 1.0f32 } else { max - min } / 255.0f32;
        let zp = (0.0f32 - min / scale).clamp(0.0, 255.0).round_ties_even();
        let (y, rest) = outputs
            .split_first_mut()
            .ok_or("DynamicQuantizeLinear has no results")?;
        let y = y.u8s()?;
        if y.len() != x.len() {
            return Err("DynamicQuantizeLinear changes the element count".into());
        }
        let whole = AxisSplit {
            outer: 1,
            axis: 1,
            inner: x.len(),
        };
        per_param_chunks(&whole, 1, threads, y, |_, r, d| {
            rows::quantize(&x[r], d, scale, zp as i32, 0, 255);
        });
        if let Some(s) = rest.get_mut(0) {
            s.f32s()?[0] = scale;
        }
        if let Some(z) = rest.get_mut(1) {
            z.u8s()?[0] = zp as u8;
        }
        Ok(())
    }
}

/// QLinearConv / ConvInteger: a planned quantized conv; the weights and
/// the bias are the plan's, the input's zero point is read at run time
/// where it is an operand (ConvInteger after a dynamic quantization).
pub struct QConv {
    pub plan: QConvPlan,
    /// The operand holding the input's zero point, if the plan does not.
    pub x_zero_operand: Option<usize>,
}

impl NativeKernel for QConv {
    fn run(
        &self,
        inputs: &[Option<In>],
        outputs: &mut [Out],
        threads: usize,
    ) -> Result<(), String> {
        let (x, _) = bytes8(&operand(inputs, 0)?)?;
        let x_zero = match self.x_zero_operand {
            Some(i) => match inputs.get(i).copied().flatten() {
                Some(z) => Some(*ints_of(&z)?.first().ok_or("empty zero point")?),
                None => Some(0),
            },
            None => None,
        };
        let out = result(outputs, 0)?;
        let want = self.plan.out_shape().iter().product::<usize>();
        if out.len() != want {
            return Err("quantized conv: result size does not match the plan".into());
        }
        if out.elem() != ElemType::I32 {
            int8_of(out.elem())?;
        }
        // SAFETY: `out` is the result's view, of the plan's element count
        // (checked) and type (8-bit or i32, as the lowering planned it), and
        // a distinct buffer from `x` (the step is not in place).
        unsafe { self.plan.run(x, x_zero, out.bytes_ptr(), threads) }
    }
}

/// B of an integer product: packed once (a constant) or per run.
pub enum QMatB {
    Packed(Arc<Packed>),
    /// Operand index of a run-time B.
    Operand(usize),
}

/// What an integer product's sums become.
pub enum QMatOut {
    /// QLinearMatMul: requantized per column (`mult` one or N values);
    /// `wrap`: a value outside the result type wraps around instead of
    /// saturating, as ONNX's reference and node tests define
    /// QLinearMatMul (`np.rint(y).astype(dtype)`).
    Requant {
        mult: Vec<f32>,
        zero: i32,
        wrap: bool,
    },
    /// MatMulInteger: the sums.
    I32,
}

/// QLinearMatMul / MatMulInteger: `[batch.., M, K] × [batch.., K, N]`
/// with batch dims broadcast (B 2-D is the common weight case).
pub struct QMatMul {
    pub a_shape: Vec<usize>,
    pub b_shape: Vec<usize>,
    pub out_shape: Vec<usize>,
    pub a: usize,
    pub a_zero: Option<usize>,
    pub b: QMatB,
    pub b_type: Int8,
    pub b_zero: Option<usize>,
    pub out: QMatOut,
}

/// Row-major strides of `shape`'s batch dims as they broadcast to `out`'s
/// (0 along a broadcast dim).
fn batch_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let rank = out.len() - 2;
    let own = shape.len().saturating_sub(2);
    let mut st = vec![0; rank];
    let mut acc = shape[shape.len() - 2] * shape[shape.len() - 1];
    for d in (0..own).rev() {
        let od = rank - own + d;
        st[od] = if shape[d] == 1 { 0 } else { acc };
        acc *= shape[d];
    }
    st
}

impl NativeKernel for QMatMul {
    fn run(
        &self,
        inputs: &[Option<In>],
        outputs: &mut [Out],
        threads: usize,
    ) -> Result<(), String> {
        let (a, a_type) = bytes8(&operand(inputs, self.a)?)?;
        let za: Vec<i32> = match self.a_zero {
            Some(i) => zero_points(inputs, i)?,
            None => vec![0],
        };
        let zb: Vec<i32> = match self.b_zero {
            Some(i) => zero_points(inputs, i)?,
            None => vec![0],
        };
        let r = self.out_shape.len();
        let (m, n) = (self.out_shape[r - 2], self.out_shape[r - 1]);
        let k = self.a_shape[self.a_shape.len() - 1];
        if za.len() != 1 && za.len() != m {
            return Err("a zero point: one value or one per row".into());
        }
        if zb.len() != 1 && zb.len() != n {
            return Err("b zero point: one value or one per column".into());
        }
        let zas: Vec<i32> = za.iter().map(|&z| shifted_zero(z, a_type, true)).collect();
        let zbs: Vec<i32> = zb
            .iter()
            .map(|&z| shifted_zero(z, self.b_type, false))
            .collect();
        let out = result(outputs, 0)?;
        let lohi = match self.out {
            QMatOut::Requant { wrap: true, .. } => {
                range_of(out.elem())?;
                // Wide bounds: the byte store keeps the low 8 bits.
                Some((-(1 << 22), 1 << 22))
            }
            QMatOut::Requant { .. } => Some(range_of(out.elem())?),
            QMatOut::I32 => {
                out.i32_ptr()?;
                None
            }
        };
        let dst = out.bytes_ptr();
        let batches: usize = self.out_shape[..r - 2].iter().product();
        let sa = batch_strides(&self.a_shape, &self.out_shape);
        let sb = batch_strides(&self.b_shape, &self.out_shape);
        let b_run = match &self.b {
            QMatB::Operand(i) => Some(bytes8(&operand(inputs, *i)?)?.0),
            QMatB::Packed(_) => None,
        };
        let mut pb = Packed::empty();
        for bi in 0..batches {
            // The batch index's offsets in A and B.
            let (mut oa, mut ob, mut rem) = (0, 0, bi);
            for d in (0..r - 2).rev() {
                let i = rem % self.out_shape[d];
                rem /= self.out_shape[d];
                oa += i * sa[d];
                ob += i * sb[d];
            }
            let ab = &a[oa..oa + m * k];
            let pa = Packed::from_rows(m, k, ab, k, a_type, true);
            let b_packed: &Packed = match (&self.b, b_run) {
                (QMatB::Packed(p), _) => p,
                (_, Some(b)) => {
                    pb.pack_b_rows(&b[ob..ob + k * n], k, n, n, self.b_type, false);
                    &pb
                }
                _ => return Err("B operand missing".into()),
            };
            let at = bi * m * n;
            let qout = match (&self.out, lohi) {
                (QMatOut::Requant { mult, zero, .. }, Some((lo, hi))) => QOut::Requant {
                    mult,
                    per_row: false,
                    zero: *zero,
                    lo,
                    hi,
                    // SAFETY: the result holds batches·m·n bytes.
                    out: unsafe { dst.add(at) },
                },
                _ => QOut::I32 {
                    // SAFETY: the result holds batches·m·n i32s.
                    out: unsafe { (dst as *mut i32).add(at) },
                },
            };
            let g = QGemm {
                za: &zas,
                zb: &zbs,
                bias: None,
                bias_per_row: false,
                ldc: n,
                out: qout,
            };
            qgemm(&pa, b_packed, &g, threads);
        }
        Ok(())
    }
}

/// MaxPool of 8-bit values (2-D, 1-D as height 1): the largest in-bounds
/// tap of each window, compared as u8 or i8; padding never wins, as in
/// the float op.
pub struct MaxPool8 {
    /// Input: batch × channels, height, width.
    pub planes: usize,
    pub input: [usize; 2],
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    /// Top, left.
    pub pads: [usize; 2],
    pub out: [usize; 2],
}

impl MaxPool8 {
    /// Per plane (in parallel where there are enough), by `plane_max` (a
    /// [`MaxPool8::plane`] compiled for the host's vectors).
    fn pool<T: Copy + Send + Sync>(
        &self,
        x: &[T],
        out: &mut [T],
        lowest: T,
        threads: usize,
        plane_max: impl Fn(&MaxPool8, &[T], &mut [T], &mut [T]) + Sync,
    ) {
        let [h, w] = self.input;
        let [oh, ow] = self.out;
        let [kh, kw] = self.kernel;
        let span =
            ((ow - 1) * self.strides[1] + (kw - 1) * self.dilations[1] + 1).max(self.pads[1] + w);
        let out_addr = out.as_mut_ptr() as usize;
        let parallel = threads > 1 && self.planes * oh * ow * kh * kw >= 1 << 17;
        // Units of several planes, one scratch row each (small maps have
        // hundreds of planes of a few hundred bytes).
        let per = if parallel {
            self.planes.div_ceil(8 * threads)
        } else {
            self.planes
        }
        .max(1);
        for_each_unit(parallel, self.planes.div_ceil(per), |u| {
            let mut vm = vec![lowest; span];
            for p in u * per..((u + 1) * per).min(self.planes) {
                let plane = &x[p * h * w..(p + 1) * h * w];
                // SAFETY: plane `p` of the result; units write disjoint
                // planes.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut((out_addr as *mut T).add(p * oh * ow), oh * ow)
                };
                plane_max(self, plane, dst, &mut vm);
            }
        });
    }

    /// One plane: each output row's vertical maximum over its window's
    /// input rows (contiguous, vectorized) into `vm`, a row padded with
    /// `lowest`, then the horizontal maximum of that row at the strided
    /// positions (specialized for the common windows).
    #[inline(always)]
    fn plane<T: Copy + Ord>(&self, plane: &[T], dst: &mut [T], vm: &mut [T], lowest: T) {
        let [h, w] = self.input;
        let ow = self.out[1];
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.strides;
        let [dh, dw] = self.dilations;
        let [pt, pl] = self.pads;
        for (y, line) in dst.chunks_exact_mut(ow).enumerate() {
            let vrow = &mut vm[pl..pl + w];
            vrow.fill(lowest);
            for i in 0..kh {
                let iy = (y * sh + i * dh) as isize - pt as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                for (d, &v) in vrow.iter_mut().zip(src) {
                    *d = (*d).max(v);
                }
            }
            match (kw, sw, dw) {
                (3, 2, 1) => row_max::<T, 3, 2>(vm, line),
                (2, 2, 1) => row_max::<T, 2, 2>(vm, line),
                (3, 1, 1) => row_max::<T, 3, 1>(vm, line),
                _ => {
                    for (xo, d) in line.iter_mut().enumerate() {
                        *d = (0..kw).fold(lowest, |m, j| m.max(vm[xo * sw + j * dw]));
                    }
                }
            }
        }
    }
}

crate::cpu::simd_fn! {
    /// [`MaxPool8::plane`] of u8 values at the host's vector width (on
    /// the crate's SSE2 baseline a third slower).
    fn plane_max_u8(pool: &MaxPool8, plane: &[u8], dst: &mut [u8], vm: &mut [u8]) {
        pool.plane(plane, dst, vm, 0)
    }
}

crate::cpu::simd_fn! {
    /// [`MaxPool8::plane`] of i8 values (SSE2 has no signed byte maximum).
    fn plane_max_i8(pool: &MaxPool8, plane: &[i8], dst: &mut [i8], vm: &mut [i8]) {
        pool.plane(plane, dst, vm, i8::MIN)
    }
}

/// `line[x] = max(row[x·S .. x·S + K])` (the row padded so every window
/// is inside it).
#[inline(always)]
fn row_max<T: Copy + Ord, const K: usize, const S: usize>(row: &[T], line: &mut [T]) {
    for (xo, d) in line.iter_mut().enumerate() {
        let win = &row[xo * S..xo * S + K];
        let mut m = win[0];
        for &v in &win[1..] {
            m = m.max(v);
        }
        *d = m;
    }
}

impl NativeKernel for MaxPool8 {
    fn run(
        &self,
        inputs: &[Option<In>],
        outputs: &mut [Out],
        threads: usize,
    ) -> Result<(), String> {
        let x = operand(inputs, 0)?;
        let out = result(outputs, 0)?;
        let want = self.planes * self.out[0] * self.out[1];
        if out.len() != want || x.len() != self.planes * self.input[0] * self.input[1] {
            return Err("MaxPool: sizes do not match the plan".into());
        }
        match x.elem() {
            ElemType::U8 => self.pool(x.u8s()?, out.u8s()?, 0, threads, plane_max_u8),
            ElemType::I8 => self.pool(x.i8s()?, out.i8s()?, i8::MIN, threads, plane_max_i8),
            e => return Err(format!("no 8-bit MaxPool of {e}")),
        }
        Ok(())
    }
}

/// `kiln.Lookup`: `y[i] = table[x[i] - lowest]` on 8-bit values (a u8's
/// value, an i8's value + 128, which is its byte with the top bit
/// flipped: `flip`). The table, 256 bytes, is the whole function: a pass
/// evaluated whatever chain of float ops it stands for at compile time.
pub struct Lookup8 {
    pub table: [u8; 256],
    pub flip: u8,
}

impl NativeKernel for Lookup8 {
    fn run(
        &self,
        inputs: &[Option<In>],
        outputs: &mut [Out],
        threads: usize,
    ) -> Result<(), String> {
        let (x, _) = bytes8(&operand(inputs, 0)?)?;
        let out = result(outputs, 0)?;
        if out.len() != x.len() || out.elem().storage_bytes(1) != Some(1) {
            return Err("kiln.Lookup: the result does not match the operand".into());
        }
        let out_addr = out.bytes_ptr() as usize;
        // Chunks of 64 KiB: memory speed on one thread, so only large
        // tensors split.
        const CHUNK: usize = 1 << 16;
        let chunks = x.len().div_ceil(CHUNK);
        for_each_unit(threads > 1 && chunks > 1, chunks, |c| {
            let range = c * CHUNK..((c + 1) * CHUNK).min(x.len());
            // SAFETY: the result holds `x.len()` bytes; units write
            // disjoint ranges of it.
            let y = unsafe {
                std::slice::from_raw_parts_mut((out_addr as *mut u8).add(range.start), range.len())
            };
            lookup_bytes(&x[range], &self.table, self.flip, y);
        });
        Ok(())
    }
}

/// `y[i] = table[x[i] ^ flip]`: on AVX-512 VBMI 64 bytes at a time (two
/// 128-entry `vpermi2b` lookups, chosen by the index's top bit), on AVX2
/// 32 at a time (sixteen 16-entry `vpshufb` lookups), else a byte at a
/// time from the table in L1.
fn lookup_bytes(x: &[u8], table: &[u8; 256], flip: u8, y: &mut [u8]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512vbmi") && std::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has the features.
        done = unsafe { lookup_vbmi(x, table, flip, y) };
    } else if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        done = unsafe { lookup_avx2(x, table, flip, y) };
    }
    for (d, &b) in y[done..].iter_mut().zip(&x[done..]) {
        *d = table[(b ^ flip) as usize];
    }
}

/// The whole 64-byte chunks of [`lookup_bytes`]; how many bytes it did.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn lookup_vbmi(x: &[u8], table: &[u8; 256], flip: u8, y: &mut [u8]) -> usize {
    use std::arch::x86_64::*;
    // SAFETY: the table holds 4 × 64 bytes.
    let t: [__m512i; 4] = std::array::from_fn(|i| unsafe {
        _mm512_loadu_si512(table.as_ptr().add(64 * i) as *const _)
    });
    let vflip = _mm512_set1_epi8(flip as i8);
    let whole = x.len().min(y.len()) / 64 * 64;
    for at in (0..whole).step_by(64) {
        // SAFETY: `at + 64 <= whole` bytes of x and y.
        unsafe {
            let i = _mm512_xor_si512(_mm512_loadu_si512(x.as_ptr().add(at) as *const _), vflip);
            let lo = _mm512_permutex2var_epi8(t[0], i, t[1]);
            let hi = _mm512_permutex2var_epi8(t[2], i, t[3]);
            let v = _mm512_mask_blend_epi8(_mm512_movepi8_mask(i), lo, hi);
            _mm512_storeu_si512(y.as_mut_ptr().add(at) as *mut _, v);
        }
    }
    whole
}

/// The whole 32-byte chunks of [`lookup_bytes`] on AVX2; how many bytes
/// it did. Sixteen rounds, one per 16-entry slice h of the table: the
/// index minus 16h, plus 0x70 with unsigned saturation, is 0x70..0x7f
/// (a valid `vpshufb` index, low nibble intact) exactly where the index
/// lies in slice h and has its top bit set (`vpshufb` gives 0) elsewhere,
/// so or-ing the rounds leaves each byte's entry. Four operations per
/// round and 32 bytes, against a load and a store per byte (2.2 GB/s of
/// input on Zen 3, an eighth of a quantized mobilenet's time).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lookup_avx2(x: &[u8], table: &[u8; 256], flip: u8, y: &mut [u8]) -> usize {
    use std::arch::x86_64::*;
    // SAFETY: the table holds 16 × 16 bytes.
    let t: [__m256i; 16] = std::array::from_fn(|h| unsafe {
        _mm256_broadcastsi128_si256(_mm_loadu_si128(table.as_ptr().add(16 * h) as *const _))
    });
    let (vflip, sixteen, bias) = (
        _mm256_set1_epi8(flip as i8),
        _mm256_set1_epi8(16),
        _mm256_set1_epi8(0x70),
    );
    let whole = x.len().min(y.len()) / 32 * 32;
    for at in (0..whole).step_by(32) {
        // SAFETY: `at + 32 <= whole` bytes of x and y.
        unsafe {
            let mut i = _mm256_xor_si256(_mm256_loadu_si256(x.as_ptr().add(at) as *const _), vflip);
            let mut v = _mm256_setzero_si256();
            for th in &t {
                let idx = _mm256_adds_epu8(i, bias);
                v = _mm256_or_si256(v, _mm256_shuffle_epi8(*th, idx));
                i = _mm256_sub_epi8(i, sixteen);
            }
            _mm256_storeu_si256(y.as_mut_ptr().add(at) as *mut _, v);
        }
    }
    whole
}

#[cfg(test)]
mod lookup_tests {
    use super::*;

    /// The vector lookups give the table's value for every byte, at every
    /// length around the chunk sizes, for both index domains (and every
    /// byte value: 256 + 7 consecutive indices).
    #[test]
    fn lookup_bytes_reads_the_table() {
        let table: [u8; 256] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
        for flip in [0u8, 0x80] {
            for n in [0usize, 1, 63, 64, 65, 200, 256 + 7] {
                let x: Vec<u8> = (0..n).map(|i| (i * 97 + 3) as u8).collect();
                let want: Vec<u8> = x.iter().map(|&b| table[(b ^ flip) as usize]).collect();
                let mut y = vec![0u8; n];
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2.
                    let done = unsafe { lookup_avx2(&x, &table, flip, &mut y) };
                    assert_eq!(y[..done], want[..done], "avx2 flip {flip} n {n}");
                }
                lookup_bytes(&x, &table, flip, &mut y);
                assert_eq!(y, want, "flip {flip} n {n}");
            }
        }
    }
}
