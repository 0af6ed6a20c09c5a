//! From a fusion body to a [`Plan`]: the machine-independent description of
//! one kernel. It checks that every value is an f32 tensor, infers the static
//! shapes from the caller's input shapes, turns the nodes into an expression
//! DAG over [`Op`]s, and lays the iteration space out as rows × an inner run:
//! every leaf (input or embedded constant) gets its own broadcast strides, size-1
//! dims are dropped and adjacent dims that every operand walks contiguously are
//! merged, so that the common cases (same shape, scalar, per-channel, per-row)
//! become one flat run or a few long rows.
//!
//! Nothing here knows about a target: the CPU's Cranelift generator
//! (`cpu::jit`) and the GPU's WGSL generator (`gpu::wgsl`) both read a
//! plan, so an op means the same on every backend.

use std::collections::HashMap;

use kiln_ir::{Attr, ElemType, Module, Node, Region, ValueId};

/// One pointwise operation of the DAG (attributes already resolved).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Op {
    Add,
    Sub,
    Mul,
    Div,
    /// NaN-propagating, like the interpreter.
    Min,
    Max,
    Neg,
    Abs,
    /// Round half to even, as ONNX Round.
    Round,
    Floor,
    Ceil,
    Relu,
    LeakyRelu(f32),
    Sigmoid,
    HardSigmoid(f32, f32),
    HardSwish,
    Tanh,
    Exp,
    Log,
    Sqrt,
    Reciprocal,
    Erf,
    /// Gelu with `approximate = "none"` (erf form).
    Gelu,
    /// Gelu with `approximate = "tanh"`.
    GeluTanh,
    /// `x^n` for a small integer exponent: multiplications only.
    Powi(i32),
    /// `x^p` for any other constant exponent: exp(p·log x).
    Powf(f32),
    Clip(Option<f32>, Option<f32>),
    /// Shrink(lambd, bias): `x < -lambd ? x + bias : x > lambd ? x - bias : 0`.
    Shrink(f32, f32),
    /// ThresholdedRelu(alpha): `x > alpha ? x : 0`.
    ThresholdedRelu(f32),
    /// ai.onnx.ml Binarizer(threshold): `x > threshold ? 1 : 0`.
    Binarizer(f32),
    Softplus,
    Elu(f32),
    /// Selu(alpha, gamma).
    Selu(f32, f32),
    Mish,
    // Below: ops the Cranelift generator computes by calling the
    // interpreter's f64 definition per lane (`cpu::jit::lower`), except
    // Sign, Softsign, Celu and PRelu, which it emits inline.
    Sin,
    Cos,
    Tan,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Asinh,
    Acosh,
    Atanh,
    /// NaN stays NaN.
    Sign,
    Softsign,
    /// Celu(alpha).
    Celu(f32),
    /// `x^y` for a tensor exponent (integral exponents of negative bases
    /// as numpy).
    Pow,
    /// PRelu(x, slope).
    PRelu,
    /// `Mod` with `fmod = 1`: the remainder with x's sign.
    Fmod,
}

/// A node of the expression DAG; operands index [`Plan::exprs`].
#[derive(Clone, Debug)]
pub(crate) enum Expr {
    /// The value of a leaf at the current element.
    Leaf(usize),
    /// A scalar constant, embedded as an immediate.
    Imm(f32),
    Node(Op, Vec<usize>),
}

/// Where a leaf's data lives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Src {
    /// Region input `i` (pointer `i` of the kernel's input array).
    Input(usize),
    /// Embedded constant tensor `i` ([`Plan::consts`]).
    Const(usize),
}

/// A tensor read by the kernel, with its element strides over the
/// collapsed iteration space (0 on broadcast dims).
#[derive(Clone, Debug)]
pub(crate) struct Leaf {
    pub src: Src,
    /// Read by some output (an epilogue region keeps the inputs of the op
    /// cut from it; those are never touched).
    pub used: bool,
    pub outer_strides: Vec<usize>,
    /// 1 (walks the inner run) or 0 (one value per row).
    pub inner_stride: usize,
}

/// Reductions over the inner run (the trailing dims of the reduced value).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum RedOp {
    Sum,
    Mean,
    Max,
}

/// What the kernel computes per row.
#[derive(Clone, Debug)]
pub(crate) enum Kind {
    /// Each root is stored to the output of the same index.
    Elementwise { roots: Vec<usize> },
    /// (Log)Softmax of expression `x` along the inner run.
    Softmax { x: usize, log: bool },
    LayerNorm {
        x: usize,
        scale: usize,
        bias: Option<usize>,
        eps: f32,
    },
    /// One value per row.
    Reduce { x: usize, op: RedOp },
}

/// A kernel, ready for code generation.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// Collapsed outer dims (row index space, row-major); empty for one row.
    pub outer: Vec<usize>,
    /// Length of the inner run.
    pub inner: usize,
    /// Elementwise kernels with no outer dims split their one run by element
    /// ranges rather than by rows.
    pub flat: bool,
    pub leaves: Vec<Leaf>,
    pub exprs: Vec<Expr>,
    pub kind: Kind,
    pub consts: Vec<Vec<f32>>,
    pub out_shapes: Vec<Vec<usize>>,
    pub describe: String,
}

impl Plan {
    pub fn rows(&self) -> usize {
        self.outer.iter().product()
    }
}

type R<T> = Result<T, String>;

fn unsupported<T>(what: impl std::fmt::Display) -> R<T> {
    Err(format!("unsupported: {what}"))
}

/// numpy broadcast of two shapes.
fn broadcast(a: &[usize], b: &[usize]) -> R<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for (i, o) in out.iter_mut().enumerate() {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        *o = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(format!("shapes {a:?} and {b:?} do not broadcast")),
        };
    }
    Ok(out)
}

fn attr_f(n: &Node, name: &str, d: f32) -> R<f32> {
    match n.attr(name) {
        None => Ok(d),
        Some(a) => a
            .as_float()
            .ok_or_else(|| format!("{}: attribute {name} is not a float", n.describe())),
    }
}

fn attr_i(n: &Node, name: &str, d: i64) -> R<i64> {
    match n.attr(name) {
        None => Ok(d),
        Some(a) => a
            .as_int()
            .ok_or_else(|| format!("{}: attribute {name} is not an int", n.describe())),
    }
}

fn norm_axis(a: i64, rank: usize) -> R<usize> {
    // A scalar has one implicit axis (Softmax treats it as shape [1]).
    let r = rank.max(1) as i64;
    let v = if a < 0 { a + r } else { a };
    if v < 0 || v >= r {
        return Err(format!("axis {a} out of range for rank {rank}"));
    }
    Ok(v as usize)
}

/// Builds the DAG while walking the body.
struct Builder<'m> {
    m: &'m Module,
    exprs: Vec<Expr>,
    /// Leaf sources with their original shapes.
    leaves: Vec<(Src, Vec<usize>)>,
    consts: Vec<Vec<f32>>,
    /// Each value's expression and static shape.
    vals: HashMap<ValueId, (usize, Vec<usize>)>,
}

impl Builder<'_> {
    fn push(&mut self, e: Expr) -> usize {
        self.exprs.push(e);
        self.exprs.len() - 1
    }

    fn leaf(&mut self, src: Src, shape: Vec<usize>) -> usize {
        self.leaves.push((src, shape));
        let i = self.leaves.len() - 1;
        self.push(Expr::Leaf(i))
    }

    /// A constant's data as f32 (it must be an f32 tensor).
    fn const_f32(&self, v: ValueId) -> R<Option<(Vec<f32>, Vec<usize>)>> {
        let Some(d) = self.m.constant(v) else {
            return Ok(None);
        };
        if d.elem != ElemType::F32 {
            return unsupported(format!(
                "constant {} is {}, not f32",
                self.m.name(v),
                d.elem
            ));
        }
        let bytes = d
            .bytes()
            .ok_or_else(|| format!("unsupported: constant {} has no data", self.m.name(v)))?;
        let data: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let shape: Vec<usize> = d.shape.iter().map(|&x| x as usize).collect();
        if data.len() != shape.iter().product::<usize>() {
            return Err(format!("constant {} has the wrong size", self.m.name(v)));
        }
        Ok(Some((data, shape)))
    }

    /// The expression of operand `v`, embedding constants on first use.
    fn operand(&mut self, v: ValueId) -> R<(usize, Vec<usize>)> {
        if let Some(e) = self.vals.get(&v) {
            return Ok(e.clone());
        }
        let Some((data, shape)) = self.const_f32(v)? else {
            return Err(format!(
                "value {} is not defined in the region",
                self.m.name(v)
            ));
        };
        let e = if data.len() == 1 {
            self.push(Expr::Imm(data[0]))
        } else {
            self.consts.push(data);
            self.leaf(Src::Const(self.consts.len() - 1), shape.clone())
        };
        self.vals.insert(v, (e, shape.clone()));
        Ok((e, shape))
    }

    fn node(&mut self, op: Op, args: Vec<usize>) -> usize {
        self.push(Expr::Node(op, args))
    }

    /// Data computed at plan time, of `shape`, as an operand.
    fn embed(&mut self, data: Vec<f32>, shape: Vec<usize>) -> usize {
        if data.len() == 1 {
            self.push(Expr::Imm(data[0]))
        } else {
            self.consts.push(data);
            self.leaf(Src::Const(self.consts.len() - 1), shape)
        }
    }
}

/// A constant scalar parameter (Pow exponent, Clip bound) as f64; `None`
/// for an absent or empty operand.
fn scalar_param(m: &Module, n: &Node, i: usize) -> R<Option<f64>> {
    let Some(v) = n.input(i) else { return Ok(None) };
    let Some(d) = m.constant(v) else {
        return unsupported(format!("{}: operand {i} is not a constant", n.describe()));
    };
    let vals = d
        .to_f64_vec()
        .ok_or_else(|| format!("unsupported: {}: operand {i} is not numeric", n.describe()))?;
    match vals.len() {
        0 => Ok(None),
        1 => Ok(Some(vals[0])),
        _ => unsupported(format!("{}: operand {i} is not a scalar", n.describe())),
    }
}

/// Axes of a Reduce node, from its constant operand or attribute.
fn reduce_axes(m: &Module, n: &Node) -> R<Option<Vec<i64>>> {
    if let Some(v) = n.input(1) {
        let Some(d) = m.constant(v) else {
            return unsupported(format!("{}: axes are not a constant", n.describe()));
        };
        return Ok(Some(d.to_i64_vec().ok_or_else(|| {
            format!("unsupported: {}: axes are not integers", n.describe())
        })?));
    }
    Ok(n.attr("axes").and_then(Attr::as_ints).map(|a| a.to_vec()))
}

/// The reduction at the end of a body: its kind, the reduced value and the
/// first reduced axis.
struct Tail {
    kind: Kind,
    x_shape: Vec<usize>,
    split: usize,
    out_shape: Vec<usize>,
}

pub(crate) fn plan(m: &Module, body: &Region, input_shapes: &[Vec<usize>]) -> R<Plan> {
    if input_shapes.len() != body.inputs.len() {
        return Err(format!(
            "{} input shapes for a region with {} inputs",
            input_shapes.len(),
            body.inputs.len()
        ));
    }
    let f32_value = |v: ValueId| -> R<()> {
        match m.ty(v).as_tensor() {
            Some(t) if t.elem == ElemType::F32 => Ok(()),
            Some(t) => unsupported(format!("value {} is {}, not f32", m.name(v), t.elem)),
            None => unsupported(format!("value {} is not a tensor", m.name(v))),
        }
    };
    let mut b = Builder {
        m,
        exprs: Vec::new(),
        leaves: Vec::new(),
        consts: Vec::new(),
        vals: HashMap::new(),
    };
    for (i, (&v, s)) in body.inputs.iter().zip(input_shapes).enumerate() {
        f32_value(v)?;
        let e = b.leaf(Src::Input(i), s.clone());
        b.vals.insert(v, (e, s.clone()));
    }
    let mut ops = Vec::new();
    let mut tail: Option<Tail> = None;
    for (ni, n) in body.nodes.iter().enumerate() {
        if tail.is_some() {
            return unsupported(format!("{} after a reduction", n.describe()));
        }
        ops.push(n.op.clone());
        let out = *n
            .outputs
            .first()
            .ok_or_else(|| format!("{} has no result", n.describe()))?;
        f32_value(out)?;
        let arg = |b: &mut Builder, i: usize| -> R<(usize, Vec<usize>)> {
            let v = n
                .input(i)
                .ok_or_else(|| format!("{}: operand {i} is missing", n.describe()))?;
            b.operand(v)
        };
        let unary = |b: &mut Builder, op: Op| -> R<(usize, Vec<usize>)> {
            let (x, s) = arg(b, 0)?;
            Ok((b.node(op, vec![x]), s))
        };
        let res: (usize, Vec<usize>) = match n.op.as_str() {
            "Add" | "Sub" | "Mul" | "Div" => {
                let op = match n.op.as_str() {
                    "Add" => Op::Add,
                    "Sub" => Op::Sub,
                    "Mul" => Op::Mul,
                    _ => Op::Div,
                };
                let (x, sx) = arg(&mut b, 0)?;
                let (y, sy) = arg(&mut b, 1)?;
                (b.node(op, vec![x, y]), broadcast(&sx, &sy)?)
            }
            "Min" | "Max" | "Sum" | "Mean" => {
                let op = match n.op.as_str() {
                    "Min" => Op::Min,
                    "Max" => Op::Max,
                    _ => Op::Add,
                };
                if n.inputs.is_empty() {
                    return Err(format!("{} has no operands", n.describe()));
                }
                let (mut acc, mut s) = arg(&mut b, 0)?;
                for i in 1..n.inputs.len() {
                    let (y, sy) = arg(&mut b, i)?;
                    acc = b.node(op.clone(), vec![acc, y]);
                    s = broadcast(&s, &sy)?;
                }
                if n.op == "Mean" {
                    let c = b.push(Expr::Imm(n.inputs.len() as f32));
                    acc = b.node(Op::Div, vec![acc, c]);
                }
                (acc, s)
            }
            // Every value here is f32 (checked above), so a Cast or
            // CastLike left in a body is f32 -> f32: the identity.
            "Identity" | "Cast" | "CastLike" => arg(&mut b, 0)?,
            "Round" => unary(&mut b, Op::Round)?,
            "Floor" => unary(&mut b, Op::Floor)?,
            "Ceil" => unary(&mut b, Op::Ceil)?,
            "Neg" => unary(&mut b, Op::Neg)?,
            "Abs" => unary(&mut b, Op::Abs)?,
            "Relu" => unary(&mut b, Op::Relu)?,
            "Sigmoid" => unary(&mut b, Op::Sigmoid)?,
            "HardSwish" => unary(&mut b, Op::HardSwish)?,
            "Tanh" => unary(&mut b, Op::Tanh)?,
            "Exp" => unary(&mut b, Op::Exp)?,
            "Log" => unary(&mut b, Op::Log)?,
            "Sqrt" => unary(&mut b, Op::Sqrt)?,
            "Reciprocal" => unary(&mut b, Op::Reciprocal)?,
            "Erf" => unary(&mut b, Op::Erf)?,
            "Softplus" => unary(&mut b, Op::Softplus)?,
            "Mish" => unary(&mut b, Op::Mish)?,
            "LeakyRelu" => unary(&mut b, Op::LeakyRelu(attr_f(n, "alpha", 0.01)?))?,
            "Shrink" => unary(
                &mut b,
                Op::Shrink(attr_f(n, "lambd", 0.5)?, attr_f(n, "bias", 0.0)?),
            )?,
            "ThresholdedRelu" => unary(&mut b, Op::ThresholdedRelu(attr_f(n, "alpha", 1.0)?))?,
            "ai.onnx.ml.Binarizer" => unary(&mut b, Op::Binarizer(attr_f(n, "threshold", 0.0)?))?,
            "Elu" => unary(&mut b, Op::Elu(attr_f(n, "alpha", 1.0)?))?,
            "Selu" => unary(
                &mut b,
                Op::Selu(
                    attr_f(n, "alpha", 1.673_263_2)?,
                    attr_f(n, "gamma", 1.050_701)?,
                ),
            )?,
            "HardSigmoid" => unary(
                &mut b,
                Op::HardSigmoid(attr_f(n, "alpha", 0.2)?, attr_f(n, "beta", 0.5)?),
            )?,
            // Inference over constant statistics: `x * s + t` per channel
            // (s = scale / sqrt(var + eps), t = bias - mean * s), s and t
            // embedded as [C, 1, ...] operands. A BatchNormalization that
            // could not fold into a conv (after a Concat, DenseNet-style)
            // is then one more step of the loop.
            "BatchNormalization" => {
                if n.attr("training_mode").and_then(Attr::as_int).unwrap_or(0) != 0 {
                    return unsupported("training-mode BatchNormalization".to_string());
                }
                let (x, sx) = arg(&mut b, 0)?;
                if sx.len() < 2 {
                    return unsupported(format!("BatchNormalization of rank {}", sx.len()));
                }
                let c = sx[1];
                let param = |i: usize| -> R<Vec<f64>> {
                    let d = n.input(i).and_then(|v| m.constant(v));
                    match d.and_then(|d| d.to_f64_vec()) {
                        Some(v) if v.len() == c => Ok(v),
                        _ => unsupported(format!(
                            "{}: operand {i} is not a constant of {c} values",
                            n.describe()
                        )),
                    }
                };
                let (scale, bias, mean, var) = (param(1)?, param(2)?, param(3)?, param(4)?);
                let eps = attr_f(n, "epsilon", 1e-5)? as f64;
                let s: Vec<f64> = (0..c).map(|k| scale[k] / (var[k] + eps).sqrt()).collect();
                let t: Vec<f32> = (0..c).map(|k| (bias[k] - mean[k] * s[k]) as f32).collect();
                let shape: Vec<usize> = std::iter::once(c)
                    .chain(std::iter::repeat_n(1, sx.len() - 2))
                    .collect();
                let sl = b.embed(s.iter().map(|&v| v as f32).collect(), shape.clone());
                let tl = b.embed(t, shape);
                let y = b.node(Op::Mul, vec![x, sl]);
                (b.node(Op::Add, vec![y, tl]), sx)
            }
            "Gelu" => {
                let op = match n
                    .attr("approximate")
                    .and_then(Attr::as_str)
                    .unwrap_or("none")
                {
                    "none" => Op::Gelu,
                    "tanh" => Op::GeluTanh,
                    other => return unsupported(format!("Gelu approximate={other}")),
                };
                unary(&mut b, op)?
            }
            "Pow" if n.input(1).is_some_and(|v| m.constant(v).is_none()) => {
                let (x, sx) = arg(&mut b, 0)?;
                let (y, sy) = arg(&mut b, 1)?;
                (b.node(Op::Pow, vec![x, y]), broadcast(&sx, &sy)?)
            }
            "PRelu" | "Mod" => {
                if n.op == "Mod" && attr_i(n, "fmod", 0)? != 1 {
                    return unsupported("Mod of floats without fmod");
                }
                let op = if n.op == "PRelu" { Op::PRelu } else { Op::Fmod };
                let (x, sx) = arg(&mut b, 0)?;
                let (y, sy) = arg(&mut b, 1)?;
                (b.node(op, vec![x, y]), broadcast(&sx, &sy)?)
            }
            "Sin" => unary(&mut b, Op::Sin)?,
            "Cos" => unary(&mut b, Op::Cos)?,
            "Tan" => unary(&mut b, Op::Tan)?,
            "Asin" => unary(&mut b, Op::Asin)?,
            "Acos" => unary(&mut b, Op::Acos)?,
            "Atan" => unary(&mut b, Op::Atan)?,
            "Sinh" => unary(&mut b, Op::Sinh)?,
            "Cosh" => unary(&mut b, Op::Cosh)?,
            "Asinh" => unary(&mut b, Op::Asinh)?,
            "Acosh" => unary(&mut b, Op::Acosh)?,
            "Atanh" => unary(&mut b, Op::Atanh)?,
            "Sign" => unary(&mut b, Op::Sign)?,
            "Softsign" => unary(&mut b, Op::Softsign)?,
            "Celu" => unary(&mut b, Op::Celu(attr_f(n, "alpha", 1.0)?))?,
            "Pow" => {
                let (x, sx) = arg(&mut b, 0)?;
                let Some(p) = scalar_param(m, n, 1)? else {
                    return Err(format!("{}: missing exponent", n.describe()));
                };
                let sp: Vec<usize> = match n.input(1).and_then(|v| m.constant(v)) {
                    Some(d) => d.shape.iter().map(|&x| x as usize).collect(),
                    None => vec![],
                };
                let op = if p == p.round() && p.abs() <= 16.0 {
                    Op::Powi(p as i32)
                } else {
                    Op::Powf(p as f32)
                };
                (b.node(op, vec![x]), broadcast(&sx, &sp)?)
            }
            // Bounds that are values, not constants: max then min (NaN
            // wins in both, as in Clip).
            "Clip" if (1..3).any(|i| n.input(i).is_some_and(|v| m.constant(v).is_none())) => {
                let (mut x, sx) = arg(&mut b, 0)?;
                for (i, op) in [(1, Op::Max), (2, Op::Min)] {
                    if n.input(i).is_some() {
                        let (bound, sb) = arg(&mut b, i)?;
                        if broadcast(&sx, &sb)? != sx {
                            return unsupported("a Clip bound larger than its operand");
                        }
                        x = b.node(op, vec![x, bound]);
                    }
                }
                (x, sx)
            }
            "Clip" => {
                let lo = scalar_param(m, n, 1)?.map(|v| v as f32);
                let hi = scalar_param(m, n, 2)?.map(|v| v as f32);
                unary(&mut b, Op::Clip(lo, hi))?
            }
            "Softmax" | "LogSoftmax" | "LayerNormalization" | "ReduceSum" | "ReduceMean"
            | "ReduceMax" => {
                if ni + 1 != body.nodes.len() {
                    return unsupported(format!("{} is not the body's last node", n.describe()));
                }
                let (x, xs) = arg(&mut b, 0)?;
                let rank = xs.len();
                let t = match n.op.as_str() {
                    "Softmax" | "LogSoftmax" => {
                        let axis = norm_axis(attr_i(n, "axis", -1)?, rank)?;
                        if rank > 0 && axis + 1 != rank {
                            return unsupported(format!("{} over a non-last axis", n.op));
                        }
                        Tail {
                            kind: Kind::Softmax {
                                x,
                                log: n.op == "LogSoftmax",
                            },
                            split: rank.saturating_sub(1),
                            out_shape: xs.clone(),
                            x_shape: xs,
                        }
                    }
                    "LayerNormalization" => {
                        if rank == 0 {
                            return unsupported("LayerNormalization of a scalar");
                        }
                        let axis = norm_axis(attr_i(n, "axis", -1)?, rank)?;
                        let eps = attr_f(n, "epsilon", 1e-5)?;
                        let (scale, ss) = arg(&mut b, 1)?;
                        if broadcast(&ss, &xs)? != xs {
                            return Err(format!("LayerNormalization scale {ss:?} vs {xs:?}"));
                        }
                        let bias = match n.input(2) {
                            Some(v) => {
                                let (e, bs) = b.operand(v)?;
                                if broadcast(&bs, &xs)? != xs {
                                    return Err(format!(
                                        "LayerNormalization bias {bs:?} vs {xs:?}"
                                    ));
                                }
                                Some(e)
                            }
                            None => None,
                        };
                        Tail {
                            kind: Kind::LayerNorm {
                                x,
                                scale,
                                bias,
                                eps,
                            },
                            split: axis,
                            out_shape: xs.clone(),
                            x_shape: xs,
                        }
                    }
                    _ => {
                        let op = match n.op.as_str() {
                            "ReduceSum" => RedOp::Sum,
                            "ReduceMean" => RedOp::Mean,
                            _ => RedOp::Max,
                        };
                        let keep = attr_i(n, "keepdims", 1)? != 0;
                        let noop = attr_i(n, "noop_with_empty_axes", 0)? != 0;
                        let axes = reduce_axes(m, n)?.unwrap_or_default();
                        let mut ax = axes
                            .iter()
                            .map(|&a| norm_axis(a, rank))
                            .collect::<R<Vec<usize>>>()?;
                        ax.sort_unstable();
                        ax.dedup();
                        if ax.is_empty() {
                            if noop {
                                // The identity: an elementwise body.
                                ops.pop();
                                ops.push("ReduceNoop".into());
                                b.vals.insert(out, (x, xs));
                                continue;
                            }
                            ax = (0..rank).collect();
                        }
                        let split = ax.first().copied().unwrap_or(rank);
                        if ax.iter().enumerate().any(|(i, &a)| a != split + i)
                            || ax.last().map_or(rank, |&l| l + 1) != rank
                        {
                            return unsupported(format!(
                                "{} over axes {axes:?}: only trailing axes",
                                n.op
                            ));
                        }
                        let out_shape: Vec<usize> = if keep {
                            xs.iter()
                                .enumerate()
                                .map(|(d, &s)| if d >= split { 1 } else { s })
                                .collect()
                        } else {
                            xs[..split].to_vec()
                        };
                        Tail {
                            kind: Kind::Reduce { x, op },
                            x_shape: xs,
                            split,
                            out_shape,
                        }
                    }
                };
                if n.outputs.iter().skip(1).any(|o| body.outputs.contains(o)) {
                    return unsupported(format!("{} with more than one used result", n.op));
                }
                if body.outputs.as_slice() != [out] {
                    return unsupported("a reduction body with other outputs");
                }
                tail = Some(t);
                continue;
            }
            other => return unsupported(format!("op {other}")),
        };
        b.vals.insert(out, res);
    }
    let describe = ops.join("+");
    let (kind, shape, split, out_shapes) = match tail {
        Some(t) => (t.kind, t.x_shape, t.split, vec![t.out_shape]),
        None => {
            let mut roots = Vec::new();
            let mut shapes = Vec::new();
            for &o in &body.outputs {
                f32_value(o)?;
                let (e, s) = b.operand(o)?;
                roots.push(e);
                shapes.push(s);
            }
            let Some(s0) = shapes.first().cloned() else {
                return unsupported("a body without outputs");
            };
            if shapes.iter().any(|s| *s != s0) {
                return unsupported(format!("outputs of different shapes {shapes:?}"));
            }
            let r = s0.len();
            (Kind::Elementwise { roots }, s0, r, shapes)
        }
    };
    let elementwise = matches!(kind, Kind::Elementwise { .. });
    let used = used_leaves(&b.exprs, &kind, b.leaves.len());
    let (outer, inner, leaves) = layout(&shape, split, elementwise, &b.leaves, &used)?;
    Ok(Plan {
        flat: elementwise && outer.is_empty(),
        outer,
        inner,
        leaves,
        exprs: b.exprs,
        kind,
        consts: b.consts,
        out_shapes,
        describe,
    })
}

/// Which leaves the roots of `kind` read.
fn used_leaves(exprs: &[Expr], kind: &Kind, n: usize) -> Vec<bool> {
    let mut stack: Vec<usize> = match kind {
        Kind::Elementwise { roots } => roots.clone(),
        Kind::Softmax { x, .. } | Kind::Reduce { x, .. } => vec![*x],
        Kind::LayerNorm { x, scale, bias, .. } => {
            let mut r = vec![*x, *scale];
            r.extend(bias);
            r
        }
    };
    let mut seen = vec![false; exprs.len()];
    let mut used = vec![false; n];
    while let Some(e) = stack.pop() {
        if std::mem::replace(&mut seen[e], true) {
            continue;
        }
        match &exprs[e] {
            Expr::Leaf(k) => used[*k] = true,
            Expr::Node(_, args) => stack.extend(args),
            Expr::Imm(_) => {}
        }
    }
    used
}

/// Element strides of a leaf of shape `l` broadcast to `s` (right-aligned).
fn bstrides(l: &[usize], s: &[usize]) -> R<Vec<usize>> {
    if l.len() > s.len() {
        return Err(format!("shape {l:?} does not broadcast to {s:?}"));
    }
    let off = s.len() - l.len();
    let mut st = vec![0; s.len()];
    let mut acc = 1;
    for d in (0..l.len()).rev() {
        let sd = s[d + off];
        if l[d] == sd && sd != 1 {
            st[d + off] = acc;
        } else if l[d] != 1 {
            return Err(format!("shape {l:?} does not broadcast to {s:?}"));
        }
        acc *= l[d];
    }
    Ok(st)
}

/// Collapse the iteration space `s` (dims before `split` are rows, the rest
/// the inner run) into few dims: drop size-1 dims, merge neighbours every
/// array walks contiguously. The outputs are contiguous over `s` and take
/// part in the merge test (a reduction's one-per-row output is contiguous
/// over the rows, which the same test covers).
type Layout = (Vec<usize>, usize, Vec<Leaf>);

fn layout(
    s: &[usize],
    split: usize,
    elementwise: bool,
    leaves: &[(Src, Vec<usize>)],
    used: &[bool],
) -> R<Layout> {
    let contiguous = bstrides(s, s)?;
    let mut arrays = vec![contiguous];
    for ((_, l), &u) in leaves.iter().zip(used) {
        // Unused leaves get all-zero strides: never read, no constraint.
        arrays.push(if u { bstrides(l, s)? } else { vec![0; s.len()] });
    }
    // (size, is_outer, strides per array)
    let mut dims: Vec<(usize, bool, Vec<usize>)> = (0..s.len())
        .filter(|&d| s[d] != 1)
        .map(|d| (s[d], d < split, arrays.iter().map(|a| a[d]).collect()))
        .collect();
    // A reduction keeps an inner dim even when all its dims have size 1.
    if !elementwise && !dims.iter().any(|d| !d.1) {
        dims.push((1, false, vec![0; arrays.len()]));
    }
    if elementwise && dims.is_empty() {
        dims.push((1, false, vec![0; arrays.len()]));
    }
    // Elementwise: every dim may join the inner run (merged below while
    // the strides allow); the run is the last merged dim, the rest are
    // rows. A Relu over [64, 111, 111] is then one flat run of 788,544
    // elements, not 7,104 rows of 111 with a scalar tail each.
    if elementwise {
        for d in dims.iter_mut() {
            d.1 = false;
        }
    }
    let mut merged: Vec<(usize, bool, Vec<usize>)> = Vec::new();
    for d in dims.into_iter().rev() {
        if let Some(prev) = merged.last_mut() {
            let ok = prev.1 == d.1
                && d.2
                    .iter()
                    .zip(&prev.2)
                    .all(|(&outer, &inner)| outer == inner * prev.0);
            if ok {
                prev.0 *= d.0;
                continue;
            }
        }
        merged.push(d);
    }
    merged.reverse();
    if elementwise {
        let last = merged.len() - 1;
        for (i, d) in merged.iter_mut().enumerate() {
            d.1 = i != last;
        }
    }
    let inner_dims: Vec<_> = merged.iter().filter(|d| !d.1).collect();
    if inner_dims.len() != 1 {
        return unsupported("a reduction over dims that do not merge into one run");
    }
    let inner = inner_dims[0].0;
    let outer: Vec<usize> = merged.iter().filter(|d| d.1).map(|d| d.0).collect();
    let mut out = Vec::new();
    for (k, (src, _)) in leaves.iter().enumerate() {
        let a = k + 1;
        let inner_stride = merged.last().map_or(0, |d| d.2[a]);
        if inner_stride > 1 {
            return unsupported("an operand with a strided inner run");
        }
        out.push(Leaf {
            src: *src,
            used: used[k],
            outer_strides: merged.iter().filter(|d| d.1).map(|d| d.2[a]).collect(),
            inner_stride,
        });
    }
    Ok((outer, inner, out))
}
