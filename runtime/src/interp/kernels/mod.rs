//! Kernels of the reference interpreter, one file per op family. Each
//! family exposes `lookup(op) -> Option<KernelFn>`; [`lookup`] asks them in
//! turn. Shared helpers (attributes, operands, broadcasting, axes, the
//! seeded random source) are here so families stay about their math.

pub mod control;
pub mod elementwise;
pub mod movement;
pub mod nn;

use kiln_ir::{Attr, ElemType, Node, Region, Type};

use super::{Env, InterpError, Interpreter};
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

impl From<crate::tensor::TensorError> for KernelError {
    fn from(e: crate::tensor::TensorError) -> KernelError {
        KernelError::Msg(e.to_string())
    }
}

/// `Err(KernelError::Msg(format!(...)))`.
#[macro_export]
macro_rules! bail {
    ($($t:tt)*) => { return Err($crate::interp::kernels::KernelError::Msg(format!($($t)*))) };
}
pub use bail;

/// The kernel for an op, if the interpreter has one.
pub fn lookup(op: &str) -> Option<KernelFn> {
    elementwise::lookup(op)
        .or_else(|| movement::lookup(op))
        .or_else(|| nn::lookup(op))
        .or_else(|| control::lookup(op))
}

/// What a kernel can see: its node (attributes, declared result types) and
/// the interpreter (to run regions).
pub struct Ctx<'a, 'm> {
    pub interp: &'a Interpreter<'m>,
    pub env: &'a mut Env,
    pub node: &'a Node,
}

impl Ctx<'_, '_> {
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
        self.interp
            .run_region(r, self.env, args)
            .map_err(KernelError::Nested)
    }
    /// The declared type of result `i`.
    pub fn output_type(&self, i: usize) -> Option<&Type> {
        self.node
            .outputs
            .get(i)
            .map(|&o| self.interp.module().ty(o))
    }
    /// The declared element type of tensor result `i`.
    pub fn output_elem(&self, i: usize) -> Option<ElemType> {
        self.output_type(i)
            .and_then(Type::as_tensor)
            .map(|t| t.elem)
    }
    /// A deterministic random source for this node: seeded by the `seed`
    /// attribute when present, else by a fixed seed mixed with the node's
    /// first result id (so two random nodes differ, and runs repeat).
    pub fn rng(&self) -> Rng {
        let seed = match self.attr("seed") {
            Some(Attr::Float(f)) => f.to_bits() as u64,
            Some(Attr::Int(i)) => *i as u64,
            _ => 0x6b69_6c6e ^ self.node.outputs.first().map_or(0, |o| o.0 as u64),
        };
        Rng(seed.wrapping_add(0x9e37_79b9_7f4a_7c15))
    }
}

/// SplitMix64: small, fast, and good enough for reproducible test data.
pub struct Rng(u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
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

/// An `axis` attribute or operand value normalized to `0..rank`.
pub fn norm_axis(axis: i64, rank: usize) -> KResult<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) && !(r == 0 && a == 0) {
        bail!("axis {axis} is out of range for rank {rank}");
    }
    Ok(a as usize)
}

/// Numpy broadcasting of two shapes.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> KResult<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let x = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let y = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (x, y) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => bail!("shapes {a:?} and {b:?} do not broadcast"),
        };
    }
    Ok(out)
}

/// For each element of `out_shape` (row-major), the index of the element
/// of a tensor of `in_shape` broadcast to it.
pub fn broadcast_indices(in_shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let n: usize = out_shape.iter().product();
    let off = out_shape.len() - in_shape.len();
    let in_strides = crate::tensor::strides(in_shape);
    let mut idx = vec![0usize; out_shape.len()];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut lin = 0;
        for (k, &s) in in_strides.iter().enumerate() {
            if in_shape[k] != 1 {
                lin += idx[k + off] * s;
            }
        }
        out.push(lin);
        for d in (0..out_shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < out_shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast_shape(&[2, 3], &[3]).ok(), Some(vec![2, 3]));
        assert_eq!(
            broadcast_shape(&[2, 1, 4], &[3, 1]).ok(),
            Some(vec![2, 3, 4])
        );
        assert_eq!(broadcast_shape(&[], &[5]).ok(), Some(vec![5]));
        assert_eq!(broadcast_shape(&[0, 1], &[1, 3]).ok(), Some(vec![0, 3]));
        assert!(broadcast_shape(&[2, 3], &[4]).is_err());
        // [3,1] into [2,3,2]: rows repeat along the last axis and the batch.
        assert_eq!(
            broadcast_indices(&[3, 1], &[2, 3, 2]),
            vec![0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]
        );
        assert_eq!(broadcast_indices(&[], &[3]), vec![0, 0, 0]);
        assert_eq!(broadcast_indices(&[2], &[2, 2]), vec![0, 1, 0, 1]);
    }

    #[test]
    fn axes_normalize_or_fail() {
        assert_eq!(norm_axis(-1, 3).ok(), Some(2));
        assert_eq!(norm_axis(0, 0).ok(), Some(0));
        assert!(norm_axis(3, 3).is_err());
        assert!(norm_axis(-4, 3).is_err());
    }

    #[test]
    fn random_source_is_deterministic() {
        let mut a = Rng(7);
        let mut b = Rng(7);
        let xs: Vec<f64> = (0..4).map(|_| a.uniform()).collect();
        let ys: Vec<f64> = (0..4).map(|_| b.uniform()).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
    }
}
