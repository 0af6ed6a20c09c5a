//! The Transposed strategy: convs on maps too small to fill 16-position
//! strips, with constant weights, run as the transposed product (output
//! channels in the tile's lanes) through packed weights ([`PackedB`]).

use super::super::common::{for_each_unit, transpose_any, with_scratch, Axis};
use super::super::packed::{PackedB, TileStore};
use super::super::smallk;
use super::super::weights::ConstWeights;
use std::sync::Arc;

/// Convs whose maps are too small to fill 16-position strips (a 7x7 map
/// is 49 positions: four strips, a quarter of the lanes idle), run with
/// the roles swapped: `out^T[p, m] = Σ_k x^T[p, k] · W^T[k, m]`, the
/// weights packed once into 16-channel panels ([`PackedB`]), the input
/// gathered into rows of taps per output position, the product
/// transposed back into the output with the bias and clamp. On ResNet-50's
/// 7x7 stage (Zen 4) the implicit GEMM ran these convs at 67-79 GFLOP/s;
/// transposed, the stage takes 4 % less time on 1 thread and 3-9 % less
/// on 2 (weights streamed from memory, 2-9 MB a conv, bound it more than
/// the idle lanes did).
#[derive(Debug, Clone)]
pub(super) struct Transposed {
    weights: Arc<PackedB>,
    /// Per output position, the flat input offset of each tap (kernel
    /// volume entries, `usize::MAX` in padding) within one channel.
    taps: Vec<usize>,
    /// Whether output position p reads input position p alone (a 1x1
    /// conv of stride 1, unpadded): gathering the taps is then a plain
    /// transpose of each image.
    identity: bool,
}

impl Transposed {
    /// Maps smaller than this many positions, and not a multiple of 16,
    /// take the transposed product.
    pub(super) const MAX_POSITIONS: usize = 64;

    pub(super) fn new(axes: &[Axis; 3], m: usize, kdim: usize, w: &ConstWeights) -> Transposed {
        let [ad, ah, aw] = axes;
        let mut taps = vec![];
        for od in 0..ad.output {
            for oh in 0..ah.output {
                for ow in 0..aw.output {
                    for kd in 0..ad.kernel {
                        for kh in 0..ah.kernel {
                            for kw in 0..aw.kernel {
                                let at = match (
                                    ad.input_index(od, kd),
                                    ah.input_index(oh, kh),
                                    aw.input_index(ow, kw),
                                ) {
                                    (Some(d), Some(h), Some(w)) => {
                                        (d * ah.input + h) * aw.input + w
                                    }
                                    _ => usize::MAX,
                                };
                                taps.push(at);
                            }
                        }
                    }
                }
            }
        }
        let identity = taps.iter().enumerate().all(|(p, &t)| t == p)
            && taps.len() == ad.input * ah.input * aw.input;
        Transposed {
            weights: w.packed(kdim, m, 1, kdim),
            taps,
            identity,
        }
    }

    /// `out` (batch x m x ovol) from `x` (batch x c x ivol).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run(
        &self,
        (batch, c, m): (usize, usize, usize),
        (ivol, ovol, kvol): (usize, usize, usize),
        x: &[f32],
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        out: &mut [f32],
        clamp: Option<smallk::Clamp>,
        threads: usize,
        epi: &(dyn Fn(usize, usize) + Sync),
    ) {
        let kdim = c * kvol;
        // Rows a multiple of 4 KiB apart would share L1 sets in the tile.
        let ld = if kdim.is_multiple_of(1024) {
            kdim + 16
        } else {
            kdim
        };
        let rows = batch * ovol;
        with_scratch(rows * ld + rows * m, |buf| {
            let (xt, prod) = buf.split_at_mut(rows * ld);
            // x^T: row (image, position) holds every channel's taps.
            if self.identity {
                for n in 0..batch {
                    let xn = &x[n * c * ivol..][..c * ivol];
                    transpose_any(xn, ivol, c, ivol, &mut xt[n * ovol * ld..], ld);
                }
            } else {
                for (r, row) in xt.chunks_exact_mut(ld.max(1)).enumerate() {
                    let (n, p) = (r / ovol, r % ovol);
                    let taps = &self.taps[p * kvol..][..kvol];
                    let xn = &x[n * c * ivol..][..c * ivol];
                    for (ch, dst) in row[..kdim].chunks_exact_mut(kvol.max(1)).enumerate() {
                        let plane = &xn[ch * ivol..][..ivol];
                        for (d, &t) in dst.iter_mut().zip(taps) {
                            *d = if t == usize::MAX { 0.0 } else { plane[t] };
                        }
                    }
                }
            }
            // Without a residual, the bias (a column's: output channels
            // are the columns here) and the activation ride on the
            // product's tile store, in registers; a residual, laid out
            // channels-major, is added after the transpose back, and the
            // activation after it (element by element: a HardSwish that
            // way took twice as long as MobileNetV3's 1x1 conv at 7x7).
            let in_tile = residual.is_none();
            let store = if in_tile {
                TileStore { bias, clamp }
            } else {
                TileStore::default()
            };
            self.weights
                .product(rows, xt, ld, prod, threads, None, store);
            // Back to channels-major, 16 channels at a time (with the
            // bias, residual and clamp when not in the tiles); the
            // epilogue gets each image's block of channels as it is done.
            let prod = &*prod;
            let out_addr = out.as_mut_ptr().expose_provenance();
            let blocks = m.div_ceil(16);
            let unit = |u: usize| {
                let (n, b) = (u / blocks, u % blocks);
                let (j0, j1) = (b * 16, ((b + 1) * 16).min(m));
                let base = std::ptr::with_exposed_provenance_mut::<f32>(out_addr);
                // SAFETY: unit (n, b) alone writes channels j0..j1 of image
                // n, inside `out` (batch x m x ovol).
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(base.add((n * m + j0) * ovol), (j1 - j0) * ovol)
                };
                // In 8x8 register blocks, then each channel's row in
                // place: the element-wise loop with the bias, residual and
                // clamp read across rows of `prod` was 13 % of a 1x1 conv
                // 320 -> 1280 at 7x7.
                transpose_any(&prod[n * ovol * m + j0..], m, ovol, j1 - j0, dst, ovol);
                if !in_tile {
                    for (j, row) in (j0..j1).zip(dst.chunks_exact_mut(ovol.max(1))) {
                        let add = bias.map_or(0.0, |b| b[j]);
                        if let Some(r) = residual {
                            for (d, &r) in row.iter_mut().zip(&r[(n * m + j) * ovol..][..ovol]) {
                                *d = *d + add + r;
                            }
                        } else if bias.is_some() {
                            for d in row.iter_mut() {
                                *d += add;
                            }
                        }
                        if let Some(c) = clamp {
                            for d in row.iter_mut() {
                                *d = c.apply(*d);
                            }
                        }
                    }
                }
                epi((n * m + j0) * ovol, (n * m + j1) * ovol);
            };
            for_each_unit(threads > 1, batch * blocks, unit);
        });
    }
}
