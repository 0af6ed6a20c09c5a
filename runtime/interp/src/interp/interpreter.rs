//! [`Interpreter`]: executes a module node by node with the kernels of
//! [`kernels`](super::kernels), written for clarity and exactness, not
//! speed.
//!
//! Values live in an environment indexed by `ValueId` (the module's arena),
//! so nested regions read the values of enclosing regions directly, as the
//! IR's scoping says they may. Graph inputs are checked against their
//! declared types, binding symbolic dims on first sight; kernel results are
//! checked against the declared result types, so a kernel bug surfaces at
//! the node that has it.
//!
//! Kernels see the interpreter only as a [`KernelHost`] (implemented at
//! the end of this file): control-flow kernels run their regions through
//! it, so the kernels need not name this module, which runs them.

use kiln_ir::{Dim, Module, Node, Region, Type, ValueId};
use std::collections::HashMap;

use super::env::Env;
use super::error::InterpError;
use super::kernels::{self, Ctx, KernelError, KernelFn, KernelHost};
use crate::tensor::Tensor;
use crate::value::Value;

/// Every constant of every region of a module, converted once.
pub type Constants = HashMap<ValueId, Result<Value, String>>;

/// An interpreter for one module; `run` may be called many times.
pub struct Interpreter<'m> {
    m: &'m Module,
    consts: std::sync::Arc<Constants>,
    limits: kiln_ir::Limits,
}

impl<'m> Interpreter<'m> {
    pub fn new(m: &'m Module) -> Interpreter<'m> {
        Interpreter {
            m,
            consts: std::sync::Arc::new(Self::load_constants(m)),
            limits: kiln_ir::Limits::default(),
        }
    }

    /// Runs check allocations and loop iterations against `limits`
    /// (default: [`kiln_ir::Limits::default`]).
    pub fn with_limits(mut self, limits: kiln_ir::Limits) -> Interpreter<'m> {
        self.limits = limits;
        self
    }

    /// An interpreter over constants already loaded (by
    /// [`Interpreter::load_constants`] for this module): backends that run
    /// some nodes on the interpreter build one per run for free.
    pub fn with_constants(m: &'m Module, consts: std::sync::Arc<Constants>) -> Interpreter<'m> {
        Interpreter {
            m,
            consts,
            limits: kiln_ir::Limits::default(),
        }
    }

    /// The module's constants as run-time values.
    pub fn load_constants(m: &Module) -> Constants {
        Self::load_constants_where(m, |_| true)
    }

    /// [`Interpreter::load_constants`], keeping only the top-level
    /// constants `keep` accepts (those of nested regions are all loaded):
    /// a backend that packed a weight into its kernel need not hold a
    /// second copy.
    pub fn load_constants_where(m: &Module, keep: impl Fn(ValueId) -> bool) -> Constants {
        let mut consts = HashMap::new();
        // Filtered before converting: a dropped constant is never copied.
        let top: std::collections::HashSet<ValueId> = m.body.constants.iter().copied().collect();
        let wanted = |c: ValueId| !top.contains(&c) || keep(c);
        fn collect(
            m: &Module,
            r: &Region,
            wanted: &dyn Fn(ValueId) -> bool,
            out: &mut HashMap<ValueId, Result<Value, String>>,
        ) {
            for &c in r.constants.iter().filter(|&&c| wanted(c)) {
                let v = match m.constant(c) {
                    Some(d) => Tensor::from_data(d)
                        .map(Value::tensor)
                        .map_err(|e| format!("constant %{}: {e}", m.name(c))),
                    None => Err(format!("constant %{} has no data", m.name(c))),
                };
                out.insert(c, v);
            }
            for n in &r.nodes {
                for (_, sub) in n.regions() {
                    collect(m, sub, wanted, out);
                }
            }
        }
        collect(m, &m.body, &wanted, &mut consts);
        consts
    }

    /// [`Interpreter::load_constants_where`] for an executable that owns
    /// `m`: every constant loaded as a run-time value leaves the module
    /// (its type stays, its data is elided), so the weights are held once,
    /// not as IR bytes and tensor values side by side.
    pub fn take_constants_where(m: &mut Module, keep: impl Fn(ValueId) -> bool) -> Constants {
        let consts = Self::load_constants_where(m, keep);
        for (&c, v) in &consts {
            if v.is_err() {
                continue;
            }
            m.elide_constant(c);
        }
        consts
    }

    /// Check graph inputs given by name against the declared types (binding
    /// symbolic dims) and return them in graph-input order.
    pub fn graph_inputs(&self, inputs: &HashMap<String, Value>) -> Result<Vec<Value>, InterpError> {
        let mut symbols: HashMap<String, u64> = HashMap::new();
        let mut args = Vec::new();
        for &i in &self.m.body.inputs {
            let name = self.m.name(i);
            let who = || format!("graph input %{name}");
            let v = inputs
                .get(name)
                .ok_or_else(|| InterpError::new(who(), "no value given"))?
                .clone();
            check_type(self.m.ty(i), &v, &mut symbols).map_err(|e| InterpError::new(who(), e))?;
            args.push(v);
        }
        if let Some(extra) = inputs.keys().find(|k| {
            self.m
                .body
                .inputs
                .iter()
                .all(|&i| self.m.name(i) != k.as_str())
        }) {
            return Err(InterpError::new(
                format!("input `{extra}`"),
                "the model has no such input",
            ));
        }
        Ok(args)
    }

    /// A fresh environment for a run of the module's body: the checked
    /// graph inputs and the loaded top-level constants bound. Constants
    /// that were not loaded (a backend's kernel holds them) stay unbound.
    pub fn bind_body(&self, inputs: &HashMap<String, Value>) -> Result<Env, InterpError> {
        let args = self.graph_inputs(inputs)?;
        let mut env = Env::new(self.m.num_values());
        for (&i, a) in self.m.body.inputs.iter().zip(args) {
            env.set(i, a);
        }
        for &c in &self.m.body.constants {
            match self.consts.get(&c) {
                Some(Ok(v)) => env.set(c, v.clone()),
                Some(Err(e)) => return Err(InterpError::new("constants", e.clone())),
                None => {}
            }
        }
        Ok(env)
    }

    /// The graph outputs' values after a run of the body in `env`.
    pub fn body_outputs(&self, env: &Env) -> Result<Vec<Value>, InterpError> {
        self.m
            .body
            .outputs
            .iter()
            .map(|&o| {
                env.get(o).cloned().ok_or_else(|| {
                    InterpError::new("graph output", format!("%{} has no value", self.m.name(o)))
                })
            })
            .collect()
    }

    pub fn module(&self) -> &'m Module {
        self.m
    }

    /// Run the module on inputs given by graph-input name; returns the
    /// graph outputs in order.
    pub fn run(&self, inputs: &HashMap<String, Value>) -> Result<Vec<Value>, InterpError> {
        let args = self.graph_inputs(inputs)?;
        let mut env = Env::new(self.m.num_values());
        self.run_region(&self.m.body, &mut env, args)
    }

    /// Execute a region with the given input values; returns its outputs.
    pub fn run_region(
        &self,
        r: &Region,
        env: &mut Env,
        args: Vec<Value>,
    ) -> Result<Vec<Value>, InterpError> {
        crate::limits::scoped(self.limits, || self.run_region_inner(r, env, args))
    }

    fn run_region_inner(
        &self,
        r: &Region,
        env: &mut Env,
        args: Vec<Value>,
    ) -> Result<Vec<Value>, InterpError> {
        if args.len() != r.inputs.len() {
            return Err(InterpError::new(
                "region",
                format!("takes {} inputs, got {}", r.inputs.len(), args.len()),
            ));
        }
        for (&i, a) in r.inputs.iter().zip(args) {
            env.set(i, a);
        }
        for &c in &r.constants {
            match self.consts.get(&c) {
                Some(Ok(v)) => env.set(c, v.clone()),
                Some(Err(e)) => return Err(InterpError::new("constants", e.clone())),
                None => {
                    return Err(InterpError::new(
                        "constants",
                        format!("%{} was not loaded", self.m.name(c)),
                    ))
                }
            }
        }
        for node in &r.nodes {
            self.run_node_inner(node, env)?;
        }
        r.outputs
            .iter()
            .map(|&o| {
                env.get(o).cloned().ok_or_else(|| {
                    InterpError::new("region output", format!("%{} has no value", self.m.name(o)))
                })
            })
            .collect()
    }

    /// Run one node: operands from `env`, results checked against their
    /// declared types and stored in `env`.
    pub fn run_node(&self, node: &Node, env: &mut Env) -> Result<(), InterpError> {
        crate::limits::scoped(self.limits, || self.run_node_inner(node, env))
    }

    /// Run one node whose regions `host` runs (a backend that compiled
    /// them): the node's kernel, operand gathering and result checks stay
    /// the interpreter's, so a control-flow op means the same everywhere.
    pub fn run_node_hosted(
        &self,
        node: &Node,
        env: &mut Env,
        host: &dyn KernelHost,
    ) -> Result<(), InterpError> {
        crate::limits::scoped(self.limits, || self.run_node_with(node, env, host))
    }

    fn run_node_inner(&self, node: &Node, env: &mut Env) -> Result<(), InterpError> {
        self.run_node_with(node, env, self)
    }

    fn run_node_with(
        &self,
        node: &Node,
        env: &mut Env,
        host: &dyn KernelHost,
    ) -> Result<(), InterpError> {
        let fail = |msg: String| InterpError::new(node.describe(), msg);
        let kernel = kernels::lookup(&node.op)
            .ok_or_else(|| fail(format!("the interpreter has no kernel for `{}`", node.op)))?;
        let inputs: Vec<Option<Value>> = node
            .inputs
            .iter()
            .map(|i| match i {
                None => Ok(None),
                Some(v) => env
                    .get(*v)
                    .cloned()
                    .map(Some)
                    .ok_or_else(|| fail(format!("operand %{} has no value", self.m.name(*v)))),
            })
            .collect::<Result<_, _>>()?;
        let outputs = {
            let mut cx = Ctx { host, env, node };
            kernel(&mut cx, &inputs).map_err(|e| match e {
                KernelError::Msg(m) => fail(m),
                KernelError::Nested(inner) => inner,
            })?
        };
        if outputs.len() < node.outputs.len() {
            return Err(fail(format!(
                "kernel gave {} results, the node has {}",
                outputs.len(),
                node.outputs.len()
            )));
        }
        for (&o, v) in node.outputs.iter().zip(outputs) {
            let mut no_symbols = HashMap::new();
            check_type(self.m.ty(o), &v, &mut no_symbols)
                .map_err(|e| fail(format!("result %{}: {e}", self.m.name(o))))?;
            let held = env.set_result(o, v);
            self.limits
                .total(|| "the values this run holds".to_string(), held)
                .map_err(|e| fail(e.to_string()))?;
        }
        Ok(())
    }
}

/// Does a run-time value fit a declared type? Known dims must match;
/// symbols bind on first use (when `symbols` is the run's table) and must
/// then agree.
fn check_type(ty: &Type, v: &Value, symbols: &mut HashMap<String, u64>) -> Result<(), String> {
    match (ty, v) {
        (Type::Tensor(tt), Value::Tensor(t)) => {
            if tt.elem != t.elem() {
                return Err(format!("expected {}, got {}", tt.elem, t.elem()));
            }
            let Some(dims) = &tt.shape else { return Ok(()) };
            if dims.len() != t.rank() {
                return Err(format!(
                    "expected rank {}, got shape {:?}",
                    dims.len(),
                    t.shape
                ));
            }
            for (i, (d, &n)) in dims.iter().zip(&t.shape).enumerate() {
                match d {
                    Dim::Known(k) if *k != n as u64 => {
                        return Err(format!(
                            "dim {i} is {n}, expected {k} (shape {:?})",
                            t.shape
                        ))
                    }
                    Dim::Sym(e) => {
                        let names: Vec<&str> = e.symbols().collect();
                        if let [single] = names[..] {
                            if e.to_string() == single {
                                match symbols.get(single) {
                                    Some(&b) if b != n as u64 => {
                                        return Err(format!(
                                            "dim {i} is {n}, but `{single}` is {b} elsewhere"
                                        ))
                                    }
                                    _ => {
                                        symbols.insert(single.to_string(), n as u64);
                                    }
                                }
                                continue;
                            }
                        }
                        if let Some(want) = e.eval(&|s| symbols.get(s).map(|&x| x as i64)) {
                            if want != n as i64 {
                                return Err(format!("dim {i} is {n}, expected {e} = {want}"));
                            }
                        }
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        // A sequence's items may differ in shape (ONNX models often declare
        // one item shape for sequences that grow ragged): check the element
        // type only.
        (Type::Sequence(inner), Value::Sequence(items)) => {
            let loose = match &**inner {
                Type::Tensor(t) => Type::Tensor(kiln_ir::TensorType {
                    shape: None,
                    ..t.clone()
                }),
                other => other.clone(),
            };
            items
                .iter()
                .try_for_each(|x| check_type(&loose, x, &mut HashMap::new()))
        }
        (Type::Optional(inner), Value::Optional(x)) => match x {
            Some(x) => check_type(inner, x, &mut HashMap::new()),
            None => Ok(()),
        },
        // An optional type accepts its payload directly (ONNX allows a
        // tensor where an optional tensor is declared).
        (Type::Optional(inner), v) => check_type(inner, v, symbols),
        (t, v) => Err(format!(
            "expected {}, got {}",
            kiln_ir::print_type(t),
            v.describe()
        )),
    }
}

/// The interpreter as its kernels see it.
impl KernelHost for Interpreter<'_> {
    fn module(&self) -> &Module {
        self.m
    }

    fn kernel(&self, op: &str) -> Option<KernelFn> {
        kernels::lookup(op)
    }

    fn run_region(
        &self,
        r: &Region,
        env: &mut Env,
        args: Vec<Value>,
    ) -> Result<Vec<Value>, InterpError> {
        // Already within this interpreter's limits.
        self.run_region_inner(r, env, args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Data;

    fn module(src: &str) -> Module {
        kiln_ir::parse_module(src).expect("parse")
    }

    fn f32s(shape: Vec<usize>, v: Vec<f32>) -> Value {
        Value::tensor(Tensor::new(shape, Data::F32(v)).expect("tensor"))
    }

    #[test]
    fn inputs_are_checked_and_symbols_bound() {
        let m = module(
            "module @m opset(ai.onnx = 17) {\n  input %a: f32[N,2]\n  input %b: f32[N,2]\n  return %a, %b\n}\n",
        );
        let interp = Interpreter::new(&m);
        let ok: HashMap<String, Value> = [
            ("a".to_string(), f32s(vec![3, 2], vec![0.0; 6])),
            ("b".to_string(), f32s(vec![3, 2], vec![1.0; 6])),
        ]
        .into();
        assert_eq!(interp.run(&ok).map(|v| v.len()), Ok(2));
        let mismatch: HashMap<String, Value> = [
            ("a".to_string(), f32s(vec![3, 2], vec![0.0; 6])),
            ("b".to_string(), f32s(vec![4, 2], vec![1.0; 8])),
        ]
        .into();
        let err = interp.run(&mismatch).expect_err("N differs");
        assert_eq!(err.node, "graph input %b");
        assert!(
            err.message.contains("`N` is 3 elsewhere"),
            "{}",
            err.message
        );
        let missing: HashMap<String, Value> =
            [("a".to_string(), f32s(vec![1, 2], vec![0.0; 2]))].into();
        assert_eq!(
            interp.run(&missing).expect_err("missing").message,
            "no value given"
        );
        let wrong_type: HashMap<String, Value> = [
            ("a".to_string(), f32s(vec![1, 2], vec![0.0; 2])),
            (
                "b".to_string(),
                Value::tensor(Tensor::new(vec![1, 2], Data::I64(vec![0, 0])).expect("t")),
            ),
        ]
        .into();
        assert!(interp
            .run(&wrong_type)
            .expect_err("type")
            .message
            .contains("expected f32, got i64"));
    }

    #[test]
    fn elided_constants_are_an_error_only_when_run() {
        let m = module(
            "module @m opset(ai.onnx = 17) {\n  const %w: f32[100] = elided\n  return %w\n}\n",
        );
        let err = Interpreter::new(&m)
            .run(&HashMap::new())
            .expect_err("no data");
        assert!(err.message.contains("elided"), "{}", err.message);
    }
}
