//! Cranelift code generation for fusion regions: elementwise DAGs, reductions and epilogues as native loops.
//!
//! [`compile_region`] takes a closed region (a `kiln.Fusion` body, or an
//! epilogue body without its leading MatMul/Gemm/Conv) with static input
//! shapes and returns a [`JitKernel`]: one native function that walks the
//! output in rows, each row an f32x4 loop plus a scalar tail, every operand
//! indexed with its own broadcast strides. A trailing Softmax, LogSoftmax,
//! LayerNormalization or ReduceSum/Mean/Max over the trailing axes runs per
//! row with its producers evaluated inline. Anything else is
//! `Err("unsupported: ...")`, and the caller interprets that region.
//!
//! - `crate::fusion_plan` (shared with the GPU's WGSL generator): region →
//!   shapes, expression DAG, collapsed iteration space.
//! - `fb.rs`: the function builder at one width (`Fb`) and its helpers.
//! - `lower.rs`: the IR op → Cranelift instruction table.
//! - `math.rs`: inline exp/log/tanh/sigmoid/erf/softplus polynomials.
//! - `codegen.rs`: the loops, the reductions, the JIT module.
//! - `target.rs`: [`TargetCpu`], the instruction set to generate for.
//!
//! They form a chain: `fb` and `target` import no sibling; `math`
//! imports `fb`; `lower` imports `fb`, `math` and the plan; `codegen` all of
//! those; this file the plan, `codegen` and `target`.

mod codegen;
mod fb;
mod lower;
mod math;
mod target;
#[cfg(test)]
mod tests;

use cranelift_jit::JITModule;
use rayon::prelude::*;

pub use target::TargetCpu;

/// Below this many output elements one thread does the whole kernel.
const PARALLEL_MIN: usize = 1 << 16;

type EntryFn = unsafe extern "C" fn(*const *const f32, *const *mut f32, usize, usize);

/// A compiled region: its machine code (kept alive by the owned module), the
/// constants it reads and the shapes it was compiled for.
pub struct JitKernel {
    module: Option<JITModule>,
    entry: EntryFn,
    /// Constant tensors the code reads through embedded addresses; boxed so
    /// that the addresses stay put when the kernel moves.
    _consts: Vec<Box<[f32]>>,
    input_lens: Vec<usize>,
    output_shapes: Vec<Vec<usize>>,
    describe: String,
    /// Rows (or elements, for a flat kernel) to split across threads.
    units: usize,
    flat: bool,
    total: usize,
}

// SAFETY: (not auto-derived because of the module's and the entry's raw
// pointers) the kernel owns its module and constants outright, and neither
// is tied to the thread that built them: the code is plain executable
// memory, freed in `drop` by whichever thread drops the kernel.
unsafe impl Send for JitKernel {}
// SAFETY: after `finalize_definitions` the module's code and the constants
// are immutable; `&self` methods only read them and call the function,
// which writes only to the caller's output buffers (whose exclusivity the
// callers' contracts cover), so concurrent shared use is sound.
unsafe impl Sync for JitKernel {}

impl Drop for JitKernel {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: the function pointer is private to this kernel, which
            // is being dropped, so nothing can call the code any more.
            unsafe { m.free_memory() };
        }
    }
}

impl std::fmt::Debug for JitKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitKernel")
            .field("describe", &self.describe)
            .field("output_shapes", &self.output_shapes)
            .finish()
    }
}

/// Compile `body` for inputs of the given static shapes (`input_shapes[i]`
/// is the shape of `body.inputs[i]`). Every input, output and computed value
/// must be an f32 tensor; constants are embedded.
pub fn compile_region(
    m: &kiln_ir::Module,
    body: &kiln_ir::Region,
    input_shapes: &[Vec<usize>],
) -> Result<JitKernel, String> {
    compile_region_for(m, body, input_shapes, TargetCpu::Native)
}

/// [`compile_region`] for a chosen instruction set.
pub fn compile_region_for(
    m: &kiln_ir::Module,
    body: &kiln_ir::Region,
    input_shapes: &[Vec<usize>],
    target: TargetCpu,
) -> Result<JitKernel, String> {
    let plan = crate::fusion_plan::plan(m, body, input_shapes)?;
    let consts: Vec<Box<[f32]>> = plan
        .consts
        .iter()
        .map(|c| c.clone().into_boxed_slice())
        .collect();
    let ptrs: Vec<usize> = consts.iter().map(|c| c.as_ptr() as usize).collect();
    // A lone transcendental activation of input 0 runs the kernel
    // library's loop at full vector width (`cpu::activation`); on the
    // baseline target too, which the library loop also has.
    let library = crate::cpu::activation::Activation::of_plan(&plan);
    let (module, entry): (Option<JITModule>, EntryFn) = match library {
        Some(act) => (None, act.entry()),
        None => {
            let compiled = codegen::compile(&plan, &ptrs, target)?;
            // SAFETY: the function was built with exactly this signature
            // (four pointer-sized parameters, no results) in the host
            // calling convention.
            let entry: EntryFn = unsafe { std::mem::transmute(compiled.entry) };
            (Some(compiled.module), entry)
        }
    };
    let rows = plan.rows();
    // Nothing to compute without elements, except a reduction's empty-row
    // results (sum 0, max -inf).
    let reduce = matches!(plan.kind, crate::fusion_plan::Kind::Reduce { .. });
    let units = match (rows * plan.inner == 0 && !reduce, plan.flat) {
        (true, _) => 0,
        (false, true) => plan.inner,
        (false, false) => rows,
    };
    Ok(JitKernel {
        module,
        entry,
        _consts: consts,
        input_lens: input_shapes.iter().map(|s| s.iter().product()).collect(),
        units,
        flat: plan.flat,
        total: rows * plan.inner,
        output_shapes: plan.out_shapes,
        describe: plan.describe,
    })
}

/// Raw pointer arrays, shared read-only by the worker threads.
struct Args {
    ins: *const *const f32,
    outs: *const *mut f32,
}

// SAFETY: `Args` only hands `run_raw`'s two pointer arrays to its workers:
// the arrays (borrowed by `run_raw`) and the buffers they point to outlive
// the parallel loop, the arrays are only read, and the workers write
// disjoint row/element ranges of the outputs.
unsafe impl Sync for Args {}

impl JitKernel {
    pub fn output_shapes(&self) -> &[Vec<usize>] {
        &self.output_shapes
    }

    /// Element counts of the inputs, in order.
    pub fn input_lens(&self) -> &[usize] {
        &self.input_lens
    }

    /// Ops it compiled, for reports (e.g. "Add+Mul+Tanh").
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Safe entry: lengths checked against the shapes.
    pub fn run(
        &self,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
        threads: usize,
    ) -> Result<(), String> {
        if inputs.len() != self.input_lens.len() {
            return Err(format!(
                "{} inputs given, kernel takes {}",
                inputs.len(),
                self.input_lens.len()
            ));
        }
        for (i, (x, &n)) in inputs.iter().zip(&self.input_lens).enumerate() {
            if x.len() != n {
                return Err(format!("input {i} has {} elements, expected {n}", x.len()));
            }
        }
        if outputs.len() != self.output_shapes.len() {
            return Err(format!(
                "{} outputs given, kernel makes {}",
                outputs.len(),
                self.output_shapes.len()
            ));
        }
        for (j, (y, s)) in outputs.iter().zip(&self.output_shapes).enumerate() {
            let n: usize = s.iter().product();
            if y.len() != n {
                return Err(format!("output {j} has {} elements, expected {n}", y.len()));
            }
        }
        let ins: Vec<*const f32> = inputs.iter().map(|x| x.as_ptr()).collect();
        let outs: Vec<*mut f32> = outputs.iter_mut().map(|y| y.as_mut_ptr()).collect();
        // SAFETY: lengths checked above; `&`/`&mut` borrows rule out aliasing.
        unsafe { self.run_raw(&ins, &outs, threads) };
        Ok(())
    }

    /// Whether the kernel is elementwise over flat indices (no
    /// broadcast, no reduction), so that any element range can run on its
    /// own: see [`JitKernel::run_range_raw`].
    pub fn is_flat(&self) -> bool {
        self.flat
    }

    /// Runs elements `lo..hi` of a flat kernel on the calling thread: the
    /// hook that applies an epilogue to one tile of a matmul/conv result
    /// while the tile is still in cache.
    ///
    /// Panics if the kernel is not flat or the range is out of bounds.
    ///
    /// # Safety
    /// As for [`JitKernel::run_raw`], for elements `lo..hi`; no other
    /// thread writes those elements of the outputs meanwhile.
    pub unsafe fn run_range_raw(
        &self,
        inputs: &[*const f32],
        outputs: &[*mut f32],
        lo: usize,
        hi: usize,
    ) {
        assert!(self.flat, "run_range_raw on a non-flat kernel");
        assert!(
            lo <= hi && hi <= self.units,
            "run_range_raw: range out of bounds"
        );
        assert_eq!(inputs.len(), self.input_lens.len(), "JitKernel inputs");
        assert_eq!(outputs.len(), self.output_shapes.len(), "JitKernel outputs");
        if lo < hi {
            // SAFETY: the asserts check the pointer counts and that lo..hi
            // lies within the kernel's elements; the caller vouches that
            // the pointers are valid for those elements and that no other
            // thread writes them meanwhile.
            unsafe { (self.entry)(inputs.as_ptr(), outputs.as_ptr(), lo, hi) };
        }
    }

    /// Raw entry for in-place use: an output may alias an input of the same
    /// shape. Each element reads all its inputs before its output is written
    /// and no element reads another element's aliased input.
    ///
    /// # Safety
    /// `inputs[i]` must be valid for reads of the input's element count and
    /// `outputs[j]` for writes of the output's, for the whole call; outputs
    /// may alias only same-shape inputs, and not each other.
    pub unsafe fn run_raw(&self, inputs: &[*const f32], outputs: &[*mut f32], threads: usize) {
        assert_eq!(inputs.len(), self.input_lens.len(), "JitKernel inputs");
        assert_eq!(outputs.len(), self.output_shapes.len(), "JitKernel outputs");
        if self.units == 0 {
            return;
        }
        let args = Args {
            ins: inputs.as_ptr(),
            outs: outputs.as_ptr(),
        };
        let entry = self.entry;
        let units = self.units;
        let chunks = (threads * crate::cpu::UNITS_PER_THREAD).min(units);
        if threads <= 1 || self.total < PARALLEL_MIN || chunks < 2 {
            // SAFETY: the asserts check the pointer counts; 0..units is
            // every element, and the caller vouches that each pointer is
            // valid for its whole tensor during the call, outputs
            // aliasing only same-shape inputs.
            unsafe { entry(args.ins, args.outs, 0, units) };
            return;
        }
        // Flat kernels split on 16-element boundaries so that every chunk
        // but the last runs only whole vectors.
        let align = if self.flat { 16 } else { 1 };
        let bound = |c: usize| -> usize {
            if c == chunks {
                units
            } else {
                (units * c / chunks) / align * align
            }
        };
        let args = &args;
        (0..chunks).into_par_iter().for_each(|c| {
            let (lo, hi) = (bound(c), bound(c + 1));
            if lo < hi {
                // SAFETY: as for the single-threaded call, and the chunks'
                // lo..hi are disjoint row/element ranges, so no two threads
                // write the same output element.
                unsafe { entry(args.ins, args.outs, lo, hi) };
            }
        });
    }
}
