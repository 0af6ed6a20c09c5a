//! Transcendental activations of one tensor as kernel-library loops:
//! sigmoid, SiLU (`x·sigmoid(x)`), tanh, exp and GELU (erf and tanh
//! forms), at the host's widest
//! vectors (16 lanes on AVX-512) with the branch-free approximations of
//! [`super::approx`], which the generated code uses too (same constants,
//! same special values).
//!
//! Why: Cranelift generates 128-bit vectors only, and an exp is some 25
//! instructions per vector there: a conv's SiLU epilogue ran at 2-3 GB/s,
//! as long as the conv itself on YOLO's early layers. A fusion region that
//! is exactly one of these activations of its first input (what a conv or
//! matmul anchor's epilogue usually is, and a lone activation) gets this
//! loop as its entry instead of generated code; everything else keeps the
//! generated loop.

use crate::fusion_plan::{Expr, Kind, Op, Plan, Src};

use super::approx;

/// A recognized activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Activation {
    Sigmoid,
    Silu,
    Tanh,
    Exp,
    /// Erf form.
    Gelu,
    GeluTanh,
}

/// The entry signature of a flat kernel: input and output pointer arrays,
/// element range.
pub(crate) type Entry = unsafe extern "C" fn(*const *const f32, *const *mut f32, usize, usize);

impl Activation {
    /// The activation a flat elementwise plan computes: one output, equal
    /// to `act(x)` for `x` the kernel's input 0 read element by element.
    pub(crate) fn of_plan(plan: &Plan) -> Option<Activation> {
        let Kind::Elementwise { roots } = &plan.kind else {
            return None;
        };
        let [root] = roots.as_slice() else {
            return None;
        };
        if !plan.flat {
            return None;
        }
        // Input 0, walked element by element.
        let x = |e: usize| match plan.exprs.get(e) {
            Some(Expr::Leaf(l)) => plan
                .leaves
                .get(*l)
                .is_some_and(|leaf| leaf.src == Src::Input(0) && leaf.inner_stride == 1),
            _ => false,
        };
        let unary = |e: usize, want: Op| match plan.exprs.get(e) {
            Some(Expr::Node(op, args)) if *op == want && args.len() == 1 => x(args[0]),
            _ => false,
        };
        match plan.exprs.get(*root)? {
            Expr::Node(Op::Sigmoid, a) if a.len() == 1 && x(a[0]) => Some(Activation::Sigmoid),
            Expr::Node(Op::Tanh, a) if a.len() == 1 && x(a[0]) => Some(Activation::Tanh),
            Expr::Node(Op::Exp, a) if a.len() == 1 && x(a[0]) => Some(Activation::Exp),
            Expr::Node(Op::Gelu, a) if a.len() == 1 && x(a[0]) => Some(Activation::Gelu),
            Expr::Node(Op::GeluTanh, a) if a.len() == 1 && x(a[0]) => Some(Activation::GeluTanh),
            Expr::Node(Op::Mul, a) if a.len() == 2 => {
                let silu =
                    (x(a[0]) && unary(a[1], Op::Sigmoid)) || (x(a[1]) && unary(a[0], Op::Sigmoid));
                silu.then_some(Activation::Silu)
            }
            _ => None,
        }
    }

    /// The kernel entry computing this activation.
    pub(crate) fn entry(self) -> Entry {
        match self {
            Activation::Sigmoid => sigmoid_entry,
            Activation::Silu => silu_entry,
            Activation::Tanh => tanh_entry,
            Activation::Exp => exp_entry,
            Activation::Gelu => gelu_entry,
            Activation::GeluTanh => gelu_tanh_entry,
        }
    }
}

/// Elements per step of the GELU loop, which picks its form per chunk.
const CHUNK: usize = 512;

/// Applies `act` to `v` in place (also the tile store's row pass:
/// [`super::kernels::smallk`]).
///
/// Plain `for` loops, not `for_each` closures: a closure the optimizer
/// leaves out of line is compiled for the crate's baseline ISA, where
/// `mul_add` is a call to the C library's software `fmaf` (that made the
/// AVX2 tile store's Gelu run at 0.3 GB/s).
#[inline(always)]
pub(crate) fn apply_in_place(act: Activation, v: &mut [f32]) {
    match act {
        Activation::Sigmoid => {
            for v in v.iter_mut() {
                *v = approx::sigmoid(*v);
            }
        }
        Activation::Silu => {
            for v in v.iter_mut() {
                *v *= approx::sigmoid(*v);
            }
        }
        Activation::Tanh => {
            for v in v.iter_mut() {
                *v = approx::tanh(*v);
            }
        }
        Activation::Exp => {
            for v in v.iter_mut() {
                *v = approx::exp(*v);
            }
        }
        Activation::GeluTanh => {
            for v in v.iter_mut() {
                *v = approx::gelu_tanh(*v);
            }
        }
        Activation::Gelu => {
            for c in v.chunks_mut(CHUNK) {
                // The near form for every lane; where any lane of the
                // chunk lies in the negative tail, the tail form for
                // every lane too, selected per lane (both vectorized).
                let mut tail = false;
                for &v in c.iter() {
                    tail |= v * std::f32::consts::FRAC_1_SQRT_2 < approx::GELU_TAIL;
                }
                if tail {
                    for v in c.iter_mut() {
                        *v = approx::gelu(*v);
                    }
                } else {
                    for v in c.iter_mut() {
                        *v = approx::gelu_near(*v);
                    }
                }
            }
        }
    }
}

crate::cpu::simd_fn! {
    /// `y[i] = act(x[i])` for `i` in `lo..hi`. Epilogues and in-place
    /// steps pass `y == x`: that runs on one slice, in place. Separate
    /// arrays are copied a chunk at a time first (the copy stays in L1),
    /// so the loop is the same one: a loop over two raw pointers that may
    /// alias would not vectorize, or would run scalar code at run time for
    /// exactly the aliased case.
    fn apply(act: Activation, x: *const f32, y: *mut f32, lo: usize, hi: usize) {
        let mut i = lo;
        while i < hi {
            let n = if std::ptr::eq(x, y) { hi - i } else { CHUNK.min(hi - i) };
            // SAFETY: the entry's contract: x and y are valid for the
            // kernel's elements, lo..hi among them, and y is either x or
            // an array of its own (an elementwise step's output never
            // overlaps its input partially; `copy` would allow it).
            let v = unsafe {
                if !std::ptr::eq(x, y) {
                    std::ptr::copy(x.add(i), y.add(i), n);
                }
                std::slice::from_raw_parts_mut(y.add(i), n)
            };
            apply_in_place(act, v);
            i += n;
        }
    }
}

macro_rules! entries {
    ($($name:ident => $act:expr),*) => {$(
        /// # Safety
        /// `ins[0]` and `outs[0]` are valid for elements `lo..hi` (the
        /// output may alias the input).
        unsafe extern "C" fn $name(ins: *const *const f32, outs: *const *mut f32, lo: usize, hi: usize) {
            // SAFETY: the kernel contract: one input and one output
            // pointer, each valid for the kernel's elements.
            let (x, y) = unsafe { (*ins, *outs) };
            apply($act, x, y, lo, hi);
        }
    )*};
}

entries!(
    sigmoid_entry => Activation::Sigmoid,
    silu_entry => Activation::Silu,
    tanh_entry => Activation::Tanh,
    exp_entry => Activation::Exp,
    gelu_entry => Activation::Gelu,
    gelu_tanh_entry => Activation::GeluTanh
);

#[cfg(test)]
mod speed {
    /// Nanoseconds per element of each library activation over 1M
    /// values in L2-missing arrays (`cargo test --release -p kiln-runtime
    /// activation_throughput -- --ignored --nocapture`). On the Zen 3 VM
    /// (2026-12-07): exp 0.85-0.9, tanh 1.0 (was 1.6-1.8), sigmoid
    /// 0.6-0.7 and SiLU 0.6 (were 1.1-1.3). The loops are bound by the
    /// length of their dependency chains, not by the FMA ports (a 40-FLOP
    /// chain of 70 cycles keeps only 3-4 vectors in flight): sigmoid's
    /// shorter exp and running in place instead of through a stack buffer
    /// are what halved it.
    #[test]
    #[ignore]
    fn activation_throughput() {
        use super::Activation;
        let n = 1 << 20;
        let x: Vec<f32> = (0..n)
            .map(|i| ((i % 1000) as f32 - 500.0) / 250.0)
            .collect();
        let mut y = vec![0f32; n];
        for act in [
            Activation::Exp,
            Activation::Sigmoid,
            Activation::Silu,
            Activation::Tanh,
        ] {
            let mut best = f64::MAX;
            for _ in 0..20 {
                let t = std::time::Instant::now();
                super::apply(act, x.as_ptr(), y.as_mut_ptr(), 0, n);
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!("{act:?}: {:.3} ns/elem", best * 1e9 / n as f64);
        }
    }
}
