//! The step of a `kiln.Fusion` region: an optional dense anchor, then a
//! Cranelift-generated loop over its result (in place, tile by tile where
//! the loop allows); and a producers loop followed by an odometer
//! reduction.

use kiln_ir::ElemType;

use crate::cpu::jit::JitKernel;
use crate::cpu::view::{In, Out};
use crate::cpu::{buffers, NativeKernel};

use super::dense::Dense;
use super::{anchor_operands, operand, result};

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
    fn run(
        &self,
        inputs: &[Option<In>],
        outputs: &mut [Out],
        threads: usize,
    ) -> Result<(), String> {
        // The loop's inputs after the anchor's result (if any): operands
        // of exactly the sizes it was compiled for.
        let first = usize::from(self.anchor.is_some());
        let mut ins: Vec<*const f32> = vec![];
        for (i, &k) in self.jit_operands.iter().enumerate() {
            let x = operand(inputs, k)?;
            if self.jit.input_lens().get(first + i) != Some(&x.len()) {
                return Err(format!("operand {k} has the wrong size"));
            }
            ins.push(x.f32_ptr()?);
        }
        let mut outs: Vec<*mut f32> = vec![];
        for (j, s) in self.jit.output_shapes().iter().enumerate() {
            let o = result(outputs, j)?;
            if o.len() != s.iter().product::<usize>() {
                return Err(format!("result {j} has the wrong size"));
            }
            outs.push(o.f32_ptr()?);
        }
        let Some((plan, map)) = &self.anchor else {
            // SAFETY: every pointer covers the element count the kernel
            // was compiled for (checked above); an output may alias a
            // same-size operand (the memory plan's in-place steps), which
            // the generated loop allows (`run_raw`'s contract).
            unsafe { self.jit.run_raw(&ins, &outs, threads) };
            return Ok(());
        };
        let ops = anchor_operands(map, inputs);
        if self.in_place {
            // The anchor writes the fusion's one result, the loop then
            // rewrites it in place: tile by tile where the loop allows.
            let out = result(outputs, 0)?.f32s()?;
            if self.jit.is_flat() {
                return self.run_tiled(plan, &ops, &ins, out, threads);
            }
            plan.run(&ops, out, threads)?;
            let mut all = vec![out.as_ptr()];
            all.extend(&ins);
            // SAFETY: as above; the one output aliases input 0 (the
            // anchor's result) of the same shape, which the loop allows.
            unsafe { self.jit.run_raw(&all, &[out.as_mut_ptr()], threads) };
            return Ok(());
        }
        // The anchor's result is the loop's input 0, in a scratch buffer.
        let mut scratch = buffers::output(plan.out_shape().iter().product());
        plan.run(&ops, &mut scratch, threads)?;
        let mut all = vec![scratch.as_ptr()];
        all.extend(&ins);
        // SAFETY: as above; the scratch buffer has the anchor's shape,
        // which the loop was compiled for, and aliases nothing.
        unsafe { self.jit.run_raw(&all, &outs, threads) };
        buffers::give_back(scratch);
        Ok(())
    }

    fn in_place(&self) -> bool {
        // An elementwise loop reads element i of every operand before it
        // writes element i; an anchored product reads whole rows.
        self.anchor.is_none()
    }
}

impl Fusion {
    /// An in-place elementwise epilogue, applied to each tile of the
    /// anchor's result by the thread that computed it, while it is in
    /// cache (one pass over memory instead of two).
    fn run_tiled(
        &self,
        plan: &Dense,
        ops: &[Option<In>],
        operands: &[*const f32],
        out: &mut [f32],
        threads: usize,
    ) -> Result<(), String> {
        let operands: Vec<usize> = operands.iter().map(|&p| p as usize).collect();
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
        plan.run_with_epilogue(ops, out, threads, Some(&epilogue))
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
    fn run(
        &self,
        inputs: &[Option<In>],
        outputs: &mut [Out],
        threads: usize,
    ) -> Result<(), String> {
        let shape = self
            .producers
            .jit
            .output_shapes()
            .first()
            .ok_or("producers without a result")?;
        let mut x = buffers::output(shape.iter().product());
        {
            // SAFETY: `x` holds the producers' result's element count of
            // f32 and lives to the end of this block.
            let mut xo = [unsafe { Out::from_raw(x.as_mut_ptr().cast(), ElemType::F32, shape) }];
            self.producers.run(inputs, &mut xo, threads)?;
            // SAFETY: as above; `xo` is no longer written.
            let xi = unsafe { In::from_raw(x.as_ptr().cast(), ElemType::F32, shape) };
            self.reduce.run(&[Some(xi)], outputs, threads)?;
        }
        buffers::give_back(x);
        Ok(())
    }
}

/// Where an [`Unfused`] node reads an operand from.
#[derive(Clone, Copy, Debug)]
pub enum UnfusedSrc {
    /// The fusion's operand.
    Operand(usize),
    /// A value an earlier node of the body made (an index into the
    /// values).
    Value(usize),
    /// A constant of the body (an index into the constants).
    Const(usize),
    /// Captured by the node's kernel, or omitted.
    None,
}

/// One node of an [`Unfused`] body: its kernel, where its operands come
/// from, which values its results are.
pub struct UnfusedNode {
    pub kernel: Box<dyn NativeKernel>,
    pub operands: Vec<UnfusedSrc>,
    pub results: Vec<usize>,
}

/// A fusion region the code generators do not take (values that are not
/// f32, an op without a generated form), run as its nodes' own native
/// kernels in order, the values between them in buffers of their static
/// types, the region's results copied out.
pub struct Unfused {
    pub nodes: Vec<UnfusedNode>,
    /// The body's values by index: element type and static shape.
    pub values: Vec<(ElemType, Vec<usize>)>,
    pub consts: Vec<crate::tensor::Tensor>,
    /// For each result of the fusion, where it comes from.
    pub outputs: Vec<UnfusedSrc>,
}

impl NativeKernel for Unfused {
    fn run(
        &self,
        inputs: &[Option<In>],
        outputs: &mut [Out],
        threads: usize,
    ) -> Result<(), String> {
        use crate::tensor::Tensor;
        let mut values: Vec<Option<Tensor>> = self.values.iter().map(|_| None).collect();
        for node in &self.nodes {
            let mut made: Vec<Tensor> = node
                .results
                .iter()
                .map(|&v| {
                    let (elem, shape) = &self.values[v];
                    Tensor::zeros(*elem, shape.clone())
                })
                .collect();
            {
                let mut ins: Vec<Option<In>> = Vec::with_capacity(node.operands.len());
                for src in &node.operands {
                    ins.push(self.view(*src, inputs, &values)?);
                }
                let mut outs: Vec<Out> = made
                    .iter_mut()
                    .map(|t| Out::of(t).ok_or("a body value has no native layout"))
                    .collect::<Result<_, _>>()?;
                node.kernel.run(&ins, &mut outs, threads)?;
            }
            for (&v, t) in node.results.iter().zip(made) {
                values[v] = Some(t);
            }
        }
        for (k, src) in self.outputs.iter().enumerate() {
            let x = self
                .view(*src, inputs, &values)?
                .ok_or("a fusion result that nothing made")?;
            let o = result(outputs, k)?;
            if x.byte_len() != o.byte_len() {
                return Err("a fusion result of another size".into());
            }
            // SAFETY: both views cover `byte_len` bytes; a result's memory
            // is not any operand's or body value's (the step is not in
            // place).
            unsafe { std::ptr::copy(x.bytes_ptr(), o.bytes_ptr(), x.byte_len()) };
        }
        Ok(())
    }
}

impl Unfused {
    fn view<'a>(
        &'a self,
        src: UnfusedSrc,
        inputs: &[Option<In<'a>>],
        values: &'a [Option<crate::tensor::Tensor>],
    ) -> Result<Option<In<'a>>, String> {
        Ok(match src {
            UnfusedSrc::Operand(k) => Some(operand(inputs, k)?),
            UnfusedSrc::Value(v) => {
                let t = values[v]
                    .as_ref()
                    .ok_or("a body value read before it is made")?;
                Some(In::of(t, t.elem()).ok_or("a body value has no native layout")?)
            }
            UnfusedSrc::Const(c) => {
                let t = &self.consts[c];
                Some(In::of(t, t.elem()).ok_or("a constant has no native layout")?)
            }
            UnfusedSrc::None => None,
        })
    }
}
