//! Einsum of one or two f32 operands, planned for static shapes: the
//! same decomposition as the compiler's `einsum` pass (sum the letters
//! only one operand has, permute to `[batch, free, contracted]` and
//! `[batch, contracted, free]`, a product per batch, permute to the
//! output), as one native step. The pass rewrites Einsums whose shapes
//! are static at compile time into graph ops; this kernel serves those
//! known only per run (dynamic sequence lengths), lowered per shape.

use super::kernels::matmul::{product, Strides};
use super::movement::transpose;
use super::reduce::{reduce, ReduceOp};

/// One operand's preparation.
#[derive(Clone, Debug)]
pub struct EinsumOperand {
    pub shape: Vec<usize>,
    /// Axes summed first (letters nothing else has); may be empty.
    pub sum_axes: Vec<usize>,
    /// The permutation of the remaining axes into product order.
    pub perm: Vec<usize>,
}

/// The plan: one operand (a sum and a permutation to the output), or two
/// (each prepared, then `batch` products of `[m, k] x [k, n]`, then the
/// permutation `out_perm` of `[batch dims, a free, b free]`, whose dims
/// are `product_dims`).
#[derive(Clone, Debug)]
pub struct Einsum {
    pub operands: Vec<EinsumOperand>,
    pub batch: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub product_dims: Vec<usize>,
    pub out_perm: Vec<usize>,
}

impl EinsumOperand {
    /// The operand summed and permuted: into a new buffer, or borrowed
    /// when neither applies.
    fn prepare<'a>(&self, x: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
        let mut shape = self.shape.clone();
        let mut data = std::borrow::Cow::Borrowed(x);
        if !self.sum_axes.is_empty() {
            let kept: Vec<usize> = (0..shape.len())
                .filter(|a| !self.sum_axes.contains(a))
                .map(|a| shape[a])
                .collect();
            let mut out = vec![0f32; kept.iter().product()];
            reduce(&data, &shape, &self.sum_axes, ReduceOp::Sum, &mut out);
            data = out.into();
            shape = kept;
        }
        if self.perm.iter().enumerate().any(|(i, &p)| i != p) {
            let mut out = vec![0f32; data.len()];
            transpose(&data, &shape, &self.perm, &mut out);
            data = out.into();
        }
        data
    }
}

impl Einsum {
    /// `out` (the result's length) from the operands.
    pub fn run(&self, xs: &[&[f32]], out: &mut [f32], threads: usize) -> Result<(), String> {
        if xs.len() != self.operands.len() {
            return Err("Einsum: operand count differs from the plan".into());
        }
        for (x, o) in xs.iter().zip(&self.operands) {
            if x.len() != o.shape.iter().product::<usize>() {
                return Err("Einsum: operand size differs from the plan".into());
            }
        }
        let a = self.operands[0].prepare(xs[0]);
        let Some(bo) = self.operands.get(1) else {
            if a.len() != out.len() {
                return Err("Einsum: result size differs from the plan".into());
            }
            out.copy_from_slice(&a);
            return Ok(());
        };
        let b = bo.prepare(xs[1]);
        let (m, k, n) = (self.m, self.k, self.n);
        let total = self.batch * m * n;
        if out.len() != total || a.len() != self.batch * m * k || b.len() != self.batch * k * n {
            return Err("Einsum: sizes differ from the plan".into());
        }
        let direct = self.out_perm.iter().enumerate().all(|(i, &p)| i == p);
        let mut prod = if direct { vec![] } else { vec![0f32; total] };
        let dst: &mut [f32] = if direct { out } else { &mut prod };
        for (i, d) in dst
            .chunks_exact_mut((m * n).max(1))
            .enumerate()
            .take(self.batch)
        {
            let (ai, bi) = (&a[i * m * k..][..m * k], &b[i * k * n..][..k * n]);
            if k == 0 {
                d.fill(0.0);
                continue;
            }
            product(
                m,
                n,
                k,
                d,
                false,
                ai,
                Strides::row_major(k),
                bi,
                Strides::row_major(n),
                1.0,
                threads,
            );
        }
        if !direct {
            transpose(&prod, &self.product_dims, &self.out_perm, out);
        }
        Ok(())
    }
}
