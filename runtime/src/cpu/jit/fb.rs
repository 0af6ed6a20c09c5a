//! The function builder at one element width ([`Fb`]: `F32` or `F32X4`)
//! and the arithmetic helpers it emits (constants, select, clamp,
//! multiply-add, polynomials), plus whether the host has FMA.
//!
//! It is a module of its own so that dependencies form a chain: the
//! lowering table ([`super::lower`]) calls the transcendental functions
//! ([`super::math`]), and both emit through `Fb`, so both import this and
//! this imports neither (`fb` ◄ `math` ◄ `lower` ◄ `codegen`).

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{
    types, AbiParam, ConstantData, InstBuilder, MemFlagsData, Signature, Type, Value,
};
use cranelift_frontend::FunctionBuilder;

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
        // `x > y` asked as `y < x`: x64 lowers `lt ? a : b` selects of the
        // compared values to one `minps`/`maxps`, a `gt` to compare and blend.
        let c = match cc {
            FloatCC::GreaterThan => self.b.ins().fcmp(FloatCC::LessThan, y, x),
            _ => self.b.ins().fcmp(cc, x, y),
        };
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

    /// `host(data, args...)` lane by lane: a call of the host function at
    /// address `host` (`extern "C"`, taking a pointer-sized `data` and one
    /// f32 per argument, returning f32) for each lane. For the functions
    /// with no inline form here, whose exact f64 definition the
    /// interpreter's tables hold; the f32x4 body keeps its shape (lanes
    /// are extracted, computed and inserted back) at a call per lane.
    pub fn call_host(&mut self, host: usize, data: usize, args: &[Value]) -> Value {
        let mut sig = Signature::new(self.b.func.signature.call_conv);
        sig.params.push(AbiParam::new(types::I64));
        sig.params
            .extend(args.iter().map(|_| AbiParam::new(types::F32)));
        sig.returns.push(AbiParam::new(types::F32));
        let sig = self.b.import_signature(sig);
        let lanes = if self.is_vec() { 4 } else { 1 };
        let mut out = None;
        for lane in 0..lanes {
            let callee = self.b.ins().iconst(types::I64, host as i64);
            let mut a = vec![self.b.ins().iconst(types::I64, data as i64)];
            for &v in args {
                a.push(if self.is_vec() {
                    self.b.ins().extractlane(v, lane)
                } else {
                    v
                });
            }
            let call = self.b.ins().call_indirect(sig, callee, &a);
            let r = self.b.inst_results(call)[0];
            out = Some(match out {
                None if self.is_vec() => self.b.ins().splat(types::F32X4, r),
                None => r,
                Some(v) => self.b.ins().insertlane(v, r, lane),
            });
        }
        out.expect("at least one lane")
    }
}
