//! Inline transcendental functions for the generated code, at either width:
//! Cephes-style range reduction plus minimax polynomials (exp, log, tanh;
//! exp's and tanh's constants are `cpu::approx`'s, which hand-written
//! kernels share) and a rational approximation (erf). Calling libm per element would cost a
//! call per lane and rule out the f32x4 body, so these are emitted inline.
//! Special values follow the interpreter: NaN in gives NaN out, overflow
//! gives ±inf, saturating functions reach exactly ±1 / 0.

// Coefficients are quoted as published (more digits than f32 keeps).
#![allow(clippy::excessive_precision)]

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{InstBuilder, Value};

use super::fb::Fb;
use crate::cpu::approx;

/// e^x: x = n·ln2 + r with |r| ≤ ln2/2, a degree-7 polynomial for e^r, and
/// 2^n built in the exponent bits, split in two halves so that n from -150
/// (denormal results) to 128 (overflow to inf) stays representable.
pub(crate) fn exp(f: &mut Fb, x: Value) -> Value {
    let x = f.clamp(x, approx::EXP_MIN, approx::EXP_MAX);
    let t = f.mulc(x, std::f32::consts::LOG2_E);
    // n = round(t) by adding 1.5·2^23, whose ulp is 1 (|t| < 151 here):
    // the sum's low mantissa bits are then n itself, so the integer n is
    // one integer subtract away, instead of a round and a saturating
    // float-to-int conversion (eight instructions on x64).
    const MAGIC: f32 = approx::ROUND_MAGIC;
    let k = f.addc(t, MAGIC);
    let n = f.addc(k, -MAGIC);
    // ln2 in two parts (Cody–Waite) so that x - n·ln2 is exact enough.
    let c1 = f.c(approx::LN2_HI);
    let r = f.mul_add(n, c1, x);
    let c2 = f.c(approx::LN2_LO);
    let r = f.mul_add(n, c2, r);
    let p = f.poly(r, &approx::EXP_POLY);
    let r2 = f.mul(r, r);
    let p = f.mul_add(p, r2, r);
    let p = f.addc(p, 1.0);
    let kb = f.bits_as_int(k);
    let magic_bits = f.ci(MAGIC.to_bits() as i32);
    let ni = f.b.ins().isub(kb, magic_bits);
    let h = f.b.ins().sshr_imm_s(ni, 1);
    let l = f.b.ins().isub(ni, h);
    let bias = f.ci(127);
    let h = f.b.ins().iadd(h, bias);
    let h = f.b.ins().ishl_imm_s(h, 23);
    let l = f.b.ins().iadd(l, bias);
    let l = f.b.ins().ishl_imm_s(l, 23);
    let sh = f.bits_as_float(h);
    let sl = f.bits_as_float(l);
    let p = f.mul(p, sh);
    f.mul(p, sl)
}

/// ln x (Cephes logf): x = m·2^e with m in [√½, √2), a degree-8 polynomial
/// for ln(m); denormals are scaled up first. ln 0 = -inf, ln(x<0) = NaN,
/// ln inf = inf.
pub(crate) fn log(f: &mut Fb, x0: Value) -> Value {
    let min_normal = f.c(f32::MIN_POSITIVE);
    let scaled = f.mulc(x0, 8_388_608.0); // 2^23
    let x = f.sel(FloatCC::LessThan, x0, min_normal, scaled, x0);
    let z = f.c(0.0);
    let k23 = f.c(23.0);
    let eadj = f.sel(FloatCC::LessThan, x0, min_normal, k23, z);
    let bits = f.bits_as_int(x);
    let e = f.b.ins().sshr_imm_s(bits, 23);
    let k126 = f.ci(126);
    let e = f.b.ins().isub(e, k126);
    let mant_mask = f.ci(0x807f_ffffu32 as i32);
    let half = f.ci(0x3f00_0000);
    let mb = f.b.ins().band(bits, mant_mask);
    let mb = f.b.ins().bor(mb, half);
    let m = f.bits_as_float(mb);
    let fty = f.ty;
    let e = f.b.ins().fcvt_from_sint(fty, e);
    let e = f.sub(e, eadj);
    // m in [0.5, 1): below √½ use 2m - 1 and e - 1, else m - 1.
    let sqrthf = f.c(std::f32::consts::FRAC_1_SQRT_2);
    let one = f.c(1.0);
    let m_or_0 = f.sel(FloatCC::LessThan, m, sqrthf, m, z);
    let e_dec = f.sel(FloatCC::LessThan, m, sqrthf, one, z);
    let e = f.sub(e, e_dec);
    let xm = f.add(m, m_or_0);
    let xm = f.sub(xm, one);
    let zz = f.mul(xm, xm);
    let p = f.poly(
        xm,
        &[
            7.037_683_6e-2,
            -1.151_461e-1,
            1.167_699_9e-1,
            -1.242_014_1e-1,
            1.424_932_3e-1,
            -1.666_805_8e-1,
            2.000_071_4e-1,
            -2.499_999_4e-1,
            3.333_333e-1,
        ],
    );
    let p = f.mul(p, xm);
    let y = f.mul(p, zz);
    let t = f.mulc(e, -2.121_944_4e-4);
    let y = f.add(y, t);
    let t = f.mulc(zz, 0.5);
    let y = f.sub(y, t);
    let r = f.add(xm, y);
    let t = f.mulc(e, 0.693_359_4);
    let r = f.add(r, t);
    // Special values.
    let ninf = f.c(f32::NEG_INFINITY);
    let pinf = f.c(f32::INFINITY);
    let nan = f.c(f32::NAN);
    let r = f.sel(FloatCC::Equal, x0, z, ninf, r);
    let r = f.sel(FloatCC::Equal, x0, pinf, pinf, r);
    f.sel(FloatCC::UnorderedOrLessThan, x0, z, nan, r)
}

/// tanh x: an odd polynomial for |x| < 0.625 (Cephes tanhf), else
/// sign(x)·(1 - 2/(e^{2|x|} + 1)), which saturates to exactly ±1.
pub(crate) fn tanh(f: &mut Fb, x: Value) -> Value {
    let ax = f.b.ins().fabs(x);
    let z2 = f.mul(x, x);
    let p = f.poly(z2, &approx::TANH_POLY);
    let p = f.mul(p, z2);
    let p = f.mul(p, x);
    let small = f.add(p, x);
    // 1 - 2/(e^{2|x|} + 1) = 1 - 2·sigmoid(-2|x|).
    let a2 = f.add(ax, ax);
    let na2 = f.b.ins().fneg(a2);
    let s = sigmoid(f, na2);
    let m2 = f.c(-2.0);
    let one = f.c(1.0);
    let big = f.mul_add(s, m2, one);
    let nbig = f.b.ins().fneg(big);
    let z = f.c(0.0);
    let big = f.sel(FloatCC::LessThan, x, z, nbig, big);
    let lim = f.c(approx::TANH_SMALL);
    f.sel(FloatCC::LessThan, ax, lim, small, big)
}

/// 1 / (1 + e^{-x}), e^{-x} in `approx::sigmoid`'s short form (degree-5
/// polynomial, one exponent-field scale): saturates to exactly 0 and 1
/// without NaN.
pub(crate) fn sigmoid(f: &mut Fb, x: Value) -> Value {
    let nx = f.b.ins().fneg(x);
    let nx = f.clamp(nx, approx::SIGMOID_EXP_MIN, approx::SIGMOID_EXP_MAX);
    const MAGIC: f32 = approx::ROUND_MAGIC;
    let log2e = f.c(std::f32::consts::LOG2_E);
    let magic = f.c(MAGIC);
    let k = f.mul_add(nx, log2e, magic);
    let n = f.addc(k, -MAGIC);
    let c1 = f.c(approx::LN2_HI);
    let r = f.mul_add(n, c1, nx);
    let c2 = f.c(approx::LN2_LO);
    let r = f.mul_add(n, c2, r);
    let r2 = f.mul(r, r);
    let [q3, q2, q1, q0] = approx::SIGMOID_EXP_POLY;
    let (q3, q2, q1, q0) = (f.c(q3), f.c(q2), f.c(q1), f.c(q0));
    let hi = f.mul_add(q3, r, q2);
    let lo = f.mul_add(q1, r, q0);
    let q = f.mul_add(r2, hi, lo);
    let r1 = f.addc(r, 1.0);
    let p = f.mul_add(q, r2, r1);
    // 2^n for n in -126..=128; 128 sets the exponent field to inf.
    let kb = f.bits_as_int(k);
    let magic_bits = f.ci(MAGIC.to_bits() as i32);
    let ni = f.b.ins().isub(kb, magic_bits);
    let bias = f.ci(127);
    let ni = f.b.ins().iadd(ni, bias);
    let ni = f.b.ins().ishl_imm_s(ni, 23);
    let scale = f.bits_as_float(ni);
    let e = f.mul(p, scale);
    let d = f.addc(e, 1.0);
    let one = f.c(1.0);
    f.div(one, d)
}

/// erf x = x·P(x²)/Q(x²) on x clamped to [-4, 4] (erf(±4) rounds to ±1 in
/// f32); the rational approximation used by Eigen and XLA for f32.
pub(crate) fn erf(f: &mut Fb, x: Value) -> Value {
    let x = f.clamp(x, -4.0, 4.0);
    let x2 = f.mul(x, x);
    let p = f.poly(x2, &approx::ERF_P);
    let q = f.poly(x2, &approx::ERF_Q);
    let p = f.mul(p, x);
    let r = f.div(p, q);
    // The rational form can overshoot 1 by an ulp near the clamp.
    f.clamp(r, -1.0, 1.0)
}

/// softplus x = max(x, 0) + log1p(e^{-|x|}), with log1p(u) computed as
/// ln(1+u)·u/((1+u)-1) so that small u keep their precision.
pub(crate) fn softplus(f: &mut Fb, x: Value) -> Value {
    let ax = f.b.ins().fabs(x);
    let nax = f.b.ins().fneg(ax);
    let u = exp(f, nax);
    let w = f.addc(u, 1.0);
    let l = log(f, w);
    let one = f.c(1.0);
    let wm1 = f.sub(w, one);
    let lu = f.mul(l, u);
    let corr = f.div(lu, wm1);
    let l1p = f.sel(FloatCC::Equal, w, one, u, corr);
    let z = f.c(0.0);
    let mx = f.sel(FloatCC::GreaterThan, x, z, x, z);
    let r = f.add(mx, l1p);
    // NaN in, NaN out (the select above would turn NaN into 0 + …).
    f.sel(FloatCC::Unordered, x, x, x, r)
}

/// erfc a for a ≥ 0 with full relative precision in the tail (where
/// 1 - erf(a) would cancel): the Chebyshev fit t·e^{-a² + P(t)},
/// t = 1/(1 + a/2), of Numerical Recipes' erfcc (relative error 1.1e-7 in
/// exact arithmetic, everywhere): one division, one exp.
fn erfc_pos(f: &mut Fb, a: Value) -> Value {
    let h = f.mulc(a, 0.5);
    let d = f.addc(h, 1.0);
    let one = f.c(1.0);
    let t = f.div(one, d);
    let p = f.poly(t, &approx::ERFC_POLY);
    let a2 = f.mul(a, a);
    let arg = f.sub(p, a2);
    let e = exp(f, arg);
    f.mul(t, e)
}

/// Gelu (erf form) 0.5·x·(1 + erf(x/√2)). Where every lane has
/// z = x/√2 ≥ -2 the bracket is 1 + erf(z) from the rational erf: it keeps
/// a relative error under 3e-5 there (1 + erf(-2) = 4.7e-3) at half the
/// cost of the tail form. A vector with any lane below takes the tail
/// form: the bracket is erfc(-z), computed directly so that the negative
/// tail keeps its relative precision (1 + erf would cancel to nothing
/// below x ≈ -4). Activations rarely reach the tail, so the branch is
/// well predicted.
pub(crate) fn gelu(f: &mut Fb, x: Value) -> Value {
    let z = f.mulc(x, std::f32::consts::FRAC_1_SQRT_2);
    let lim = f.c(approx::GELU_TAIL);
    let below = f.b.ins().fcmp(FloatCC::LessThan, z, lim);
    let any_below = if f.is_vec() {
        f.b.ins().vany_true(below)
    } else {
        below
    };
    let (tail, near, done) = (f.b.create_block(), f.b.create_block(), f.b.create_block());
    let result = f.b.append_block_param(done, f.ty);
    f.b.ins().brif(any_below, tail, &[], near, &[]);

    f.b.switch_to_block(near);
    let e = erf(f, z);
    let bracket = f.addc(e, 1.0);
    let h = f.mulc(x, 0.5);
    let r = f.mul(h, bracket);
    f.b.ins().jump(done, &[r.into()]);

    f.b.switch_to_block(tail);
    let a = f.b.ins().fabs(z);
    let c = erfc_pos(f, a);
    let two = f.c(2.0);
    let pos = f.sub(two, c);
    let zero = f.c(0.0);
    let bracket = f.sel(FloatCC::LessThan, z, zero, c, pos);
    let h = f.mulc(x, 0.5);
    let r = f.mul(h, bracket);
    f.b.ins().jump(done, &[r.into()]);

    f.b.switch_to_block(done);
    result
}
