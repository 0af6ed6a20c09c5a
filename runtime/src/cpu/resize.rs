//! Resize on the cpu backend. The taps (source index and weight per output
//! coordinate and dim) come from the interpreter's plan
//! ([`kiln_interp::interp::kernels::movement::resample::resize_plan`]), so
//! every coordinate mode, rounding rule, antialias filter and
//! extrapolation is the reference's; this evaluates them in f32, one dim
//! at a time (separable), each pass a weighted sum of contiguous rows.
//!
//! The passes run from the last resized dim to the first: where a dim
//! extrapolates (tf_crop_and_resize outside the roi) its pass overwrites
//! the whole slab, and the dims before it then weigh that value, exactly
//! as the reference's nested sum does.

use std::cell::Cell;

use rayon::prelude::*;

use kiln_interp::interp::kernels::movement::resample::ResizePlan;

/// One dim's resampling: per output coordinate, its taps
/// `idx/w[start[o]..start[o + 1]]`, or the extrapolation value.
#[derive(Debug, Clone)]
struct Pass {
    axis: usize,
    start: Vec<usize>,
    idx: Vec<usize>,
    w: Vec<f32>,
    extrapolate: Vec<bool>,
    /// Where every output coordinate is one tap of weight 1 (nearest
    /// modes, and integer-factor linear at aligned corners): its source,
    /// so the pass copies instead of weighing.
    copy_from: Option<Vec<usize>>,
}

/// A Resize planned for static shapes.
#[derive(Debug, Clone)]
pub struct Resize {
    in_shape: Vec<usize>,
    out_shape: Vec<usize>,
    passes: Vec<Pass>,
    extrapolation: f32,
}

/// Below this many output elements a pass runs on one thread.
const PAR_ELEMS: usize = 32 * 1024;

thread_local! {
    /// The slabs between passes, reused across runs: a fresh 2 MB one
    /// cost its page faults on every run.
    static SLABS: Cell<[Vec<f32>; 2]> = const { Cell::new([Vec::new(), Vec::new()]) };
}

impl Resize {
    /// From the interpreter's plan for an input of `in_shape`. Dims whose
    /// taps are the identity need no pass; zero weights are dropped.
    pub fn new(in_shape: &[usize], plan: &ResizePlan) -> Result<Resize, String> {
        if plan.taps.len() != in_shape.len() || plan.shape.len() != in_shape.len() {
            return Err("resize plan of another rank".into());
        }
        let mut passes = Vec::new();
        for (axis, taps) in plan.taps.iter().enumerate().rev() {
            let identity = taps.len() == in_shape[axis]
                && taps.iter().enumerate().all(|(o, t)| {
                    t.as_ref().is_some_and(|t| {
                        let mut nz = t.iter().filter(|(_, w)| *w != 0.0);
                        nz.next() == Some(&(o, 1.0)) && nz.next().is_none()
                    })
                });
            if identity {
                continue;
            }
            let mut p = Pass {
                axis,
                start: vec![0],
                idx: Vec::new(),
                w: Vec::new(),
                extrapolate: Vec::new(),
                copy_from: None,
            };
            for t in taps {
                p.extrapolate.push(t.is_none());
                for &(i, w) in t.iter().flatten().filter(|(_, w)| *w != 0.0) {
                    if i >= in_shape[axis] {
                        return Err(format!("resize tap {i} outside dim {axis}"));
                    }
                    p.idx.push(i);
                    p.w.push(w as f32);
                }
                p.start.push(p.idx.len());
            }
            let single = p.start.windows(2).all(|w| w[1] == w[0] + 1)
                && p.w.iter().all(|&w| w == 1.0)
                && !p.extrapolate.contains(&true);
            if single {
                p.copy_from = Some(p.idx.clone());
            }
            passes.push(p);
        }
        Ok(Resize {
            in_shape: in_shape.to_vec(),
            out_shape: plan.shape.clone(),
            passes,
            extrapolation: plan.extrapolation as f32,
        })
    }

    pub fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }

    /// `x` of the planned input shape into all of `out`.
    pub fn run(&self, x: &[f32], out: &mut [f32], threads: usize) -> Result<(), String> {
        if x.len() != self.in_shape.iter().product::<usize>()
            || out.len() != self.out_shape.iter().product::<usize>()
        {
            return Err("resize: operand or result of another size".into());
        }
        if out.is_empty() {
            return Ok(());
        }
        if self.passes.is_empty() {
            out.copy_from_slice(x);
            return Ok(());
        }
        let mut shape = self.in_shape.clone();
        // Pass k reads slab (k + 1) % 2 (the input for k = 0) and writes
        // slab k % 2 (the output for the last pass).
        let mut slabs = SLABS.with(|c| c.take());
        for (k, p) in self.passes.iter().enumerate() {
            let mut next_shape = shape.clone();
            next_shape[p.axis] = self.out_shape[p.axis];
            let last = k + 1 == self.passes.len();
            let [even, odd] = &mut slabs;
            let (mine, theirs) = if k % 2 == 0 { (even, odd) } else { (odd, even) };
            let src: &[f32] = if k == 0 { x } else { theirs };
            let dst: &mut [f32] = if last {
                &mut *out
            } else {
                // Every element is written by the pass.
                mine.resize(next_shape.iter().product(), 0.0);
                mine
            };
            self.pass(p, &shape, src, dst, threads);
            shape = next_shape;
        }
        SLABS.with(|c| c.set(slabs));
        Ok(())
    }

    fn pass(&self, p: &Pass, shape: &[usize], src: &[f32], dst: &mut [f32], threads: usize) {
        let inner: usize = shape[p.axis + 1..].iter().product();
        let (n_in, n_out) = (shape[p.axis], self.out_shape[p.axis]);
        let block = |(s, d): (&[f32], &mut [f32])| {
            // A nearest pass: copies of source rows, or along the last
            // dim (rows of one element) a gather.
            match (&p.copy_from, inner) {
                (Some(from), 1) => {
                    for (v, &i) in d.iter_mut().zip(from) {
                        *v = s[i];
                    }
                    return;
                }
                (Some(from), _) => {
                    for (row, &i) in d.chunks_exact_mut(inner).zip(from) {
                        row.copy_from_slice(&s[i * inner..][..inner]);
                    }
                    return;
                }
                (None, 1) => {
                    // Along the last dim: one weighted gather per element
                    // (as rows of one element, the general loop's slicing
                    // cost several times the arithmetic: 70 % of a
                    // segformer decode head's 8x upsampling).
                    for (o, v) in d.iter_mut().enumerate() {
                        let (lo, hi) = (p.start[o], p.start[o + 1]);
                        *v = if p.extrapolate[o] {
                            self.extrapolation
                        } else if lo == hi {
                            0.0
                        } else {
                            let mut acc = p.w[lo] * s[p.idx[lo]];
                            for (&w, &i) in p.w[lo + 1..hi].iter().zip(&p.idx[lo + 1..hi]) {
                                acc += w * s[i];
                            }
                            acc
                        };
                    }
                    return;
                }
                _ => {}
            }
            for (o, row) in d.chunks_exact_mut(inner).enumerate() {
                if p.extrapolate[o] {
                    row.fill(self.extrapolation);
                    continue;
                }
                let (lo, hi) = (p.start[o], p.start[o + 1]);
                if lo == hi {
                    row.fill(0.0);
                    continue;
                }
                let first = &s[p.idx[lo] * inner..][..inner];
                let w0 = p.w[lo];
                for (r, &v) in row.iter_mut().zip(first) {
                    *r = w0 * v;
                }
                for t in lo + 1..hi {
                    let (w, src_row) = (p.w[t], &s[p.idx[t] * inner..][..inner]);
                    for (r, &v) in row.iter_mut().zip(src_row) {
                        *r += w * v;
                    }
                }
            }
        };
        if inner == 0 || n_in == 0 {
            // Nothing to write (the plan refuses outputs from empty dims).
            return;
        }
        if threads > 1 && dst.len() >= PAR_ELEMS {
            src.par_chunks_exact(n_in * inner)
                .zip(dst.par_chunks_exact_mut(n_out * inner))
                .for_each(block);
        } else {
            src.chunks_exact(n_in * inner)
                .zip(dst.chunks_exact_mut(n_out * inner))
                .for_each(block);
        }
    }
}
