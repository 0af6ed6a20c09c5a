//! Kernels of the reference interpreter, one file per op family. Each
//! family exposes `lookup(op) -> Option<KernelFn>`; [`lookup`] asks them in
//! turn. Shared helpers (attributes, operands, broadcasting, axes, the
//! seeded random source) are here so families stay about their math.

pub mod control;
pub mod elementwise;
pub mod fusion;
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
        .or_else(|| fusion::lookup(op))
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

/// MT19937 seeded as numpy's legacy `np.random.seed(int)`, with numpy's
/// 53-bit `random_sample` doubles and polar-method Gaussians, so seeded
/// random ops reproduce ONNX's reference outputs.
pub struct Rng {
    state: [u32; 624],
    pos: usize,
    gauss: Option<f64>,
}

impl Rng {
    pub fn new(seed: u32) -> Rng {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Rng {
            state,
            pos: 624,
            gauss: None,
        }
    }

    fn twist(&mut self) {
        for i in 0..624 {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
            let mut v = self.state[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            self.state[i] = v;
        }
        self.pos = 0;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.pos >= 624 {
            self.twist();
        }
        let mut y = self.state[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// Uniform in [0, 1), as numpy's `random_sample`.
    pub fn uniform(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// Standard normal, as numpy's legacy `standard_normal` (polar method,
    /// second value of each pair cached).
    pub fn normal(&mut self) -> f64 {
        if let Some(g) = self.gauss.take() {
            return g;
        }
        loop {
            let x1 = 2.0 * self.uniform() - 1.0;
            let x2 = 2.0 * self.uniform() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                let f = (-2.0 * r2.ln() / r2).sqrt();
                self.gauss = Some(f * x1);
                return f * x2;
            }
        }
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

    /// Every op the traits table says something about has a kernel, so the
    /// interpreter can run anything a pass derives from a trait (a fused
    /// body of pointwise ops, a folded weight).
    #[test]
    fn ops_with_traits_have_kernels() {
        let missing: Vec<&str> = kiln_ir::ops::all()
            .filter(|s| s.traits != kiln_ir::ops::OpTraits::NONE)
            .filter(|s| lookup(s.name).is_none())
            .map(|s| s.name)
            .collect();
        assert!(missing.is_empty(), "no kernel for {missing:?}");
    }

    #[test]
    fn axes_normalize_or_fail() {
        assert_eq!(norm_axis(-1, 3).ok(), Some(2));
        assert_eq!(norm_axis(0, 0).ok(), Some(0));
        assert!(norm_axis(3, 3).is_err());
        assert!(norm_axis(-4, 3).is_err());
    }

    #[test]
    fn random_source_matches_numpy() {
        // np.random.seed(0); np.random.uniform(0, 1, 3)
        let mut mt = Rng::new(0);
        for want in [0.5488135039273248, 0.7151893663724195, 0.6027633760716439] {
            assert_eq!(mt.uniform(), want);
        }
        // np.random.seed(0); np.random.standard_normal(2)
        let mut g = Rng::new(0);
        assert!((g.normal() - 1.764052345967664).abs() < 1e-12);
        assert!((g.normal() - 0.4001572083672233).abs() < 1e-12);
    }

    #[test]
    fn random_source_is_deterministic() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let xs: Vec<f64> = (0..4).map(|_| a.uniform()).collect();
        let ys: Vec<f64> = (0..4).map(|_| b.uniform()).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
    }
}
