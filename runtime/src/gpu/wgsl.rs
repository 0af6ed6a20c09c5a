//! The WGSL text every kernel generator writes through: bindings declared
//! once per value, number literals that round-trip, the pointwise op table
//! (one arm per `fusion_plan::Op`, the same ops the Cranelift generator
//! lowers), and [`validate`], naga's check that a shader is well formed,
//! run on every generated shader before it reaches a device.

use std::fmt::Write;

use kiln_ir::ElemType;

use crate::fusion_plan::Op;

/// Threads per workgroup of the one-thread-per-element kernels.
pub(crate) const WG: u32 = 256;

/// Threads per row of the row kernels (one workgroup per row).
pub(crate) const ROW_WG: u32 = 64;

/// Sum and max over a row kernel's workgroup (`ROW_WG` threads, `li` the
/// thread's index): trees in workgroup memory; NaN wins the max.
pub(crate) const H_TREE: &str = "var<workgroup> red: array<f32, 64>;\n\
fn tree_sum(li: u32, v: f32) -> f32 {\n  red[li] = v; workgroupBarrier();\n  for (var s = 32u; s > 0u; s = s / 2u) { if (li < s) { red[li] = red[li] + red[li + s]; } workgroupBarrier(); }\n  let t = red[0]; workgroupBarrier(); return t;\n}\n\
fn tree_max(li: u32, v: f32) -> f32 {\n  red[li] = v; workgroupBarrier();\n  for (var s = 32u; s > 0u; s = s / 2u) { if (li < s) { let a = red[li]; let b = red[li + s]; red[li] = select(max(a, b), a + b, knan(a) || knan(b)); } workgroupBarrier(); }\n  let t = red[0]; workgroupBarrier(); return t;\n}";

/// Workgroups per grid dimension (WebGPU's minimum limit; every adapter
/// allows it).
pub(crate) const MAX_GROUPS: u64 = 65535;

/// What binding `i` of a shader holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bind {
    /// Operand `i` of the node.
    Operand(usize),
    /// Result `j` of the node.
    Result(usize),
    /// Data the kernel made at compile time (its `data[i]`).
    Data(usize),
    /// Scratch the kernel's shaders pass values through (its
    /// `scratch[i]` bytes, the executable's own: runs do not overlap).
    Scratch(usize),
}

/// One compute shader and what its bindings are.
#[derive(Clone, Debug)]
pub struct Dispatch {
    pub wgsl: String,
    pub bindings: Vec<Bind>,
    /// Workgroups in x, y, z.
    pub groups: [u32; 3],
}

/// What a GPU step runs: its shaders in order (most have one), the data
/// they read that the kernel made at compile time (folded constants,
/// indices), and how reports describe it.
#[derive(Clone, Debug, Default)]
pub struct GpuKernel {
    pub dispatches: Vec<Dispatch>,
    pub data: Vec<Vec<u8>>,
    /// Bytes of each scratch buffer.
    pub scratch: Vec<u64>,
    /// A scratch buffer (by index) whose first word the shaders set when
    /// they meet input the op rejects (an index out of range), and what
    /// the run's error then says: a device cannot fail a run itself, so
    /// the host reads the flag at the end of the run.
    pub check: Option<(usize, String)>,
    pub describe: String,
    pub flops: f64,
}

/// What makes two bindings the same: the value (an operand read twice is
/// bound once), or the binding itself.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Value(kiln_ir::ValueId),
    Bind(Bind),
}

impl GpuKernel {
    /// A kernel of one shader that reads no data of its own.
    pub fn single(d: Dispatch, describe: String, flops: f64) -> GpuKernel {
        GpuKernel {
            dispatches: vec![d],
            describe,
            flops,
            ..Default::default()
        }
    }
}

/// A WGSL shader under construction: bindings (`b0`, `b1`, ...) declared
/// once per distinct value, helper functions, one entry point `main`.
pub(crate) struct Shader {
    decls: String,
    pub fns: String,
    binds: Vec<Bind>,
    /// The value id behind each operand/result binding (dedup: a value
    /// bound twice would alias a writable binding).
    keys: Vec<(Key, String)>,
    inputs: Vec<Option<kiln_ir::ValueId>>,
    outputs: Vec<kiln_ir::ValueId>,
    helpers: Vec<&'static str>,
}

impl Shader {
    pub fn new(n: &kiln_ir::Node) -> Shader {
        Shader {
            decls: String::new(),
            fns: String::new(),
            binds: vec![],
            keys: vec![],
            inputs: n.inputs.clone(),
            outputs: n.outputs.clone(),
            helpers: vec![],
        }
    }

    /// The array holding `b`, declared as `array<ty>` (`f32`, `i32`,
    /// `u32`). Every binding is `read_write`: a run binds slices of one
    /// arena buffer, and one buffer may not be both read-only and writable
    /// in one dispatch.
    pub fn bind(&mut self, b: Bind, ty: &str) -> String {
        let value = match b {
            Bind::Operand(i) => self.inputs.get(i).copied().flatten(),
            Bind::Result(j) => self.outputs.get(j).copied(),
            Bind::Data(_) | Bind::Scratch(_) => None,
        };
        let key = match value {
            Some(v) => Key::Value(v),
            None => Key::Bind(b),
        };
        if let Some(k) = self.keys.iter().position(|(kk, t)| *kk == key && t == ty) {
            return format!("b{k}");
        }
        let k = self.binds.len();
        self.binds.push(b);
        self.keys.push((key, ty.to_string()));
        let _ = writeln!(
            self.decls,
            "@group(0) @binding({k}) var<storage, read_write> b{k}: array<{ty}>;"
        );
        format!("b{k}")
    }

    /// Include a helper function (by its text) once.
    pub fn helper(&mut self, text: &'static str) {
        if !self.helpers.contains(&text) {
            self.helpers.push(text);
        }
    }

    /// The shader with `body` as the entry point of a 1-D grid of `wg`
    /// threads per workgroup (`gid`: the thread's linear index over a grid
    /// that may wrap into y; `li`: its index in the workgroup; `wgi`: the
    /// workgroup's linear index).
    pub fn finish(self, wg: u32, body: &str, groups: [u32; 3]) -> Dispatch {
        let mut s = self.decls;
        s.push_str(H_NAN);
        for h in self.helpers {
            s.push_str(h);
            s.push('\n');
        }
        s.push_str(&self.fns);
        let _ = write!(
            s,
            "@compute @workgroup_size({wg})\n\
             fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {{\n\
             let wgi = wid.y * nwg.x + wid.x;\n\
             let gid = wgi * {wg}u + li;\n\
             {body}\n}}\n"
        );
        Dispatch {
            wgsl: s,
            bindings: self.binds,
            groups,
        }
    }

    /// The shader with a raw entry point (tiled kernels with their own
    /// workgroup shape and builtins).
    pub fn finish_raw(self, entry: &str, groups: [u32; 3]) -> Dispatch {
        let mut s = self.decls;
        s.push_str(H_NAN);
        for h in self.helpers {
            s.push_str(h);
            s.push('\n');
        }
        s.push_str(&self.fns);
        s.push_str(entry);
        Dispatch {
            wgsl: s,
            bindings: self.binds,
            groups,
        }
    }
}

/// A 1-D grid of `units` workgroups, wrapped into y past the per-dimension
/// limit.
pub(crate) fn grid(units: u64) -> Result<[u32; 3], String> {
    if units == 0 {
        return Ok([0, 1, 1]);
    }
    let x = units.min(MAX_GROUPS);
    let y = units.div_ceil(x);
    if y > MAX_GROUPS {
        return Err(format!("{units} workgroups are more than a grid holds"));
    }
    Ok([x as u32, y as u32, 1])
}

/// Workgroups of `WG` threads for one thread per element.
pub(crate) fn grid_for(elements: u64) -> Result<[u32; 3], String> {
    grid(elements.div_ceil(WG as u64))
}

/// An f32 literal that reads back as the same value.
pub(crate) fn lit(v: f32) -> String {
    if v.is_nan() {
        "bitcast<f32>(0x7fc00000u)".into()
    } else if v == f32::INFINITY {
        "bitcast<f32>(0x7f800000u)".into()
    } else if v == f32::NEG_INFINITY {
        "bitcast<f32>(0xff800000u)".into()
    } else if v == 0.0 || v.abs() < f32::MIN_POSITIVE {
        // Subnormals as bits: a decimal literal of one may be rejected.
        format!("bitcast<f32>({}u)", v.to_bits())
    } else if v < 0.0 {
        format!("(-{:e}f)", -v)
    } else {
        format!("{v:e}f")
    }
}

/// NaN by its bits: `x != x` may be folded to false by a driver that
/// assumes no NaNs (WGSL lets it; lavapipe does), which would lose the
/// NaNs ONNX propagates. Every shader has it.
pub(crate) const H_NAN: &str =
    "fn knan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }\n";

/// Helper functions the op table uses.
pub(crate) const H_MINMAX: &str = "fn kmin(a: f32, b: f32) -> f32 { if (knan(a) || knan(b)) { return a + b; } return min(a, b); }\n\
fn kmax(a: f32, b: f32) -> f32 { if (knan(a) || knan(b)) { return a + b; } return max(a, b); }";
/// tanh without the cancellation of (e^2x − 1)/(e^2x + 1) near 0 (which
/// a driver's `tanh` may use): Cephes' odd polynomial below 0.625, the
/// exponential form above.
pub(crate) const H_TANH: &str = "fn ktanh(x: f32) -> f32 {\n\
  if (knan(x)) { return x; }\n\
  let a = abs(x);\n\
  if (a < 0.625) { let z = x * x; return ((((-5.70498872745e-3 * z + 2.06390887954e-2) * z - 5.37397155531e-2) * z + 1.33314422036e-1) * z - 3.33332819422e-1) * z * x + x; }\n\
  let t = 1.0 - 2.0 / (exp(2.0 * min(a, 10.0)) + 1.0);\n\
  return select(t, -t, x < 0.0);\n}";
pub(crate) const H_ERF: &str = "fn kerf(x0: f32) -> f32 {\n\
  let x = clamp(x0, -4.0, 4.0); let x2 = x * x;\n\
  let p = (((((( -2.7261422e-10 * x2 + 2.7706814e-8) * x2 - 2.101024e-6) * x2 - 5.6925064e-5) * x2 - 7.3499063e-4) * x2 - 2.9546001e-3) * x2 - 1.6096033e-2);\n\
  let q = ((((-1.4566072e-5 * x2 - 2.1337406e-4) * x2 - 1.682827e-3) * x2 - 7.373329e-3) * x2 - 1.4264739e-2);\n\
  if (knan(x0)) { return x0; }\n\
  return clamp(p * x / q, -1.0, 1.0);\n}";
/// log(1 + e^x) with log1p's accuracy where e^x is small (Mish of a
/// negative x): log(u)·e/(u − 1) cancels the rounding of u = 1 + e.
pub(crate) const H_SOFTPLUS: &str = "fn ksoftplus(x: f32) -> f32 {\n\
  if (x > 20.0) { return x; }\n\
  let e = exp(x); let u = 1.0 + e;\n\
  if (u == 1.0) { return e; }\n\
  return log(u) * e / (u - 1.0);\n}";

/// `x^y` as numpy: a negative base to an integral power keeps its sign
/// by the power's parity; `x^0` is 1.
pub(crate) const H_POW: &str = "fn kpow(x: f32, y: f32) -> f32 {\n\
  if (y == 0.0) { return 1.0; }\n\
  if (x < 0.0 && y == round(y)) { let r = exp2(y * klog2(-x)); return select(r, -r, abs(y) % 2.0 == 1.0); }\n\
  return exp2(y * klog2(x));\n}";

/// log, log2 and sqrt outside their domains, which WGSL leaves
/// indeterminate: NaN below 0 (and for NaN), −∞ at 0, as IEEE.
pub(crate) const H_LOG: &str = "fn klog(x: f32) -> f32 { if (x < 0.0 || knan(x)) { return bitcast<f32>(0x7fc00000u); } if (x == 0.0) { return bitcast<f32>(0xff800000u); } return log(x); }\n\
fn klog2(x: f32) -> f32 { if (x < 0.0 || knan(x)) { return bitcast<f32>(0x7fc00000u); } if (x == 0.0) { return bitcast<f32>(0xff800000u); } return log2(x); }\n\
fn ksqrt(x: f32) -> f32 { if (x < 0.0) { return bitcast<f32>(0x7fc00000u); } return sqrt(x); }";

/// The WGSL expression of `op` over argument expressions `a`.
pub(crate) fn op_expr(sh: &mut Shader, op: &Op, a: &[String]) -> String {
    let e = op_value(sh, op, a);
    // A NaN operand gives NaN, as numpy: WGSL leaves a builtin of NaN
    // indeterminate (lavapipe's atan(NaN) is 0). The ops that compare
    // their operand with a threshold give 0 for NaN, as the reference.
    let compares = matches!(
        op,
        Op::ThresholdedRelu(_) | Op::Binarizer(_) | Op::Shrink(..)
    );
    match a {
        [x] if !compares => format!("select({e}, {x}, knan({x}))"),
        _ => e,
    }
}

fn op_value(sh: &mut Shader, op: &Op, a: &[String]) -> String {
    let x = a.first().cloned().unwrap_or_default();
    let y = a.get(1).cloned().unwrap_or_default();
    match op {
        Op::Add => format!("({x} + {y})"),
        Op::Sub => format!("({x} - {y})"),
        Op::Mul => format!("({x} * {y})"),
        Op::Div => format!("({x} / {y})"),
        Op::Min => {
            sh.helper(H_MINMAX);
            format!("kmin({x}, {y})")
        }
        Op::Max => {
            sh.helper(H_MINMAX);
            format!("kmax({x}, {y})")
        }
        Op::Neg => format!("(-{x})"),
        Op::Abs => format!("abs({x})"),
        Op::Round => format!("round({x})"),
        Op::Floor => format!("floor({x})"),
        Op::Ceil => format!("ceil({x})"),
        Op::Relu => format!("select({x}, 0.0, {x} < 0.0)"),
        Op::LeakyRelu(al) => format!("select({x}, {x} * {}, {x} < 0.0)", lit(*al)),
        Op::Sigmoid => format!("(1.0 / (1.0 + exp(-{x})))"),
        Op::HardSigmoid(al, be) => {
            format!("clamp({x} * {} + {}, 0.0, 1.0)", lit(*al), lit(*be))
        }
        Op::HardSwish => format!("({x} * clamp({x} / 6.0 + 0.5, 0.0, 1.0))"),
        Op::Tanh => {
            sh.helper(H_TANH);
            format!("ktanh({x})")
        }
        Op::Exp => format!("exp({x})"),
        Op::Log => {
            sh.helper(H_LOG);
            format!("klog({x})")
        }
        Op::Sqrt => {
            sh.helper(H_LOG);
            format!("ksqrt({x})")
        }
        Op::Reciprocal => format!("(1.0 / {x})"),
        Op::Erf => {
            sh.helper(H_ERF);
            format!("kerf({x})")
        }
        Op::Gelu => {
            sh.helper(H_ERF);
            format!("(0.5 * {x} * (1.0 + kerf({x} * 0.70710678118654752)))")
        }
        Op::GeluTanh => {
            sh.helper(H_TANH);
            format!(
                "(0.5 * {x} * (1.0 + ktanh(0.7978845608028654 * ({x} + 0.044715 * {x} * {x} * {x}))))"
            )
        }
        Op::Powi(n) => {
            let k = n.unsigned_abs();
            let prod = if k == 0 {
                "1.0".to_string()
            } else {
                vec![x.clone(); k as usize].join(" * ")
            };
            if *n < 0 {
                format!("(1.0 / ({prod}))")
            } else {
                format!("({prod})")
            }
        }
        Op::Powf(p) => {
            sh.helper(H_LOG);
            format!("exp({} * klog({x}))", lit(*p))
        }
        Op::Clip(lo, hi) => {
            let mut e = x.clone();
            if let Some(l) = lo {
                e = if l.is_nan() {
                    lit(f32::NAN)
                } else {
                    format!("select({e}, {}, {e} < {})", lit(*l), lit(*l))
                };
            }
            if let Some(h) = hi {
                e = if h.is_nan() {
                    lit(f32::NAN)
                } else {
                    format!("select({e}, {}, {e} > {})", lit(*h), lit(*h))
                };
            }
            e
        }
        Op::Shrink(l, b) => format!(
            "select(select(0.0, {x} - {b}, {x} > {l}), {x} + {b}, {x} < -{l})",
            l = lit(*l),
            b = lit(*b)
        ),
        Op::ThresholdedRelu(al) => format!("select(0.0, {x}, {x} > {})", lit(*al)),
        Op::Binarizer(t) => format!("select(0.0, 1.0, {x} > {})", lit(*t)),
        Op::Softplus => {
            sh.helper(H_SOFTPLUS);
            format!("ksoftplus({x})")
        }
        Op::Elu(al) => format!("select({x}, {} * (exp({x}) - 1.0), {x} < 0.0)", lit(*al)),
        Op::Selu(al, g) => format!(
            "({g} * select({x}, {al} * (exp({x}) - 1.0), {x} <= 0.0))",
            al = lit(*al),
            g = lit(*g)
        ),
        Op::Mish => {
            sh.helper(H_SOFTPLUS);
            sh.helper(H_TANH);
            format!("({x} * ktanh(ksoftplus({x})))")
        }
        Op::Sin => format!("sin({x})"),
        Op::Cos => format!("cos({x})"),
        Op::Tan => format!("tan({x})"),
        Op::Asin => format!("asin({x})"),
        Op::Acos => format!("acos({x})"),
        Op::Atan => format!("atan({x})"),
        Op::Sinh => format!("sinh({x})"),
        Op::Cosh => format!("cosh({x})"),
        Op::Asinh => format!("asinh({x})"),
        Op::Acosh => format!("acosh({x})"),
        Op::Atanh => format!("atanh({x})"),
        Op::Sign => {
            format!("select(select(select(0.0, 1.0, {x} > 0.0), -1.0, {x} < 0.0), {x}, knan({x}))")
        }
        Op::Softsign => format!("({x} / (1.0 + abs({x})))"),
        Op::Celu(al) => format!(
            "select({x}, {a} * (exp({x} / {a}) - 1.0), {x} < 0.0)",
            a = lit(*al)
        ),
        Op::Pow => {
            sh.helper(H_LOG);
            sh.helper(H_POW);
            format!("kpow({x}, {y})")
        }
        Op::PRelu => format!("select({x}, {x} * {y}, {x} < 0.0)"),
        Op::Fmod => format!("({x} % {y})"),
    }
}

/// Bytes per element of the 8- and 16-bit integer types, which the GPU
/// keeps packed, four or two to a 32-bit word (WGSL has no smaller
/// storage type).
pub fn packed_bytes(e: ElemType) -> Option<u32> {
    packed_bits(e).filter(|&b| b >= 8).map(|b| b / 8)
}

/// Bits per element of the integer types the GPU keeps packed in 32-bit
/// words: 4 (two to a byte, low nibble first), 8 or 16.
pub fn packed_bits(e: ElemType) -> Option<u32> {
    match e {
        ElemType::U4 | ElemType::I4 => Some(4),
        ElemType::U8 | ElemType::I8 => Some(8),
        ElemType::U16 | ElemType::I16 => Some(16),
        _ => None,
    }
}

/// The bits of element `idx` of a packed array `buf` of `bits`-bit
/// elements (4, 8 or 16; else a word each), in the low bits of a `u32`.
pub(crate) fn packed_raw(buf: &str, idx: &str, bits: u32) -> String {
    match bits {
        4 => format!("(({buf}[({idx}) >> 3u] >> ((({idx}) & 7u) * 4u)) & 0xfu)"),
        8 => format!("(({buf}[({idx}) >> 2u] >> ((({idx}) & 3u) * 8u)) & 0xffu)"),
        16 => format!("(({buf}[({idx}) >> 1u] >> ((({idx}) & 1u) * 16u)) & 0xffffu)"),
        _ => format!("{buf}[{idx}]"),
    }
}

/// Element `idx` of `buf` as an `i32`, for the integer types kernels
/// read: 4-, 8- and 16-bit ones packed (sign-extended where signed),
/// 32-bit ones a word each.
pub(crate) fn int_read(buf: &str, idx: &str, e: ElemType) -> Result<String, String> {
    if let Some(bits) = packed_bits(e) {
        let raw = packed_raw(buf, idx, bits);
        return Ok(match e {
            ElemType::I4 | ElemType::I8 | ElemType::I16 => {
                format!("(bitcast<i32>({raw} << {sh}u) >> {sh}u)", sh = 32 - bits)
            }
            _ => format!("i32({raw})"),
        });
    }
    Ok(match e {
        ElemType::I32 | ElemType::U32 => format!("bitcast<i32>({buf}[{idx}])"),
        e => return Err(format!("{e} integers on the gpu")),
    })
}

/// `kf16`: an f16's bits (low 16 of a `u32`) as the f32 of the same
/// value, subnormals, infinities and NaN included (by hand: naga asks for
/// a capability adapters may lack before `unpack2x16float`); `kr16`: an
/// f32 rounded to the nearest f16 (half to even), as an f32.
pub(crate) const H_F16: &str = "fn kf16(h: u32) -> f32 {\n\
  let s = (h & 0x8000u) << 16u; let ex = (h >> 10u) & 0x1fu; let m = h & 0x3ffu;\n\
  if (ex == 0u) { return bitcast<f32>(s | bitcast<u32>(f32(m) * 5.9604645e-8)); }\n\
  if (ex == 31u) { return bitcast<f32>(s | 0x7f800000u | (m << 13u)); }\n\
  return bitcast<f32>(s | ((ex + 112u) << 23u) | (m << 13u));\n}\n\
fn kr16(x: f32) -> f32 {\n\
  let b = bitcast<u32>(x); let s = b & 0x80000000u; let a = b & 0x7fffffffu;\n\
  if (a > 0x7f800000u) { return x; }\n\
  if (a >= 0x477ff000u) { return bitcast<f32>(s | 0x7f800000u); }\n\
  if (a < 0x38800000u) { return bitcast<f32>(s | bitcast<u32>(round(bitcast<f32>(a) * 16777216.0) * 5.9604645e-8)); }\n\
  return bitcast<f32>(s | ((a + 0xfffu + ((a >> 13u) & 1u)) & 0xffffe000u));\n}";

/// Element `idx` of `buf` as an `f32`, for f32 data and f16 (two to a
/// word, low half first; the shader needs [`H_F16`]).
pub(crate) fn float_read(buf: &str, idx: &str, e: ElemType) -> Result<String, String> {
    Ok(match e {
        ElemType::F32 => format!("bitcast<f32>({buf}[{idx}])"),
        ElemType::F16 => format!("kf16({})", packed_raw(buf, idx, 16)),
        e => return Err(format!("{e} floats on the gpu")),
    })
}

/// The saturation range of an integer result type the GPU writes (the
/// packed ones).
pub(crate) fn int_range(e: ElemType) -> Result<(i32, i32), String> {
    match (packed_bits(e), e.int_range()) {
        (Some(_), Some((lo, hi))) => Ok((lo as i32, hi as i32)),
        _ => Err(format!("{e} results on the gpu")),
    }
}

/// The body of a shader writing `total` packed elements of `bits` bits
/// (4, 8 or 16) to `y`, one 32-bit word per thread (so no two threads
/// write one word): `lane` is run for each element `e` of the thread's
/// word and leaves its bits in a `u32` named `v`.
pub(crate) fn per_word(y: &str, total: usize, bits: u32, lane: &str) -> String {
    let lanes = 32 / bits;
    let mask = (1u32 << bits) - 1;
    let words = total.div_ceil(lanes as usize);
    format!(
        "if (gid >= {words}u) {{ return; }}\nvar word = 0u;\n\
         for (var l = 0u; l < {lanes}u; l = l + 1u) {{\n let e = gid * {lanes}u + l;\n if (e < {total}u) {{\n{lane}\n  word = word | ((v & {mask}u) << (l * {bits}u));\n }}\n}}\n{y}[gid] = word;"
    )
}

/// Workgroups for [`per_word`] over `total` elements of `bits` bits.
pub(crate) fn grid_per_word(total: usize, bits: u32) -> Result<[u32; 3], String> {
    grid_for(total.div_ceil((32 / bits) as usize) as u64)
}

/// naga's verdict on a shader: parsed and validated, or why not (with the
/// offending line).
pub fn validate(src: &str) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(src).map_err(|e| e.emit_to_string(src))?;
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .map_err(|e| e.emit_to_string(src).to_string())?;
    Ok(())
}
