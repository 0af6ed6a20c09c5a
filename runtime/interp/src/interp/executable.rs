//! The interpreter as a backend: an [`Executable`] whose every step is the
//! interpreter's kernel for one top-level node. `kiln run --backend
//! interp`, `bench`, `profile` and the conformance runner treat it like any
//! other target.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_ir::Module;

use super::error::InterpError;
use super::interpreter::{Constants, Interpreter};
use crate::executable::{native_interp_report, Executable, Placement, StepInfo, StepTimes};
use crate::value::Value;

/// A module run by the reference interpreter.
pub struct InterpExecutable {
    module: Module,
    consts: Arc<Constants>,
    limits: kiln_ir::Limits,
}

impl InterpExecutable {
    /// Load the module's constants once; runs share them.
    pub fn new(mut module: Module) -> InterpExecutable {
        let consts = Arc::new(Interpreter::take_constants_where(&mut module, |_| true));
        InterpExecutable {
            module,
            consts,
            limits: kiln_ir::Limits::default(),
        }
    }

    /// Runs work within `limits` (allocations, loop iterations).
    pub fn with_limits(mut self, limits: kiln_ir::Limits) -> InterpExecutable {
        self.limits = limits;
        self
    }

    fn interpreter(&self) -> Interpreter<'_> {
        Interpreter::with_constants(&self.module, self.consts.clone()).with_limits(self.limits)
    }
}

impl Executable for InterpExecutable {
    fn backend(&self) -> &'static str {
        "interp"
    }

    fn module(&self) -> &Module {
        &self.module
    }

    fn threads(&self) -> usize {
        1
    }

    fn run(&self, inputs: &HashMap<String, Value>) -> Result<Vec<Value>, InterpError> {
        self.interpreter().run(inputs)
    }

    fn run_profiled(
        &self,
        inputs: &HashMap<String, Value>,
        times: &mut StepTimes,
    ) -> Result<Vec<Value>, InterpError> {
        let m = &self.module;
        let interp = self.interpreter();
        times.clear();
        times.resize(m.body.nodes.len(), Duration::ZERO);
        let mut env = interp.bind_body(inputs)?;
        for (k, node) in m.body.nodes.iter().enumerate() {
            let start = Instant::now();
            interp.run_node(node, &mut env)?;
            times[k] += start.elapsed();
        }
        interp.body_outputs(&env)
    }

    fn steps(&self) -> Vec<StepInfo> {
        (0..self.module.body.nodes.len())
            .map(|node| StepInfo {
                node,
                placement: Placement::Interp,
                what: "the interpreter backend".into(),
                flops: 0.0,
                bytes: None,
            })
            .collect()
    }

    fn report(&self) -> String {
        native_interp_report(&self.module, &self.steps())
    }
}
