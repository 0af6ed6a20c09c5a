//! Kernels: elementwise ops. Unary math and activations, numpy-broadcast
//! binary and variadic arithmetic, comparisons, logic and bit ops, Where,
//! Clip, PRelu, Identity and Dropout live here; Cast/CastLike in [`cast`],
//! the quantization ops in [`quant`], erf and numpy's Mersenne Twister in
//! [`special`].
//!
//! Values are computed in an exact common form ([`Num`], in `exact.rs`):
//! every float type as f64 (rounded back to the operand's type, per step
//! where numpy would round per step), every integer type as i128 (exact
//! for u64 too, wrapped back to its width like numpy).

pub mod cast;
mod exact;
mod quant;
mod special;

use kiln_ir::ElemType;

use super::ctx::{bail, one, opt_tensor, tensor, Ctx, KResult, KernelFn};
use super::shape::{broadcast_indices, broadcast_shape};
use crate::tensor::{Data, Tensor};
use crate::value::Value;
use exact::{ints, make, num, round_to, Num};

pub fn lookup(op: &str) -> Option<KernelFn> {
    if UNARY.iter().any(|u| u.0 == op) {
        return Some(k_unary);
    }
    if ARITH.iter().any(|a| a.0 == op) {
        return Some(k_arith);
    }
    if COMPARE.iter().any(|c| c.0 == op) {
        return Some(k_compare);
    }
    Some(match op {
        "Mod" => k_mod,
        "Pow" => k_pow,
        "And" | "Or" | "Xor" => k_logic,
        "Not" => k_not,
        "BitwiseAnd" | "BitwiseOr" | "BitwiseXor" => k_bitwise,
        "BitwiseNot" => k_bitwise_not,
        "BitShift" => k_bitshift,
        "Max" | "Min" | "Sum" | "Mean" => k_variadic,
        "Where" => k_where,
        "Clip" => k_clip,
        "PRelu" => k_prelu,
        "Elu" | "Celu" | "Selu" | "LeakyRelu" | "HardSigmoid" | "ThresholdedRelu" | "Shrink"
        | "Gelu" | "Swish" => k_activation,
        "IsInf" => k_isinf,
        "IsNaN" => k_isnan,
        "Identity" => k_identity,
        "Dropout" => k_dropout,
        "Cast" => cast::k_cast,
        "CastLike" => cast::k_castlike,
        "QuantizeLinear" => quant::k_quantize,
        "DequantizeLinear" => quant::k_dequantize,
        "DynamicQuantizeLinear" => quant::k_dynamic_quantize,
        "kiln.Lookup" => quant::k_lookup,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// Shared helpers

/// A numpy broadcast of two shapes: the result shape and, per result
/// element, the element index in each operand.
struct Bcast {
    shape: Vec<usize>,
    ia: Vec<usize>,
    ib: Vec<usize>,
}

fn checked_numel(shape: &[usize]) -> KResult<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} has too many elements").into())
}

fn index_map(in_shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    if in_shape == out_shape {
        (0..out_shape.iter().product()).collect()
    } else {
        broadcast_indices(in_shape, out_shape)
    }
}

fn bcast(a: &[usize], b: &[usize]) -> KResult<Bcast> {
    let shape = broadcast_shape(a, b)?;
    checked_numel(&shape)?;
    Ok(Bcast {
        ia: index_map(a, &shape),
        ib: index_map(b, &shape),
        shape,
    })
}

fn same_elem(a: &Tensor, b: &Tensor, op: &str) -> KResult<ElemType> {
    if a.elem() != b.elem() {
        bail!(
            "{op} operands have different element types: {} and {}",
            a.elem(),
            b.elem()
        );
    }
    Ok(a.elem())
}

pub type FF = fn(f64, f64) -> f64;
pub type FI = fn(i128, i128) -> Result<i128, &'static str>;

/// Elementwise `f` over a broadcast pair of same-typed numbers, floats
/// rounded to `elem` after each step.
fn zip_num(
    a: &Num,
    b: &Num,
    bc: &Bcast,
    elem: ElemType,
    ff: &dyn Fn(f64, f64) -> f64,
    fi: &dyn Fn(i128, i128) -> Result<i128, &'static str>,
    op: &str,
) -> KResult<Num> {
    let pairs = bc.ia.iter().zip(&bc.ib);
    Ok(match (a, b) {
        (Num::F(x), Num::F(y)) => Num::F(
            pairs
                .map(|(&i, &j)| round_to(elem, ff(x[i], y[j])))
                .collect(),
        ),
        (Num::I(x), Num::I(y)) => Num::I(
            pairs
                .map(|(&i, &j)| fi(x[i], y[j]))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{op}: {e}"))?,
        ),
        _ => bail!("{op}: operands mix float and integer types"),
    })
}

fn binary_same(
    inputs: &[Option<Value>],
    op: &str,
    ff: &dyn Fn(f64, f64) -> f64,
    fi: &dyn Fn(i128, i128) -> Result<i128, &'static str>,
) -> KResult<Vec<Value>> {
    let a = tensor(inputs, 0)?;
    let b = tensor(inputs, 1)?;
    let elem = same_elem(a, b, op)?;
    let bc = bcast(&a.shape, &b.shape)?;
    let out = zip_num(&num(a, op)?, &num(b, op)?, &bc, elem, ff, fi, op)?;
    one(make(elem, bc.shape, out)?)
}

/// Elementwise map of one tensor.
fn map_num(
    t: &Tensor,
    op: &str,
    ff: &dyn Fn(f64) -> f64,
    fi: Option<&dyn Fn(i128) -> i128>,
) -> KResult<Tensor> {
    let out = match num(t, op)? {
        Num::F(v) => Num::F(v.into_iter().map(ff).collect()),
        Num::I(v) => match fi {
            Some(fi) => Num::I(v.into_iter().map(fi).collect()),
            None => bail!("{op} is not defined for {} tensors", t.elem()),
        },
    };
    make(t.elem(), t.shape.clone(), out)
}

// ---------------------------------------------------------------------------
// Unary math

pub type UF = fn(f64) -> f64;
pub type UI = fn(i128) -> i128;

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        x
    }
}

/// Unary ops without attributes: float function, integer function when the
/// op accepts integers. The CPU backend's generated loops call the float
/// functions of the ops they have no inline form for (`cpu::jit::lower`).
pub const UNARY: &[(&str, UF, Option<UI>)] = &[
    ("Abs", f64::abs, Some(|x| x.abs())),
    ("Neg", |x| -x, Some(|x| x.wrapping_neg())),
    ("Sign", sign, Some(|x| x.signum())),
    (
        "Relu",
        |x| if x < 0.0 { 0.0 } else { x },
        Some(|x| x.max(0)),
    ),
    ("Ceil", f64::ceil, None),
    ("Floor", f64::floor, None),
    ("Round", f64::round_ties_even, None),
    ("Acos", f64::acos, None),
    ("Acosh", f64::acosh, None),
    ("Asin", f64::asin, None),
    ("Asinh", f64::asinh, None),
    ("Atan", f64::atan, None),
    ("Atanh", f64::atanh, None),
    ("Cos", f64::cos, None),
    ("Cosh", f64::cosh, None),
    ("Sin", f64::sin, None),
    ("Sinh", f64::sinh, None),
    ("Tan", f64::tan, None),
    ("Tanh", f64::tanh, None),
    ("Exp", f64::exp, None),
    ("Log", f64::ln, None),
    ("Sqrt", f64::sqrt, None),
    ("Reciprocal", |x| 1.0 / x, None),
    ("Erf", special::erf, None),
    ("Sigmoid", sigmoid, None),
    ("Softplus", softplus, None),
    ("Softsign", |x| x / (1.0 + x.abs()), None),
    ("Mish", |x| x * softplus(x).tanh(), None),
    ("HardSwish", |x| x * (x / 6.0 + 0.5).clamp(0.0, 1.0), None),
];

fn k_unary(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let op = cx.node.op.as_str();
    let Some(&(_, ff, fi)) = UNARY.iter().find(|u| u.0 == op) else {
        bail!("no unary op {op}")
    };
    let x = tensor(inputs, 0)?;
    let fi = fi.map(|f| move |x: i128| f(x));
    one(map_num(
        x,
        op,
        &ff,
        fi.as_ref().map(|f| f as &dyn Fn(i128) -> i128),
    )?)
}

/// Activations with attributes (ONNX defaults).
fn k_activation(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let op = cx.node.op.as_str();
    let alpha = |d: f32| cx.attr_float("alpha", d) as f64;
    let f: Box<dyn Fn(f64) -> f64> = match op {
        "Elu" => {
            let a = alpha(1.0);
            Box::new(move |x| if x > 0.0 { x } else { (x.exp() - 1.0) * a })
        }
        "Celu" => {
            let a = alpha(1.0);
            // max(0, x) + min(0, a·(e^(x/a) - 1)), NaN kept as numpy's
            // maximum keeps it (f64::max would drop it).
            Box::new(move |x| {
                if x > 0.0 || x.is_nan() {
                    x
                } else {
                    a * ((x / a).exp() - 1.0)
                }
            })
        }
        "Selu" => {
            let a = alpha(1.673_263_2);
            let g = cx.attr_float("gamma", 1.050_701) as f64;
            Box::new(move |x| {
                if x > 0.0 {
                    x * g
                } else {
                    (x.exp() * a - a) * g
                }
            })
        }
        "LeakyRelu" => {
            let a = alpha(0.01);
            Box::new(move |x| if x > 0.0 { x } else { x * a })
        }
        "HardSigmoid" => {
            let a = alpha(0.2);
            let b = cx.attr_float("beta", 0.5) as f64;
            Box::new(move |x| (a * x + b).clamp(0.0, 1.0))
        }
        "ThresholdedRelu" => {
            let a = alpha(1.0);
            Box::new(move |x| if x > a { x } else { 0.0 })
        }
        "Shrink" => {
            let bias = cx.attr_float("bias", 0.0) as f64;
            let l = cx.attr_float("lambd", 0.5) as f64;
            Box::new(move |x| {
                if x < -l {
                    x + bias
                } else if x > l {
                    x - bias
                } else {
                    0.0
                }
            })
        }
        "Swish" => {
            let a = alpha(1.0);
            Box::new(move |x| x * sigmoid(a * x))
        }
        "Gelu" => match cx.attr_str("approximate").unwrap_or("none") {
            "none" => Box::new(|x| 0.5 * x * (1.0 + special::erf(x / std::f64::consts::SQRT_2))),
            "tanh" => Box::new(|x| {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
            }),
            other => bail!("Gelu: unknown approximate=\"{other}\""),
        },
        _ => bail!("no activation {op}"),
    };
    if op == "Shrink" && (x.elem().is_int()) {
        // Shrink accepts integers: compute in f64, convert back.
        let v: Vec<f64> = ints(&x.data).into_iter().map(|i| f(i as f64)).collect();
        return one(Tensor::new(x.shape.clone(), Data::from_f64(x.elem(), &v))?);
    }
    if !x.elem().is_float() {
        bail!("{op} is not defined for {} tensors", x.elem());
    }
    one(map_num(x, op, &*f, None)?)
}

fn k_isinf(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let neg = cx.attr_int("detect_negative", 1) != 0;
    let pos = cx.attr_int("detect_positive", 1) != 0;
    if !x.elem().is_float() {
        bail!("IsInf is not defined for {} tensors", x.elem());
    }
    let v = x
        .to_f64()
        .into_iter()
        .map(|v| v.is_infinite() && if v > 0.0 { pos } else { neg })
        .collect();
    one(Tensor::new(x.shape.clone(), Data::Bool(v))?)
}

fn k_isnan(_: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    if !x.elem().is_float() {
        bail!("IsNaN is not defined for {} tensors", x.elem());
    }
    one(Tensor::new(
        x.shape.clone(),
        Data::Bool(x.to_f64().into_iter().map(f64::is_nan).collect()),
    )?)
}

// ---------------------------------------------------------------------------
// Binary arithmetic

/// The binary arithmetic ops: name, float form, integer form (computed
/// in i128, stored wrapped to the element type). The CPU backend's
/// integer kernels read this table too.
pub const ARITH: &[(&str, FF, FI)] = &[
    ("Add", |a, b| a + b, |a, b| Ok(a.wrapping_add(b))),
    ("Sub", |a, b| a - b, |a, b| Ok(a.wrapping_sub(b))),
    ("Mul", |a, b| a * b, |a, b| Ok(a.wrapping_mul(b))),
    (
        "Div",
        |a, b| a / b,
        |a, b| {
            if b == 0 {
                Err("integer division by zero")
            } else {
                Ok(a / b)
            }
        },
    ),
];

fn k_arith(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let op = cx.node.op.as_str();
    let Some(&(_, ff, fi)) = ARITH.iter().find(|a| a.0 == op) else {
        bail!("no arithmetic op {op}")
    };
    binary_same(inputs, op, &ff, &fi)
}

/// Mod: fmod=1 is C's fmod (sign of the dividend); fmod=0 on integers is
/// Python's modulo (sign of the divisor). Floats always use fmod, as the
/// ONNX reference does.
fn k_mod(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let fmod = cx.attr_int("fmod", 0) != 0;
    let fi = int_binary("Mod", fmod, false).ok_or("no integer Mod")?;
    let ff: &dyn Fn(f64, f64) -> f64 = if fmod {
        &|a, b| a % b
    } else {
        &|a, b| {
            let r = a % b;
            if r.is_nan() {
                0.0
            } else {
                r
            }
        }
    };
    binary_same(inputs, "Mod", ff, &fi)
}

/// The integer form of a binary op (computed in i128, wrapped to the
/// element type by the caller): ARITH's, Mod (`fmod` picks C's remainder
/// over Python's), Pow, the bitwise ops, BitShift (`left` its
/// direction), and the two-operand Max, Min and Sum. The CPU backend's
/// typed kernels take them from here too.
pub fn int_binary(op: &str, fmod: bool, left: bool) -> Option<FI> {
    if let Some(&(_, _, fi)) = ARITH.iter().find(|a| a.0 == op) {
        return Some(fi);
    }
    Some(match op {
        "Mod" if fmod => |a, b| {
            if b == 0 {
                Err("integer modulo by zero")
            } else {
                Ok(a % b)
            }
        },
        "Mod" => |a, b| {
            if b == 0 {
                return Err("integer modulo by zero");
            }
            let r = a % b;
            Ok(if r != 0 && (r < 0) != (b < 0) {
                r + b
            } else {
                r
            })
        },
        "Pow" => int_pow,
        "BitwiseAnd" => |a, b| Ok(a & b),
        "BitwiseOr" => |a, b| Ok(a | b),
        "BitwiseXor" => |a, b| Ok(a ^ b),
        // Operands are unsigned and at most 64 bits wide, so a shift of
        // the element's width or more leaves 0 once wrapped to it.
        "BitShift" if left => |x, s| Ok(if s >= 64 { 0 } else { x << s }),
        "BitShift" => |x, s| Ok(if s >= 64 { 0 } else { x >> s }),
        "Max" => |a, b| Ok(a.max(b)),
        "Min" => |a, b| Ok(a.min(b)),
        "Sum" => |a, b| Ok(a.wrapping_add(b)),
        _ => return None,
    })
}

pub fn int_pow(base: i128, exp: i128) -> Result<i128, &'static str> {
    if exp < 0 {
        return Err("integers to negative integer powers are not allowed");
    }
    let (mut b, mut e, mut r) = (base, exp as u128, 1i128);
    while e > 0 {
        if e & 1 == 1 {
            r = r.wrapping_mul(b);
        }
        b = b.wrapping_mul(b);
        e >>= 1;
    }
    Ok(r)
}

/// Pow: base and exponent may differ in type; the result has the base's.
fn k_pow(_: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let a = tensor(inputs, 0)?;
    let b = tensor(inputs, 1)?;
    let elem = a.elem();
    let bc = bcast(&a.shape, &b.shape)?;
    let pairs = bc.ia.iter().zip(&bc.ib);
    let out = match (num(a, "Pow")?, num(b, "Pow")?) {
        (Num::I(x), Num::I(y)) => Num::I(
            pairs
                .map(|(&i, &j)| int_pow(x[i], y[j]))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("Pow: {e}"))?,
        ),
        (x, y) => {
            let f = |n: Num| match n {
                Num::F(v) => v,
                Num::I(v) => v.into_iter().map(|i| i as f64).collect(),
            };
            let (x, y) = (f(x), f(y));
            Num::F(pairs.map(|(&i, &j)| x[i].powf(y[j])).collect())
        }
    };
    one(make(elem, bc.shape, out)?)
}

fn k_prelu(_: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    binary_same(
        inputs,
        "PRelu",
        &|x, s| if x < 0.0 { s * x } else { x },
        &|x, s| Ok(if x < 0 { s.wrapping_mul(x) } else { x }),
    )
}

// ---------------------------------------------------------------------------
// Comparisons, logic, bits

pub type Cmp = fn(Option<std::cmp::Ordering>) -> bool;

/// The comparisons, as predicates on `partial_cmp` (NaN compares as
/// nothing). The CPU backend's typed kernels read this table too.
pub const COMPARE: &[(&str, Cmp)] = &[
    ("Equal", |o| o == Some(std::cmp::Ordering::Equal)),
    ("Greater", |o| o == Some(std::cmp::Ordering::Greater)),
    ("Less", |o| o == Some(std::cmp::Ordering::Less)),
    ("GreaterOrEqual", |o| {
        matches!(
            o,
            Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
        )
    }),
    ("LessOrEqual", |o| {
        matches!(
            o,
            Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
        )
    }),
];

fn k_compare(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let op = cx.node.op.as_str();
    let Some(&(_, f)) = COMPARE.iter().find(|c| c.0 == op) else {
        bail!("no comparison {op}")
    };
    let a = tensor(inputs, 0)?;
    let b = tensor(inputs, 1)?;
    same_elem(a, b, op)?;
    let bc = bcast(&a.shape, &b.shape)?;
    let pairs = bc.ia.iter().zip(&bc.ib);
    let out: Vec<bool> = match (&a.data, &b.data) {
        (Data::Str(x), Data::Str(y)) => pairs.map(|(&i, &j)| f(x[i].partial_cmp(&y[j]))).collect(),
        _ => match (num(a, op)?, num(b, op)?) {
            (Num::F(x), Num::F(y)) => pairs.map(|(&i, &j)| f(x[i].partial_cmp(&y[j]))).collect(),
            (Num::I(x), Num::I(y)) => pairs.map(|(&i, &j)| f(x[i].partial_cmp(&y[j]))).collect(),
            _ => bail!("{op}: operands mix float and integer types"),
        },
    };
    one(Tensor::new(bc.shape, Data::Bool(out))?)
}

fn bools<'t>(t: &'t Tensor, op: &str) -> KResult<&'t [bool]> {
    match &t.data {
        Data::Bool(v) => Ok(v),
        _ => bail!("{op} takes bool tensors, got {}", t.elem()),
    }
}

fn k_logic(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let op = cx.node.op.as_str();
    let f: fn(bool, bool) -> bool = match op {
        "And" => |a, b| a && b,
        "Or" => |a, b| a || b,
        _ => |a, b| a != b,
    };
    let a = tensor(inputs, 0)?;
    let b = tensor(inputs, 1)?;
    let (x, y) = (bools(a, op)?, bools(b, op)?);
    let bc = bcast(&a.shape, &b.shape)?;
    let out = bc
        .ia
        .iter()
        .zip(&bc.ib)
        .map(|(&i, &j)| f(x[i], y[j]))
        .collect();
    one(Tensor::new(bc.shape, Data::Bool(out))?)
}

fn k_not(_: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let v = bools(x, "Not")?.iter().map(|b| !b).collect();
    one(Tensor::new(x.shape.clone(), Data::Bool(v))?)
}

fn require_int(t: &Tensor, op: &str) -> KResult<()> {
    if !t.elem().is_int() {
        bail!("{op} takes integer tensors, got {}", t.elem());
    }
    Ok(())
}

fn k_bitwise(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let op = cx.node.op.as_str();
    require_int(tensor(inputs, 0)?, op)?;
    let fi = int_binary(op, false, false).ok_or("no bitwise op")?;
    binary_same(inputs, op, &|_, _| f64::NAN, &fi)
}

fn k_bitwise_not(_: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    require_int(x, "BitwiseNot")?;
    one(map_num(x, "BitwiseNot", &|_| f64::NAN, Some(&|i| !i))?)
}

fn k_bitshift(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let a = tensor(inputs, 0)?;
    if !a.elem().is_unsigned_int() {
        bail!("BitShift takes unsigned integer tensors, got {}", a.elem());
    }
    let left = match cx.attr_str("direction") {
        Some("LEFT") => true,
        Some("RIGHT") => false,
        other => bail!("BitShift: direction must be LEFT or RIGHT, got {other:?}"),
    };
    let fi = int_binary("BitShift", false, left).ok_or("no BitShift")?;
    binary_same(inputs, "BitShift", &|_, _| f64::NAN, &fi)
}

// ---------------------------------------------------------------------------
// Variadic, Where, Clip

fn k_variadic(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let op = cx.node.op.as_str();
    if inputs.is_empty() {
        bail!("{op} needs at least one operand");
    }
    let ts: Vec<&Tensor> = (0..inputs.len())
        .map(|i| tensor(inputs, i))
        .collect::<KResult<_>>()?;
    let elem = ts[0].elem();
    for t in &ts[1..] {
        same_elem(ts[0], t, op)?;
    }
    let (ff, fi): (FF, FI) = match op {
        "Max" => (
            |a, b| {
                if a.is_nan() || b.is_nan() {
                    f64::NAN
                } else {
                    a.max(b)
                }
            },
            int_binary("Max", false, false).ok_or("no Max")?,
        ),
        "Min" => (
            |a, b| {
                if a.is_nan() || b.is_nan() {
                    f64::NAN
                } else {
                    a.min(b)
                }
            },
            int_binary("Min", false, false).ok_or("no Min")?,
        ),
        _ => (
            |a, b| a + b,
            int_binary("Sum", false, false).ok_or("no Sum")?,
        ),
    };
    let mut shape = ts[0].shape.clone();
    let mut acc = num(ts[0], op)?;
    for t in &ts[1..] {
        let bc = bcast(&shape, &t.shape)?;
        acc = zip_num(&acc, &num(t, op)?, &bc, elem, &ff, &fi, op)?;
        shape = bc.shape;
    }
    if op == "Mean" {
        let n = ts.len();
        acc = match acc {
            Num::F(v) => Num::F(
                v.into_iter()
                    .map(|x| round_to(elem, x / n as f64))
                    .collect(),
            ),
            Num::I(v) => Num::I(v.into_iter().map(|x| x / n as i128).collect()),
        };
    }
    one(make(elem, shape, acc)?)
}

fn k_where(_: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let c = tensor(inputs, 0)?;
    let x = tensor(inputs, 1)?;
    let y = tensor(inputs, 2)?;
    let cond = bools(c, "Where")?;
    same_elem(x, y, "Where")?;
    let shape = broadcast_shape(&broadcast_shape(&c.shape, &x.shape)?, &y.shape)?;
    checked_numel(&shape)?;
    let (ic, ix, iy) = (
        index_map(&c.shape, &shape),
        index_map(&x.shape, &shape),
        index_map(&y.shape, &shape),
    );
    let both = Data::concat(&[&x.data, &y.data]).ok_or("Where: operands differ in type")?;
    let n = x.len();
    let idx: Vec<usize> = (0..ic.len())
        .map(|k| if cond[ic[k]] { ix[k] } else { n + iy[k] })
        .collect();
    one(Tensor::new(shape, both.gather(&idx))?)
}

fn k_clip(_: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let bound = |i: usize| -> KResult<Option<&Tensor>> {
        match opt_tensor(inputs, i)? {
            Some(t) if t.is_empty() => Ok(None),
            Some(t) if t.len() != 1 => {
                bail!("Clip: bound {i} must be a scalar, has shape {:?}", t.shape)
            }
            Some(t) => {
                same_elem(x, t, "Clip")?;
                Ok(Some(t))
            }
            None => Ok(None),
        }
    };
    let (lo, hi) = (bound(1)?, bound(2)?);
    let out = match num(x, "Clip")? {
        Num::F(v) => {
            let lo = lo.map(|t| t.to_f64()[0]);
            let hi = hi.map(|t| t.to_f64()[0]);
            Num::F(
                v.into_iter()
                    .map(|mut e| {
                        if let Some(l) = lo {
                            if e < l || l.is_nan() {
                                e = l;
                            }
                        }
                        if let Some(h) = hi {
                            if e > h || h.is_nan() {
                                e = h;
                            }
                        }
                        e
                    })
                    .collect(),
            )
        }
        Num::I(v) => {
            let lo = lo.map(|t| ints(&t.data)[0]);
            let hi = hi.map(|t| ints(&t.data)[0]);
            Num::I(
                v.into_iter()
                    .map(|mut e| {
                        if let Some(l) = lo {
                            e = e.max(l);
                        }
                        if let Some(h) = hi {
                            e = e.min(h);
                        }
                        e
                    })
                    .collect(),
            )
        }
    };
    one(make(x.elem(), x.shape.clone(), out)?)
}

// ---------------------------------------------------------------------------
// Identity, Dropout

fn k_identity(_: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    match inputs.first() {
        Some(Some(v)) => Ok(vec![v.clone()]),
        _ => bail!("Identity: operand 0 is required"),
    }
}

/// Dropout: identity with an all-true mask unless `training_mode` is true
/// and the ratio positive; then a mask drawn with numpy's generator seeded
/// by the `seed` attribute (what the ONNX tests used), or the
/// interpreter's deterministic source when there is no seed.
fn k_dropout(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let ratio = match opt_tensor(inputs, 1)? {
        Some(r) if r.len() == 1 => r.to_f64()[0],
        Some(r) => bail!("Dropout: ratio must be a scalar, has shape {:?}", r.shape),
        None => cx.attr_float("ratio", 0.5) as f64,
    };
    let training = match opt_tensor(inputs, 2)? {
        Some(t) if t.len() == 1 => t.to_f64()[0] != 0.0,
        Some(t) => bail!(
            "Dropout: training_mode must be a scalar, has shape {:?}",
            t.shape
        ),
        None => false,
    };
    let n = x.len();
    if !training || ratio == 0.0 {
        let same = inputs[0].clone().ok_or("Dropout: operand 0 is required")?;
        return Ok(vec![
            same,
            Value::tensor(Tensor::new(x.shape.clone(), Data::Bool(vec![true; n]))?),
        ]);
    }
    if !(0.0..1.0).contains(&ratio) {
        bail!("Dropout: ratio must be in [0, 1), got {ratio}");
    }
    if !x.elem().is_float() {
        bail!("Dropout is not defined for {} tensors", x.elem());
    }
    let mut rng = cx.rng();
    let mask: Vec<bool> = (0..n).map(|_| rng.uniform() >= ratio).collect();
    let elem = x.elem();
    let scale = round_to(elem, 1.0 / round_to(elem, 1.0 - ratio));
    let y: Vec<f64> = x
        .to_f64()
        .into_iter()
        .zip(&mask)
        .map(|(v, &m)| if m { v * scale } else { 0.0 })
        .collect();
    Ok(vec![
        Value::tensor(Tensor::new(x.shape.clone(), Data::from_f64(elem, &y))?),
        Value::tensor(Tensor::new(x.shape.clone(), Data::Bool(mask))?),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: Vec<usize>, d: Data) -> Option<Value> {
        Some(Value::tensor(Tensor::new(shape, d).unwrap()))
    }

    fn arith(op: &str) -> (FF, FI) {
        let e = ARITH.iter().find(|a| a.0 == op).unwrap();
        (e.1, e.2)
    }

    #[test]
    fn broadcast_add_and_integer_division() {
        let (ff, fi) = arith("Add");
        let r = binary_same(
            &[
                t(vec![2, 1], Data::I32(vec![1, 2])),
                t(vec![3], Data::I32(vec![10, 20, 30])),
            ],
            "Add",
            &ff,
            &fi,
        )
        .unwrap();
        assert_eq!(
            *r[0].as_tensor().unwrap(),
            Tensor::new(vec![2, 3], Data::I32(vec![11, 21, 31, 12, 22, 32])).unwrap()
        );
        let (ff, fi) = arith("Div");
        let r = binary_same(
            &[
                t(vec![2], Data::I8(vec![-7, 7])),
                t(vec![], Data::I8(vec![2])),
            ],
            "Div",
            &ff,
            &fi,
        )
        .unwrap();
        assert_eq!(r[0].as_tensor().unwrap().data, Data::I8(vec![-3, 3]));
        let e = binary_same(
            &[
                t(vec![1], Data::I64(vec![1])),
                t(vec![1], Data::I64(vec![0])),
            ],
            "Div",
            &ff,
            &fi,
        );
        assert!(e.is_err());
        let e = binary_same(
            &[
                t(vec![2], Data::F32(vec![1.0, 2.0])),
                t(vec![3], Data::F32(vec![1.0; 3])),
            ],
            "Div",
            &ff,
            &fi,
        );
        assert!(e.is_err(), "shapes that do not broadcast are an error");
    }

    #[test]
    fn unsigned_64_bit_is_exact() {
        let (ff, fi) = arith("Sub");
        let r = binary_same(
            &[
                t(vec![1], Data::U64(vec![u64::MAX])),
                t(vec![1], Data::U64(vec![1])),
            ],
            "Sub",
            &ff,
            &fi,
        )
        .unwrap();
        assert_eq!(
            r[0].as_tensor().unwrap().data,
            Data::U64(vec![u64::MAX - 1])
        );
        assert_eq!(int_pow(3, 4), Ok(81));
        assert!(int_pow(2, -1).is_err());
    }

    #[test]
    fn float16_rounds_per_step() {
        assert_eq!(round_to(ElemType::F16, 1.0 + 1e-4), 1.0);
        assert_eq!(round_to(ElemType::F32, 0.1), 0.1f32 as f64);
    }
}
