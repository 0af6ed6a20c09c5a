//! Writing a float ONNX model with weight-only 4-bit quantization for
//! transformers: each MatMul (and plain Gemm) with a constant 2-D weight
//! keeps f32 activations and reads its weight from uint4 blocks along the
//! reduction axis, with a scale and a zero point per block and output
//! column (asymmetric: a block's 16 levels span its own minimum to
//! maximum, onnxruntime's default for 4 bits, which keeps more accuracy
//! than a symmetric grid on skewed blocks).
//!
//! Two spellings of the same numbers:
//! - standard: `DequantizeLinear(W_uint4, scales, zero_points; axis,
//!   block_size)` feeding the product, opset 21 (blocked quantization
//!   and 4-bit types arrived there);
//! - `ort`: onnxruntime's `com.microsoft.MatMulNBits` (`[N][blocks]
//!   [block/2]` bytes, zero points packed per column), which its CPU
//!   kernels run directly.

use std::collections::{HashMap, HashSet};

use crate::compress::onnx_edit::{
    f32_tensor, int_attr, node, raw_tensor, remove_dead, Constants, Names,
};
use crate::compress::qdq::{is_plain_product, weight_kn, Plan, QNode, Written, WrittenLayer};
use crate::onnx::proto::{self, tensor_proto::DataType};

/// Which spelling to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Standard,
    Ort,
}

/// A `[K, N]` weight in uint4 blocks of `block` rows: values `[K, N]` in
/// 0..=15, scales and zero points `[blocks, N]`.
pub struct Int4Blocks {
    pub k: usize,
    pub n: usize,
    pub block: usize,
    pub values: Vec<u8>,
    pub scales: Vec<f32>,
    pub zeros: Vec<u8>,
    pub sqnr_db: Option<f64>,
}

impl Int4Blocks {
    pub fn of(w: &[f32], k: usize, n: usize, block: usize) -> Int4Blocks {
        let blocks = k.div_ceil(block);
        // Each block's range, widened to hold 0 (so zero stays exact).
        let mut lo = vec![0f32; blocks * n];
        let mut hi = vec![0f32; blocks * n];
        for r in 0..k {
            for c in 0..n {
                let at = (r / block) * n + c;
                lo[at] = lo[at].min(w[r * n + c]);
                hi[at] = hi[at].max(w[r * n + c]);
            }
        }
        let (scales, zeros): (Vec<f32>, Vec<u8>) = lo
            .iter()
            .zip(&hi)
            .map(|(&l, &h)| {
                if h > l {
                    let s = (h - l) / 15.0;
                    (s, (-l / s).round_ties_even().clamp(0.0, 15.0) as u8)
                } else {
                    (1.0, 0)
                }
            })
            .unzip();
        let (mut sig, mut noise) = (0f64, 0f64);
        let values = (0..k * n)
            .map(|i| {
                let at = (i / n / block) * n + i % n;
                let (s, z) = (scales[at], zeros[at] as f32);
                let v = ((w[i] / s).round_ties_even() + z).clamp(0.0, 15.0);
                sig += (w[i] as f64).powi(2);
                noise += (w[i] as f64 - (v - z) as f64 * s as f64).powi(2);
                v as u8
            })
            .collect();
        Int4Blocks {
            k,
            n,
            block,
            values,
            scales,
            zeros,
            sqnr_db: crate::compress::metrics::sqnr_db(sig, noise),
        }
    }

    /// ONNX 4-bit packing: two per byte, the first in the low nibble.
    fn pack(values: &[u8]) -> Vec<u8> {
        values
            .chunks(2)
            .map(|p| p[0] | (p.get(1).copied().unwrap_or(0) << 4))
            .collect()
    }

    /// MatMulNBits' B: `[N][blocks][block/2]` (rows past K hold the
    /// block's zero point, so they dequantize to 0).
    fn matmul_nbits_b(&self) -> Vec<u8> {
        let blocks = self.k.div_ceil(self.block);
        let blob = self.block / 2;
        let mut b = vec![0u8; self.n * blocks * blob];
        for c in 0..self.n {
            for r in 0..blocks * self.block {
                let (blk, j) = (r / self.block, r % self.block);
                let u = if r < self.k {
                    self.values[r * self.n + c]
                } else {
                    self.zeros[blk * self.n + c]
                };
                b[(c * blocks + blk) * blob + j / 2] |= u << (4 * (j % 2));
            }
        }
        b
    }

    /// `[blocks, N]` parameters in MatMulNBits' order, `[N][blocks]`.
    fn by_column<T: Copy>(&self, v: &[T]) -> Vec<T> {
        let blocks = self.k.div_ceil(self.block);
        (0..self.n)
            .flat_map(|c| (0..blocks).map(move |b| b * self.n + c))
            .map(|i| v[i])
            .collect()
    }

    /// MatMulNBits' zero points: per column, `ceil(blocks / 2)` bytes.
    fn matmul_nbits_zeros(&self) -> Vec<u8> {
        let blocks = self.k.div_ceil(self.block);
        self.by_column(&self.zeros)
            .chunks(blocks)
            .flat_map(Self::pack)
            .collect()
    }
}

/// Rewrite `model` (whose graph `plan` was made on): the plan's nodes not
/// in `excluded` read int4 weights in blocks of `block` rows.
pub fn write(
    model: &proto::ModelProto,
    plan: &Plan,
    excluded: &HashSet<String>,
    block: usize,
    format: Format,
    consts: Constants<'_>,
) -> Result<Written, String> {
    let mut model = model.clone();
    let mut graph = model.graph.take().ok_or("the model has no graph")?;
    let mut names = Names::of(&graph);
    let included: HashMap<usize, &QNode> = plan
        .nodes
        .iter()
        .filter(|q| !excluded.contains(&q.name) && is_plain_product(&graph.node[q.index], q))
        .map(|q| (q.index, q))
        .collect();
    let mut init = Vec::new();
    let mut nodes = Vec::with_capacity(graph.node.len() * 2);
    let mut layers = Vec::new();
    for (i, mut n) in std::mem::take(&mut graph.node).into_iter().enumerate() {
        let Some(q) = included.get(&i) else {
            nodes.push(n);
            continue;
        };
        // The [K, N] view: Gemm's transB weight is [N, K].
        let (kn, k, nn) = weight_kn(&n, consts)?;
        let q4 = Int4Blocks::of(&kn, k, nn, block);
        let tag = n.name().to_string();
        let fresh = |names: &mut Names, what: &str| names.fresh(&format!("{tag}_{what}"));
        let out = n.output[0].clone();
        let bias = n
            .input
            .get(2)
            .filter(|b| !b.is_empty() && n.op_type() == "Gemm")
            .cloned();
        match format {
            Format::Standard => {
                let wq = fresh(&mut names, "weight_uint4");
                let ws = fresh(&mut names, "weight_scale");
                let wz = fresh(&mut names, "weight_zero_point");
                let dq = fresh(&mut names, "weight_dequantized");
                let blocks = k.div_ceil(block) as i64;
                let pdims = [blocks, nn as i64];
                init.push(raw_tensor(
                    &wq,
                    DataType::Uint4,
                    &[k as i64, nn as i64],
                    Int4Blocks::pack(&q4.values),
                ));
                init.push(f32_tensor(&ws, &pdims, &q4.scales));
                init.push(raw_tensor(
                    &wz,
                    DataType::Uint4,
                    &pdims,
                    Int4Blocks::pack(&q4.zeros),
                ));
                let mut dqn = node(
                    "DequantizeLinear",
                    &fresh(&mut names, "DequantizeLinear"),
                    &[&wq, &ws, &wz],
                    &[&dq],
                );
                dqn.attribute.push(int_attr("axis", 0));
                dqn.attribute.push(int_attr("block_size", block as i64));
                nodes.push(dqn);
                // The product reads [K, N]: a Gemm drops transB.
                n.input[1] = dq;
                n.attribute.retain(|a| a.name() != "transB");
                nodes.push(n);
            }
            Format::Ort => {
                let bq = fresh(&mut names, "weight_nbits");
                let ws = fresh(&mut names, "weight_scale");
                let wz = fresh(&mut names, "weight_zero_point");
                let blocks = k.div_ceil(block);
                init.push(raw_tensor(
                    &bq,
                    DataType::Uint8,
                    &[nn as i64, blocks as i64, (block / 2) as i64],
                    q4.matmul_nbits_b(),
                ));
                init.push(f32_tensor(
                    &ws,
                    &[(nn * blocks) as i64],
                    &q4.by_column(&q4.scales),
                ));
                let zbytes = q4.matmul_nbits_zeros();
                init.push(raw_tensor(
                    &wz,
                    DataType::Uint8,
                    &[zbytes.len() as i64],
                    zbytes,
                ));
                let y = if bias.is_some() {
                    fresh(&mut names, "product")
                } else {
                    out.clone()
                };
                let mut mm = node(
                    "MatMulNBits",
                    &fresh(&mut names, "MatMulNBits"),
                    &[&n.input[0], &bq, &ws, &wz],
                    &[&y],
                );
                mm.domain = Some("com.microsoft".into());
                for (a, v) in [("K", k), ("N", nn), ("bits", 4), ("block_size", block)] {
                    mm.attribute.push(int_attr(a, v as i64));
                }
                nodes.push(mm);
                if let Some(b) = &bias {
                    nodes.push(node(
                        "Add",
                        &fresh(&mut names, "BiasAdd"),
                        &[&y, b],
                        &[&out],
                    ));
                }
            }
        }
        layers.push(WrittenLayer {
            node: q.name.clone(),
            op: q.op.clone(),
            weight_sqnr_db: q4.sqnr_db,
            output: out,
            output_grid: None,
            seen_as: None,
        });
    }
    graph.node = nodes;
    graph.initializer.extend(init);
    remove_dead(&mut graph);
    model.graph = Some(graph);
    if format == Format::Ort
        && !model
            .opset_import
            .iter()
            .any(|o| o.domain() == "com.microsoft")
    {
        model.opset_import.push(proto::OperatorSetIdProto {
            domain: Some("com.microsoft".into()),
            version: Some(1),
        });
    }
    crate::compress::onnx_edit::allow_free_initializers(&mut model);
    Ok(Written {
        model,
        layers,
        grids: HashMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int4_blocks_pack_both_ways() {
        // K = 5 (a partial last block of 4), N = 2; ranges chosen so
        // every scale and value is exact.
        let w = [1.5, -1.5, 0.1, 0.5, -0.5, 0.0, 0.3, 1.5, 3.0, -3.0];
        let q = Int4Blocks::of(&w, 5, 2, 4);
        // Column 0, block 0: [-0.5, 1.5] → scale 2/15, zero round(3.75) = 4.
        assert_eq!(q.zeros, vec![4, 8, 0, 15]);
        assert_eq!(q.scales[2], 0.2);
        assert_eq!(q.values[8], 15, "3.0 at scale 0.2, zero 0");
        assert_eq!(q.values[9], 0, "-3.0 at scale 0.2, zero 15");
        assert!(q.sqnr_db.unwrap() > 25.0, "{:?}", q.sqnr_db);
        // Low nibble first.
        assert_eq!(Int4Blocks::pack(&[1, 2, 3]), vec![0x21, 0x03]);
        // MatMulNBits: column 0's block 1 holds row 4, then three rows of
        // its zero point (0).
        let b = q.matmul_nbits_b();
        assert_eq!(b.len(), 2 * 2 * 2);
        assert_eq!(b[2], 15);
        assert_eq!(b[3], 0);
        // Column 1's block 1: row 4 (0) then zero point 15 three times.
        assert_eq!(b[6], 0xf0);
        assert_eq!(b[7], 0xff);
        // Zero points per column, packed: column 0 (4, 0), column 1 (8, 15).
        assert_eq!(q.matmul_nbits_zeros(), vec![0x04, 0xf8]);
        assert_eq!(q.by_column(&q.scales)[1], 0.2);
    }
}
