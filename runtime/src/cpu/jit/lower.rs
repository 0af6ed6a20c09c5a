//! The IR → Cranelift lowering table: one arm per [`Op`], written once for
//! both widths (the f32x4 body and the scalar tail share it through [`Fb`],
//! which knows the current type, in [`super::fb`]). The transcendental
//! functions live in [`super::math`]; the loops that call this live in
//! [`super::codegen`].

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{InstBuilder, Value};

use super::fb::Fb;
use super::math;
use crate::fusion_plan::Op;

/// `x^n` by repeated squaring (n may be negative).
fn powi(f: &mut Fb, x: Value, n: i32) -> Value {
    if n == 0 {
        return f.c(1.0);
    }
    let mut e = n.unsigned_abs();
    let mut base = x;
    let mut acc: Option<Value> = None;
    while e > 0 {
        if e & 1 == 1 {
            acc = Some(match acc {
                Some(a) => f.mul(a, base),
                None => base,
            });
        }
        e >>= 1;
        if e > 0 {
            base = f.mul(base, base);
        }
    }
    let r = acc.unwrap_or(x);
    if n < 0 {
        let one = f.c(1.0);
        f.div(one, r)
    } else {
        r
    }
}

/// The interpreter's f64 definition of unary `op`, called per lane: an
/// exactly rounded result, at the cost of a call per element (these ops
/// are rare in models: positional encodings, a few activations).
fn host_unary(f: &mut Fb, op: &str, x: Value) -> Value {
    use crate::interp::kernels::elementwise::{UF, UNARY};
    extern "C" fn apply(g: usize, x: f32) -> f32 {
        // SAFETY: `g` is a `UF` (below): a function pointer made an integer
        // for the call's ABI, never anything else.
        let g: UF = unsafe { std::mem::transmute::<usize, UF>(g) };
        g(x as f64) as f32
    }
    let g: UF = UNARY
        .iter()
        .find(|u| u.0 == op)
        .map_or(|_| f64::NAN, |u| u.1);
    let host: extern "C" fn(usize, f32) -> f32 = apply;
    f.call_host(host as usize, g as usize, &[x])
}

/// [`host_unary`] for a binary f64 function.
fn host_binary(f: &mut Fb, g: fn(f64, f64) -> f64, x: Value, y: Value) -> Value {
    type BF = fn(f64, f64) -> f64;
    extern "C" fn apply(g: usize, x: f32, y: f32) -> f32 {
        // SAFETY: as in `host_unary`: `g` is a `BF`.
        let g: BF = unsafe { std::mem::transmute::<usize, BF>(g) };
        g(x as f64, y as f64) as f32
    }
    let host: extern "C" fn(usize, f32, f32) -> f32 = apply;
    f.call_host(host as usize, g as usize, &[x, y])
}

/// The lowering table: the value of `op` applied to `a`.
pub(crate) fn lower(f: &mut Fb, op: &Op, a: &[Value]) -> Value {
    let x = a[0];
    match *op {
        Op::Add => f.add(x, a[1]),
        Op::Sub => f.sub(x, a[1]),
        Op::Mul => f.mul(x, a[1]),
        Op::Div => f.div(x, a[1]),
        Op::Min => f.b.ins().fmin(x, a[1]),
        Op::Max => f.b.ins().fmax(x, a[1]),
        Op::Neg => f.b.ins().fneg(x),
        Op::Abs => f.b.ins().fabs(x),
        Op::Round => f.b.ins().nearest(x),
        Op::Floor => f.b.ins().floor(x),
        Op::Ceil => f.b.ins().ceil(x),
        Op::Sqrt => f.b.ins().sqrt(x),
        Op::Reciprocal => {
            let one = f.c(1.0);
            f.div(one, x)
        }
        // `x < 0 ? 0 : x` keeps NaN, as the interpreter does.
        Op::Relu => {
            let z = f.c(0.0);
            f.sel(FloatCC::LessThan, x, z, z, x)
        }
        Op::LeakyRelu(alpha) => {
            let z = f.c(0.0);
            let ax = f.mulc(x, alpha);
            f.sel(FloatCC::GreaterThan, x, z, x, ax)
        }
        Op::HardSigmoid(alpha, beta) => {
            let y = f.mulc(x, alpha);
            let y = f.addc(y, beta);
            f.clamp(y, 0.0, 1.0)
        }
        Op::HardSwish => {
            let y = f.mulc(x, 1.0 / 6.0);
            let y = f.addc(y, 0.5);
            let y = f.clamp(y, 0.0, 1.0);
            f.mul(x, y)
        }
        Op::Clip(lo, hi) => {
            // Interpreter order: raise to lo, then lower to hi; NaN stays.
            // A NaN bound makes every result NaN, as numpy's clip.
            if lo.is_some_and(f32::is_nan) || hi.is_some_and(f32::is_nan) {
                return f.c(f32::NAN);
            }
            let mut y = x;
            if let Some(l) = lo {
                let l = f.c(l);
                y = f.sel(FloatCC::LessThan, y, l, l, y);
            }
            if let Some(h) = hi {
                let h = f.c(h);
                y = f.sel(FloatCC::GreaterThan, y, h, h, y);
            }
            y
        }
        // As ONNX's reference (and the interpreter): a NaN compares false
        // both ways and gives 0.
        Op::Shrink(lambd, bias) => {
            let z = f.c(0.0);
            let (lo, hi) = (f.c(-lambd), f.c(lambd));
            let up = f.addc(x, bias);
            let down = f.addc(x, -bias);
            let inner = f.sel(FloatCC::GreaterThan, x, hi, down, z);
            f.sel(FloatCC::LessThan, x, lo, up, inner)
        }
        Op::ThresholdedRelu(alpha) => {
            let (a, z) = (f.c(alpha), f.c(0.0));
            f.sel(FloatCC::GreaterThan, x, a, x, z)
        }
        Op::Binarizer(threshold) => {
            let (t, one, z) = (f.c(threshold), f.c(1.0), f.c(0.0));
            f.sel(FloatCC::GreaterThan, x, t, one, z)
        }
        Op::Exp => math::exp(f, x),
        Op::Log => math::log(f, x),
        Op::Tanh => math::tanh(f, x),
        Op::Sigmoid => math::sigmoid(f, x),
        Op::Erf => math::erf(f, x),
        Op::Softplus => math::softplus(f, x),
        Op::Mish => {
            let s = math::softplus(f, x);
            let t = math::tanh(f, s);
            f.mul(x, t)
        }
        Op::Gelu => math::gelu(f, x),
        Op::Sin => host_unary(f, "Sin", x),
        Op::Cos => host_unary(f, "Cos", x),
        Op::Tan => host_unary(f, "Tan", x),
        Op::Asin => host_unary(f, "Asin", x),
        Op::Acos => host_unary(f, "Acos", x),
        Op::Atan => host_unary(f, "Atan", x),
        Op::Sinh => host_unary(f, "Sinh", x),
        Op::Cosh => host_unary(f, "Cosh", x),
        Op::Asinh => host_unary(f, "Asinh", x),
        Op::Acosh => host_unary(f, "Acosh", x),
        Op::Atanh => host_unary(f, "Atanh", x),
        Op::Pow => host_binary(f, f64::powf, x, a[1]),
        Op::Fmod => host_binary(f, |a, b| a % b, x, a[1]),
        // NaN stays NaN (neither comparison holds).
        Op::Sign => {
            let (z, one, m1) = (f.c(0.0), f.c(1.0), f.c(-1.0));
            let neg = f.sel(FloatCC::LessThan, x, z, m1, x);
            f.sel(FloatCC::GreaterThan, x, z, one, neg)
        }
        Op::Softsign => {
            let ax = f.b.ins().fabs(x);
            let d = f.addc(ax, 1.0);
            f.div(x, d)
        }
        // max(0, x) + min(0, a·(e^(x/a) - 1)) is one branch or the other.
        Op::Celu(alpha) => {
            let e = f.mulc(x, 1.0 / alpha);
            let e = math::exp(f, e);
            let e = f.addc(e, -1.0);
            let e = f.mulc(e, alpha);
            let z = f.c(0.0);
            f.sel(FloatCC::UnorderedOrGreaterThan, x, z, x, e)
        }
        Op::PRelu => {
            let z = f.c(0.0);
            let sx = f.mul(x, a[1]);
            f.sel(FloatCC::LessThan, x, z, sx, x)
        }
        // 0.5·x·(1 + tanh u) = x·sigmoid(2u): no cancellation for x < 0.
        Op::GeluTanh => {
            let c = (2.0f32 / std::f32::consts::PI).sqrt();
            let x2 = f.mul(x, x);
            let x3 = f.mul(x2, x);
            let k = f.mulc(x3, 0.044715);
            let inner = f.add(x, k);
            let u2 = f.mulc(inner, 2.0 * c);
            let s = math::sigmoid(f, u2);
            f.mul(x, s)
        }
        Op::Elu(alpha) => {
            let e = math::exp(f, x);
            let e = f.addc(e, -1.0);
            let e = f.mulc(e, alpha);
            let z = f.c(0.0);
            f.sel(FloatCC::GreaterThan, x, z, x, e)
        }
        Op::Selu(alpha, gamma) => {
            let e = math::exp(f, x);
            let e = f.mulc(e, alpha);
            let e = f.addc(e, -alpha);
            let z = f.c(0.0);
            let y = f.sel(FloatCC::GreaterThan, x, z, x, e);
            f.mulc(y, gamma)
        }
        Op::Powi(n) => powi(f, x, n),
        Op::Powf(p) => {
            if p == 0.5 {
                return f.b.ins().sqrt(x);
            }
            let l = math::log(f, x);
            let l = f.mulc(l, p);
            math::exp(f, l)
        }
    }
}
