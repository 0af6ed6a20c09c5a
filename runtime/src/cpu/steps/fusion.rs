//! The step of a `kiln.Fusion` region: an optional dense anchor, then a
//! Cranelift-generated loop over its result (in place, tile by tile where
//! the loop allows); and a producers loop followed by an odometer
//! reduction.

use crate::cpu::jit::JitKernel;
use crate::cpu::{buffers, NativeKernel};
use crate::{Data, Tensor};

use super::dense::Dense;
use super::{anchor_operands, f32s};

/// A fusion region: optionally a dense anchor, then a generated loop.
pub struct Fusion {
    /// The anchor, with the fusion operand feeding each of its operands.
    pub anchor: Option<(Dense, Vec<Option<usize>>)>,
    /// The generated loop over the rest of the region.
    pub jit: JitKernel,
    /// For each input of the generated loop after the anchor's result
    /// (or of all of them without an anchor): the fusion operand.
    pub jit_operands: Vec<usize>,
    /// The loop writes its one output over the anchor's result.
    pub in_place: bool,
}

impl NativeKernel for Fusion {
    fn run(&self, inputs: &[Option<&Tensor>], threads: usize) -> Result<Vec<Tensor>, String> {
        let outs = self.jit.output_shapes().to_vec();
        let mut ins: Vec<&[f32]> = vec![];
        if let (true, true, Some((plan, map))) = (self.in_place, self.jit.is_flat(), &self.anchor) {
            return self.run_tiled(plan, map, inputs, threads);
        }
        let anchor_out = match &self.anchor {
            Some((plan, map)) => {
                let ops = anchor_operands(map, inputs);
                let shape = plan.out_shape().to_vec();
                let mut buf = plan.out_buffer();
                plan.run(&ops, &mut buf, threads)?;
                Some((shape, buf))
            }
            None => None,
        };
        for &k in &self.jit_operands {
            ins.push(f32s(inputs, k)?);
        }
        let anchor_out = match (self.in_place, anchor_out) {
            (true, Some((shape, mut buf))) => {
                let mut ptrs: Vec<*const f32> = vec![buf.as_ptr()];
                ptrs.extend(ins.iter().map(|s| s.as_ptr()));
                // SAFETY: every pointer covers the shape the kernel was
                // compiled for (operands have their static shapes, the
                // executable checked the graph inputs; the buffer was sized
                // above), and the one output aliases input 0 of the same
                // shape, which the generated loop allows.
                unsafe { self.jit.run_raw(&ptrs, &[buf.as_mut_ptr()], threads) };
                return Ok(vec![
                    Tensor::new(shape, Data::F32(buf)).map_err(|e| e.to_string())?
                ]);
            }
            (_, a) => a,
        };
        // Generated loops write every element of every output.
        let mut bufs: Vec<Vec<f32>> = outs
            .iter()
            .map(|s| buffers::output(s.iter().product()))
            .collect();
        {
            let mut all: Vec<&[f32]> = vec![];
            if let Some((_, b)) = &anchor_out {
                all.push(b);
            }
            all.extend(ins);
            let mut outs_mut: Vec<&mut [f32]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
            self.jit.run(&all, &mut outs_mut, threads)?;
        }
        outs.into_iter()
            .zip(bufs)
            .map(|(s, b)| Tensor::new(s, Data::F32(b)).map_err(|e| e.to_string()))
            .collect()
    }
}

impl Fusion {
    /// An in-place elementwise epilogue, applied to each tile of the
    /// anchor's result by the thread that computed it, while it is in
    /// cache (one pass over memory instead of two).
    pub fn run_tiled(
        &self,
        plan: &Dense,
        map: &[Option<usize>],
        inputs: &[Option<&Tensor>],
        threads: usize,
    ) -> Result<Vec<Tensor>, String> {
        let ops = anchor_operands(map, inputs);
        let shape = plan.out_shape().to_vec();
        let mut buf = plan.out_buffer();
        let mut operands: Vec<usize> = vec![];
        for &k in &self.jit_operands {
            operands.push(f32s(inputs, k)?.as_ptr() as usize);
        }
        let epilogue = |out: *mut f32, lo: usize, hi: usize| {
            // On the stack: this runs once per tile row.
            let mut stack = [std::ptr::null::<f32>(); 8];
            let mut heap = vec![];
            let ins: &mut [*const f32] = if operands.len() < stack.len() {
                &mut stack[..operands.len() + 1]
            } else {
                heap.resize(operands.len() + 1, std::ptr::null());
                &mut heap
            };
            ins[0] = out;
            for (d, &p) in ins[1..].iter_mut().zip(&operands) {
                *d = p as *const f32;
            }
            // SAFETY: every pointer covers the shape the kernel was compiled
            // for (operands have their static shapes, the executable checked
            // the graph inputs; `out` is the anchor's result); the output
            // aliases input 0 of the same shape, which the generated loop
            // allows; the anchor hands each range over once, finished, to
            // the one thread that touches it.
            unsafe { self.jit.run_range_raw(ins, &[out], lo, hi) };
        };
        plan.run_with_epilogue(&ops, &mut buf, threads, Some(&epilogue))?;
        Ok(vec![
            Tensor::new(shape, Data::F32(buf)).map_err(|e| e.to_string())?
        ])
    }
}

/// A reduction fusion whose reduction the generated loops cannot express
/// (a sum over a middle axis: mean pooling over a sequence): the
/// elementwise producers run as one generated loop, the reduction on the
/// odometer kernel.
pub struct SplitReduction {
    pub producers: Fusion,
    pub reduce: Box<dyn NativeKernel>,
}

impl NativeKernel for SplitReduction {
    fn run(&self, inputs: &[Option<&Tensor>], threads: usize) -> Result<Vec<Tensor>, String> {
        let x = self.producers.run(inputs, threads)?;
        self.reduce.run(&[x.first()], threads)
    }
}
