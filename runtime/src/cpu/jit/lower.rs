//! The IR → Cranelift lowering table: one arm per [`Op`], written once for
//! both widths (the f32x4 body and the scalar tail share it through [`Fb`],
//! which knows the current type). The transcendental functions live in
//! [`super::math`]; the loops that call this live in [`super::codegen`].

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, ConstantData, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;

use super::math;
use super::plan::Op;

/// A function builder at one element width: `F32` or `F32X4`.
pub(crate) struct Fb<'a, 'b> {
    pub b: &'a mut FunctionBuilder<'b>,
    pub ty: Type,
    /// The host has fused multiply-add (x86 FMA3; always on aarch64).
    pub fma: bool,
}

/// Whether the host (which the JIT targets) has fused multiply-add.
pub(crate) fn host_has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(target_arch = "aarch64")]
    {
        true
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

impl Fb<'_, '_> {
    pub fn is_vec(&self) -> bool {
        self.ty.is_vector()
    }

    /// The integer type of the same shape (i32 or i32x4).
    pub fn ity(&self) -> Type {
        if self.is_vec() {
            types::I32X4
        } else {
            types::I32
        }
    }

    /// A float constant at the current width. Vector constants live in
    /// the constant pool, where x64 folds them into the using instruction
    /// (a splat would be re-run every iteration).
    pub fn c(&mut self, x: f32) -> Value {
        if self.is_vec() {
            let bytes: Vec<u8> = (0..4).flat_map(|_| x.to_le_bytes()).collect();
            let k = self.b.func.dfg.constants.insert(ConstantData::from(bytes));
            self.b.ins().vconst(types::F32X4, k)
        } else {
            self.b.ins().f32const(x)
        }
    }

    /// An i32 constant at the current width.
    pub fn ci(&mut self, x: i32) -> Value {
        if self.is_vec() {
            let bytes: Vec<u8> = (0..4).flat_map(|_| x.to_le_bytes()).collect();
            let k = self.b.func.dfg.constants.insert(ConstantData::from(bytes));
            self.b.ins().vconst(types::I32X4, k)
        } else {
            self.b.ins().iconst(types::I32, x as i64)
        }
    }

    pub fn bits_as_int(&mut self, v: Value) -> Value {
        let t = self.ity();
        self.b.ins().bitcast(t, MemFlagsData::new(), v)
    }

    pub fn bits_as_float(&mut self, v: Value) -> Value {
        let t = self.ty;
        self.b.ins().bitcast(t, MemFlagsData::new(), v)
    }

    /// `if x cc y { a } else { b }`, lane by lane.
    pub fn sel(&mut self, cc: FloatCC, x: Value, y: Value, a: Value, b: Value) -> Value {
        let c = self.b.ins().fcmp(cc, x, y);
        if self.is_vec() {
            // fcmp gives an all-ones/all-zeros i32x4 mask.
            let t = self.ty;
            let m = self.b.ins().bitcast(t, MemFlagsData::new(), c);
            self.b.ins().bitselect(m, a, b)
        } else {
            self.b.ins().select(c, a, b)
        }
    }

    pub fn add(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fadd(a, b)
    }
    pub fn sub(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fsub(a, b)
    }
    pub fn mul(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fmul(a, b)
    }
    pub fn div(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fdiv(a, b)
    }
    /// `a·b + c`, fused when the host can (shorter dependency chains).
    pub fn mul_add(&mut self, a: Value, b: Value, c: Value) -> Value {
        if self.fma {
            self.b.ins().fma(a, b, c)
        } else {
            let t = self.mul(a, b);
            self.add(t, c)
        }
    }
    pub fn mulc(&mut self, a: Value, k: f32) -> Value {
        let k = self.c(k);
        self.mul(a, k)
    }
    pub fn addc(&mut self, a: Value, k: f32) -> Value {
        let k = self.c(k);
        self.add(a, k)
    }
    /// NaN-propagating clamp: compare-and-select (a NaN compares false and
    /// stays), cheaper on x64 than Cranelift's IEEE fmin/fmax sequences.
    pub fn clamp(&mut self, x: Value, lo: f32, hi: f32) -> Value {
        let l = self.c(lo);
        let h = self.c(hi);
        let x = self.sel(FloatCC::LessThan, x, l, l, x);
        self.sel(FloatCC::GreaterThan, x, h, h, x)
    }
    /// `coef[0]·x^(n-1) + … + coef[n-1]` by Estrin's scheme: pairs
    /// `a + b·x`, then pairs of those in x², x⁴, …, so the dependency chain
    /// is log₂ n multiply-adds deep instead of n (these kernels are
    /// latency-bound: one long chain per vector).
    pub fn poly(&mut self, x: Value, coef: &[f32]) -> Value {
        // Ascending order: terms[i] multiplies x^i.
        let asc: Vec<f32> = coef.iter().rev().copied().collect();
        let mut terms: Vec<Value> = asc
            .chunks(2)
            .map(|p| {
                let a = self.c(p[0]);
                match p.get(1) {
                    Some(&b) => {
                        let b = self.c(b);
                        self.mul_add(x, b, a)
                    }
                    None => a,
                }
            })
            .collect();
        let mut xp = x;
        while terms.len() > 1 {
            xp = self.mul(xp, xp);
            terms = terms
                .chunks(2)
                .map(|p| match p.get(1) {
                    Some(&hi) => self.mul_add(hi, xp, p[0]),
                    None => p[0],
                })
                .collect();
        }
        terms[0]
    }
}

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
