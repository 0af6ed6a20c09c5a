//! The blocked matrix product Conv, ConvTranspose, MatMul and Gemm use.

use std::ops::{Add, AddAssign, Mul};

/// A float type the blocked matrix product runs in.
pub(crate) trait Fl:
    Copy + Default + Add<Output = Self> + Mul<Output = Self> + AddAssign + 'static
{
}
impl Fl for f32 {}
impl Fl for f64 {}

/// `c += a * b` for row-major `a` (m x k), `b` (k x n), `c` (m x n):
/// cache-blocked over k and n, with a 4 x 8 register tile so the inner loop
/// runs over contiguous rows of `b`.
pub(crate) fn gemm<T: Fl>(m: usize, n: usize, k: usize, a: &[T], b: &[T], c: &mut [T]) {
    const MR: usize = 4;
    const NR: usize = 8;
    const KB: usize = 256;
    const NB: usize = 512;
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    for j0 in (0..n).step_by(NB) {
        let j1 = (j0 + NB).min(n);
        for k0 in (0..k).step_by(KB) {
            let k1 = (k0 + KB).min(k);
            let mut i = 0;
            while i < m {
                let mr = MR.min(m - i);
                let mut j = j0;
                while j < j1 {
                    let nr = NR.min(j1 - j);
                    if mr == MR && nr == NR {
                        let mut acc = [[T::default(); NR]; MR];
                        for (r, row) in acc.iter_mut().enumerate() {
                            row.copy_from_slice(&c[(i + r) * n + j..(i + r) * n + j + NR]);
                        }
                        let a0 = &a[i * k + k0..i * k + k1];
                        let a1 = &a[(i + 1) * k + k0..(i + 1) * k + k1];
                        let a2 = &a[(i + 2) * k + k0..(i + 2) * k + k1];
                        let a3 = &a[(i + 3) * k + k0..(i + 3) * k + k1];
                        for kk in 0..k1 - k0 {
                            let bo = (k0 + kk) * n + j;
                            let brow: &[T; NR] = b[bo..bo + NR].try_into().expect("tile");
                            let (x0, x1, x2, x3) = (a0[kk], a1[kk], a2[kk], a3[kk]);
                            for t in 0..NR {
                                let bv = brow[t];
                                acc[0][t] += x0 * bv;
                                acc[1][t] += x1 * bv;
                                acc[2][t] += x2 * bv;
                                acc[3][t] += x3 * bv;
                            }
                        }
                        for (r, row) in acc.iter().enumerate() {
                            c[(i + r) * n + j..(i + r) * n + j + NR].copy_from_slice(row);
                        }
                    } else {
                        for r in i..i + mr {
                            for kk in k0..k1 {
                                let av = a[r * k + kk];
                                let brow = &b[kk * n + j..kk * n + j + nr];
                                let crow = &mut c[r * n + j..r * n + j + nr];
                                for (cv, &bv) in crow.iter_mut().zip(brow) {
                                    *cv += av * bv;
                                }
                            }
                        }
                    }
                    j += nr;
                }
                i += mr;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_matches_naive() {
        for &(m, n, k) in &[(1, 1, 1), (5, 9, 3), (8, 16, 300), (7, 530, 13)] {
            let a: Vec<f64> = (0..m * k).map(|x| (x % 7) as f64 - 3.0).collect();
            let b: Vec<f64> = (0..k * n).map(|x| (x % 5) as f64 * 0.5).collect();
            let mut c = vec![1.0; m * n];
            gemm(m, n, k, &a, &b, &mut c);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = 1.0 + (0..k).map(|t| a[i * k + t] * b[t * n + j]).sum::<f64>();
                    assert_eq!(c[i * n + j], want);
                }
            }
        }
    }
}
