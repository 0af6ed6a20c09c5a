//! Dense matrix products: ONNX `MatMul` (numpy semantics, broadcast batch
//! dims) and ONNX `Gemm`, planned once for static shapes and run many times.
//!
//! Also holds the one safe wrapper around `gemm::gemm` ([`sgemm`]); the
//! threading heuristics it shares with the convolution kernels are in
//! `common.rs`.

use gemm::Parallelism;
use rayon::prelude::*;

use super::common::{parallelism, Epilogue, PAR_FLOPS};
use super::packed::{FoldedStore, PackedB};
use super::weights::ConstWeights;
use std::sync::Arc;

/// Below this many `B` elements a matrix-vector product is not split across
/// threads: it is memory bound and small enough to sit in cache.
const GEMV_SPLIT_ELEMS: usize = 32 * 1024;

/// Row/column strides (in elements) of a matrix view inside a slice.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Strides {
    pub rs: usize,
    pub cs: usize,
}

impl Strides {
    /// Row-major matrix with `cols` columns.
    pub(crate) fn row_major(cols: usize) -> Strides {
        Strides { rs: cols, cs: 1 }
    }

    /// Index one past the last element of a `rows` x `cols` view, 0 if empty.
    fn extent(self, rows: usize, cols: usize) -> usize {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * self.rs + (cols - 1) * self.cs + 1
        }
    }
}

/// `dst[m,n] = (accumulate ? dst : 0) + scale * a[m,k] * b[k,n]` for strided
/// views into slices; the safe face of `gemm::gemm`.
///
/// Panics if a view does not fit in its slice (an O(1) check that keeps the
/// unsafe call sound whatever the caller passes).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    ds: Strides,
    accumulate: bool,
    a: &[f32],
    as_: Strides,
    b: &[f32],
    bs: Strides,
    scale: f32,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        ds.extent(m, n) <= dst.len(),
        "sgemm: dst view out of bounds"
    );
    assert!(as_.extent(m, k) <= a.len(), "sgemm: lhs view out of bounds");
    assert!(bs.extent(k, n) <= b.len(), "sgemm: rhs view out of bounds");
    // Two distinct dst elements must not alias, or threads would race.
    assert!(
        (m == 1 || ds.rs > 0) && (n == 1 || ds.cs > 0),
        "sgemm: aliasing dst"
    );
    // SAFETY: the asserts above check that every element the m x n x k
    // product touches lies inside its slice; `dst` is borrowed mutably, so it
    // cannot overlap `a` or `b`, and its view has no self-aliasing. f32 is a
    // type `gemm` supports, so it does not panic on the type.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            ds.cs as isize,
            ds.rs as isize,
            accumulate,
            a.as_ptr(),
            as_.cs as isize,
            as_.rs as isize,
            b.as_ptr(),
            bs.cs as isize,
            bs.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

/// One 2-D product `out[m,n] (+)= scale * a[m,k] * b[k,n]` with `out`
/// row-major and dense, threaded by `threads`. A single-row product (batch-1
/// dense layers) is split over `n` here because `gemm` runs its
/// matrix-vector path on one thread.
#[allow(clippy::too_many_arguments)]
pub(crate) fn product(
    m: usize,
    n: usize,
    k: usize,
    out: &mut [f32],
    accumulate: bool,
    a: &[f32],
    as_: Strides,
    b: &[f32],
    bs: Strides,
    scale: f32,
    threads: usize,
) {
    let flops = 2.0 * (m * n * k) as f64;
    if m == 1 && threads > 1 && n >= 32 && k * n >= GEMV_SPLIT_ELEMS {
        // Chunks of a multiple of 16 columns keep each thread's stores on
        // whole cache lines.
        let chunk = n.div_ceil(threads).div_ceil(16) * 16;
        out[..n]
            .par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, o)| {
                let j0 = i * chunk;
                sgemm(
                    1,
                    o.len(),
                    k,
                    o,
                    Strides::row_major(o.len()),
                    accumulate,
                    a,
                    as_,
                    &b[j0 * bs.cs..],
                    bs,
                    scale,
                    Parallelism::None,
                );
            });
        return;
    }
    sgemm(
        m,
        n,
        k,
        out,
        Strides::row_major(n),
        accumulate,
        a,
        as_,
        b,
        bs,
        scale,
        parallelism(threads, flops),
    );
}

fn shape_err(what: &str, a: &[usize], b: &[usize]) -> String {
    format!("{what}: incompatible shapes {a:?} and {b:?}")
}

/// Row-major element strides of `shape`.
fn dense_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Rows of A from which a MatMul packs a run-time B into panels for each
/// product (the copy is then at most a sixteenth of the work).
const PACK_RUNTIME_B_MIN_ROWS: usize = 16;

/// ONNX MatMul (numpy semantics: 1-D operands promoted and the promoted dim
/// removed; batch dims broadcast) of static shapes.
#[derive(Debug, Clone)]
pub struct MatMulPlan {
    m: usize,
    n: usize,
    k: usize,
    out_shape: Vec<usize>,
    /// Element offsets of each output batch's A and B matrices.
    offsets: Vec<(usize, usize)>,
    /// B held by the plan when it is a constant.
    b_const: Option<ConstWeights>,
    /// A constant B shared by every batch, packed for the AVX2 kernel
    /// (then `b_const` is `None`).
    packed: Option<Arc<PackedB>>,
    /// What the packed product's tiles fold in: see
    /// [`MatMulPlan::folded_store`].
    store: FoldedStore,
    a_len: usize,
    b_len: usize,
}

impl MatMulPlan {
    /// `b_const`: B's data when B is a constant — it is copied once into the
    /// plan (packed into panels for `PackedB` when one B serves every
    /// batch and the host has AVX2/FMA), and `run` then ignores its `b`
    /// argument.
    pub fn new(
        a_shape: &[usize],
        b_shape: &[usize],
        b_const: Option<&[f32]>,
    ) -> Result<MatMulPlan, String> {
        Self::new_shared(a_shape, b_shape, b_const.map(ConstWeights::from_slice))
    }

    /// [`MatMulPlan::new`] with B's values (and their packing) shared
    /// with every other plan that reads the same constant.
    pub fn new_shared(
        a_shape: &[usize],
        b_shape: &[usize],
        b_const: Option<ConstWeights>,
    ) -> Result<MatMulPlan, String> {
        if a_shape.is_empty() || b_shape.is_empty() {
            return Err(shape_err("MatMul: scalar operand", a_shape, b_shape));
        }
        // Promote 1-D operands: A [K] -> [1,K], B [K] -> [K,1].
        let a2: Vec<usize> = if a_shape.len() == 1 {
            vec![1, a_shape[0]]
        } else {
            a_shape.to_vec()
        };
        let b2: Vec<usize> = if b_shape.len() == 1 {
            vec![b_shape[0], 1]
        } else {
            b_shape.to_vec()
        };
        let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
        let (kb, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
        if k != kb {
            return Err(shape_err("MatMul: inner dims differ", a_shape, b_shape));
        }
        let a_batch = &a2[..a2.len() - 2];
        let b_batch = &b2[..b2.len() - 2];
        let rank = a_batch.len().max(b_batch.len());
        // Right-align both batch shapes, padding with 1s.
        let pad = |s: &[usize]| -> Vec<usize> {
            let mut v = vec![1; rank - s.len()];
            v.extend_from_slice(s);
            v
        };
        let (ab, bb) = (pad(a_batch), pad(b_batch));
        let mut batch = Vec::with_capacity(rank);
        for (&x, &y) in ab.iter().zip(&bb) {
            if x != y && x != 1 && y != 1 {
                return Err(shape_err("MatMul: batch dims", a_shape, b_shape));
            }
            batch.push(if x == 1 { y } else { x });
        }
        let mut out_shape = batch.clone();
        if a_shape.len() > 1 {
            out_shape.push(m);
        }
        if b_shape.len() > 1 {
            out_shape.push(n);
        }
        let a_len = ab.iter().product::<usize>() * m * k;
        let b_len = bb.iter().product::<usize>() * k * n;
        if let Some(bc) = &b_const {
            if bc.len() != b_len {
                return Err(format!(
                    "MatMul: constant B has {} elements, shape {b_shape:?} needs {b_len}",
                    bc.len()
                ));
            }
        }

        // Offsets per output batch element; a broadcast dim contributes 0.
        let (sa, sb) = (dense_strides(&ab), dense_strides(&bb));
        let nbatch: usize = batch.iter().product();
        let mut offsets = Vec::with_capacity(nbatch);
        let mut idx = vec![0usize; rank];
        for _ in 0..nbatch {
            let (mut oa, mut ob) = (0, 0);
            for d in 0..rank {
                if ab[d] != 1 {
                    oa += idx[d] * sa[d];
                }
                if bb[d] != 1 {
                    ob += idx[d] * sb[d];
                }
            }
            offsets.push((oa * m * k, ob * k * n));
            for d in (0..rank).rev() {
                idx[d] += 1;
                if idx[d] < batch[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        let mut plan = MatMulPlan {
            m,
            n,
            k,
            out_shape,
            offsets,
            b_const,
            packed: None,
            store: FoldedStore::new(n),
            a_len,
            b_len,
        };
        // One shared B and an unbroadcast A: the batch is just more rows of
        // one big product, which gemm blocks and threads far better.
        if nbatch > 1 && bb.iter().all(|&d| d == 1) && ab == batch {
            plan.m = nbatch * m;
            plan.offsets = vec![(0, 0)];
        }
        // Fewer rows than the micro-kernel's 6 are matrix-vector work,
        // bound by streaming B, where the split below over columns wins.
        if plan.offsets.len() == 1 && plan.m >= 6 && PackedB::available() {
            if let Some(bc) = plan.b_const.take() {
                plan.packed = Some(bc.packed(k, n, n, 1));
            }
        }
        Ok(plan)
    }

    pub fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }

    /// The bias and activation the packed product's tiles apply, to fold
    /// an epilogue into; `None` without packed panels.
    pub fn folded_store(&mut self) -> Option<&mut FoldedStore> {
        self.packed.as_ref()?;
        Some(&mut self.store)
    }

    /// 2*M*N*K*batch.
    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k) as f64 * self.offsets.len() as f64
    }

    /// `a`, `b` and `out` must have the planned lengths (debug-asserted);
    /// `b` is ignored when B was constant. `out` is fully overwritten.
    pub fn run(&self, a: &[f32], b: &[f32], out: &mut [f32], threads: usize) {
        self.run_with_epilogue(a, b, out, threads, None);
    }

    /// Whether a run writes every element of `out` without reading it
    /// (the packed path), so `out` may start with stale values.
    pub fn overwrites_output(&self) -> bool {
        self.packed.is_some() || self.packs_runtime_b()
    }

    /// Whether runs pack a run-time B into panels per product.
    fn packs_runtime_b(&self) -> bool {
        self.m >= PACK_RUNTIME_B_MIN_ROWS && PackedB::available()
    }

    /// [`MatMulPlan::run`], handing `epilogue` each finished range of
    /// `out` (tile by tile on the thread that computed it when B is packed,
    /// else all of it at the end).
    pub fn run_with_epilogue(
        &self,
        a: &[f32],
        b: &[f32],
        out: &mut [f32],
        threads: usize,
        epilogue: Option<&Epilogue>,
    ) {
        if let Some(p) = &self.packed {
            debug_assert_eq!(a.len(), self.a_len);
            let store = self.store.tile_store();
            p.product(self.m, a, self.k, out, threads, epilogue, store);
            return;
        }
        self.run_unpacked(a, b, out, threads);
        if let Some(e) = epilogue {
            e(out.as_mut_ptr(), 0, out.len());
        }
    }

    fn run_unpacked(&self, a: &[f32], b: &[f32], out: &mut [f32], threads: usize) {
        let b = self.b_const.as_deref().unwrap_or(b);
        debug_assert_eq!(a.len(), self.a_len);
        debug_assert_eq!(b.len(), self.b_len);
        debug_assert_eq!(out.len(), self.m * self.n * self.offsets.len());
        let (m, n, k) = (self.m, self.n, self.k);
        let mn = m * n;
        if mn == 0 {
            return;
        }
        let (as_, bs) = (Strides::row_major(k), Strides::row_major(n));
        // Run-time B (attention's Q·Kᵀ and P·V: 128 x 64 by 64 x 128 per
        // head) in the packed product's panels too, packed per product:
        // k·n floats copied for 2·m·n·k flops, and the tiles run at the
        // FMA peak where the `gemm` crate reached 40 % of it (Zen 5).
        let panels = self.packs_runtime_b();
        let one = |o: &mut [f32], &(oa, ob): &(usize, usize), t: usize| {
            if panels {
                let pb = PackedB::new(k, n, &b[ob..], n, 1);
                pb.product(m, &a[oa..], k, o, t, None, Default::default());
            } else {
                product(m, n, k, o, false, &a[oa..], as_, &b[ob..], bs, 1.0, t);
            }
        };
        let per = 2.0 * (m * n * k) as f64;
        // Many small products: one per thread beats threading inside each.
        if threads > 1 && self.offsets.len() >= threads && per < 8.0 * PAR_FLOPS {
            out.par_chunks_mut(mn)
                .zip(self.offsets.par_iter())
                .for_each(|(o, off)| one(o, off, 1));
        } else {
            for (o, off) in out.chunks_mut(mn).zip(&self.offsets) {
                one(o, off, threads);
            }
        }
    }
}

/// ONNX Gemm: `Y = alpha * op(A) * op(B) + beta * C`, A and B 2-D, C optional
/// and unidirectionally broadcastable to `[M, N]` (shapes `[]`, `[N]`,
/// `[1,N]`, `[M,1]`, `[M,N]`, `[1]`).
#[derive(Debug, Clone)]
pub struct GemmPlan {
    m: usize,
    n: usize,
    k: usize,
    out_shape: Vec<usize>,
    a_strides: Strides,
    b_strides: Strides,
    /// Strides of C broadcast to [M, N] (0 along broadcast dims).
    c_strides: Option<Strides>,
    c_len: usize,
    alpha: f32,
    beta: f32,
    b_const: Option<ConstWeights>,
    /// B in panels, when it is constant and the packed product applies.
    packed: Option<Arc<PackedB>>,
    /// What the packed product's tiles fold in: see
    /// [`GemmPlan::folded_store`].
    store: FoldedStore,
}

impl GemmPlan {
    /// `b_const`: B's data (in its stored layout) when B is a constant; it is
    /// copied into the plan and `run` ignores its `b` argument.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        a_shape: &[usize],
        b_shape: &[usize],
        c_shape: Option<&[usize]>,
        trans_a: bool,
        trans_b: bool,
        alpha: f32,
        beta: f32,
        b_const: Option<&[f32]>,
    ) -> Result<GemmPlan, String> {
        let b_const = b_const.map(ConstWeights::from_slice);
        Self::new_shared(
            a_shape, b_shape, c_shape, trans_a, trans_b, alpha, beta, b_const,
        )
    }

    /// [`GemmPlan::new`] with B's values shared with every other plan
    /// that reads the same constant.
    #[allow(clippy::too_many_arguments)]
    pub fn new_shared(
        a_shape: &[usize],
        b_shape: &[usize],
        c_shape: Option<&[usize]>,
        trans_a: bool,
        trans_b: bool,
        alpha: f32,
        beta: f32,
        b_const: Option<ConstWeights>,
    ) -> Result<GemmPlan, String> {
        if a_shape.len() != 2 || b_shape.len() != 2 {
            return Err(shape_err("Gemm: A and B must be 2-D", a_shape, b_shape));
        }
        let (m, k) = if trans_a {
            (a_shape[1], a_shape[0])
        } else {
            (a_shape[0], a_shape[1])
        };
        let (kb, n) = if trans_b {
            (b_shape[1], b_shape[0])
        } else {
            (b_shape[0], b_shape[1])
        };
        if k != kb {
            return Err(shape_err("Gemm: inner dims differ", a_shape, b_shape));
        }
        // op(A)[i, p]: A is [M,K] (row stride K) or, transposed, [K,M].
        let a_strides = if trans_a {
            Strides { rs: 1, cs: m }
        } else {
            Strides { rs: k, cs: 1 }
        };
        let b_strides = if trans_b {
            Strides { rs: 1, cs: k }
        } else {
            Strides { rs: n, cs: 1 }
        };
        let (c_strides, c_len) = match c_shape {
            None => (None, 0),
            Some(cs) => {
                if cs.len() > 2 {
                    return Err(format!("Gemm: C shape {cs:?} has rank > 2"));
                }
                let mut full = vec![1usize; 2 - cs.len()];
                full.extend_from_slice(cs);
                let ok = |d: usize, want: usize| d == 1 || d == want;
                if !ok(full[0], m) || !ok(full[1], n) {
                    return Err(format!(
                        "Gemm: C shape {cs:?} does not broadcast to [{m}, {n}]"
                    ));
                }
                let rs = if full[0] == 1 { 0 } else { full[1] };
                let cs_ = usize::from(full[1] != 1);
                (Some(Strides { rs, cs: cs_ }), full[0] * full[1])
            }
        };
        if let Some(bc) = &b_const {
            if bc.len() != k * n {
                return Err(format!(
                    "Gemm: constant B has {} elements, shape {b_shape:?} needs {}",
                    bc.len(),
                    k * n
                ));
            }
        }
        let mut plan = GemmPlan {
            m,
            n,
            k,
            out_shape: vec![m, n],
            a_strides,
            b_strides,
            c_strides,
            c_len,
            alpha,
            beta,
            b_const,
            packed: None,
            store: FoldedStore::new(n),
        };
        // A constant B in panels, as MatMul packs it: the gemm crate
        // repacked it at every run (GPT-2's Conv1D layers, exported as Gemm
        // of [32, 256] x [256, 1024], ran at 29 GFLOP/s, half of what the
        // same product reached as a MatMul). Row-major A only, and not
        // below the micro-kernel's 6 rows (matrix-vector work, bound by
        // streaming B, which the gemm crate splits over columns).
        if !trans_a && m >= 6 && PackedB::available() {
            if let Some(bc) = plan.b_const.take() {
                let (rs, cs) = (plan.b_strides.rs, plan.b_strides.cs);
                plan.packed = Some(bc.packed(k, n, rs, cs));
            }
        }
        Ok(plan)
    }

    /// Whether a run writes every element of `out` without reading it
    /// (the packed path), so `out` may start with stale values.
    pub fn overwrites_output(&self) -> bool {
        self.packed.is_some()
    }

    pub fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }

    /// Takes a constant C of one value per column (`[N]` or `[1, N]`: a
    /// layer's bias) into the packed product's tiles, scaled by beta, so
    /// that runs get no C; returns whether it was taken (packed panels,
    /// alpha 1, nothing folded yet).
    pub fn hold_bias(&mut self, c: &[f32]) -> bool {
        let per_column = self
            .c_strides
            .is_some_and(|s| s.rs == 0 && (s.cs == 1 || self.n == 1));
        if self.packed.is_none() || self.alpha != 1.0 || !per_column || c.len() != self.n {
            return false;
        }
        let beta = self.beta;
        let scaled = ConstWeights::from_slice(&c.iter().map(|v| beta * v).collect::<Vec<_>>());
        if !self.store.fuse_bias(scaled) {
            return false;
        }
        self.c_strides = None;
        self.c_len = 0;
        true
    }

    /// The bias and activation the packed product's tiles apply, to fold
    /// an epilogue into; `None` without packed panels, or while alpha or a
    /// run-time C still applies after the tiles.
    pub fn folded_store(&mut self) -> Option<&mut FoldedStore> {
        self.packed.as_ref()?;
        (self.alpha == 1.0 && self.c_strides.is_none()).then_some(&mut self.store)
    }

    /// 2*M*N*K (the C term is not counted).
    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k) as f64
    }

    /// `a`, `b`, `c` and `out` must have the planned lengths (debug-asserted);
    /// `c` must be `Some` iff the plan was built with a C shape. `b` is
    /// ignored when B was constant. `out` is fully overwritten.
    pub fn run(&self, a: &[f32], b: &[f32], c: Option<&[f32]>, out: &mut [f32], threads: usize) {
        let (m, n, k) = (self.m, self.n, self.k);
        debug_assert_eq!(c.is_some(), self.c_strides.is_some());
        if let Some(p) = &self.packed {
            debug_assert_eq!(a.len(), m * k);
            debug_assert_eq!(out.len(), m * n);
            // alpha and beta·C applied to each finished range of the
            // product on the thread that wrote it, while it is in cache.
            let (alpha, beta) = (self.alpha, self.beta);
            let scale = move |out: *mut f32, lo: usize, hi: usize| {
                for i in lo..hi {
                    // SAFETY: the product hands out ranges of `out` (m·n
                    // floats) that it finished and no other thread touches.
                    let o = unsafe { &mut *out.add(i) };
                    let cv = match (c, self.c_strides) {
                        (Some(c), Some(s)) => beta * c[(i / n) * s.rs + (i % n) * s.cs],
                        _ => 0.0,
                    };
                    *o = alpha * *o + cv;
                }
            };
            let trivial = alpha == 1.0 && c.is_none();
            let epilogue: Option<&Epilogue> = if trivial { None } else { Some(&scale) };
            p.product(m, a, k, out, threads, epilogue, self.store.tile_store());
            return;
        }
        let b = self.b_const.as_deref().unwrap_or(b);
        debug_assert_eq!(a.len(), m * k);
        debug_assert_eq!(b.len(), k * n);
        debug_assert_eq!(out.len(), m * n);
        debug_assert_eq!(c.is_some(), self.c_strides.is_some());
        // Write beta*C into out first and let gemm accumulate onto it: the
        // bias costs no extra pass over the product. (Done even for beta = 0
        // so NaNs in C propagate as in the ONNX reference.)
        let accumulate = match (c, self.c_strides) {
            (Some(c), Some(s)) => {
                debug_assert_eq!(c.len(), self.c_len);
                let beta = self.beta;
                for (i, row) in out.chunks_mut(n.max(1)).enumerate() {
                    for (j, o) in row.iter_mut().enumerate() {
                        *o = beta * c[i * s.rs + j * s.cs];
                    }
                }
                true
            }
            _ => false,
        };
        product(
            m,
            n,
            k,
            out,
            accumulate,
            a,
            self.a_strides,
            b,
            self.b_strides,
            self.alpha,
            threads,
        );
    }
}

#[cfg(test)]
mod tests {
    //! Plans against naive triple loops on LCG data. Tolerance: relative 1e-4
    //! of the sum of |terms| of each accumulation (the f32 rounding of a
    //! reordered sum is bounded by that, times a small constant).
    use super::super::common::testing::{check, lcg};
    use super::*;

    /// Naive numpy matmul; returns (values, sum of |terms|).
    fn ref_matmul(
        a_shape: &[usize],
        b_shape: &[usize],
        a: &[f32],
        b: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let a2 = if a_shape.len() == 1 {
            vec![1, a_shape[0]]
        } else {
            a_shape.to_vec()
        };
        let b2 = if b_shape.len() == 1 {
            vec![b_shape[0], 1]
        } else {
            b_shape.to_vec()
        };
        let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
        let n = b2[b2.len() - 1];
        let rank = a2.len().max(b2.len()) - 2;
        let pad = |s: &[usize]| {
            let mut v = vec![1; rank + 2 - s.len()];
            v.extend_from_slice(&s[..s.len() - 2]);
            v
        };
        let (ab, bb) = (pad(&a2), pad(&b2));
        let batch: Vec<usize> = ab.iter().zip(&bb).map(|(&x, &y)| x.max(y)).collect();
        let nb: usize = batch.iter().product();
        let (mut out, mut sc) = (vec![0.0; nb * m * n], vec![0.0; nb * m * n]);
        for bi in 0..nb {
            // Decompose bi into a multi-index, then map into A and B.
            let mut rem = bi;
            let (mut ia, mut ib) = (0, 0);
            let (mut sa, mut sb) = (1, 1);
            for d in (0..rank).rev() {
                let i = rem % batch[d];
                rem /= batch[d];
                ia += if ab[d] == 1 { 0 } else { i * sa };
                ib += if bb[d] == 1 { 0 } else { i * sb };
                sa *= ab[d];
                sb *= bb[d];
            }
            for i in 0..m {
                for j in 0..n {
                    let (mut s, mut t) = (0.0f64, 0.0f64);
                    for p in 0..k {
                        let x = a[ia * m * k + i * k + p] as f64 * b[ib * k * n + p * n + j] as f64;
                        s += x;
                        t += x.abs();
                    }
                    out[bi * m * n + i * n + j] = s as f32;
                    sc[bi * m * n + i * n + j] = t as f32;
                }
            }
        }
        (out, sc)
    }

    fn run_matmul(a_shape: &[usize], b_shape: &[usize], want_shape: &[usize]) {
        let na: usize = a_shape.iter().product();
        let nb: usize = b_shape.iter().product();
        let a = lcg(1, na);
        let b = lcg(2, nb);
        let (want, sc) = ref_matmul(a_shape, b_shape, &a, &b);
        for konst in [false, true] {
            let plan = MatMulPlan::new(a_shape, b_shape, konst.then_some(&b[..])).unwrap();
            assert_eq!(plan.out_shape(), want_shape, "{a_shape:?} x {b_shape:?}");
            for threads in [1, 2] {
                let mut out = vec![f32::NAN; want.len()];
                let b_arg: &[f32] = if konst { &[] } else { &b };
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| plan.run(&a, b_arg, &mut out, threads));
                check(
                    &out,
                    &want,
                    &sc,
                    &format!("matmul {a_shape:?}x{b_shape:?} t{threads} c{konst}"),
                );
            }
        }
    }

    #[test]
    fn matmul_shapes() {
        run_matmul(&[3, 5], &[5, 7], &[3, 7]);
        run_matmul(&[1, 1], &[1, 1], &[1, 1]);
        run_matmul(&[5], &[5, 7], &[7]);
        run_matmul(&[3, 5], &[5], &[3]);
        run_matmul(&[5], &[5], &[]);
        run_matmul(&[2, 3, 5], &[5, 4], &[2, 3, 4]);
        run_matmul(&[5], &[2, 5, 4], &[2, 4]);
        run_matmul(&[2, 3, 5], &[5], &[2, 3]);
        run_matmul(&[2, 1, 3, 5], &[4, 5, 6], &[2, 4, 3, 6]);
        run_matmul(&[1, 3, 5], &[4, 5, 6], &[4, 3, 6]);
        run_matmul(&[3, 1, 2, 5], &[1, 4, 5, 3], &[3, 4, 2, 3]);
        run_matmul(&[2, 3, 0], &[0, 4], &[2, 3, 4]);
        // Big enough to take the threaded and split-gemv paths.
        run_matmul(&[1, 300], &[300, 517], &[1, 517]);
        run_matmul(&[300], &[300, 517], &[517]);
        run_matmul(&[67, 129], &[129, 251], &[67, 251]);
        run_matmul(&[4, 33, 129], &[129, 65], &[4, 33, 65]);
        run_matmul(&[6, 17, 19], &[6, 19, 23], &[6, 17, 23]);
        // Run-time B packed per product (16 rows and more): per head, with
        // B broadcast over a batch dim, and a partial strip, an odd one
        // and k = 0.
        run_matmul(&[2, 3, 20, 17], &[2, 3, 17, 37], &[2, 3, 20, 37]);
        run_matmul(&[2, 3, 16, 9], &[1, 3, 9, 48], &[2, 3, 16, 48]);
        run_matmul(&[3, 16, 0], &[3, 0, 5], &[3, 16, 5]);
    }

    #[test]
    fn matmul_errors() {
        assert!(MatMulPlan::new(&[3, 4], &[5, 6], None).is_err());
        assert!(MatMulPlan::new(&[2, 3, 4], &[3, 4, 6], None).is_err());
        assert!(MatMulPlan::new(&[], &[3], None).is_err());
        assert!(MatMulPlan::new(&[3, 4], &[4, 6], Some(&[0.0; 3])).is_err());
    }

    fn run_gemm(m: usize, n: usize, k: usize, c_shape: Option<&[usize]>, ta: bool, tb: bool) {
        let (alpha, beta) = (0.75f32, -1.5f32);
        let a_shape = if ta { [k, m] } else { [m, k] };
        let b_shape = if tb { [n, k] } else { [k, n] };
        let a = lcg(3, m * k);
        let b = lcg(4, k * n);
        let c = c_shape.map(|s| lcg(5, s.iter().product()));
        let (mut want, mut sc) = (vec![0.0; m * n], vec![0.0; m * n]);
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut t) = (0.0f64, 0.0f64);
                for p in 0..k {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] };
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                    let x = alpha as f64 * av as f64 * bv as f64;
                    s += x;
                    t += x.abs();
                }
                if let (Some(c), Some(cs)) = (&c, c_shape) {
                    // Broadcast by right-aligned dims.
                    let full: Vec<usize> = std::iter::repeat_n(1, 2 - cs.len())
                        .chain(cs.iter().copied())
                        .collect();
                    let ci = if full[0] == 1 { 0 } else { i } * full[1]
                        + if full[1] == 1 { 0 } else { j };
                    let x = beta as f64 * c[ci] as f64;
                    s += x;
                    t += x.abs();
                }
                want[i * n + j] = s as f32;
                sc[i * n + j] = t as f32;
            }
        }
        for konst in [false, true] {
            let plan = GemmPlan::new(
                &a_shape,
                &b_shape,
                c_shape,
                ta,
                tb,
                alpha,
                beta,
                konst.then_some(&b[..]),
            )
            .unwrap();
            assert_eq!(plan.out_shape(), &[m, n]);
            for threads in [1, 2] {
                let mut out = vec![f32::NAN; m * n];
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| plan.run(&a, &b, c.as_deref(), &mut out, threads));
                check(
                    &out,
                    &want,
                    &sc,
                    &format!("gemm {m}x{n}x{k} c{c_shape:?} ta{ta} tb{tb} t{threads}"),
                );
            }
        }
    }

    #[test]
    fn gemm_broadcasts_and_transposes() {
        for &(m, n, k) in &[
            (3, 5, 7),
            (1, 9, 4),
            (1, 600, 130),
            (70, 130, 90),
            (6, 17, 5),
            (4, 1, 3),
        ] {
            let c_shapes: Vec<Option<Vec<usize>>> = vec![
                None,
                Some(vec![]),
                Some(vec![1]),
                Some(vec![n]),
                Some(vec![1, n]),
                Some(vec![m, 1]),
                Some(vec![m, n]),
                Some(vec![1, 1]),
            ];
            for cs in &c_shapes {
                for ta in [false, true] {
                    for tb in [false, true] {
                        run_gemm(m, n, k, cs.as_deref(), ta, tb);
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_errors() {
        assert!(GemmPlan::new(&[3, 4], &[5, 6], None, false, false, 1.0, 1.0, None).is_err());
        assert!(GemmPlan::new(
            &[3, 4],
            &[4, 6],
            Some(&[3, 4]),
            false,
            false,
            1.0,
            1.0,
            None
        )
        .is_err());
        assert!(GemmPlan::new(
            &[3, 4],
            &[4, 6],
            Some(&[2, 3, 6]),
            false,
            false,
            1.0,
            1.0,
            None
        )
        .is_err());
        assert!(GemmPlan::new(&[3, 4, 1], &[4, 6], None, false, false, 1.0, 1.0, None).is_err());
        assert!(GemmPlan::new(&[4, 3], &[6, 4], None, true, true, 1.0, 1.0, None).is_ok());
    }
}
