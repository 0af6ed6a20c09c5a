//! The transcendental approximations of native code, in one place: the
//! coefficients the JIT emits inline (`jit/math.rs`) and the same
//! functions in Rust for hand-written kernels (the recurrent cells' gates),
//! written branch-free so that a loop over them vectorizes. libm's
//! `expf`/`tanhf` are calls per element: in an LSTM's gate loop they were
//! a third of the run.
//!
//! Accuracy is the JIT's (Cephes-style range reduction and minimax
//! polynomials, a few ulp); special values follow the interpreter: NaN in
//! gives NaN out, exp overflows to inf, tanh and sigmoid saturate to
//! exactly ±1 and 0/1.

// Coefficients are quoted as published (more digits than f32 keeps).
#![allow(clippy::excessive_precision)]

/// e^r - 1 - r = r²·P(r) on |r| ≤ ln2/2, P's coefficients from the
/// highest degree down (the last is ½).
pub(crate) const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5.000_000_1e-1,
];

/// ln2 in two parts (Cody–Waite): x - n·ln2 = x + n·LN2_HI + n·LN2_LO.
pub(crate) const LN2_HI: f32 = -0.693_359_4;
pub(crate) const LN2_LO: f32 = 2.121_944_4e-4;

/// The range exp is evaluated on: below it the result is 0 (through
/// denormals), above it inf.
pub(crate) const EXP_MIN: f32 = -104.0;
pub(crate) const EXP_MAX: f32 = 88.8;

/// 1.5·2^23: adding it rounds to an integer held in the low mantissa bits.
pub(crate) const ROUND_MAGIC: f32 = 12_582_912.0;

/// e^r - 1 - r = r²·Q(r) on |r| ≤ ln2/2 to 1.1e-7 relative, Q's
/// coefficients from the highest degree down: the degree-5 exp that
/// [`sigmoid`] uses. Fitted for Kiln (Lawson's weighted least squares on
/// Chebyshev points, relative error). It is enough there because the
/// sigmoid of e^{-x} with relative error δ is off by at most δ/4 in
/// absolute terms; exp itself keeps the degree-7 [`EXP_POLY`].
pub(crate) const SIGMOID_EXP_POLY: [f32; 4] = [
    8.312_050_6e-3,
    4.189_449_9e-2,
    1.666_713_3e-1,
    4.999_920_2e-1,
];

/// The range of -x that [`sigmoid`] takes e^{-x} on: at the low end
/// e^{-x} ≈ 1.6e-38 so the sigmoid is exactly 1; at the high end 2^n
/// reaches 2^128 = inf in one exponent field, so the sigmoid is exactly 0.
pub(crate) const SIGMOID_EXP_MIN: f32 = -87.0;
pub(crate) const SIGMOID_EXP_MAX: f32 = 88.8;

/// tanh x = x + x³·P(x²) for |x| < [`TANH_SMALL`] (Cephes tanhf).
pub(crate) const TANH_POLY: [f32; 5] = [
    -5.704_988_7e-3,
    2.063_908_9e-2,
    -5.373_971_6e-2,
    1.333_144_2e-1,
    -3.333_328_2e-1,
];

/// Below this |x|, tanh takes the polynomial; above, `1 - 2/(e^{2|x|}+1)`.
pub(crate) const TANH_SMALL: f32 = 0.625;

/// erf x = x·P(x²)/Q(x²) on x clamped to [-4, 4] (erf(±4) rounds to ±1
/// in f32); the rational approximation Eigen and XLA use for f32. P's and
/// Q's coefficients from the highest degree down.
pub(crate) const ERF_P: [f32; 7] = [
    -2.726_142_2e-10,
    2.770_681_4e-8,
    -2.101_024e-6,
    -5.692_506_4e-5,
    -7.349_906_3e-4,
    -2.954_600_1e-3,
    -1.609_603_3e-2,
];
pub(crate) const ERF_Q: [f32; 5] = [
    -1.456_607_2e-5,
    -2.133_740_6e-4,
    -1.682_827e-3,
    -7.373_329e-3,
    -1.426_473_9e-2,
];

/// erfc a = t·e^{-a² + P(t)}, t = 1/(1 + a/2), for a ≥ 0: Numerical
/// Recipes' erfcc Chebyshev fit (relative error 1.1e-7 everywhere), P from
/// the highest degree down.
pub(crate) const ERFC_POLY: [f32; 10] = [
    0.170_872_77,
    -0.822_152_23,
    1.488_515_9,
    -1.135_203_9,
    0.278_868_07,
    -0.186_288_06,
    0.096_784_18,
    0.374_091_96,
    1.000_023_7,
    -1.265_512_2,
];

/// Gelu (erf form) takes the erfc tail below this z = x/√2: above it,
/// 1 + erf(z) from the rational erf keeps a relative error under 3e-5.
pub(crate) const GELU_TAIL: f32 = -2.0;

#[inline(always)]
fn horner(x: f32, coef: &[f32]) -> f32 {
    let mut p = coef[0];
    for &c in &coef[1..] {
        p = p.mul_add(x, c);
    }
    p
}

/// e^x.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(EXP_MIN, EXP_MAX);
    let k = x * std::f32::consts::LOG2_E + ROUND_MAGIC;
    let n = k - ROUND_MAGIC;
    let r = n.mul_add(LN2_LO, n.mul_add(LN2_HI, x));
    let p = horner(r, &EXP_POLY).mul_add(r * r, r) + 1.0;
    // 2^n in two halves, so n from -150 to 128 stays representable.
    let ni = k.to_bits() as i32 - ROUND_MAGIC.to_bits() as i32;
    let h = ni >> 1;
    let l = ni - h;
    let pow = |e: i32| f32::from_bits(((e + 127) << 23) as u32);
    p * pow(h) * pow(l)
}

/// tanh x.
#[inline(always)]
pub(crate) fn tanh(x: f32) -> f32 {
    let ax = x.abs();
    let z2 = x * x;
    let small = (horner(z2, &TANH_POLY) * z2).mul_add(x, x);
    // 1 - 2/(e^{2|x|} + 1).
    let big = sigmoid(-(ax + ax)).mul_add(-2.0, 1.0);
    let big = if x < 0.0 { -big } else { big };
    if ax < TANH_SMALL {
        small
    } else {
        big
    }
}

/// erf x (rational form, clamped to ±1).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let r = horner(x2, &ERF_P) * x / horner(x2, &ERF_Q);
    r.clamp(-1.0, 1.0)
}

/// erfc a for a ≥ 0, with full relative precision in the tail.
#[inline(always)]
pub(crate) fn erfc_pos(a: f32) -> f32 {
    let t = 1.0 / (a * 0.5 + 1.0);
    t * exp(horner(t, &ERFC_POLY) - a * a)
}

/// Gelu (erf form) 0.5·x·(1 + erf(x/√2)) above the tail ([`GELU_TAIL`]).
#[inline(always)]
pub(crate) fn gelu_near(x: f32) -> f32 {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    x * 0.5 * (erf(z) + 1.0)
}

/// Gelu (erf form) anywhere: the bracket as erfc(-z) in the negative tail,
/// where 1 + erf(z) would cancel.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    // Both forms, then a select: branch-free, so a loop vectorizes.
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let c = erfc_pos(z.abs());
    let tail = x * 0.5 * if z < 0.0 { c } else { 2.0 - c };
    let near = gelu_near(x);
    if z < GELU_TAIL {
        tail
    } else {
        near
    }
}

/// Gelu (tanh form) 0.5·x·(1 + tanh u) = x·sigmoid(2u), u =
/// √(2/π)·(x + 0.044715·x³): no cancellation for x < 0.
#[inline(always)]
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    let c = (2.0f32 / std::f32::consts::PI).sqrt();
    let inner = x + x * x * x * 0.044715;
    x * sigmoid(inner * (2.0 * c))
}

/// 1 / (1 + e^{-x}), with e^{-x} from the degree-5
/// [`SIGMOID_EXP_POLY`], its range reduction's constant folded into an
/// FMA, an Estrin-form polynomial and one exponent-field scale: a shorter
/// dependency chain than [`exp`]'s, which is what bounds a loop of them
/// (the out-of-order window, not the FMA ports, ran out first).
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    let nx = (-x).clamp(SIGMOID_EXP_MIN, SIGMOID_EXP_MAX);
    let k = nx.mul_add(std::f32::consts::LOG2_E, ROUND_MAGIC);
    let n = k - ROUND_MAGIC;
    let r = n.mul_add(LN2_LO, n.mul_add(LN2_HI, nx));
    let r2 = r * r;
    let [q3, q2, q1, q0] = SIGMOID_EXP_POLY;
    let q = r2.mul_add(q3.mul_add(r, q2), q1.mul_add(r, q0));
    let p = q.mul_add(r2, r + 1.0);
    // 2^n for n in -126..=128; 128 sets the exponent field to inf.
    let ni = k.to_bits() as i32 - ROUND_MAGIC.to_bits() as i32;
    let e = p * f32::from_bits(((ni + 127) << 23) as u32);
    1.0 / (1.0 + e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within a few ulp of libm over the ranges that matter, exact at the
    /// saturation points, NaN through.
    #[test]
    fn close_to_libm() {
        let mut x = -90.0f32;
        while x < 88.7 {
            let rel = |a: f32, b: f32| ((a - b) / b.abs().max(f32::MIN_POSITIVE)).abs();
            assert!(rel(exp(x), x.exp()) < 4e-7 || x.exp() < 1e-37, "exp({x})");
            assert!((tanh(x) - x.tanh()).abs() < 3e-7, "tanh({x})");
            assert!(
                (sigmoid(x) - 1.0 / (1.0 + (-x).exp())).abs() < 3e-7,
                "sigmoid({x})"
            );
            x += 0.0137;
        }
        assert_eq!(tanh(30.0), 1.0);
        assert_eq!(tanh(-30.0), -1.0);
        assert_eq!(sigmoid(-200.0), 0.0);
        assert_eq!(sigmoid(200.0), 1.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan() && tanh(f32::NAN).is_nan() && sigmoid(f32::NAN).is_nan());
    }
}
