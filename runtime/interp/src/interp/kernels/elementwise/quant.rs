//! QuantizeLinear, DequantizeLinear and DynamicQuantizeLinear: per-tensor,
//! per-axis and blocked scales/zero points; integer outputs rounded half to
//! even and saturated to the type's range (i4/u4/i8/u8/i16/u16/...),
//! float8 outputs encoded with the `saturate` attribute. Arithmetic follows
//! the ONNX reference's numpy dtypes (f32 steps where it computes in f32).
//! `kiln.Lookup`, the table a pass makes of such a chain on 8-bit values,
//! is here too.

use kiln_ir::ElemType;

use super::exact::{ints, round_to};
use crate::f8;
use crate::interp::kernels::ctx::{bail, one, opt_tensor, tensor, Ctx, KResult};
use crate::interp::kernels::shape::norm_axis;
use crate::tensor::{strides, Data, Tensor};
use crate::value::Value;

/// For each element of a tensor of shape `x_shape`, the index of its
/// scale/zero point in `p`: one value for all, one per index along `axis`
/// (1-D `p`), or one per block of `block` indices along `axis` (`p` of the
/// same rank as x).
fn param_index(
    p: &Tensor,
    x_shape: &[usize],
    axis: i64,
    block: i64,
    what: &str,
) -> KResult<Vec<usize>> {
    let n: usize = x_shape.iter().product();
    if p.len() == 1 {
        return Ok(vec![0; n]);
    }
    if x_shape.is_empty() {
        bail!("{what} has {} values but the input is a scalar", p.len());
    }
    let axis = norm_axis(axis, x_shape.len())?;
    let xs = strides(x_shape);
    if block <= 0 {
        if p.rank() != 1 || p.len() != x_shape[axis] {
            bail!(
                "{what} of shape {:?} does not match axis {axis} of shape {x_shape:?}",
                p.shape
            );
        }
        return Ok((0..n).map(|i| (i / xs[axis]) % x_shape[axis]).collect());
    }
    let block = block as usize;
    let ok = p.rank() == x_shape.len()
        && (0..x_shape.len()).all(|d| {
            if d == axis {
                p.shape[d] == x_shape[d].div_ceil(block)
            } else {
                p.shape[d] == x_shape[d]
            }
        });
    if !ok {
        bail!("{what} of shape {:?} does not fit blocks of {block} along axis {axis} of shape {x_shape:?}", p.shape);
    }
    let ps = strides(&p.shape);
    Ok((0..n)
        .map(|i| {
            (0..x_shape.len())
                .map(|d| {
                    let c = (i / xs[d]) % x_shape[d];
                    (if d == axis { c / block } else { c }) * ps[d]
                })
                .sum()
        })
        .collect())
}

/// The range of an integer quantized type.
fn int_range(e: ElemType) -> KResult<(i128, i128)> {
    match e {
        ElemType::U64 | ElemType::I64 => None,
        e => e.int_range(),
    }
    .ok_or_else(|| format!("QuantizeLinear cannot produce {e}").into())
}

pub fn k_quantize(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let scale = tensor(inputs, 1)?;
    let zp = opt_tensor(inputs, 2)?;
    let axis = cx.attr_int("axis", 1);
    let block = cx.attr_int("block_size", 0);
    let saturate = cx.attr_int("saturate", 1) != 0;
    let out = match (cx.output_elem(0), zp) {
        (Some(e), _) => e,
        (None, Some(z)) => z.elem(),
        (None, None) => ElemType::U8,
    };
    if let Some(z) = zp {
        if z.elem() != out {
            bail!(
                "QuantizeLinear: zero point is {}, result is {out}",
                z.elem()
            );
        }
    }
    let si = param_index(scale, &x.shape, axis, block, "scale")?;
    let s = scale.to_f64();
    let se = scale.elem();
    let xv = x.to_f64();
    // x / scale in the scale's precision, as numpy divides.
    let q: Vec<f64> = xv
        .iter()
        .zip(&si)
        .map(|(&v, &k)| round_to(se, v / s[k]))
        .collect();
    let data = if out.is_float8() {
        Data::F8(
            out,
            q.iter()
                .map(|&v| f8::encode(out, v as f32, saturate))
                .collect(),
        )
    } else {
        let (lo, hi) = int_range(out)?;
        let z: Vec<i128> = match zp {
            Some(z) => {
                let zi = param_index(z, &x.shape, axis, block, "zero point")?;
                let zv = ints(&z.data);
                zi.iter().map(|&k| zv[k]).collect()
            }
            None => vec![0; q.len()],
        };
        let v: Vec<i64> = q
            .iter()
            .zip(&z)
            .map(|(&v, &z)| {
                let r = if v.is_nan() {
                    0
                } else {
                    v.round_ties_even().clamp(-1e30, 1e30) as i128
                };
                (r + z).clamp(lo, hi) as i64
            })
            .collect();
        Data::from_i64(out, &v)
    };
    one(Tensor::new(x.shape.clone(), data)?)
}

pub fn k_dequantize(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let scale = tensor(inputs, 1)?;
    let zp = opt_tensor(inputs, 2)?;
    let axis = cx.attr_int("axis", 1);
    let block = cx.attr_int("block_size", 0);
    let out = cx.output_elem(0).unwrap_or(scale.elem());
    let si = param_index(scale, &x.shape, axis, block, "scale")?;
    let s = scale.to_f64();
    let mut dx = x.to_f64();
    if let Some(z) = zp {
        if z.elem() != x.elem() {
            bail!(
                "DequantizeLinear: zero point is {}, input is {}",
                z.elem(),
                x.elem()
            );
        }
        // float8 zero points must be zero (the reference ignores them).
        if !x.elem().is_float8() {
            let zi = param_index(z, &x.shape, axis, block, "zero point")?;
            let zv = z.to_f64();
            for (d, &k) in dx.iter_mut().zip(&zi) {
                *d = round_to(ElemType::F32, *d - zv[k]);
            }
        }
    }
    let y: Vec<f64> = dx
        .iter()
        .zip(&si)
        .map(|(&d, &k)| {
            let p = d * s[k];
            if scale.elem() == ElemType::F64 {
                p
            } else {
                round_to(ElemType::F32, p)
            }
        })
        .collect();
    one(Tensor::new(x.shape.clone(), Data::from_f64(out, &y))?)
}

pub fn k_dynamic_quantize(_: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    if x.is_empty() {
        bail!("DynamicQuantizeLinear: empty input");
    }
    let xv: Vec<f32> = x.to_f64().into_iter().map(|v| v as f32).collect();
    let max = xv
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
        .max(0.0);
    let min = xv.iter().copied().fold(f32::INFINITY, f32::min).min(0.0);
    let scale = if max == min { 1.0f32 } else { max - min } / 255.0f32;
    let zp = (0.0f32 - min / scale).clamp(0.0, 255.0).round_ties_even();
    let y: Vec<u8> = xv
        .iter()
        .map(|&v| ((v / scale).round_ties_even() + zp).clamp(0.0, 255.0) as u8)
        .collect();
    Ok(vec![
        Value::tensor(Tensor::new(x.shape.clone(), Data::U8(y))?),
        Value::tensor(Tensor::scalar(Data::from_f64(x.elem(), &[scale as f64]))),
        Value::tensor(Tensor::scalar(Data::U8(vec![zp as u8]))),
    ])
}

/// `kiln.Lookup`: `Y[i] = Table[X[i] - lowest]`, the index being a u8's
/// value or an i8's value + 128.
pub fn k_lookup(_cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let table = tensor(inputs, 1)?;
    if table.len() != 256 {
        bail!("kiln.Lookup: Table has {} values, not 256", table.len());
    }
    let index: Vec<usize> = match &x.data {
        Data::U8(v) => v.iter().map(|&b| b as usize).collect(),
        Data::I8(v) => v.iter().map(|&b| (b as i16 + 128) as usize).collect(),
        _ => bail!("kiln.Lookup: X is {}, not u8 or i8", x.elem()),
    };
    let data = match &table.data {
        Data::U8(t) => Data::U8(index.iter().map(|&i| t[i]).collect()),
        Data::I8(t) => Data::I8(index.iter().map(|&i| t[i]).collect()),
        _ => bail!("kiln.Lookup: Table is {}, not u8 or i8", table.elem()),
    };
    one(Tensor::new(x.shape.clone(), data)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_axis_and_blocked_indices() {
        let p = Tensor::new(vec![3], Data::F32(vec![1.0; 3])).unwrap();
        assert_eq!(
            param_index(&p, &[2, 3], 1, 0, "scale").unwrap(),
            vec![0, 1, 2, 0, 1, 2]
        );
        assert!(param_index(&p, &[2, 4], 1, 0, "scale").is_err());
        assert!(param_index(&p, &[], 0, 0, "scale").is_err());
        let b = Tensor::new(vec![2, 2], Data::F32(vec![1.0; 4])).unwrap();
        assert_eq!(
            param_index(&b, &[2, 3], 1, 2, "scale").unwrap(),
            vec![0, 0, 1, 2, 2, 3]
        );
    }
}
