//! The kernels' calling convention: a kernel's signature and errors, the
//! context it runs in ([`Ctx`]: its node, and whatever runs it as a
//! [`KernelHost`]), and accessors for its operands and result. Every
//! kernel family imports from here, not from `kernels/mod.rs`, which
//! dispatches to the families.

use kiln_ir::{Attr, ElemType, Module, Node, Region, Type};

use super::rng::Rng;
use crate::interp::env::Env;
use crate::interp::error::InterpError;
use crate::tensor::Tensor;
use crate::value::Value;

/// A kernel: operands (`None` for omitted optional ones) to results.
pub type KernelFn = fn(&mut Ctx, &[Option<Value>]) -> KResult<Vec<Value>>;
pub type KResult<T> = Result<T, KernelError>;

/// Why a kernel failed: its own message (the interpreter adds the node's
/// name), or an error of a node inside a region it ran.
#[derive(Debug)]
pub enum KernelError {
    Msg(String),
    Nested(InterpError),
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelError::Msg(m) => f.write_str(m),
            KernelError::Nested(e) => write!(f, "{e}"),
        }
    }
}

impl From<String> for KernelError {
    fn from(s: String) -> KernelError {
        KernelError::Msg(s)
    }
}

impl From<&str> for KernelError {
    fn from(s: &str) -> KernelError {
        KernelError::Msg(s.to_string())
    }
}

impl From<kiln_ir::LimitError> for KernelError {
    fn from(e: kiln_ir::LimitError) -> KernelError {
        KernelError::Msg(e.to_string())
    }
}

impl From<crate::tensor::TensorError> for KernelError {
    fn from(e: crate::tensor::TensorError) -> KernelError {
        KernelError::Msg(e.to_string())
    }
}

/// `Err(KernelError::Msg(format!(...)))`.
#[macro_export]
macro_rules! bail {
    ($($t:tt)*) => { return Err($crate::interp::kernels::ctx::KernelError::Msg(format!($($t)*))) };
}
pub use bail;

/// What runs the kernels (the interpreter), as they see it: the module
/// their nodes belong to, the kernel table, and running a nested region.
/// A trait, so that the kernels that recurse (control flow runs regions,
/// `kiln.FusedConv` runs the kernels of the ops it stands for) need not
/// name the interpreter, which names them.
pub trait KernelHost {
    /// The module whose nodes are run.
    fn module(&self) -> &Module;
    /// The kernel for an op, if there is one.
    fn kernel(&self, op: &str) -> Option<KernelFn>;
    /// Execute a region with the given input values in `env`; returns its
    /// outputs.
    fn run_region(
        &self,
        r: &Region,
        env: &mut Env,
        args: Vec<Value>,
    ) -> Result<Vec<Value>, InterpError>;
}

/// What a kernel can see: its node (attributes, declared result types) and
/// its host (to run regions).
pub struct Ctx<'a> {
    pub host: &'a dyn KernelHost,
    pub env: &'a mut Env,
    pub node: &'a Node,
}

impl Ctx<'_> {
    pub fn attr(&self, name: &str) -> Option<&Attr> {
        self.node.attrs.get(name)
    }
    pub fn attr_int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).and_then(Attr::as_int).unwrap_or(default)
    }
    pub fn attr_float(&self, name: &str, default: f32) -> f32 {
        self.attr(name).and_then(Attr::as_float).unwrap_or(default)
    }
    pub fn attr_str(&self, name: &str) -> Option<&str> {
        self.attr(name).and_then(Attr::as_str)
    }
    pub fn attr_ints(&self, name: &str) -> Option<&[i64]> {
        self.attr(name).and_then(Attr::as_ints)
    }
    pub fn attr_floats(&self, name: &str) -> Option<&[f32]> {
        self.attr(name).and_then(Attr::as_floats)
    }
    pub fn attr_strings(&self, name: &str) -> Option<&[String]> {
        match self.attr(name) {
            Some(Attr::Strings(s)) => Some(s),
            _ => None,
        }
    }
    /// A tensor attribute, converted.
    pub fn attr_tensor(&self, name: &str) -> KResult<Option<Tensor>> {
        match self.attr(name) {
            Some(Attr::Tensor(d)) => Ok(Some(Tensor::from_data(d)?)),
            _ => Ok(None),
        }
    }
    /// A graph attribute.
    pub fn region(&self, name: &str) -> KResult<&Region> {
        self.attr(name)
            .and_then(Attr::as_graph)
            .ok_or_else(|| format!("missing graph attribute `{name}`").into())
    }
    /// Run a region of this node with the given inputs.
    pub fn run_region(&mut self, r: &Region, args: Vec<Value>) -> KResult<Vec<Value>> {
        self.host
            .run_region(r, self.env, args)
            .map_err(KernelError::Nested)
    }
    /// The declared type of result `i`.
    pub fn output_type(&self, i: usize) -> Option<&Type> {
        self.node.outputs.get(i).map(|&o| self.host.module().ty(o))
    }
    /// The declared element type of tensor result `i`.
    pub fn output_elem(&self, i: usize) -> Option<ElemType> {
        self.output_type(i)
            .and_then(Type::as_tensor)
            .map(|t| t.elem)
    }
    /// A deterministic random source for this node, compatible with
    /// numpy's legacy `RandomState(seed)` (what ONNX's reference and its
    /// test data use): seeded by the `seed` attribute when present, else by
    /// a fixed seed mixed with the node's first result id (so two random
    /// nodes differ, and runs repeat).
    pub fn rng(&self) -> Rng {
        let seed = match self.attr("seed") {
            Some(Attr::Float(f)) => *f as i64 as u32,
            Some(Attr::Int(i)) => *i as u32,
            _ => 5489 ^ self.node.outputs.first().map_or(0, |o| o.0),
        };
        Rng::new(seed)
    }
}

/// Operand `i` as a tensor; an error when omitted or not a tensor.
pub fn tensor(inputs: &[Option<Value>], i: usize) -> KResult<&Tensor> {
    match inputs.get(i) {
        Some(Some(Value::Tensor(t))) => Ok(t),
        Some(Some(other)) => bail!("operand {i} must be a tensor, got {}", other.describe()),
        _ => bail!("operand {i} is required"),
    }
}

/// Operand `i` as a tensor, `None` when omitted (or an empty optional).
pub fn opt_tensor(inputs: &[Option<Value>], i: usize) -> KResult<Option<&Tensor>> {
    match inputs.get(i) {
        Some(Some(Value::Tensor(t))) => Ok(Some(t)),
        Some(Some(Value::Optional(None))) | Some(None) | None => Ok(None),
        Some(Some(Value::Optional(Some(v)))) => match &**v {
            Value::Tensor(t) => Ok(Some(t)),
            other => bail!("operand {i} must be a tensor, got {}", other.describe()),
        },
        Some(Some(other)) => bail!("operand {i} must be a tensor, got {}", other.describe()),
    }
}

/// A kernel's one result.
pub fn one(t: Tensor) -> KResult<Vec<Value>> {
    Ok(vec![Value::tensor(t)])
}
