//! Steps whose shapes are known only when the model runs: compiled per
//! shape, at run time, and cached.
//!
//! A value's shape can depend on data (`NonZero`, `NonMaxSuppression`,
//! `TopK` with a computed k): everything downstream of it has dynamic
//! shapes, and a native kernel needs static ones. A detector's second
//! stage (Faster R-CNN's box head: a 12544 x 1024 Gemm on however many
//! boxes survived) ran on the interpreter for that reason. Here such a
//! node is lowered when its operands arrive, by the same lowering that
//! compiles static nodes, for their shapes, plus the values of the
//! operands whose values decide result shapes (Reshape's shape, Slice's
//! starts: `kiln_ir::ops::value_operands`), which become constants of the
//! specialization. The result is cached by that key (XLA recompiles per
//! shape the same way; onnxruntime's kernels take any shape).
//!
//! At most [`MAX_SPECIALIZATIONS`] keys are kept per step, the oldest
//! dropped first. A key whose lowering fails runs the interpreter's kernel,
//! which also stays the step's meaning: operands and results live in the
//! environment, as an interpreted step's do.

use std::sync::{Arc, Mutex};

use kiln_ir::{ElemType, Node};

use super::exec::NativeStep;
use super::view::{In, Out};
use crate::interp::{Env, InterpError, Interpreter};
use crate::tensor::{Data, Tensor};
use crate::value::Value;

/// Keys kept per step.
pub const MAX_SPECIALIZATIONS: usize = 16;

/// Specializations a step may drop before it stops making new ones.
pub const MAX_EVICTIONS: usize = 2 * MAX_SPECIALIZATIONS;

/// Operands with more elements than this are never made constants (they
/// are data, not shape parameters).
const MAX_VALUE_ELEMS: usize = 64;

/// A native step for one set of operand shapes, and its results' types
/// (shapes empty where the kernel sizes them from values:
/// [`super::NativeKernel::sized_results`]).
pub struct Specialized {
    pub step: NativeStep,
    pub results: Vec<(ElemType, Vec<usize>)>,
}

/// Lowers one node for the operands of a run (the compiler's side).
pub trait Specialize: Send + Sync {
    /// A native step for these operands (`None`: omitted); only the
    /// shapes of most operands matter, and the values of
    /// [`DynamicStep::value_operands`].
    fn specialize(&self, operands: &[Option<&Tensor>]) -> Result<Specialized, String>;
}

/// The cache key of a run's operands: each operand's rank and dims, and
/// the values of the value operands.
type Key = Vec<i64>;

/// A key's specialization, or why its lowering failed.
type Made = Arc<Result<Specialized, String>>;

/// A node lowered per shape at run time.
pub struct DynamicStep {
    specializer: Box<dyn Specialize>,
    value_operands: Vec<usize>,
    /// Most recent last.
    cache: Mutex<Vec<(Key, Made)>>,
    /// Specializations dropped to make room. Past [`MAX_EVICTIONS`] the
    /// keys never settle (a Slice inside a Loop whose start is the
    /// iteration count): new keys then run the interpreter's kernel
    /// instead of lowering once per run.
    evictions: std::sync::atomic::AtomicUsize,
    /// What the compile-time probe (unknown dims taken as 1) gave: the
    /// kernel's description, or why it failed.
    probe: Result<String, String>,
}

impl DynamicStep {
    pub fn new(
        specializer: Box<dyn Specialize>,
        value_operands: Vec<usize>,
        probe: Result<String, String>,
    ) -> DynamicStep {
        DynamicStep {
            specializer,
            value_operands,
            cache: Mutex::new(vec![]),
            evictions: Default::default(),
            probe,
        }
    }

    /// The operands whose values are part of a specialization.
    pub fn value_operands(&self) -> &[usize] {
        &self.value_operands
    }

    /// For reports: whether the step runs natively, and what it runs. Once
    /// it has run, the specializations made say; before, the probe.
    pub fn describe(&self) -> (bool, String) {
        let cache = self.cache.lock().map(|c| c.clone()).unwrap_or_default();
        let native: Vec<&Specialized> = cache
            .iter()
            .filter_map(|(_, s)| s.as_ref().as_ref().ok())
            .collect();
        let failed = cache
            .iter()
            .filter_map(|(_, s)| s.as_ref().as_ref().err())
            .next();
        let settled = self.evictions.load(std::sync::atomic::Ordering::Relaxed) <= MAX_EVICTIONS;
        match (native.last(), failed, &self.probe) {
            (Some(s), None, _) if settled => (
                true,
                format!(
                    "{} (per shape at run time: {} shapes)",
                    s.step.what,
                    native.len()
                ),
            ),
            (Some(s), None, _) => (
                false,
                format!(
                    "{} (per shape at run time: {} cached; keys that never settle, new ones interpreted)",
                    s.step.what,
                    native.len()
                ),
            ),
            (_, Some(why), _) => (false, format!("dynamic shape, and for one: {why}")),
            (None, None, Ok(what)) => (true, format!("{what} (per shape at run time)")),
            (None, None, Err(why)) => (false, format!("dynamic shape: {why}")),
        }
    }

    /// Floating-point operations of the latest specialization (0 before).
    pub fn flops(&self) -> f64 {
        self.cache
            .lock()
            .ok()
            .and_then(|c| {
                c.last()
                    .and_then(|(_, s)| s.as_ref().as_ref().ok().map(|s| s.step.flops))
            })
            .unwrap_or(0.0)
    }

    /// Runs `node` on the environment's operands, natively for their
    /// shapes where it lowers, else on the interpreter.
    pub fn run(
        &self,
        interp: &Interpreter,
        node: &Node,
        env: &mut Env,
        threads: usize,
    ) -> Result<(), InterpError> {
        let spec = {
            let mut operands: Vec<Option<&Tensor>> = Vec::with_capacity(node.inputs.len());
            for v in &node.inputs {
                operands.push(match v {
                    None => None,
                    Some(v) => match env.get(*v).and_then(Value::as_tensor) {
                        Some(t) => Some(t),
                        // Not a tensor (a sequence): the interpreter's.
                        None => return interp.run_node(node, env),
                    },
                });
            }
            let key = self.key(&operands);
            let found = self
                .cache
                .lock()
                .ok()
                .and_then(|c| c.iter().find(|(k, _)| *k == key).map(|(_, s)| s.clone()));
            use std::sync::atomic::Ordering::Relaxed;
            match found {
                Some(s) => s,
                None if self.evictions.load(Relaxed) > MAX_EVICTIONS => {
                    return interp.run_node(node, env);
                }
                None => {
                    let made = Arc::new(self.specializer.specialize(&operands));
                    if let Ok(mut c) = self.cache.lock() {
                        if c.len() >= MAX_SPECIALIZATIONS {
                            c.remove(0);
                            self.evictions.fetch_add(1, Relaxed);
                        }
                        c.push((key, made.clone()));
                    }
                    made
                }
            }
        };
        let Ok(spec) = spec.as_ref() else {
            return interp.run_node(node, env);
        };
        let results = run_specialized(spec, node, env, threads)
            .map_err(|msg| InterpError::new(node.describe(), msg))?;
        for (&o, t) in node.outputs.iter().zip(results) {
            env.set(o, Value::tensor(t));
        }
        Ok(())
    }

    fn key(&self, operands: &[Option<&Tensor>]) -> Key {
        let mut key = vec![];
        for (i, t) in operands.iter().enumerate() {
            let Some(t) = t else {
                key.push(-1);
                continue;
            };
            key.push(t.shape.len() as i64);
            key.extend(t.shape.iter().map(|&d| d as i64));
            if self.value_operands.contains(&i) && t.len() <= MAX_VALUE_ELEMS {
                if t.elem().is_float() {
                    key.extend(t.to_f64().iter().map(|x| x.to_bits() as i64));
                } else {
                    key.extend(t.to_i64());
                }
            }
        }
        key
    }
}

/// The values a value operand of `t` gives a specialization: its data when
/// it is small enough to be a shape parameter.
pub fn value_constant(t: &Tensor) -> Option<kiln_ir::TensorData> {
    (t.len() <= MAX_VALUE_ELEMS).then(|| t.to_data())
}

/// Runs a specialization on the environment's operands into new tensors.
fn run_specialized(
    spec: &Specialized,
    node: &Node,
    env: &Env,
    threads: usize,
) -> Result<Vec<Tensor>, String> {
    let mut operands: Vec<Option<In>> = Vec::with_capacity(node.inputs.len());
    for (i, v) in node.inputs.iter().enumerate() {
        operands.push(match v {
            Some(v) if !spec.step.captured.contains(&i) => {
                let t = env
                    .get(*v)
                    .and_then(Value::as_tensor)
                    .ok_or("operand has no tensor")?;
                Some(In::of(t, t.elem()).ok_or("operand has no native layout")?)
            }
            _ => None,
        });
    }
    // Result shapes the operands' values decide, else the planned ones.
    let shapes: Vec<Vec<usize>> = match spec.step.kernel.sized_results(&operands) {
        Some(s) => s?,
        None if spec.step.kernel.sized_by_values() => {
            return Err("internal: a kernel sized by values gave no sizes".into())
        }
        None => spec.results.iter().map(|(_, s)| s.clone()).collect(),
    };
    if shapes.len() != spec.results.len() {
        return Err("a result count differs from the plan".into());
    }
    let mut results: Vec<Tensor> = spec
        .results
        .iter()
        .zip(&shapes)
        .map(|((elem, _), shape)| {
            let n = shape.iter().product();
            let data = match elem {
                // Written in full: a recycled buffer will do.
                ElemType::F32 => Data::F32(super::buffers::output(n)),
                e => Data::zeros(*e, n),
            };
            Tensor::new(shape.clone(), data).map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let mut outputs: Vec<Out> = results
        .iter_mut()
        .map(|t| Out::of(t).ok_or("result has no native layout"))
        .collect::<Result<_, _>>()?;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        spec.step.kernel.run(&operands, &mut outputs, threads)
    }))
    .unwrap_or_else(|p| Err(format!("kernel panicked: {}", crate::panic_message(&*p))))?;
    drop(outputs);
    Ok(results)
}

/// A specialization whose results its operands' shapes and values alone
/// decide (a Shape, a ConstantOfShape of a known size): the results, in
/// the runtime's byte layout, copied out on each run.
pub struct FoldedResults {
    pub bytes: Vec<Vec<u8>>,
}

impl super::NativeKernel for FoldedResults {
    fn run(
        &self,
        _inputs: &[Option<In>],
        outputs: &mut [Out],
        _threads: usize,
    ) -> Result<(), String> {
        if outputs.len() != self.bytes.len() {
            return Err("folded results: result count".into());
        }
        for (o, b) in outputs.iter_mut().zip(&self.bytes) {
            if o.byte_len() != b.len() {
                return Err("folded results: result size".into());
            }
            // SAFETY: `o` is valid for writes of `byte_len` bytes, which
            // `b` holds; a constant cannot overlap a result's buffer.
            unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), o.bytes_ptr(), b.len()) };
        }
        Ok(())
    }
}
