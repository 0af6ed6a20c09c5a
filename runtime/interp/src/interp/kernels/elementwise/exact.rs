//! The exact common form elementwise kernels compute in ([`Num`]):
//! every float type as f64 (rounded back to the operand's type with
//! [`round_to`]), every integer type as i128 (exact for u64 too, wrapped
//! back to its width), and the conversions of tensors into and out of it.
//! Shared by the arithmetic of `mod.rs`, Cast and the quantization ops.

use half::{bf16, f16};
use kiln_ir::ElemType;

use crate::f8;
use crate::interp::kernels::ctx::{bail, KResult};
use crate::tensor::{Data, Tensor};

/// Tensor values in an exact common form.
pub(super) enum Num {
    F(Vec<f64>),
    I(Vec<i128>),
}

/// Integer (and bool) values as i128, exact for every width.
pub(super) fn ints(d: &Data) -> Vec<i128> {
    match d {
        Data::U64(v) => v.iter().map(|&x| x as i128).collect(),
        other => other.to_i64().into_iter().map(i128::from).collect(),
    }
}

/// Integers back to `elem`, wrapping to its width.
pub(super) fn from_ints(elem: ElemType, v: &[i128]) -> Data {
    Data::from_i64(elem, &v.iter().map(|&x| x as i64).collect::<Vec<_>>())
}

/// `x` rounded to the precision of float type `elem` (identity for f64 and
/// non-float types).
pub(super) fn round_to(elem: ElemType, x: f64) -> f64 {
    match elem {
        ElemType::F32 => x as f32 as f64,
        ElemType::F16 => f16::from_f64(x).to_f64(),
        ElemType::BF16 => bf16::from_f64(x).to_f64(),
        k if k.is_float8() => f8::decode(k, f8::encode(k, x as f32, true)) as f64,
        _ => x,
    }
}

pub(super) fn num(t: &Tensor, op: &str) -> KResult<Num> {
    let e = t.elem();
    if e.is_float() {
        Ok(Num::F(t.to_f64()))
    } else if e.is_int() || e == ElemType::Bool {
        Ok(Num::I(ints(&t.data)))
    } else {
        bail!("{op} is not defined for {e} tensors")
    }
}

pub(super) fn make(elem: ElemType, shape: Vec<usize>, n: Num) -> KResult<Tensor> {
    let data = match n {
        Num::F(v) => Data::from_f64(elem, &v),
        Num::I(v) => from_ints(elem, &v),
    };
    Ok(Tensor::new(shape, data)?)
}
