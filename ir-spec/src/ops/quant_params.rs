//! The quantization a result carries on its type (`TensorType::quant`):
//! `real = scale · (q - zero_point)`, known where the scale and zero point
//! are constants. Inference attaches it after an op's rule has given the
//! result types, so `kiln dump` shows what is quantized where:
//! - `QuantizeLinear`: its scale and zero point (per tensor, per axis or
//!   blocked, as its `axis` and `block_size` say);
//! - `QLinearConv`, `QLinearMatMul`: the result's scale and zero point
//!   (operands 6 and 7);
//! - ops that only move or select values (the op traits' `selects`,
//!   which `fold-qdq` makes integer ops), with operand 0 quantized per tensor
//!   and a result of its type: the same parameters. (Per-axis parameters
//!   would need the axis followed through each op; they are left off.)
//!
//! The verifier checks what a type carries (`Rule::QuantParams`).

use std::sync::Arc;

use super::schema::InferCtx;
use crate::types::{QuantParams, Type};

/// Sets the quantization of `out`'s results where `op` determines it.
pub(super) fn attach(c: &InferCtx, op: &str, out: &mut [Type]) {
    let params = match op {
        "QuantizeLinear" => from_operands(c, 1, 2),
        "QLinearConv" | "QLinearMatMul" => from_operands(c, 6, 7),
        op if super::traits::table_entry(op).selects => c
            .input(0)
            .and_then(Type::as_tensor)
            .and_then(|t| t.quant.clone())
            .filter(|q| q.axis.is_none() && q.block_size.is_none())
            .filter(|_| same_elem(c, out)),
        _ => None,
    };
    if let (Some(q), Some(Type::Tensor(t))) = (params, out.first_mut()) {
        if t.elem.is_int() {
            t.quant = Some(q);
        }
    }
}

fn same_elem(c: &InferCtx, out: &[Type]) -> bool {
    let elem = |t: Option<&Type>| t.and_then(Type::as_tensor).map(|t| t.elem);
    elem(c.input(0)).is_some() && elem(c.input(0)) == elem(out.first())
}

/// Constant scale (operand `s`) and zero point (operand `z`, zeros when
/// omitted), with the node's `axis` and `block_size` when there is more
/// than one scale.
fn from_operands(c: &InferCtx, s: usize, z: usize) -> Option<Arc<QuantParams>> {
    let scale: Vec<f32> = c.const_floats(s)?.into_iter().map(|v| v as f32).collect();
    let zero_point = match c.has_input(z) {
        true => c.konst(z)?.to_i64_vec()?,
        false => vec![0; scale.len()],
    };
    let block = c.attr_int("block_size", 0);
    let blocked = block > 0;
    let axis = (scale.len() > 1 || blocked).then(|| c.attr_int("axis", 1));
    Some(Arc::new(QuantParams {
        axis,
        block_size: blocked.then_some(block as u64),
        scale,
        zero_point,
    }))
}
