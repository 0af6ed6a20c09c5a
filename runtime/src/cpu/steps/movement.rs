//! Steps for data movement and reductions: the operand's elements
//! rearranged (reshape, transpose, gather, concat, expand), converted
//! (cast to f32) or reduced over any axes. The compiler plans each one
//! (shapes, permutation, axes) from its node; these run it, writing every
//! element of their result.

use crate::cpu::movement;
use crate::cpu::reduce::{broadcast, reduce, ReduceOp};
use crate::cpu::view::{In, Out};
use crate::cpu::NativeKernel;

use super::{operand, result};

/// Apply a generic movement function to the element types the movement
/// kernels take (f32, i64, i32, bool, and the quantized path's u8 and i8): `|x, out| body` with `x` the operand's
/// and `out` the result's slice of one type.
macro_rules! movable {
    ($x:expr, $out:expr, |$v:ident, $o:ident| $body:expr) => {{
        let (x, out) = ($x, $out);
        match x.elem() {
            kiln_ir::ElemType::F32 => {
                let ($v, $o) = (x.f32s()?, out.f32s()?);
                $body
            }
            kiln_ir::ElemType::I64 => {
                let ($v, $o) = (x.i64s()?, out.i64s()?);
                $body
            }
            kiln_ir::ElemType::I32 => {
                let ($v, $o) = (x.i32s()?, out.i32s()?);
                $body
            }
            kiln_ir::ElemType::U8 => {
                let ($v, $o) = (x.u8s()?, out.u8s()?);
                $body
            }
            kiln_ir::ElemType::I8 => {
                let ($v, $o) = (x.i8s()?, out.i8s()?);
                $body
            }
            kiln_ir::ElemType::Bool => {
                let ($v, $o) = (x.bools()?, out.bools()?);
                $body
            }
            e => return Err(format!("no native movement of {e}")),
        }
    }};
}

/// Reshape-like ops (and Identity): the operand's bytes under the result's
/// shape. May run in place (then there is nothing to do).
pub struct Reshape;

impl NativeKernel for Reshape {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        let x = operand(inputs, 0)?;
        let out = result(outputs, 0)?;
        if x.byte_len() != out.byte_len() || x.elem() != out.elem() {
            return Err("reshape changes the size or type".into());
        }
        // In place (the memory plan gave the result its operand's bytes):
        // nothing moves.
        if std::ptr::eq(x.bytes_ptr(), out.bytes_ptr()) {
            return Ok(());
        }
        // SAFETY: both views cover `byte_len` bytes (checked above) and
        // do not overlap unless they are the same (handled above); `copy`
        // would allow it anyway.
        unsafe { std::ptr::copy(x.bytes_ptr(), out.bytes_ptr(), x.byte_len()) };
        Ok(())
    }

    fn in_place(&self) -> bool {
        true
    }

    fn moves_data(&self) -> bool {
        true
    }
}

/// Dropout at inference: the operand unchanged and, if asked for, a mask
/// that keeps every element.
pub struct InferenceDropout;

impl NativeKernel for InferenceDropout {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], t: usize) -> Result<(), String> {
        Reshape.run(inputs, &mut outputs[..1], t)?;
        if let Some(mask) = outputs.get_mut(1) {
            mask.bools()?.fill(true);
        }
        Ok(())
    }
}

/// OneHot: `values[1]` where an index (negative ones counted from
/// `depth`) equals the position along the new axis, else `values[0]`;
/// the result viewed as `[outer, depth, inner]` around that axis. Any
/// element type the views hold (copied as bytes).
pub struct OneHot {
    pub outer: usize,
    pub depth: usize,
    pub inner: usize,
}

impl NativeKernel for OneHot {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        let ind = operand(inputs, 0)?;
        use kiln_ir::ElemType as E;
        let idx: Vec<i64> = match ind.elem() {
            E::I64 => ind.i64s()?.to_vec(),
            E::I32 => ind.i32s()?.iter().map(|&v| v as i64).collect(),
            E::I16 => ind.i16s()?.iter().map(|&v| v as i64).collect(),
            E::I8 => ind.i8s()?.iter().map(|&v| v as i64).collect(),
            E::U64 => ind.u64s()?.iter().map(|&v| v as i64).collect(),
            E::U32 => ind.u32s()?.iter().map(|&v| v as i64).collect(),
            E::U16 => ind.u16s()?.iter().map(|&v| v as i64).collect(),
            E::U8 => ind.u8s()?.iter().map(|&v| v as i64).collect(),
            _ => ind.f32s()?.iter().map(|&v| v as i64).collect(),
        };
        let values = operand(inputs, 2)?;
        let out = result(outputs, 0)?;
        let w = values.byte_len() / 2;
        if values.len() != 2
            || idx.len() != self.outer * self.inner
            || out.byte_len() != idx.len() * self.depth * w
        {
            return Err("OneHot: sizes differ from the plan".into());
        }
        // SAFETY: the views cover `byte_len` bytes each (checked above
        // against the plan); the result does not alias the operands.
        let (vals, bytes) = unsafe {
            (
                std::slice::from_raw_parts(values.bytes_ptr(), 2 * w),
                std::slice::from_raw_parts_mut(out.bytes_ptr(), out.byte_len()),
            )
        };
        let (off, on) = vals.split_at(w);
        let depth = self.depth as i64;
        for (o, rows) in bytes
            .chunks_exact_mut(self.depth * self.inner * w)
            .enumerate()
        {
            for (d, row) in rows.chunks_exact_mut(self.inner * w).enumerate() {
                for (i, e) in row.chunks_exact_mut(w).enumerate() {
                    let v = idx[o * self.inner + i];
                    let v = if v < 0 { v + depth } else { v };
                    e.copy_from_slice(if v == d as i64 { on } else { off });
                }
            }
        }
        Ok(())
    }
}

/// Hardmax of f32 along `axis` of `shape`: the interpreter's rule (1 at
/// the first maximum, a leading NaN winning), run on an f64 copy.
pub struct Hardmax {
    pub shape: Vec<usize>,
    pub axis: usize,
}

impl NativeKernel for Hardmax {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        use crate::interp::kernels::nn::softmax::{apply, Kind};
        let x = operand(inputs, 0)?.f32s()?;
        let mut v: Vec<f64> = x.iter().map(|&a| a as f64).collect();
        apply(&mut v, &self.shape, self.axis, Kind::Hard);
        for (o, a) in result(outputs, 0)?.f32s()?.iter_mut().zip(v) {
            *o = a as f32;
        }
        Ok(())
    }
}

/// Transpose by `perm` of an operand of `shape`.
pub struct Transpose {
    pub shape: Vec<usize>,
    pub perm: Vec<usize>,
}

impl NativeKernel for Transpose {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        let x = operand(inputs, 0)?;
        let out = result(outputs, 0)?;
        movable!(x, out, |v, o| movement::transpose(
            v,
            &self.shape,
            &self.perm,
            o
        ));
        Ok(())
    }
}

/// Cast (and CastLike) between any two element types the executable
/// holds in views, by the interpreter's conversion (`cast_data`: numpy's
/// `astype` rules, float8 saturation, bfloat16 truncation), the one place
/// that defines it; the bytes go in and out of the views directly.
pub struct CastAny {
    pub to: kiln_ir::ElemType,
    pub saturate: bool,
}

impl NativeKernel for CastAny {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        use crate::interp::kernels::elementwise::cast::cast_data;
        let x = operand(inputs, 0)?;
        let out = result(outputs, 0)?;
        // SAFETY: the view covers `byte_len` readable bytes.
        let bytes = unsafe { std::slice::from_raw_parts(x.bytes_ptr(), x.byte_len()) };
        let shape = vec![x.len() as u64];
        let d = kiln_ir::TensorData::from_bytes(x.elem(), shape, bytes.to_vec())
            .map_err(|e| e.to_string())?;
        let t = crate::tensor::Tensor::from_data(&d).map_err(|e| e.to_string())?;
        let cast = cast_data(&t.data, self.to, self.saturate).map_err(|e| e.to_string())?;
        let t = crate::tensor::Tensor::new(t.shape, cast).map_err(|e| e.to_string())?;
        let d = t.to_data();
        let b = d.bytes().ok_or("Cast: a result without bytes")?;
        if b.len() != out.byte_len() {
            return Err("Cast: result size differs from the plan".into());
        }
        // SAFETY: the result view is valid for `byte_len` writes, which
        // `b` holds, and does not overlap this fresh buffer.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), out.bytes_ptr(), b.len()) };
        Ok(())
    }
}

/// An index operand's values (i64 or i32) as i64.
fn indices(x: In) -> Result<Vec<i64>, String> {
    match x.elem() {
        kiln_ir::ElemType::I64 => Ok(x.i64s()?.to_vec()),
        kiln_ir::ElemType::I32 => Ok(x.i32s()?.iter().map(|&i| i as i64).collect()),
        e => Err(format!("indices of {e}")),
    }
}

/// ConstantOfShape: every element of the result is one value, given as
/// its bytes.
pub struct Fill {
    pub value: Vec<u8>,
}

impl NativeKernel for Fill {
    fn run(&self, _: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        let out = result(outputs, 0)?;
        let w = self.value.len();
        if w == 0 || out.byte_len() % w != 0 {
            return Err("ConstantOfShape: value of another width".into());
        }
        // SAFETY: the view covers `byte_len` writable bytes.
        let bytes = unsafe { std::slice::from_raw_parts_mut(out.bytes_ptr(), out.byte_len()) };
        if self.value.iter().all(|&b| b == 0) {
            bytes.fill(0);
        } else {
            for c in bytes.chunks_exact_mut(w) {
                c.copy_from_slice(&self.value);
            }
        }
        Ok(())
    }
}

/// GatherND: slices of the data at the index tuples, where the
/// interpreter's `nd_offsets` (one definition of the indexing: batch
/// dims, negative indices, range checks) puts them.
pub struct GatherNd {
    pub shape: Vec<usize>,
    pub batch_dims: usize,
}

impl NativeKernel for GatherNd {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        use crate::interp::kernels::movement::nd_offsets;
        let x = operand(inputs, 0)?;
        let idx = operand(inputs, 1)?;
        let ints = indices(idx)?;
        let t =
            crate::tensor::Tensor::from_i64(idx.shape.to_vec(), ints).map_err(|e| e.to_string())?;
        let (offs, slice) =
            nd_offsets(&self.shape, &t, self.batch_dims, "GatherND").map_err(|e| e.to_string())?;
        let out = result(outputs, 0)?;
        let w = x.byte_len() / x.len().max(1);
        if offs.len() * slice * w != out.byte_len() {
            return Err("GatherND: result size differs from the plan".into());
        }
        // SAFETY: both views cover their `byte_len` bytes; nd_offsets
        // checked every tuple against the data's shape, so each slice
        // lies inside the data; the result is not the data.
        unsafe {
            for (k, &o) in offs.iter().enumerate() {
                std::ptr::copy_nonoverlapping(
                    x.bytes_ptr().add(o * w),
                    out.bytes_ptr().add(k * slice * w),
                    slice * w,
                );
            }
        }
        Ok(())
    }
}

/// RoiAlign of f32 maps: see [`crate::cpu::roi_align`].
pub struct RoiAlign(pub crate::cpu::roi_align::RoiAlign);

impl NativeKernel for RoiAlign {
    fn run(
        &self,
        inputs: &[Option<In>],
        outputs: &mut [Out],
        threads: usize,
    ) -> Result<(), String> {
        let (x, rois, batch) = (
            operand(inputs, 0)?,
            operand(inputs, 1)?,
            operand(inputs, 2)?,
        );
        let batch = indices(batch)?;
        let out = result(outputs, 0)?;
        self.0
            .run(x.f32s()?, rois.f32s()?, &batch, out.f32s()?, threads)
    }
}

/// GridSample of an f32 image at f32 grid points. The taps of every
/// point come from the interpreter's rule ([`GridSpec::point_taps`]),
/// once per image; the channels then each gather their plane through
/// them, split across threads.
///
/// [`GridSpec::point_taps`]: crate::interp::kernels::movement::resample::GridSpec::point_taps
pub struct GridSample {
    pub spec: crate::interp::kernels::movement::resample::GridSpec,
    pub x: Vec<usize>,
    pub grid: Vec<usize>,
}

impl NativeKernel for GridSample {
    fn run(
        &self,
        inputs: &[Option<In>],
        outputs: &mut [Out],
        threads: usize,
    ) -> Result<(), String> {
        use rayon::prelude::*;
        let (x, grid) = (operand(inputs, 0)?.f32s()?, operand(inputs, 1)?.f32s()?);
        let out = result(outputs, 0)?.f32s()?;
        let (n, c, dims) = (self.x[0], self.x[1], &self.x[2..]);
        let k = dims.len();
        let plane: usize = dims.iter().product();
        let npts: usize = self.grid[1..self.grid.len() - 1].iter().product();
        if out.is_empty() {
            return Ok(());
        }
        // Taps per point, at most: 1, 2 or 4 per spatial dim. Every point
        // gets that many slots, its taps first and then weight-0 padding
        // at offset 0, so that the common loop has a fixed trip count.
        let per_dim = match self.spec.taps_per_dim() {
            0 => return Err("GridSample without taps".into()),
            t => t,
        };
        let t = per_dim.pow(k as u32);
        let (mut at, mut wt) = (vec![0u32; npts * t], vec![0f32; npts * t]);
        let mut valid = vec![0u8; npts];
        // Points per unit of the tap computation.
        const POINTS: usize = 1024;
        for b in 0..n {
            let points = |(u, ((a, w), v)): (usize, TapSlots)| {
                let mut taps = Vec::new();
                for (q, ((a, w), v)) in a.chunks_mut(t).zip(w.chunks_mut(t)).zip(v).enumerate() {
                    let g = &grid[(b * npts + u * POINTS + q) * k..][..k];
                    self.spec
                        .point_taps(dims, |d| g[k - 1 - d] as f64, &mut taps);
                    a.fill(0);
                    w.fill(0.0);
                    for (j, &(i, x)) in taps.iter().enumerate() {
                        (a[j], w[j]) = (i as u32, x as f32);
                    }
                    *v = taps.len() as u8;
                }
            };
            let units = at
                .chunks_mut(POINTS * t)
                .zip(wt.chunks_mut(POINTS * t))
                .zip(valid.chunks_mut(POINTS));
            if threads > 1 && npts > POINTS {
                units.enumerate().par_bridge().for_each(points);
            } else {
                units.enumerate().for_each(points);
            }
            let (at, wt, valid) = (&at, &wt, &valid);
            let channel = |(ch, o): (usize, &mut [f32])| {
                let src = &x[(b * c + ch) * plane..][..plane];
                // Padding reads src[0] with weight 0: exact unless src
                // holds an infinity or NaN (0·inf), where only the
                // point's own taps are summed.
                if src.iter().all(|v| v.is_finite()) {
                    gather_fixed(src, at, wt, t, o);
                } else {
                    for (p, o) in o.iter_mut().enumerate() {
                        let r = p * t..p * t + valid[p] as usize;
                        *o = at[r.clone()]
                            .iter()
                            .zip(&wt[r])
                            .map(|(&i, &w)| w * src[i as usize])
                            .sum();
                    }
                }
            };
            let o = &mut out[b * c * npts..][..c * npts];
            if threads > 1 && c > 1 {
                o.par_chunks_mut(npts).enumerate().for_each(channel);
            } else {
                o.chunks_mut(npts).enumerate().for_each(channel);
            }
        }
        Ok(())
    }
}

/// One unit of GridSample's tap slots: offsets, weights, valid counts.
type TapSlots<'a> = ((&'a mut [u32], &'a mut [f32]), &'a mut [u8]);

/// `out[p] = Σ_j wt[p·t + j] · src[at[p·t + j]]`, `t` taps per point,
/// with the common counts unrolled.
fn gather_fixed(src: &[f32], at: &[u32], wt: &[f32], t: usize, out: &mut [f32]) {
    fn fixed<const T: usize>(src: &[f32], at: &[u32], wt: &[f32], out: &mut [f32]) {
        for ((o, a), w) in out
            .iter_mut()
            .zip(at.chunks_exact(T))
            .zip(wt.chunks_exact(T))
        {
            let mut acc = 0.0;
            for j in 0..T {
                acc += w[j] * src[a[j] as usize];
            }
            *o = acc;
        }
    }
    match t {
        1 => fixed::<1>(src, at, wt, out),
        4 => fixed::<4>(src, at, wt, out),
        8 => fixed::<8>(src, at, wt, out),
        16 => fixed::<16>(src, at, wt, out),
        _ => {
            for ((o, a), w) in out
                .iter_mut()
                .zip(at.chunks_exact(t))
                .zip(wt.chunks_exact(t))
            {
                *o = a.iter().zip(w).map(|(&i, &w)| w * src[i as usize]).sum();
            }
        }
    }
}

/// ScatterElements: the data, with `updates` written (or combined) at
/// the positions `indices` names along `axis`.
pub struct ScatterElements {
    pub shape: Vec<usize>,
    pub indices: Vec<usize>,
    pub axis: usize,
    pub reduction: movement::Combine,
}

impl NativeKernel for ScatterElements {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        let x = operand(inputs, 0)?;
        let idx = operand(inputs, 1)?;
        let idx = indices(idx)?;
        let updates = operand(inputs, 2)?;
        let out = result(outputs, 0)?;
        let (shape, ishape, axis) = (&self.shape, &self.indices, self.axis);
        if self.reduction == movement::Combine::Replace {
            macro_rules! scatter {
                ($get:ident) => {{
                    let (v, u, o) = (x.$get()?, updates.$get()?, out.$get()?);
                    movement::scatter_elements(v, shape, &idx, ishape, u, axis, |_, b| b, o)
                }};
            }
            return match x.elem() {
                kiln_ir::ElemType::F32 => scatter!(f32s),
                kiln_ir::ElemType::I64 => scatter!(i64s),
                kiln_ir::ElemType::I32 => scatter!(i32s),
                kiln_ir::ElemType::U8 => scatter!(u8s),
                kiln_ir::ElemType::I8 => scatter!(i8s),
                kiln_ir::ElemType::Bool => scatter!(bools),
                e => Err(format!("no native scatter of {e}")),
            };
        }
        let (v, u, o) = (x.f32s()?, updates.f32s()?, out.f32s()?);
        let f = self.reduction;
        movement::scatter_elements(v, shape, &idx, ishape, u, axis, |a, b| f.apply(a, b), o)
    }
}

/// Resize of f32 data, planned: see [`crate::cpu::resize`].
pub struct Resize(pub crate::cpu::resize::Resize);

impl NativeKernel for Resize {
    fn run(
        &self,
        inputs: &[Option<In>],
        outputs: &mut [Out],
        threads: usize,
    ) -> Result<(), String> {
        let x = operand(inputs, 0)?;
        let out = result(outputs, 0)?;
        self.0.run(x.f32s()?, out.f32s()?, threads)
    }
}

/// Split along `axis` of an operand of `shape` into results of `sizes`
/// along it: each a [`movement::slice`].
pub struct Split {
    pub shape: Vec<usize>,
    pub axis: usize,
    pub sizes: Vec<usize>,
    /// Each result's element offset in the operand where it is one
    /// contiguous block of it (the memory plan may have put it there).
    pub blocks: Vec<Option<usize>>,
}

impl NativeKernel for Split {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        let x = operand(inputs, 0)?;
        if outputs.len() != self.sizes.len() || self.blocks.len() != self.sizes.len() {
            return Err("split: result count".into());
        }
        let r = self.shape.len();
        let mut first = vec![0usize; r];
        for ((out, &size), &block) in outputs.iter_mut().zip(&self.sizes).zip(&self.blocks) {
            let mut out_shape = self.shape.clone();
            out_shape[self.axis] = size;
            if already_in_place(&x, out, block) {
                first[self.axis] += size;
                continue;
            }
            let step = vec![1isize; r];
            movable!(x, out, |v, o| movement::slice(
                v,
                &self.shape,
                &first,
                &step,
                &out_shape,
                o
            ));
            first[self.axis] += size;
        }
        Ok(())
    }

    fn moves_data(&self) -> bool {
        true
    }
}

/// Slice with constant bounds, planned: see [`movement::slice`].
pub struct Slice {
    pub shape: Vec<usize>,
    pub first: Vec<usize>,
    pub step: Vec<isize>,
    pub out: Vec<usize>,
    /// The result's element offset in the operand where it is one
    /// contiguous block of it (the memory plan may have put it there).
    pub block: Option<usize>,
}

/// Whether `out` already lies at element `block` of `x`, where the memory
/// plan puts a Slice or Split result that is one contiguous block of its
/// operand ([`kiln_ir::ops::geometry::contiguous_block`]): then nothing
/// moves. Tested before any slice of either is formed, since the two
/// overlap.
fn already_in_place(x: &In, out: &Out, block: Option<usize>) -> bool {
    let esize = x.elem().storage_bytes(1).unwrap_or(0) as usize;
    block.is_some_and(|e| {
        esize > 0
            && out.elem() == x.elem()
            && (e + out.len()) * esize <= x.byte_len()
            && std::ptr::eq(x.bytes_ptr().wrapping_add(e * esize), out.bytes_ptr())
    })
}

impl NativeKernel for Slice {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        let x = operand(inputs, 0)?;
        let out = result(outputs, 0)?;
        if x.len() != self.shape.iter().product::<usize>() {
            return Err("slice: operand of another shape".into());
        }
        if already_in_place(&x, out, self.block) {
            return Ok(());
        }
        movable!(x, out, |v, o| movement::slice(
            v,
            &self.shape,
            &self.first,
            &self.step,
            &self.out,
            o
        ));
        Ok(())
    }

    fn moves_data(&self) -> bool {
        true
    }
}

/// Pad in any mode, planned as per-axis source tables: see
/// [`movement::pad`].
pub struct Pad {
    pub shape: Vec<usize>,
    pub src: Vec<Vec<Option<usize>>>,
    pub fill: f64,
}

impl NativeKernel for Pad {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        use movement::FromF64;
        let x = operand(inputs, 0)?;
        let out = result(outputs, 0)?;
        if x.len() != self.shape.iter().product::<usize>() {
            return Err("pad: operand of another shape".into());
        }
        movable!(x, out, |v, o| movement::pad(
            v,
            &self.shape,
            &self.src,
            FromF64::from_f64(self.fill),
            o
        ));
        Ok(())
    }
}

/// Gather along one axis: `outer` blocks of `rows` rows of `row_len`.
pub struct Gather {
    pub outer: usize,
    pub rows: usize,
    pub row_len: usize,
}

impl NativeKernel for Gather {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        let x = operand(inputs, 0)?;
        let idx = operand(inputs, 1)?;
        let idx = indices(idx)?;
        let out = result(outputs, 0)?;
        let (outer, rows, row_len) = (self.outer, self.rows, self.row_len);
        movable!(x, out, |v, o| movement::gather(
            v, outer, rows, row_len, &idx, o
        )?);
        Ok(())
    }
}

/// Concat along one axis: `outer` blocks, each part contributing
/// `inner[i]` elements.
pub struct Concat {
    pub outer: usize,
    pub inner: Vec<usize>,
}

impl NativeKernel for Concat {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        let parts: Vec<In> = (0..inputs.len())
            .map(|i| operand(inputs, i))
            .collect::<Result<_, _>>()?;
        let out = result(outputs, 0)?;
        // Whole bytes per element (no packed 4-bit types).
        let esize = out.elem().storage_bytes(1).unwrap_or(0) as usize;
        if esize == 0 || out.byte_len() != out.len() * esize {
            return Err(format!("no native concat of {}", out.elem()));
        }
        let total: usize = self.inner.iter().sum();
        if out.byte_len() != self.outer * total * esize {
            return Err("Concat: result size differs from the plan".into());
        }
        let dst = out.bytes_ptr();
        let mut at = 0;
        for (p, &inner) in parts.iter().zip(&self.inner) {
            if p.elem() != out.elem() || p.byte_len() != self.outer * inner * esize {
                return Err("Concat: operand size differs from the plan".into());
            }
            let src = p.bytes_ptr();
            for o in 0..self.outer {
                // SAFETY: block o of this operand (inner elements) and its
                // place in the result lie inside both (sizes checked
                // above). The memory plan may have put the operand right
                // there (one block: nothing before the axis): then nothing
                // moves; otherwise the two do not overlap.
                unsafe {
                    let s = src.add(o * inner * esize);
                    let d = dst.add((o * total + at) * esize);
                    if !std::ptr::eq(s, d) {
                        std::ptr::copy_nonoverlapping(s, d, inner * esize);
                    }
                }
            }
            at += inner;
        }
        Ok(())
    }

    fn moves_data(&self) -> bool {
        true
    }
}

/// Cast to f32 from the integer and bool types (exact or rounded to
/// nearest, as `as` does), or f32 to f32. May run in place (an i32 or f32
/// operand of the result's size): element i is read before it is written.
pub struct CastToF32;

impl NativeKernel for CastToF32 {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        let x = operand(inputs, 0)?;
        let out = result(outputs, 0)?;
        let n = out.len();
        if x.len() != n {
            return Err("cast changes the element count".into());
        }
        let dst = out.f32_ptr()?;
        macro_rules! convert {
            ($src:expr, |$a:ident| $conv:expr) => {{
                let src = $src;
                for i in 0..n {
                    // SAFETY: both views hold `n` elements of their types;
                    // element i is read before element i is written, so an
                    // operand aliasing the result (in place) is read intact.
                    unsafe {
                        let $a = src.add(i).read();
                        dst.add(i).write($conv);
                    }
                }
            }};
        }
        match x.elem() {
            kiln_ir::ElemType::F32 => convert!(x.f32_ptr()?, |a| a),
            kiln_ir::ElemType::I64 => convert!(x.i64_ptr()?, |a| a as f32),
            kiln_ir::ElemType::I32 => convert!(x.i32_ptr()?, |a| a as f32),
            kiln_ir::ElemType::Bool => convert!(x.bool_ptr()?, |a| a as u8 as f32),
            kiln_ir::ElemType::U8 => convert!(x.bytes_ptr(), |a| a as f32),
            kiln_ir::ElemType::I8 => convert!(x.bytes_ptr() as *const i8, |a| a as f32),
            e => return Err(format!("no native cast of {e}")),
        }
        Ok(())
    }

    fn in_place(&self) -> bool {
        true
    }
}

/// Broadcast of an operand of `in_shape` to `out`.
pub struct Expand {
    pub in_shape: Vec<usize>,
    pub out: Vec<usize>,
}

impl NativeKernel for Expand {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        let x = operand(inputs, 0)?;
        let out = result(outputs, 0)?;
        if x.elem() == kiln_ir::ElemType::Bool {
            broadcast(x.bools()?, &self.in_shape, &self.out, out.bools()?);
            return Ok(());
        }
        movable!(x, out, |v, o| broadcast(v, &self.in_shape, &self.out, o));
        Ok(())
    }
}

/// A reduction of an f32 operand of `shape` over `axes` (any of them).
/// Softmax or LogSoftmax along a non-last axis of `[outer, n, inner]`
/// data: see [`crate::cpu::reduce::softmax_axis`].
pub struct SoftmaxAxis {
    pub outer: usize,
    pub n: usize,
    pub inner: usize,
    pub log: bool,
}

impl NativeKernel for SoftmaxAxis {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        let x = operand(inputs, 0)?;
        let out = result(outputs, 0)?;
        crate::cpu::reduce::softmax_axis(
            x.f32s()?,
            self.outer,
            self.n,
            self.inner,
            self.log,
            out.f32s()?,
        );
        Ok(())
    }
}

pub struct Reduce {
    pub shape: Vec<usize>,
    pub axes: Vec<usize>,
    pub op: ReduceOp,
}

impl NativeKernel for Reduce {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        let x = operand(inputs, 0)?;
        let out = result(outputs, 0)?;
        reduce(x.f32s()?, &self.shape, &self.axes, self.op, out.f32s()?);
        Ok(())
    }
}

/// TopK of f32, i64 or i32 data along one axis, `[outer, n, inner]`
/// around it, with the K the plan's result shapes were made for.
pub struct TopK {
    pub dims: (usize, usize, usize),
    pub k: usize,
    pub largest: bool,
}

impl NativeKernel for TopK {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        use crate::interp::kernels::movement::nan_greatest;
        let x = operand(inputs, 0)?;
        let k = indices(operand(inputs, 1)?)?;
        if k.as_slice() != [self.k as i64] {
            return Err(format!("TopK: K = {k:?}, planned for {}", self.k));
        }
        let [values, idx] = outputs else {
            return Err("TopK: two results".into());
        };
        let idx = idx.i64s()?;
        let (dims, k, largest) = (self.dims, self.k, self.largest);
        match x.elem() {
            kiln_ir::ElemType::F32 => movement::top_k(
                x.f32s()?,
                dims,
                k,
                largest,
                |a, b| nan_greatest(a, b, a.is_nan(), b.is_nan()),
                values.f32s()?,
                idx,
            ),
            kiln_ir::ElemType::I64 => {
                movement::top_k(x.i64s()?, dims, k, largest, Ord::cmp, values.i64s()?, idx)
            }
            kiln_ir::ElemType::I32 => {
                movement::top_k(x.i32s()?, dims, k, largest, Ord::cmp, values.i32s()?, idx)
            }
            e => return Err(format!("TopK of {e}")),
        }
        Ok(())
    }
}

/// A reduction of i64 or i32 data that is exact in its type (sum, mean,
/// product, max, min, L1, sum of squares), by the interpreter's integer
/// reduction (`reduce_ints_named`: wrapping, empty-set identities), the
/// one definition. Integer reductions are shape arithmetic in practice
/// (the product of a shape, the least of two counts): small operands.
pub struct IntReduce {
    pub op: String,
    pub shape: Vec<usize>,
    pub axes: Vec<usize>,
}

impl NativeKernel for IntReduce {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        use crate::interp::kernels::nn::reduce::reduce_ints_named;
        let x = operand(inputs, 0)?;
        let elem = x.elem();
        let v = indices(x)?;
        let acc = reduce_ints_named(elem, &self.op, &v, &self.shape, &self.axes)
            .map_err(|e| e.to_string())?;
        let out = result(outputs, 0)?;
        if out.len() != acc.len() {
            return Err("integer reduction: result size differs from the plan".into());
        }
        match elem {
            kiln_ir::ElemType::I64 => out.i64s()?.copy_from_slice(&acc),
            kiln_ir::ElemType::I32 => {
                for (o, &a) in out.i32s()?.iter_mut().zip(&acc) {
                    *o = a as i32;
                }
            }
            e => return Err(format!("integer reduction of {e}")),
        }
        Ok(())
    }
}

/// NonZero: the indices of the operand's nonzero elements (NaN counts),
/// as `[rank, count]` i64 in row-major order. Its result's size is the
/// count, so it runs only per shape at run time, sized by
/// [`NativeKernel::sized_results`].
pub struct NonZero {
    pub shape: Vec<usize>,
}

impl NonZero {
    /// Whether each element is nonzero.
    fn mask(x: In) -> Result<Vec<bool>, String> {
        Ok(match x.elem() {
            kiln_ir::ElemType::F32 => x.f32s()?.iter().map(|&v| v != 0.0).collect(),
            kiln_ir::ElemType::I64 => x.i64s()?.iter().map(|&v| v != 0).collect(),
            kiln_ir::ElemType::I32 => x.i32s()?.iter().map(|&v| v != 0).collect(),
            kiln_ir::ElemType::U8 => x.u8s()?.iter().map(|&v| v != 0).collect(),
            kiln_ir::ElemType::I8 => x.i8s()?.iter().map(|&v| v != 0).collect(),
            kiln_ir::ElemType::Bool => x.bools()?.to_vec(),
            e => return Err(format!("NonZero of {e}")),
        })
    }

    fn count(x: In) -> Result<usize, String> {
        Ok(Self::mask(x)?.iter().filter(|&&b| b).count())
    }
}

impl NativeKernel for NonZero {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        let mask = Self::mask(operand(inputs, 0)?)?;
        if mask.len() != self.shape.iter().product::<usize>() {
            return Err("NonZero: operand size differs from the plan".into());
        }
        let count = mask.iter().filter(|&&b| b).count();
        let out = result(outputs, 0)?.i64s()?;
        let r = self.shape.len();
        if out.len() != r * count {
            return Err("NonZero: result size differs from its count".into());
        }
        // Row-major coordinates of each set element, axis by axis.
        let mut coord = vec![0usize; r];
        let mut j = 0;
        for &set in &mask {
            if set {
                for (a, &c) in coord.iter().enumerate() {
                    out[a * count + j] = c as i64;
                }
                j += 1;
            }
            for a in (0..r).rev() {
                coord[a] += 1;
                if coord[a] < self.shape[a] {
                    break;
                }
                coord[a] = 0;
            }
        }
        Ok(())
    }

    fn sized_results(&self, inputs: &[Option<In>]) -> Option<Result<Vec<Vec<usize>>, String>> {
        let count = operand(inputs, 0).and_then(Self::count);
        Some(count.map(|c| vec![vec![self.shape.len(), c]]))
    }

    fn sized_by_values(&self) -> bool {
        true
    }
}

/// NonMaxSuppression of f32 boxes and scores, by the interpreter's
/// selection ([`nms_select`]); its result's size is the number selected,
/// so, like [`NonZero`], it runs per shape at run time, sized by
/// [`NativeKernel::sized_results`] (which selects once to count).
///
/// [`nms_select`]: crate::interp::kernels::nn::vision::nms_select
pub struct NonMaxSuppression {
    /// `(batches, boxes, classes)`.
    pub dims: (usize, usize, usize),
    pub center: bool,
}

impl NonMaxSuppression {
    fn select(&self, inputs: &[Option<In>]) -> Result<Vec<i64>, String> {
        let f64s = |i: usize| -> Result<Vec<f64>, String> {
            Ok(operand(inputs, i)?
                .f32s()?
                .iter()
                .map(|&v| v as f64)
                .collect())
        };
        let first = |i: usize| -> Result<Option<f64>, String> {
            Ok(match inputs.get(i).copied().flatten() {
                None => None,
                Some(v) => match v.elem() {
                    kiln_ir::ElemType::I64 => v.i64s()?.first().map(|&x| x as f64),
                    _ => v.f32s()?.first().map(|&x| x as f64),
                },
            })
        };
        let max_out = first(2)?.unwrap_or(0.0).max(0.0) as usize;
        let iou = first(3)?.unwrap_or(0.0);
        Ok(crate::interp::kernels::nn::vision::nms_select(
            &f64s(0)?,
            &f64s(1)?,
            self.dims,
            max_out,
            iou,
            first(4)?,
            self.center,
        ))
    }
}

impl NativeKernel for NonMaxSuppression {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        let sel = self.select(inputs)?;
        let out = result(outputs, 0)?.i64s()?;
        if out.len() != sel.len() {
            return Err("NonMaxSuppression: result size differs from its count".into());
        }
        out.copy_from_slice(&sel);
        Ok(())
    }

    fn sized_results(&self, inputs: &[Option<In>]) -> Option<Result<Vec<Vec<usize>>, String>> {
        Some(self.select(inputs).map(|s| vec![vec![s.len() / 3, 3]]))
    }

    fn sized_by_values(&self) -> bool {
        true
    }
}

/// ArgMax or ArgMin of f32, i64 or i32 data along one axis,
/// `[outer, n, inner]` around it (see [`movement::arg_best`]).
pub struct ArgBest {
    pub dims: (usize, usize, usize),
    pub is_max: bool,
    pub last: bool,
}

impl NativeKernel for ArgBest {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        use crate::interp::kernels::nn::reduce::arg_better;
        let x = operand(inputs, 0)?;
        let out = result(outputs, 0)?.i64s()?;
        let (dims, last, max) = (self.dims, self.last, self.is_max);
        let ints = move |p: i64, q: i64| if max { p > q } else { p < q };
        match x.elem() {
            kiln_ir::ElemType::F32 => movement::arg_best(
                x.f32s()?,
                dims,
                last,
                |p, q| arg_better(p as f64, q as f64, max),
                out,
            ),
            kiln_ir::ElemType::I64 => movement::arg_best(x.i64s()?, dims, last, ints, out),
            kiln_ir::ElemType::I32 => {
                movement::arg_best(x.i32s()?, dims, last, |p, q| ints(p as i64, q as i64), out)
            }
            e => return Err(format!("ArgMax/ArgMin of {e}")),
        }
        Ok(())
    }
}

/// GatherElements of movable data (see [`movement::gather_elements`]).
pub struct GatherElements {
    pub shape: Vec<usize>,
    pub indices: Vec<usize>,
    pub axis: usize,
}

impl NativeKernel for GatherElements {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        let x = operand(inputs, 0)?;
        let idx = indices(operand(inputs, 1)?)?;
        let out = result(outputs, 0)?;
        let (shape, ishape, axis) = (&self.shape, &self.indices, self.axis);
        movable!(x, out, |v, o| movement::gather_elements(
            v, shape, &idx, ishape, axis, o
        ))
    }
}

/// Tile of movable data (see [`movement::tile`]), its repeats planned.
pub struct Tile {
    pub shape: Vec<usize>,
    pub reps: Vec<usize>,
}

impl NativeKernel for Tile {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        let x = operand(inputs, 0)?;
        let reps = indices(operand(inputs, 1)?)?;
        if reps.len() != self.reps.len()
            || reps.iter().zip(&self.reps).any(|(&a, &b)| a != b as i64)
        {
            return Err(format!(
                "Tile: repeats {reps:?}, planned for {:?}",
                self.reps
            ));
        }
        let out = result(outputs, 0)?;
        movable!(x, out, |v, o| movement::tile(v, &self.shape, &self.reps, o));
        Ok(())
    }
}

/// CumSum of f32, i64 or i32 data along a planned axis (see
/// [`movement::cumsum`]).
pub struct CumSum {
    pub dims: (usize, usize, usize),
    pub axis: i64,
    pub exclusive: bool,
    pub reverse: bool,
}

impl NativeKernel for CumSum {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        let x = operand(inputs, 0)?;
        let axis = indices(operand(inputs, 1)?)?;
        if axis.as_slice() != [self.axis] {
            return Err(format!("CumSum: axis {axis:?}, planned for {}", self.axis));
        }
        let out = result(outputs, 0)?;
        let (d, e, r) = (self.dims, self.exclusive, self.reverse);
        match x.elem() {
            kiln_ir::ElemType::F32 => movement::cumsum(
                x.f32s()?,
                d,
                e,
                r,
                0f64,
                |a, v| a + v as f64,
                |a| a as f32,
                out.f32s()?,
            ),
            kiln_ir::ElemType::I64 => movement::cumsum(
                x.i64s()?,
                d,
                e,
                r,
                0i64,
                i64::wrapping_add,
                |a| a,
                out.i64s()?,
            ),
            kiln_ir::ElemType::I32 => movement::cumsum(
                x.i32s()?,
                d,
                e,
                r,
                0i64,
                |a, v| a.wrapping_add(v as i64),
                |a| a as i32,
                out.i32s()?,
            ),
            e => return Err(format!("CumSum of {e}")),
        }
        Ok(())
    }
}

/// ScatterND: the data, with each update slice written (or combined) at
/// the offset its index tuple names, by the interpreter's `nd_offsets`
/// (the one definition of the indexing), in order.
/// TensorScatter (opset 24, a key/value cache update): the cache copied,
/// then each (prefix, position) run of `update` written at its sample's
/// write index along the sequence axis (wrapping in circular mode). The
/// cache is `[outer, max, inner]` around the axis, the update `[outer,
/// seq, inner]`; `per_sample` outer rows belong to one batch sample.
pub struct TensorScatter {
    pub outer: usize,
    pub per_sample: usize,
    pub max: usize,
    pub seq: usize,
    pub inner: usize,
    pub circular: bool,
}

impl TensorScatter {
    /// Where each update position goes along the axis, per sample.
    fn targets(&self, starts: &[i64]) -> Result<Vec<usize>, String> {
        let mut at = Vec::with_capacity(starts.len() * self.seq);
        for &w in starts {
            for s in 0..self.seq as i64 {
                let p = w + s;
                let p = if self.circular {
                    p.rem_euclid(self.max.max(1) as i64)
                } else if (0..self.max as i64).contains(&p) {
                    p
                } else {
                    return Err(format!(
                        "TensorScatter: write index {p} outside the cache's {} positions",
                        self.max
                    ));
                };
                at.push(p as usize);
            }
        }
        Ok(at)
    }

    fn write<T: Copy>(
        &self,
        past: &[T],
        upd: &[T],
        out: &mut [T],
        at: &[usize],
    ) -> Result<(), String> {
        let (max, seq, inner) = (self.max, self.seq, self.inner);
        if past.len() != self.outer * max * inner
            || upd.len() != self.outer * seq * inner
            || out.len() != past.len()
        {
            return Err("TensorScatter: sizes differ from the plan".into());
        }
        out.copy_from_slice(past);
        for o in 0..self.outer {
            let sample = o / self.per_sample.max(1);
            for s in 0..seq {
                let p = at[sample * seq + s];
                let src = &upd[(o * seq + s) * inner..][..inner];
                out[(o * max + p) * inner..][..inner].copy_from_slice(src);
            }
        }
        Ok(())
    }
}

impl NativeKernel for TensorScatter {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        let past = operand(inputs, 0)?;
        let upd = operand(inputs, 1)?;
        let samples = self.outer / self.per_sample.max(1);
        let starts = match inputs.get(2).copied().flatten() {
            Some(w) => indices(w)?,
            None => vec![0; samples],
        };
        if starts.len() != samples {
            return Err(format!(
                "TensorScatter: {} write indices for {samples} samples",
                starts.len()
            ));
        }
        let at = self.targets(&starts)?;
        let out = result(outputs, 0)?;
        if upd.elem() != past.elem() {
            return Err("TensorScatter: update of another type than the cache".into());
        }
        match past.elem() {
            kiln_ir::ElemType::F32 => self.write(past.f32s()?, upd.f32s()?, out.f32s()?, &at),
            kiln_ir::ElemType::I64 => self.write(past.i64s()?, upd.i64s()?, out.i64s()?, &at),
            kiln_ir::ElemType::I32 => self.write(past.i32s()?, upd.i32s()?, out.i32s()?, &at),
            kiln_ir::ElemType::U8 => self.write(past.u8s()?, upd.u8s()?, out.u8s()?, &at),
            kiln_ir::ElemType::I8 => self.write(past.i8s()?, upd.i8s()?, out.i8s()?, &at),
            kiln_ir::ElemType::Bool => self.write(past.bools()?, upd.bools()?, out.bools()?, &at),
            e => Err(format!("no native TensorScatter of {e}")),
        }
    }

    fn moves_data(&self) -> bool {
        true
    }
}

pub struct ScatterNd {
    pub shape: Vec<usize>,
    pub reduction: movement::Combine,
}

impl NativeKernel for ScatterNd {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        use crate::interp::kernels::movement::nd_offsets;
        let x = operand(inputs, 0)?;
        let idx = operand(inputs, 1)?;
        let updates = operand(inputs, 2)?;
        let t = crate::tensor::Tensor::from_i64(idx.shape.to_vec(), indices(idx)?)
            .map_err(|e| e.to_string())?;
        let (offs, slice) =
            nd_offsets(&self.shape, &t, 0, "ScatterND").map_err(|e| e.to_string())?;
        if offs.len() * slice != updates.len() {
            return Err("ScatterND: updates do not match the indices".into());
        }
        let out = result(outputs, 0)?;
        macro_rules! scatter {
            ($get:ident, $combine:expr) => {{
                let (v, u, o) = (x.$get()?, updates.$get()?, out.$get()?);
                if v.len() != o.len() {
                    return Err("ScatterND: result size differs from the data".into());
                }
                o.copy_from_slice(v);
                for (k, &at) in offs.iter().enumerate() {
                    let src = &u[k * slice..(k + 1) * slice];
                    for (d, &s) in o[at..at + slice].iter_mut().zip(src) {
                        *d = $combine(*d, s);
                    }
                }
                Ok(())
            }};
        }
        match (x.elem(), self.reduction) {
            (kiln_ir::ElemType::F32, f) => scatter!(f32s, |a, b| f.apply(a, b)),
            (_, movement::Combine::Replace) => match x.elem() {
                kiln_ir::ElemType::I64 => scatter!(i64s, |_, b| b),
                kiln_ir::ElemType::I32 => scatter!(i32s, |_, b| b),
                kiln_ir::ElemType::U8 => scatter!(u8s, |_, b| b),
                kiln_ir::ElemType::I8 => scatter!(i8s, |_, b| b),
                kiln_ir::ElemType::Bool => scatter!(bools, |_, b| b),
                e => Err(format!("no native ScatterND of {e}")),
            },
            (e, _) => Err(format!("ScatterND reduction of {e}")),
        }
    }
}

/// GroupNormalization or InstanceNormalization of f32 data, scale and
/// bias operands at run time (see [`crate::cpu::norm`]).
pub struct GroupNorm {
    pub plan: crate::cpu::norm::GroupNorm,
    pub per_group: bool,
}

impl NativeKernel for GroupNorm {
    fn run(
        &self,
        inputs: &[Option<In>],
        outputs: &mut [Out],
        threads: usize,
    ) -> Result<(), String> {
        let (x, scale, bias) = (
            operand(inputs, 0)?,
            operand(inputs, 1)?,
            operand(inputs, 2)?,
        );
        let out = result(outputs, 0)?;
        self.plan.run(
            x.f32s()?,
            scale.f32s()?,
            bias.f32s()?,
            self.per_group,
            out.f32s()?,
            threads,
        )
    }
}

/// LayerNormalization with its statistics results (Mean, InvStdDev) used:
/// rows of `x` normalized in f64 as the interpreter does, scale and bias
/// broadcast over the normalized dims. (With only `Y` used the generated
/// row loop runs instead.)
pub struct LayerNormStats {
    /// Dims from the normalization axis on.
    pub norm: Vec<usize>,
    pub scale: Vec<usize>,
    pub bias: Option<Vec<usize>>,
    pub eps: f64,
}

impl NativeKernel for LayerNormStats {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        let x = operand(inputs, 0)?.f32s()?;
        let len: usize = self.norm.iter().product();
        let full = |i: usize, shape: &[usize]| -> Result<Vec<f32>, String> {
            let mut v = vec![0f32; len];
            broadcast(operand(inputs, i)?.f32s()?, shape, &self.norm, &mut v);
            Ok(v)
        };
        let scale = full(1, &self.scale)?;
        let bias = match &self.bias {
            Some(b) => full(2, b)?,
            None => vec![0.0; len],
        };
        let (y, rest) = outputs.split_first_mut().ok_or("no result")?;
        let y = y.f32s()?;
        let mut stats: Vec<&mut [f32]> = rest
            .iter_mut()
            .map(|o| o.f32s())
            .collect::<Result<_, _>>()?;
        if len == 0 {
            return Ok(());
        }
        for (r, (xs, ys)) in x.chunks_exact(len).zip(y.chunks_exact_mut(len)).enumerate() {
            let mean = xs.iter().map(|&a| a as f64).sum::<f64>() / len as f64;
            let var = xs.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / len as f64;
            let inv = 1.0 / (var + self.eps).sqrt();
            for (((o, &a), &s), &b) in ys.iter_mut().zip(xs).zip(&scale).zip(&bias) {
                *o = ((a as f64 - mean) * inv * s as f64 + b as f64) as f32;
            }
            for (k, st) in stats.iter_mut().enumerate() {
                st[r] = if k == 0 { mean } else { inv } as f32;
            }
        }
        Ok(())
    }
}

/// Trilu of movable data, `k` read at run time (0 when omitted).
pub struct Trilu {
    pub dims: (usize, usize, usize),
    pub upper: bool,
}

impl NativeKernel for Trilu {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        let x = operand(inputs, 0)?;
        let k = match inputs.get(1).copied().flatten() {
            Some(k) => *indices(k)?.first().ok_or("Trilu: k is empty")?,
            None => 0,
        };
        let out = result(outputs, 0)?;
        let (d, up) = (self.dims, self.upper);
        macro_rules! run {
            ($get:ident, $zero:expr) => {
                movement::trilu(x.$get()?, d, k, up, $zero, out.$get()?)
            };
        }
        match x.elem() {
            kiln_ir::ElemType::F32 => run!(f32s, 0.0),
            kiln_ir::ElemType::I64 => run!(i64s, 0),
            kiln_ir::ElemType::I32 => run!(i32s, 0),
            kiln_ir::ElemType::U8 => run!(u8s, 0),
            kiln_ir::ElemType::I8 => run!(i8s, 0),
            kiln_ir::ElemType::Bool => run!(bools, false),
            e => return Err(format!("no native Trilu of {e}")),
        }
        Ok(())
    }
}
