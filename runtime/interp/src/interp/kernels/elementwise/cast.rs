//! Cast and CastLike between every pair of element types, as the ONNX
//! reference (numpy `astype` plus ONNX's own float8/bfloat16/int4 rules)
//! does it: float8 through f32 with the `saturate` attribute, bfloat16 by
//! truncating an f32, int4/uint4 by clipping then rounding half to even,
//! strings parsed as numbers and numbers printed the way numpy prints them.

use half::{bf16, f16};
use kiln_ir::ElemType;

use super::exact::{from_ints, ints};
use crate::f8;
use crate::interp::kernels::ctx::{bail, one, tensor, Ctx, KResult};
use crate::tensor::{Data, Tensor};
use crate::value::Value;

pub fn k_cast(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let to = match cx.attr_int("to", -1) {
        -1 => cx.output_elem(0).ok_or("Cast: no `to` attribute")?,
        code => kiln_ir::ops::elem_from_onnx(code)
            .ok_or_else(|| format!("Cast: unknown data type {code}"))?,
    };
    let saturate = cx.attr_int("saturate", 1) != 0;
    one(Tensor::new(
        x.shape.clone(),
        cast_data(&x.data, to, saturate)?,
    )?)
}

pub fn k_castlike(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let to = tensor(inputs, 1)?.elem();
    let saturate = cx.attr_int("saturate", 1) != 0;
    one(Tensor::new(
        x.shape.clone(),
        cast_data(&x.data, to, saturate)?,
    )?)
}

/// Convert data to element type `to`.
pub fn cast_data(d: &Data, to: ElemType, saturate: bool) -> KResult<Data> {
    let from = d.elem();
    if from == to {
        return Ok(d.clone());
    }
    if let Data::Str(v) = d {
        return from_strings(v, to);
    }
    if matches!(from, ElemType::C64 | ElemType::C128)
        || matches!(to, ElemType::C64 | ElemType::C128)
    {
        if from.is_float() || from.is_int() || matches!(from, ElemType::C64 | ElemType::C128) {
            return Ok(Data::from_f64(to, &d.to_f64()));
        }
        bail!("Cast from {from} to {to} is not supported");
    }
    if to == ElemType::String {
        return Ok(Data::Str(to_strings(d)));
    }
    let int_src = from.is_int() || from == ElemType::Bool;
    Ok(match to {
        ElemType::BF16 => Data::BF16(
            d.to_f64()
                .into_iter()
                .map(|x| bf16::from_bits(((x as f32).to_bits() >> 16) as u16))
                .collect(),
        ),
        k if k.is_float8() => Data::F8(
            k,
            d.to_f64()
                .into_iter()
                .map(|x| f8::encode(k, x as f32, saturate))
                .collect(),
        ),
        ElemType::I4 | ElemType::U4 if !int_src => {
            let (lo, hi) = if to == ElemType::I4 {
                (-8.0, 7.0)
            } else {
                (0.0, 15.0)
            };
            let v: Vec<i64> = d
                .to_f64()
                .into_iter()
                .map(|x| {
                    if x.is_nan() {
                        0
                    } else {
                        x.clamp(lo, hi).round_ties_even() as i64
                    }
                })
                .collect();
            Data::from_i64(to, &v)
        }
        t if int_src && (t.is_int() || t == ElemType::Bool) => from_ints(t, &ints(d)),
        t if int_src => Data::from_f64(
            t,
            &ints(d).into_iter().map(|i| i as f64).collect::<Vec<_>>(),
        ),
        t => Data::from_f64(t, &d.to_f64()),
    })
}

fn from_strings(v: &[String], to: ElemType) -> KResult<Data> {
    fn parse<T: std::str::FromStr>(s: &str) -> KResult<T> {
        s.trim()
            .parse::<T>()
            .map_err(|_| format!("Cast: cannot convert the string {s:?} to a number").into())
    }
    let floats = |v: &[String]| {
        v.iter()
            .map(|s| parse::<f64>(s))
            .collect::<KResult<Vec<f64>>>()
    };
    Ok(match to {
        ElemType::F32 => Data::F32(v.iter().map(|s| parse::<f32>(s)).collect::<KResult<_>>()?),
        ElemType::F64 => Data::F64(floats(v)?),
        ElemType::BF16 | ElemType::F16 => Data::from_f64(to, &floats(v)?),
        k if k.is_float8() => Data::F8(
            k,
            v.iter()
                .map(|s| Ok(f8::encode(k, parse::<f32>(s)?, true)))
                .collect::<KResult<_>>()?,
        ),
        ElemType::Bool => Data::Bool(
            v.iter()
                .map(|s| match s.trim() {
                    "True" | "true" => Ok(true),
                    "False" | "false" | "" => Ok(false),
                    other => parse::<f64>(other).map(|x| x != 0.0),
                })
                .collect::<KResult<_>>()?,
        ),
        // Integers: exact when the text is an integer, else the number
        // truncated toward zero ("100.5" -> 100).
        t if t.is_int() => from_ints(
            t,
            &v.iter()
                .map(|s| {
                    parse::<i128>(s)
                        .or_else(|_| parse::<f64>(s).map(|x| crate::tensor::f64_to_i64(x) as i128))
                })
                .collect::<KResult<Vec<_>>>()?,
        ),
        t => bail!("Cast from string to {t} is not supported"),
    })
}

fn to_strings(d: &Data) -> Vec<String> {
    match d {
        Data::F64(v) => v
            .iter()
            .map(|&x| numpy_float(x, format!("{x:e}"), 1e16))
            .collect(),
        Data::F32(v) => v
            .iter()
            .map(|&x| numpy_float(x as f64, format!("{x:e}"), 1e7))
            .collect(),
        Data::F16(v) => v
            .iter()
            .map(|&x| numpy_float(x.to_f64(), shortest_f16(x), 1e3))
            .collect(),
        Data::Bool(v) => v
            .iter()
            .map(|&b| if b { "True" } else { "False" }.to_string())
            .collect(),
        Data::Str(v) => v.clone(),
        other if other.elem().is_int() => ints(other).into_iter().map(|i| i.to_string()).collect(),
        // bfloat16 and float8 print as the f32 they widen to.
        other => other
            .to_f64()
            .into_iter()
            .map(|x| numpy_float(x, format!("{:e}", x as f32), 1e7))
            .collect(),
    }
}

/// Shortest scientific digits that read back as the same f16.
fn shortest_f16(x: f16) -> String {
    let f = x.to_f32();
    if !f.is_finite() {
        return format!("{f:e}");
    }
    for p in 0..8 {
        let s = format!("{f:.p$e}");
        if s.parse::<f32>().map(f16::from_f32) == Ok(x) {
            return s;
        }
    }
    format!("{f:e}")
}

/// numpy's `str()` of a float scalar, from the shortest round-trip digits
/// in Rust's `{:e}` form (`d.ddde±x`): positional from 1e-4 up to
/// `cutoff` (numpy's: 1e3 for f16, 1e7 for f32, 1e16 for f64), scientific
/// with an exponent of at least two digits otherwise.
fn numpy_float(x: f64, sci: String, cutoff: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    let neg = sci.starts_with('-');
    let body = sci.trim_start_matches('-');
    let (mant, exp) = body.split_once('e').unwrap_or((body, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let digits = {
        let t = digits.trim_end_matches('0');
        if t.is_empty() {
            "0".to_string()
        } else {
            t.to_string()
        }
    };
    let sign = if neg { "-" } else { "" };
    let a = x.abs();
    if a == 0.0 || (1e-4..cutoff).contains(&a) {
        if a == 0.0 {
            return format!("{sign}0.0");
        }
        if exp >= 0 {
            let e = exp as usize;
            let (int, frac) = if digits.len() > e + 1 {
                (digits[..=e].to_string(), digits[e + 1..].to_string())
            } else {
                (format!("{digits:0<width$}", width = e + 1), "0".to_string())
            };
            format!("{sign}{int}.{frac}")
        } else {
            format!("{sign}0.{}{digits}", "0".repeat((-exp - 1) as usize))
        }
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let es = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{es}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_formats() {
        let f = |x: f32| numpy_float(x as f64, format!("{x:e}"), 1e7);
        assert_eq!(f(0.47892547), "0.47892547");
        assert_eq!(f(1.0), "1.0");
        assert_eq!(f(-2.5), "-2.5");
        assert_eq!(f(123456790.0), "1.2345679e+08");
        assert_eq!(f(10000.0), "10000.0");
        assert_eq!(f(1e-5), "1e-05");
        assert_eq!(f(1.5e-7), "1.5e-07");
        assert_eq!(f(1e16), "1e+16");
        assert_eq!(f(0.0001), "1e-04");
        assert_eq!(f(-0.0), "-0.0");
        assert_eq!(f(0.0), "0.0");
        let h = f16::from_f32(0.1);
        assert_eq!(numpy_float(h.to_f64(), shortest_f16(h), 1e3), "0.1");
    }

    #[test]
    fn bf16_truncates_and_int4_saturates() {
        let d = cast_data(
            &Data::F32(vec![1.0 + 1.0 / 128.0 + 1.0 / 256.0 + 1e-6]),
            ElemType::BF16,
            true,
        )
        .unwrap();
        assert_eq!(d, Data::BF16(vec![bf16::from_f32(1.0 + 1.0 / 128.0)]));
        let d = cast_data(&Data::F32(vec![-9.0, 2.5, 3.5, 20.0]), ElemType::I4, true).unwrap();
        assert_eq!(d, Data::I4(vec![-8, 2, 4, 7]));
        let s = cast_data(
            &Data::Str(vec!["+INF".into(), "NaN".into(), "1.5".into()]),
            ElemType::F32,
            true,
        )
        .unwrap();
        let Data::F32(v) = s else { panic!() };
        assert!(v[0].is_infinite() && v[1].is_nan() && v[2] == 1.5);
    }
}
