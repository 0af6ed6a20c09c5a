//! The loop-building machinery: turns a [`Plan`] into one native function
//!
//! ```text
//! extern "C" fn(inputs: *const *const f32, outputs: *const *mut f32, start: usize, end: usize)
//! ```
//!
//! that computes rows `start..end` (or, for a flat elementwise plan,
//! elements `start..end`). Each row runs an f32x4 loop and a scalar tail
//! over the inner run; what an element computes comes from the lowering
//! table in [`super::lower`].
//!
//! In-place use (an output aliasing a same-shape input) is safe by
//! construction: an iteration evaluates everything it needs, loads
//! included, before its stores, and touches only its own elements;
//! one-value-per-row operands are loaded at the start of the row.
//! Reductions first copy the row's input values into the output row and
//! then only read the output row.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, InstBuilder, MemFlagsData, Signature, StackSlot, StackSlotData, StackSlotKind,
    Type, Value,
};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};

use super::fb::{host_has_fma, Fb};
use super::lower::lower;
use super::math;
use super::target::TargetCpu;
use crate::fusion_plan::{Expr, Kind, Plan, RedOp, Src};

/// A finished module and the address of its one function.
pub(crate) struct Compiled {
    pub module: JITModule,
    pub entry: *const u8,
}

/// A leaf's state for the current row.
#[derive(Clone, Copy)]
struct LeafRow {
    /// Address of the leaf's element at the start of the row.
    ptr: Value,
    /// Walks the inner run (else one value per row, loaded up front).
    contig: bool,
    scalar: Option<Value>,
    splat: Option<Value>,
}

fn flags() -> MemFlagsData {
    // Unaligned, possibly aliasing: plain flags keep loads and stores ordered.
    MemFlagsData::new()
}

struct Gen<'p> {
    plan: &'p Plan,
    fma: bool,
    /// Code for this CPU (not the portable baseline): rows may call the
    /// host's kernels, which pick their width from the CPU.
    native: bool,
    ptr: Type,
    used: Vec<bool>,
}

impl Gen<'_> {
    /// The value of expression `e` at byte offset `ioff` of the run.
    fn eval(
        &self,
        f: &mut Fb,
        rows: &[LeafRow],
        ioff: Value,
        memo: &mut [Option<Value>],
        e: usize,
    ) -> Value {
        if let Some(v) = memo[e] {
            return v;
        }
        let v = match &self.plan.exprs[e] {
            Expr::Leaf(k) => {
                let l = rows[*k];
                if l.contig {
                    let a = f.b.ins().iadd(l.ptr, ioff);
                    let ty = f.ty;
                    f.b.ins().load(ty, flags(), a, 0)
                } else if f.is_vec() {
                    l.splat.unwrap_or(l.ptr)
                } else {
                    l.scalar.unwrap_or(l.ptr)
                }
            }
            Expr::Imm(x) => f.c(*x),
            Expr::Node(op, args) => {
                let vals: Vec<Value> = args
                    .iter()
                    .map(|&a| self.eval(f, rows, ioff, memo, a))
                    .collect();
                lower(f, op, &vals)
            }
        };
        memo[e] = Some(v);
        v
    }

    /// Leaf row states for a row whose leaves start at element offsets `offs`.
    fn leaf_rows(&self, b: &mut FunctionBuilder, bases: &[Value], offs: &[Value]) -> Vec<LeafRow> {
        let mut out = Vec::new();
        for (k, l) in self.plan.leaves.iter().enumerate() {
            let off = b.ins().ishl_imm_s(offs[k], 2);
            let ptr = b.ins().iadd(bases[k], off);
            let contig = l.inner_stride == 1;
            let (scalar, splat) = if !contig && self.used[k] {
                let s = b.ins().load(types::F32, flags(), ptr, 0);
                (Some(s), Some(b.ins().splat(types::F32X4, s)))
            } else {
                (None, None)
            };
            out.push(LeafRow {
                ptr,
                contig,
                scalar,
                splat,
            });
        }
        out
    }

    /// Element offsets of every leaf at the start of row `r`.
    fn row_offsets(&self, b: &mut FunctionBuilder, r: Value) -> Vec<Value> {
        let outer = &self.plan.outer;
        self.plan
            .leaves
            .iter()
            .map(|l| {
                let mut off = b.ins().iconst(self.ptr, 0);
                let mut div: usize = outer.iter().product();
                for (j, &size) in outer.iter().enumerate() {
                    div /= size.max(1);
                    let st = l.outer_strides[j];
                    if st == 0 {
                        continue;
                    }
                    let mut idx = r;
                    if div > 1 {
                        let d = b.ins().iconst(self.ptr, div as i64);
                        idx = b.ins().udiv(idx, d);
                    }
                    if j > 0 {
                        let s = b.ins().iconst(self.ptr, size as i64);
                        idx = b.ins().urem(idx, s);
                    }
                    let t = b.ins().imul_imm_s(idx, st as i64);
                    off = b.ins().iadd(off, t);
                }
                off
            })
            .collect()
    }
}

/// `i` from its current value while `i + step <= n`, `body(i)` each time.
fn counted(
    b: &mut FunctionBuilder,
    i_var: Variable,
    n: Value,
    step: i64,
    body: &mut dyn FnMut(&mut FunctionBuilder, Value),
) {
    let header = b.create_block();
    let bodyb = b.create_block();
    let exit = b.create_block();
    b.ins().jump(header, &[]);
    b.switch_to_block(header);
    let i = b.use_var(i_var);
    let next = b.ins().iadd_imm_s(i, step);
    let c = b.ins().icmp(IntCC::SignedLessThanOrEqual, next, n);
    b.ins().brif(c, bodyb, &[], exit, &[]);
    b.switch_to_block(bodyb);
    let i = b.use_var(i_var);
    body(b, i);
    let i = b.use_var(i_var);
    let next = b.ins().iadd_imm_s(i, step);
    b.def_var(i_var, next);
    b.ins().jump(header, &[]);
    b.switch_to_block(exit);
}

/// A run of `n` elements: the f32x4 loop (two vectors an iteration),
/// then the scalar tail; `body` gets the builder at the loop's width, the
/// byte offset of the element and which copy of the unrolled body it is
/// (so that accumulators keep one chain per copy).
fn run(
    b: &mut FunctionBuilder,
    ptr: Type,
    fma: bool,
    n: Value,
    body: &mut dyn FnMut(&mut Fb, Value, usize),
) {
    let i_var = b.declare_var(ptr);
    let z = b.ins().iconst(ptr, 0);
    b.def_var(i_var, z);
    for (ty, step, copies) in [
        (types::F32X4, 8, 2),
        (types::F32X4, 4, 1),
        (types::F32, 1, 1),
    ] {
        counted(b, i_var, n, step, &mut |b, i| {
            let ioff = b.ins().ishl_imm_s(i, 2);
            let mut f = Fb { b, ty, fma };
            for c in 0..copies {
                let o = f.b.ins().iadd_imm_s(ioff, 16 * c);
                body(&mut f, o, c as usize);
            }
        });
    }
}

/// An accumulator carried through a run: one vector variable per copy of
/// the unrolled body (a single one made every update wait for the last:
/// a row max's NaN-exact `fmax` is eight instructions deep), and the
/// scalar tail's.
struct Acc {
    v: [Variable; 2],
    s: Variable,
}

impl Acc {
    fn new(b: &mut FunctionBuilder, init: f32) -> Acc {
        let v = [b.declare_var(types::F32X4), b.declare_var(types::F32X4)];
        let s = b.declare_var(types::F32);
        let x = b.ins().f32const(init);
        let xv = b.ins().splat(types::F32X4, x);
        for v in v {
            b.def_var(v, xv);
        }
        b.def_var(s, x);
        Acc { v, s }
    }

    /// Fold `x` into the accumulator of `f`'s width and body copy `copy`.
    fn update(&self, f: &mut Fb, x: Value, op: Fold, copy: usize) {
        let var = if f.is_vec() { self.v[copy % 2] } else { self.s };
        let a = f.b.use_var(var);
        let r = combine(f, a, x, op);
        f.b.def_var(var, r);
    }

    /// The vector lanes and the scalar tail folded into one scalar.
    fn total(&self, b: &mut FunctionBuilder, op: Fold, fma: bool) -> Value {
        let v0 = b.use_var(self.v[0]);
        let v1 = b.use_var(self.v[1]);
        let s = b.use_var(self.s);
        let mut f = Fb {
            b,
            ty: types::F32X4,
            fma,
        };
        let v = combine(&mut f, v0, v1, op);
        f.ty = types::F32;
        let mut acc = s;
        for lane in 0..4u8 {
            let x = f.b.ins().extractlane(v, lane);
            acc = combine(&mut f, acc, x, op);
        }
        acc
    }
}

/// How an accumulator folds in a value.
#[derive(Clone, Copy, PartialEq)]
enum Fold {
    Sum,
    /// NaN-exact: a NaN anywhere makes the result NaN.
    Max,
    /// `x > a ? x : a` (x86's `maxps`), one instruction where `Max` is
    /// eight: a NaN `x` is passed over. Softmax shifts by the row max
    /// only to keep `exp` finite, and a NaN in the row still reaches
    /// every output through the sum.
    MaxPassingNan,
}

impl From<RedOp> for Fold {
    fn from(op: RedOp) -> Fold {
        match op {
            RedOp::Sum | RedOp::Mean => Fold::Sum,
            RedOp::Max => Fold::Max,
        }
    }
}

/// The accumulated `a` with a new `x` folded in.
fn combine(f: &mut Fb, a: Value, x: Value, op: Fold) -> Value {
    match op {
        Fold::Max => f.b.ins().fmax(a, x),
        Fold::MaxPassingNan => f.sel(FloatCC::LessThan, a, x, x, a),
        Fold::Sum => f.b.ins().fadd(a, x),
    }
}

/// A per-row scalar (a softmax's max and 1/sum, a layer norm's mean and
/// 1/sd) that the row's later loops read, parked in a stack slot, alone
/// and splatted, and loaded back at each use. Left as a pure value,
/// Cranelift's egraph elaboration rebuilt it inside every iteration of
/// the loops that use it (the horizontal reduction, the finiteness test,
/// even the division): a third of a 128-wide softmax row's time.
struct RowScalar {
    slot: StackSlot,
    ptr: Type,
}

impl RowScalar {
    fn park(b: &mut FunctionBuilder, ptr: Type, s: Value) -> RowScalar {
        let data = StackSlotData::new(StackSlotKind::ExplicitSlot, 32, 4);
        let slot = b.create_sized_stack_slot(data);
        b.ins().stack_store(ptr, s, slot, 0);
        let v = b.ins().splat(types::F32X4, s);
        b.ins().stack_store(ptr, v, slot, 16);
        RowScalar { slot, ptr }
    }

    /// The scalar at the width of `f`.
    fn get(&self, f: &mut Fb) -> Value {
        if f.is_vec() {
            f.b.ins().stack_load(self.ptr, types::F32X4, self.slot, 16)
        } else {
            f.b.ins().stack_load(self.ptr, types::F32, self.slot, 0)
        }
    }
}

pub(crate) fn compile(
    plan: &Plan,
    const_ptrs: &[usize],
    target: TargetCpu,
) -> Result<Compiled, String> {
    let native = target == TargetCpu::Native;
    let mut fl = settings::builder();
    let set = |fl: &mut settings::Builder, k: &str, v: &str| {
        fl.set(k, v)
            .map_err(|e| format!("cranelift setting {k}: {e}"))
    };
    set(&mut fl, "opt_level", "speed")?;
    set(&mut fl, "is_pic", "false")?;
    set(&mut fl, "use_colocated_libcalls", "false")?;
    let isa = cranelift_native::builder_with_options(native)
        .map_err(|e| format!("unsupported: host machine: {e}"))?
        .finish(settings::Flags::new(fl))
        .map_err(|e| format!("cranelift isa: {e}"))?;
    let mut module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
    let ptr = module.target_config().pointer_type();
    let mut ctx = module.make_context();
    for _ in 0..4 {
        ctx.func.signature.params.push(AbiParam::new(ptr));
    }
    let used = plan.leaves.iter().map(|l| l.used).collect();
    let g = Gen {
        plan,
        ptr,
        used,
        fma: native && host_has_fma(),
        native,
    };
    let mut fctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let p = b.block_params(entry).to_vec();
        let (ins, outs, start, end) = (p[0], p[1], p[2], p[3]);
        let bases: Vec<Value> = plan
            .leaves
            .iter()
            .map(|l| match l.src {
                Src::Input(i) => b.ins().load(ptr, flags(), ins, (i * 8) as i32),
                Src::Const(k) => b.ins().iconst(ptr, const_ptrs[k] as i64),
            })
            .collect();
        let n_out = plan.out_shapes.len();
        let out_bases: Vec<Value> = (0..n_out)
            .map(|j| b.ins().load(ptr, flags(), outs, (j * 8) as i32))
            .collect();
        if plan.flat {
            // One run: elements start..end.
            let n = b.ins().isub(end, start);
            let offs: Vec<Value> = plan
                .leaves
                .iter()
                .map(|l| {
                    if l.inner_stride == 1 {
                        start
                    } else {
                        b.ins().iconst(ptr, 0)
                    }
                })
                .collect();
            let rows = g.leaf_rows(&mut b, &bases, &offs);
            let soff = b.ins().ishl_imm_s(start, 2);
            let outs: Vec<Value> = out_bases.iter().map(|&o| b.ins().iadd(o, soff)).collect();
            g.row_body(&mut b, &rows, &outs, n);
        } else {
            let r_var = b.declare_var(ptr);
            b.def_var(r_var, start);
            counted(&mut b, r_var, end, 1, &mut |b, r| {
                let offs = g.row_offsets(b, r);
                let rows = g.leaf_rows(b, &bases, &offs);
                let per_row = match plan.kind {
                    Kind::Reduce { .. } => 1,
                    _ => plan.inner,
                };
                let o = b.ins().imul_imm_s(r, (per_row * 4) as i64);
                let outs: Vec<Value> = out_bases.iter().map(|&ob| b.ins().iadd(ob, o)).collect();
                let n = b.ins().iconst(ptr, plan.inner as i64);
                g.row_body(b, &rows, &outs, n);
            });
        }
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(module.target_config());
    }
    let id = module
        .declare_function("kiln_jit_kernel", Linkage::Local, &ctx.func.signature)
        .map_err(|e| format!("cranelift declare: {e}"))?;
    // KILN_JIT_DISASM=1 prints each kernel's machine code to stderr: the
    // way to see what the lowering table turned into.
    ctx.set_disasm(std::env::var_os("KILN_JIT_DISASM").is_some());
    module
        .define_function(id, &mut ctx)
        .map_err(|e| format!("cranelift compile: {e:?}"))?;
    if let Some(d) = ctx.compiled_code().and_then(|c| c.vcode.as_ref()) {
        eprintln!("{d}");
    }
    module.clear_context(&mut ctx);
    module
        .finalize_definitions()
        .map_err(|e| format!("cranelift finalize: {e}"))?;
    let entry = module.get_finalized_function(id);
    Ok(Compiled { module, entry })
}

impl Gen<'_> {
    /// One row (or the flat run) of `n` elements; `outs` point at the
    /// row's first output element.
    fn row_body(&self, b: &mut FunctionBuilder, rows: &[LeafRow], outs: &[Value], n: Value) {
        let nx = self.plan.exprs.len();
        let store = |f: &mut Fb, v: Value, base: Value, ioff: Value| {
            let a = f.b.ins().iadd(base, ioff);
            f.b.ins().store(flags(), v, a, 0);
        };
        let load = |f: &mut Fb, base: Value, ioff: Value| {
            let a = f.b.ins().iadd(base, ioff);
            let ty = f.ty;
            f.b.ins().load(ty, flags(), a, 0)
        };
        // An empty row's mean is 0 · inf = NaN, as numpy's (and the interpreter's) 0/0.
        let inv_n = 1.0 / self.plan.inner as f32;
        match &self.plan.kind {
            Kind::Elementwise { roots } => {
                run(b, self.ptr, self.fma, n, &mut |f, ioff, _| {
                    let mut memo = vec![None; nx];
                    // Evaluate (and load) everything before the first store.
                    let vals: Vec<Value> = roots
                        .iter()
                        .map(|&r| self.eval(f, rows, ioff, &mut memo, r))
                        .collect();
                    for (v, &o) in vals.into_iter().zip(outs) {
                        store(f, v, o, ioff);
                    }
                });
            }
            Kind::Reduce { x, op } => {
                let acc = Acc::new(
                    b,
                    if *op == RedOp::Max {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    },
                );
                run(b, self.ptr, self.fma, n, &mut |f, ioff, copy| {
                    let mut memo = vec![None; nx];
                    let v = self.eval(f, rows, ioff, &mut memo, *x);
                    acc.update(f, v, (*op).into(), copy);
                });
                let mut t = acc.total(b, (*op).into(), self.fma);
                if *op == RedOp::Mean {
                    let k = b.ins().f32const(inv_n);
                    t = b.ins().fmul(t, k);
                }
                b.ins().store(flags(), t, outs[0], 0);
            }
            Kind::Softmax { x, log } => {
                let out = outs[0];
                let mx = Acc::new(b, f32::NEG_INFINITY);
                run(b, self.ptr, self.fma, n, &mut |f, ioff, copy| {
                    let mut memo = vec![None; nx];
                    let v = self.eval(f, rows, ioff, &mut memo, *x);
                    store(f, v, out, ioff);
                    mx.update(f, v, Fold::MaxPassingNan, copy);
                });
                let m = mx.total(b, Fold::MaxPassingNan, self.fma);
                // Shift by the max only when it is finite (interpreter rule).
                let d = b.ins().fsub(m, m);
                let z = b.ins().f32const(0.0);
                let fin = b.ins().fcmp(FloatCC::Equal, d, z);
                let shift = b.ins().select(fin, m, z);
                if self.native {
                    // The exp, sum and scaling at the CPU's full width.
                    let mut sig = Signature::new(b.func.signature.call_conv);
                    sig.params.push(AbiParam::new(self.ptr));
                    sig.params.push(AbiParam::new(self.ptr));
                    sig.params.push(AbiParam::new(types::F32));
                    sig.params.push(AbiParam::new(types::I32));
                    let sig = b.import_signature(sig);
                    let host: unsafe extern "C" fn(*mut f32, usize, f32, u32) =
                        crate::cpu::reduce::softmax_row_host;
                    let callee = b.ins().iconst(self.ptr, host as usize as i64);
                    let lg = b.ins().iconst(types::I32, i64::from(*log));
                    b.ins().call_indirect(sig, callee, &[out, n, shift, lg]);
                    return;
                }
                let shift = RowScalar::park(b, self.ptr, shift);
                let sum = Acc::new(b, 0.0);
                let log = *log;
                run(b, self.ptr, self.fma, n, &mut |f, ioff, copy| {
                    let v = load(f, out, ioff);
                    let s = shift.get(f);
                    let d = f.sub(v, s);
                    let e = math::exp(f, d);
                    if !log {
                        store(f, e, out, ioff);
                    }
                    sum.update(f, e, Fold::Sum, copy);
                });
                let s = sum.total(b, Fold::Sum, self.fma);
                let k = if log {
                    let mut f = Fb {
                        b,
                        ty: types::F32,
                        fma: self.fma,
                    };
                    math::log(&mut f, s)
                } else {
                    let one = b.ins().f32const(1.0);
                    b.ins().fdiv(one, s)
                };
                let k = RowScalar::park(b, self.ptr, k);
                run(b, self.ptr, self.fma, n, &mut |f, ioff, _| {
                    let v = load(f, out, ioff);
                    let kk = k.get(f);
                    let y = if log {
                        let s = shift.get(f);
                        let d = f.sub(v, s);
                        f.sub(d, kk)
                    } else {
                        f.mul(v, kk)
                    };
                    store(f, y, out, ioff);
                });
            }
            Kind::LayerNorm {
                x,
                scale,
                bias,
                eps,
            } => {
                let out = outs[0];
                let sum = Acc::new(b, 0.0);
                run(b, self.ptr, self.fma, n, &mut |f, ioff, copy| {
                    let mut memo = vec![None; nx];
                    let v = self.eval(f, rows, ioff, &mut memo, *x);
                    store(f, v, out, ioff);
                    sum.update(f, v, Fold::Sum, copy);
                });
                let s = sum.total(b, Fold::Sum, self.fma);
                let k = b.ins().f32const(inv_n);
                let mean = b.ins().fmul(s, k);
                let mean = RowScalar::park(b, self.ptr, mean);
                let sq = Acc::new(b, 0.0);
                run(b, self.ptr, self.fma, n, &mut |f, ioff, copy| {
                    let v = load(f, out, ioff);
                    let m = mean.get(f);
                    let d = f.sub(v, m);
                    let d2 = f.mul(d, d);
                    sq.update(f, d2, Fold::Sum, copy);
                });
                let s2 = sq.total(b, Fold::Sum, self.fma);
                let var = b.ins().fmul(s2, k);
                let e = b.ins().f32const(*eps);
                let ve = b.ins().fadd(var, e);
                let sd = b.ins().sqrt(ve);
                let one = b.ins().f32const(1.0);
                let inv = b.ins().fdiv(one, sd);
                let inv = RowScalar::park(b, self.ptr, inv);
                run(b, self.ptr, self.fma, n, &mut |f, ioff, _| {
                    let mut memo = vec![None; nx];
                    let v = load(f, out, ioff);
                    let m = mean.get(f);
                    let iv = inv.get(f);
                    let d = f.sub(v, m);
                    let y = f.mul(d, iv);
                    let sc = self.eval(f, rows, ioff, &mut memo, *scale);
                    let mut y = f.mul(y, sc);
                    if let Some(bi) = bias {
                        let bv = self.eval(f, rows, ioff, &mut memo, *bi);
                        y = f.add(y, bv);
                    }
                    store(f, y, out, ioff);
                });
            }
        }
    }
}
