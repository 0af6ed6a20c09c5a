//! The verifier: checks a [`Module`] against the op registry and the IR's
//! structural rules (SSA definitions and dominance, region signatures,
//! constants matching their types, result types agreeing with inference).
//!
//! Every error names where it happened (region path, node index, node) and
//! the rule broken, in one line.

use std::collections::HashSet;

use crate::module::{Module, Node, Region, ValueId};
use crate::ops::{self, Known};
use crate::tensor::Payload;
use crate::types::types_compatible;

pub(crate) mod error;
pub use error::constant_node_data_attrs;

pub(crate) use error::{constant_node_data, node_regions, region_path};
pub use error::{type_str, Location, Rule, VerifyError};

/// Verify a module; the first error found (in program order).
#[allow(clippy::result_large_err)]
pub fn verify(m: &Module) -> Result<(), VerifyError> {
    match verify_all(m).into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Verify a module, collecting every error (in program order).
pub fn verify_all(m: &Module) -> Vec<VerifyError> {
    let mut v = Verifier {
        m,
        errors: vec![],
        defined: HashSet::new(),
        known: Known::default(),
    };
    v.region(&m.body, "main", &HashSet::new());
    v.errors
}

struct Verifier<'a> {
    m: &'a Module,
    errors: Vec<VerifyError>,
    defined: HashSet<ValueId>,
    known: Known,
}

impl<'a> Verifier<'a> {
    fn valid(&self, id: ValueId) -> bool {
        id.index() < self.m.num_values()
    }

    fn push(&mut self, region: &str, node: Option<(usize, &Node)>, rule: Rule) {
        self.errors.push(VerifyError {
            location: Location {
                region: region.to_string(),
                node_index: node.map(|n| n.0),
                node: node.map(|n| n.1.describe()),
                op: node.map(|n| n.1.op.clone()),
            },
            rule,
        });
    }

    /// Define a value; false (and an error) if it is invalid or redefined.
    fn define(
        &mut self,
        id: ValueId,
        what: &str,
        path: &str,
        node: Option<(usize, &Node)>,
    ) -> bool {
        if !self.valid(id) {
            self.push(
                path,
                node,
                Rule::BadValueId {
                    what: what.to_string(),
                    id: id.0,
                },
            );
            return false;
        }
        if !self.defined.insert(id) {
            self.push(
                path,
                node,
                Rule::Redefined {
                    value: self.m.name(id).to_string(),
                },
            );
            return false;
        }
        if let Some(msg) = self.m.ty(id).as_tensor().and_then(quant_problem) {
            let value = self.m.name(id).to_string();
            self.push(path, node, Rule::QuantParams { value, msg });
        }
        true
    }

    fn region(&mut self, r: &'a Region, path: &str, outer: &HashSet<ValueId>) {
        let mut visible = outer.clone();
        for &v in &r.inputs {
            if self.define(v, "region input", path, None) {
                visible.insert(v);
            }
        }
        for &c in &r.constants {
            if self.define(c, "constant", path, None) {
                visible.insert(c);
                self.check_constant(c, path);
            }
        }
        for (idx, node) in r.nodes.iter().enumerate() {
            self.node(idx, node, path, &visible);
            for &o in &node.outputs {
                if self.valid(o) {
                    visible.insert(o);
                }
            }
        }
        for (i, &o) in r.outputs.iter().enumerate() {
            if !self.valid(o) {
                self.push(
                    path,
                    None,
                    Rule::BadValueId {
                        what: format!("region output {i}"),
                        id: o.0,
                    },
                );
            } else if !visible.contains(&o) {
                self.push(
                    path,
                    None,
                    Rule::RegionOutputUndefined {
                        index: i,
                        value: self.m.name(o).to_string(),
                    },
                );
            }
        }
    }

    fn check_constant(&mut self, c: ValueId, path: &str) {
        let name = self.m.name(c).to_string();
        let bad = |s: &mut Self, msg: String| {
            s.push(
                path,
                None,
                Rule::ConstantData {
                    value: name.clone(),
                    msg,
                },
            )
        };
        let Some(data) = self.m.constant(c) else {
            return bad(self, "listed as a constant but has no data".into());
        };
        let Some(tt) = self.m.ty(c).as_tensor() else {
            return bad(
                self,
                format!("has non-tensor type {}", type_str(self.m.ty(c))),
            );
        };
        if tt.elem != data.elem {
            return bad(
                self,
                format!("type says {} but the data is {}", tt.elem, data.elem),
            );
        }
        if tt.static_shape().as_deref() != Some(&data.shape[..]) {
            return bad(
                self,
                format!(
                    "type {} does not match the data shape {:?}",
                    type_str(self.m.ty(c)),
                    data.shape
                ),
            );
        }
        let n = crate::tensor::shape_numel(&data.shape);
        match (&data.payload, n) {
            (_, None) => bad(self, "shape too large".into()),
            (Payload::Bytes(b), Some(n)) => {
                if data.elem.storage_bytes(n) != Some(b.len() as u64) {
                    bad(
                        self,
                        format!("{} bytes for {n} {} elements", b.len(), data.elem),
                    );
                }
            }
            (Payload::Strings(s), Some(n)) => {
                if data.elem != crate::types::ElemType::String || s.len() as u64 != n {
                    bad(
                        self,
                        format!("{} strings for {n} {} elements", s.len(), data.elem),
                    );
                }
            }
            (Payload::Elided, _) => {}
        }
    }

    fn node(&mut self, idx: usize, node: &'a Node, path: &str, visible: &HashSet<ValueId>) {
        let here = Some((idx, node));
        let before = self.errors.len();
        let schema = ops::lookup(&node.op);
        match schema {
            None => self.push(path, here, Rule::UnknownOp),
            Some(s) => {
                let (ni, no) = (node.inputs.len(), node.outputs.len());
                if ni < s.min_inputs || ni > s.max_inputs {
                    self.push(
                        path,
                        here,
                        Rule::InputCount {
                            got: ni,
                            min: s.min_inputs,
                            max: s.max_inputs,
                        },
                    );
                }
                if no < s.min_outputs || no > s.max_outputs {
                    self.push(
                        path,
                        here,
                        Rule::OutputCount {
                            got: no,
                            min: s.min_outputs,
                            max: s.max_outputs,
                        },
                    );
                }
                for i in 0..ni {
                    if node.inputs[i].is_none() && !s.input_optional(i) {
                        self.push(path, here, Rule::MissingOperand { index: i });
                    }
                }
                for (name, a) in &node.attrs {
                    match s.attr(name) {
                        None => self.push(path, here, Rule::UnknownAttr { name: name.clone() }),
                        Some(spec) if spec.kind != a.kind() => self.push(
                            path,
                            here,
                            Rule::AttrKind {
                                name: name.clone(),
                                expected: spec.kind,
                                got: a.kind(),
                            },
                        ),
                        _ => {}
                    }
                }
                for spec in s.attrs.iter().filter(|a| a.required) {
                    if !node.attrs.contains_key(spec.name) {
                        self.push(
                            path,
                            here,
                            Rule::MissingAttr {
                                name: spec.name.to_string(),
                            },
                        );
                    }
                }
            }
        }
        for (i, v) in node.inputs.iter().enumerate() {
            let Some(v) = *v else { continue };
            if !self.valid(v) {
                self.push(
                    path,
                    here,
                    Rule::BadValueId {
                        what: format!("operand {i}"),
                        id: v.0,
                    },
                );
            } else if !visible.contains(&v) {
                self.push(
                    path,
                    here,
                    Rule::UseBeforeDef {
                        index: i,
                        value: self.m.name(v).to_string(),
                    },
                );
            }
        }
        if let Some(msg) = region_signature(node) {
            self.push(path, here, Rule::RegionSignature(msg));
        }
        if node.op == FUSION {
            self.fusion_operands(idx, node, path);
        }
        // Nested regions see what is visible at this node; a fusion body
        // sees only its own inputs and constants (no captures).
        let closed = HashSet::new();
        for (attr, nth, r) in node_regions(node) {
            let p = region_path(path, idx, node, attr, nth);
            let outer = if node.op == FUSION { &closed } else { visible };
            self.region(r, &p, outer);
        }
        let mut outs_ok = true;
        for (i, &o) in node.outputs.iter().enumerate() {
            outs_ok &= self.define(o, &format!("result {i}"), path, here);
        }
        if let (Some(d), Some(&o)) = (constant_node_data(node), node.outputs.first()) {
            self.known.consts.insert(o, d);
        }
        // Types: only for nodes that are otherwise well formed.
        if self.errors.len() != before || !outs_ok {
            return;
        }
        let Some(s) = schema else { return };
        if !s.has_rule {
            return;
        }
        let ctx = crate::ops::node_ctx(self.m, node, &self.known);
        match (s.infer)(&ctx) {
            Err(e) => self.push(path, here, Rule::Infer(e)),
            Ok(tys) => {
                if tys.len() < node.outputs.len() {
                    self.push(
                        path,
                        here,
                        Rule::InferArity {
                            got: tys.len(),
                            expected: node.outputs.len(),
                        },
                    );
                    return;
                }
                for (i, (&o, inferred)) in node.outputs.iter().zip(&tys).enumerate() {
                    let declared = self.m.ty(o);
                    if !types_compatible(declared, inferred) {
                        self.push(
                            path,
                            here,
                            Rule::ResultType {
                                index: i,
                                value: self.m.name(o).to_string(),
                                declared: type_str(declared),
                                inferred: type_str(inferred),
                            },
                        );
                    }
                }
            }
        }
    }
}

/// Kiln's fusion op (its body may not capture outer values).
pub const FUSION: &str = "kiln.Fusion";

impl Verifier<'_> {
    /// `kiln.Fusion`: each body input has a type compatible with its operand.
    fn fusion_operands(&mut self, idx: usize, node: &Node, path: &str) {
        let Some(body) = node.attr("body").and_then(|a| a.as_graph()) else {
            return;
        };
        for (i, (v, &b)) in node.inputs.iter().zip(&body.inputs).enumerate() {
            let Some(v) = *v else {
                self.push(
                    path,
                    Some((idx, node)),
                    Rule::RegionSignature(format!(
                        "operand {i} is omitted; fusion operands are required"
                    )),
                );
                continue;
            };
            if !self.valid(v) || !self.valid(b) {
                continue;
            }
            let (a, t) = (self.m.ty(v), self.m.ty(b));
            if !types_compatible(a, t) {
                let msg = format!(
                    "body input {i} (%{}) is {}, operand %{} is {}",
                    self.m.name(b),
                    type_str(t),
                    self.m.name(v),
                    type_str(a)
                );
                self.push(path, Some((idx, node)), Rule::RegionSignature(msg));
            }
        }
    }
}

/// Signature rules of ops with regions; `Some(message)` when broken.
pub(crate) fn region_signature(node: &Node) -> Option<String> {
    let g = |name: &str| node.attr(name).and_then(|a| a.as_graph());
    let ni = node.inputs.len();
    let no = node.outputs.len();
    match node.op.as_str() {
        "If" => {
            for b in ["then_branch", "else_branch"] {
                if let Some(r) = g(b) {
                    if r.outputs.len() != no {
                        return Some(format!(
                            "{b} has {} outputs, the node has {no} results",
                            r.outputs.len()
                        ));
                    }
                }
            }
        }
        "Loop" => {
            let r = g("body")?;
            let n = ni.saturating_sub(2);
            if r.inputs.len() != 2 + n {
                return Some(format!(
                    "body has {} inputs, expected 2 + {n} (iteration number, condition, loop-carried values)",
                    r.inputs.len()
                ));
            }
            if no < n {
                return Some(format!(
                    "the node has {no} results, fewer than its {n} loop-carried values"
                ));
            }
            let kk = no - n;
            if r.outputs.len() != 1 + n + kk {
                return Some(format!(
                    "body has {} outputs, expected 1 + {n} + {kk} (condition, loop-carried values, scan outputs)",
                    r.outputs.len()
                ));
            }
        }
        "Scan" => {
            let r = g("body")?;
            let m = node
                .attr("num_scan_inputs")
                .and_then(|a| a.as_int())
                .unwrap_or(0);
            let m = usize::try_from(m).ok().filter(|&m| m >= 1 && m <= ni);
            let Some(m) = m else {
                return Some(format!(
                    "num_scan_inputs must be between 1 and the operand count {ni}"
                ));
            };
            let n = ni - m;
            if r.inputs.len() != n + m {
                return Some(format!(
                    "body has {} inputs, expected {n} states + {m} scan inputs",
                    r.inputs.len()
                ));
            }
            if no < n || r.outputs.len() != no {
                return Some(format!(
                    "body has {} outputs and the node {no} results; both must be {n} states + the scan outputs",
                    r.outputs.len()
                ));
            }
            for (name, count) in [
                ("scan_input_axes", m),
                ("scan_input_directions", m),
                ("scan_output_axes", no - n),
                ("scan_output_directions", no - n),
            ] {
                if let Some(v) = node.attr(name).and_then(|a| a.as_ints()) {
                    if v.len() != count {
                        return Some(format!("`{name}` has {} values, expected {count}", v.len()));
                    }
                }
            }
        }
        FUSION => {
            let r = g("body")?;
            if r.inputs.len() != ni || r.outputs.len() != no {
                return Some(format!(
                    "body has {} inputs and {} outputs, the node {ni} operands and {no} results",
                    r.inputs.len(),
                    r.outputs.len()
                ));
            }
            let kind = node.attr("kind").and_then(|a| a.as_str()).unwrap_or("");
            if !crate::ops::kiln::FUSION_KINDS.contains(&kind) {
                return Some(format!(
                    "kind `{kind}` is not one of {}",
                    crate::ops::kiln::FUSION_KINDS.join(", ")
                ));
            }
        }
        "SequenceMap" => {
            let r = g("body")?;
            if r.inputs.len() != ni {
                return Some(format!(
                    "body has {} inputs, the node {ni} operands",
                    r.inputs.len()
                ));
            }
            if r.outputs.len() != no {
                return Some(format!(
                    "body has {} outputs, the node {no} results",
                    r.outputs.len()
                ));
            }
        }
        _ => {}
    }
    None
}

/// What is wrong with the quantization parameters a tensor type carries
/// (rule `QuantParams`): integer or float8 values; as many zero points as
/// scales, at least one, finite scales, zero points in the type's range;
/// one of each without an axis; with one, an axis within the rank and one
/// per index along it (per block of `block_size` indices when blocked).
fn quant_problem(t: &crate::types::TensorType) -> Option<String> {
    use crate::types::Dim;
    let q = t.quant.as_deref()?;
    if !t.elem.is_int() && !t.elem.is_float8() {
        return Some(format!("{} values cannot be quantized", t.elem));
    }
    let n = q.scale.len();
    if n == 0 || q.zero_point.len() != n {
        return Some(format!("{n} scales and {} zero points", q.zero_point.len()));
    }
    if let Some(s) = q.scale.iter().find(|s| !s.is_finite()) {
        return Some(format!("scale {s} is not finite"));
    }
    if let (Some(bits), true) = (t.elem.bit_width(), t.elem.is_int()) {
        let bits = bits.min(63);
        let (lo, hi) = if t.elem.is_signed_int() {
            (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1)
        } else {
            (0, (1i64 << bits) - 1)
        };
        if let Some(z) = q.zero_point.iter().find(|z| !(lo..=hi).contains(*z)) {
            return Some(format!("zero point {z} is outside {lo}..={hi}"));
        }
    }
    let Some(axis) = q.axis else {
        return match (q.block_size, n) {
            (Some(_), _) => Some("blocked parameters need an axis".into()),
            (None, 1) => None,
            (None, n) => Some(format!("{n} scales without an axis")),
        };
    };
    let shape = t.shape.as_ref()?;
    let r = shape.len() as i64;
    if !(-r..r).contains(&axis) {
        return Some(format!("axis {axis} is out of range for rank {r}"));
    }
    let a = if axis < 0 { axis + r } else { axis } as usize;
    match q.block_size {
        Some(0) => Some("block_size must be positive".into()),
        Some(b) => {
            let mut want = 1u64;
            for (i, d) in shape.iter().enumerate() {
                let Dim::Known(d) = d else { return None };
                want = want.saturating_mul(if i == a { d.div_ceil(b) } else { *d });
            }
            (want != n as u64).then(|| format!("{n} scales for {want} blocks"))
        }
        None => match shape[a] {
            Dim::Known(d) if d != n as u64 => {
                Some(format!("{n} scales for axis {axis} of size {d}"))
            }
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attr::Attr;
    use crate::ops::tests::f;
    use crate::tensor::TensorData;
    use crate::types::{Dim, ElemType, TensorType, Type};
    use std::sync::Arc;

    fn unranked() -> Type {
        Type::Tensor(TensorType::unranked(ElemType::F32))
    }

    /// x: f32[N,3,8,8] -> Conv "conv1" (w constant) -> Relu -> Reshape(Constant [0,-1]).
    fn sample() -> Module {
        let mut m = Module::new("g");
        let x = m.add_value("x", f("N,3,8,8")).unwrap();
        let w = m.add_constant_unique(
            "w",
            Arc::new(TensorData::from_f32(vec![4, 3, 3, 3], &[0.5; 108]).unwrap()),
        );
        let y = m.add_value("y", unranked()).unwrap();
        let z = m.add_value("z", f("N,4,6,6")).unwrap();
        let s = m
            .add_value("s", Type::Tensor(TensorType::unranked(ElemType::I64)))
            .unwrap();
        let r = m.add_value("r", f("batch,?")).unwrap();
        m.body.inputs.push(x);
        m.body.constants.push(w);
        let mut conv = Node::new("Conv", vec![Some(x), Some(w)], vec![y]);
        conv.name = "conv1".into();
        m.body.nodes.push(conv);
        m.body.nodes.push(Node::new("Relu", vec![Some(y)], vec![z]));
        let mut c = Node::new("Constant", vec![], vec![s]);
        c.attrs.insert(
            "value".into(),
            Attr::Tensor(Arc::new(TensorData::from_i64(vec![2], &[0, -1]).unwrap())),
        );
        m.body.nodes.push(c);
        m.body
            .nodes
            .push(Node::new("Reshape", vec![Some(z), Some(s)], vec![r]));
        m.body.outputs.push(r);
        m
    }

    fn first_rule(m: &Module) -> Rule {
        verify(m).expect_err("module must be rejected").rule
    }

    /// Inference puts a QuantizeLinear's constant parameters on its
    /// result's type and keeps them through a Reshape of it; the verifier
    /// rejects parameters that do not fit the type.
    #[test]
    fn quantization_is_inferred_and_checked() {
        let src = r#"module @q opset(ai.onnx = 21) {
  input %x: f32[2,4]
  const %s: f32[] = dense[0.05]
  const %z: u8[] = dense[128]
  const %shape: i64[1] = dense[8]
  %q = QuantizeLinear(%x, %s, %z) : u8[2,4]
  %r = Reshape(%q, %shape) : u8[8]
  return %r
}"#;
        let mut m = crate::parse_module(src).expect("parse");
        crate::ops::infer_module(&mut m).expect("infers");
        let quant = |m: &Module, v: &str| {
            let t = m.ty(m.lookup(v).expect("value")).as_tensor().cloned();
            t.and_then(|t| t.quant)
                .map(|q| (q.scale.clone(), q.zero_point.clone(), q.axis))
        };
        assert_eq!(quant(&m, "q"), Some((vec![0.05], vec![128], None)));
        assert_eq!(quant(&m, "r"), Some((vec![0.05], vec![128], None)));
        verify(&m).expect("verifies");
        let bad = [
            "u8[2,4] quant<axis = 1, scale = [0.1, 0.2], zero_point = [0, 0]>",
            "u8[2,4] quant<scale = [0.1], zero_point = [300]>",
            "u8[2,4] quant<axis = 2, scale = [0.1], zero_point = [0]>",
            "u8[2,4] quant<scale = [0.1, 0.2], zero_point = [0, 0]>",
            "u8[2,4] quant<axis = 1, block_size = 2, scale = [0.1], zero_point = [0]>",
        ];
        for ty in bad {
            let text = format!(
                "module @b opset(ai.onnx = 21) {{\n  input %x: {ty}\n  %y = Identity(%x) : u8[2,4]\n  return %y\n}}"
            );
            let m = crate::parse_module(&text).expect("parse");
            assert!(matches!(first_rule(&m), Rule::QuantParams { .. }), "{ty}");
        }
        let good = "module @g opset(ai.onnx = 21) {\n  input %x: u8[2,4] quant<axis = 1, block_size = 2, scale = [0.1, 0.2, 0.3, 0.4], zero_point = [0, 1, 2, 3]>\n  %y = Identity(%x) : u8[2,4]\n  return %y\n}";
        verify(&crate::parse_module(good).expect("parse")).expect("verifies");
    }

    /// A QuantizeLinear/DequantizeLinear whose scale or zero point does not
    /// fit its input (per tensor, per axis, blocked) fails inference, with
    /// the operand named; those that fit verify.
    #[test]
    fn quantization_parameters_must_fit_the_input() {
        let module = |params: &str, attrs: &str| {
            format!(
                "module @q opset(ai.onnx = 21) {{\n  input %x: f32[2,4]\n{params}\n  \
                 %q = QuantizeLinear(%x, %s, %z){attrs} : i8[2,4]\n  \
                 %d = DequantizeLinear(%q, %s, %z){attrs} : f32[2,4]\n  return %d\n}}"
            )
        };
        let cases = [
            ("f32[4]", "i8[4]", " {axis = 1}", true),
            ("f32[2]", "i8[2]", " {axis = 0}", true),
            ("f32[2,2]", "i8[2,2]", " {axis = 1, block_size = 2}", true),
            ("f32[1,4]", "i8[1,4]", " {axis = 0, block_size = 3}", true),
            ("f32[]", "i8[1]", "", true),
            ("f32[3]", "i8[3]", " {axis = 1}", false),
            ("f32[4]", "i8[2]", " {axis = 1}", false),
            ("f32[4]", "i8[4]", " {axis = 0}", false),
            ("f32[2,3]", "i8[2,3]", " {axis = 1, block_size = 2}", false),
            ("f32[4]", "i8[4]", " {axis = 1, block_size = 2}", false),
            ("i32[]", "i8[]", "", false),
        ];
        for (s, z, attrs, fits) in cases {
            let n = |t: &str| {
                let inner = &t[t.find('[').expect("shape") + 1..t.len() - 1];
                inner
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(|d| d.trim().parse::<usize>().expect("dim"))
                    .product::<usize>()
            };
            let params = format!(
                "  const %s: {s} = dense[{}]\n  const %z: {z} = dense[{}]",
                vec!["2"; n(s)].join(", "),
                vec!["1"; n(z)].join(", ")
            );
            let src = module(&params, attrs);
            let m = crate::parse_module(&src).expect("parse");
            let got = verify(&m);
            assert_eq!(got.is_ok(), fits, "{s} {z}{attrs}: {got:?}");
        }
    }

    #[test]
    fn sample_verifies_and_infers() {
        let mut m = sample();
        verify(&m).unwrap();
        crate::ops::infer_module(&mut m).unwrap();
        let y = m.lookup("y").unwrap();
        assert_eq!(m.ty(y), &f("N,4,6,6"));
        let r = m.lookup("r").unwrap();
        // Inferred N,144 refines the declared batch,?: the known dim wins, and
        // the inferred symbol (tied to the input) is kept.
        assert_eq!(m.ty(r), &f("N,144"));
        assert_eq!(
            m.ty(m.lookup("s").unwrap()),
            &Type::tensor(ElemType::I64, vec![Dim::Known(2)])
        );
        verify(&m).unwrap();
    }

    #[test]
    fn declared_symbolic_names_survive_unknown_inference() {
        let mut m = Module::new("g");
        let x = m.add_value("x", f("N,4")).unwrap();
        let n = m
            .add_value(
                "n",
                Type::tensor(ElemType::I64, vec![Dim::Known(2), Dim::sym("nnz")]),
            )
            .unwrap();
        m.body.inputs.push(x);
        m.body
            .nodes
            .push(Node::new("NonZero", vec![Some(x)], vec![n]));
        m.body.outputs.push(n);
        crate::ops::infer_module(&mut m).unwrap();
        assert_eq!(
            m.ty(n),
            &Type::tensor(ElemType::I64, vec![Dim::Known(2), Dim::sym("nnz")])
        );
    }

    #[test]
    fn error_names_node_location_and_rule() {
        let mut m = sample();
        m.body.nodes[0].attrs.insert("pads".into(), Attr::Int(1));
        let e = verify(&m).unwrap_err();
        assert_eq!(e.location.node_index, Some(0));
        assert_eq!(e.location.op.as_deref(), Some("Conv"));
        assert_eq!(
            e.to_string(),
            "main node #0 (Conv \"conv1\"): attribute `pads` must be ints, got int"
        );
    }

    #[test]
    fn unknown_op_and_counts() {
        let mut m = sample();
        m.body.nodes[1].op = "Frobnicate".into();
        assert_eq!(first_rule(&m), Rule::UnknownOp);

        let mut m = sample();
        m.body.nodes[1].inputs.push(None);
        assert_eq!(
            first_rule(&m),
            Rule::InputCount {
                got: 2,
                min: 1,
                max: 1
            }
        );

        let mut m = sample();
        let extra = m.add_value("extra", unranked()).unwrap();
        m.body.nodes[1].outputs.push(extra);
        assert_eq!(
            first_rule(&m),
            Rule::OutputCount {
                got: 2,
                min: 1,
                max: 1
            }
        );

        let mut m = sample();
        m.body.nodes[0].inputs[1] = None;
        assert_eq!(first_rule(&m), Rule::MissingOperand { index: 1 });
    }

    #[test]
    fn attributes() {
        let mut m = sample();
        m.body.nodes[1]
            .attrs
            .insert("alpha".into(), Attr::Float(0.1));
        assert_eq!(
            first_rule(&m),
            Rule::UnknownAttr {
                name: "alpha".into()
            }
        );

        let mut m = sample();
        let x = m.lookup("x").unwrap();
        let c = m.add_value("c", f("N,3,8,8")).unwrap();
        m.body.nodes.push(Node::new("Cast", vec![Some(x)], vec![c]));
        assert_eq!(first_rule(&m), Rule::MissingAttr { name: "to".into() });
    }

    #[test]
    fn dominance_and_single_definition() {
        // Use before definition: swap Relu and Conv.
        let mut m = sample();
        m.body.nodes.swap(0, 1);
        assert!(
            matches!(first_rule(&m), Rule::UseBeforeDef { index: 0, ref value } if value == "y")
        );

        // Defined twice.
        let mut m = sample();
        let y = m.lookup("y").unwrap();
        m.body.nodes[1].outputs[0] = y;
        assert_eq!(first_rule(&m), Rule::Redefined { value: "y".into() });

        // A value id outside the arena.
        let mut m = sample();
        m.body.nodes[1].inputs[0] = Some(ValueId(999));
        assert!(matches!(first_rule(&m), Rule::BadValueId { id: 999, .. }));

        // Region output never defined.
        let mut m = sample();
        let ghost = m.add_value("ghost", unranked()).unwrap();
        m.body.outputs.push(ghost);
        assert_eq!(
            first_rule(&m),
            Rule::RegionOutputUndefined {
                index: 1,
                value: "ghost".into()
            }
        );
    }

    #[test]
    fn constants_match_their_type() {
        let mut m = sample();
        let w = m.lookup("w").unwrap();
        m.set_ty(w, f("4,3,3,2"));
        assert!(matches!(first_rule(&m), Rule::ConstantData { .. }));

        let mut m = sample();
        m.set_ty(
            w,
            Type::tensor(
                ElemType::F16,
                vec![Dim::Known(4), Dim::Known(3), Dim::Known(3), Dim::Known(3)],
            ),
        );
        assert!(matches!(first_rule(&m), Rule::ConstantData { .. }));

        let mut m = sample();
        m.set_constant(w, None);
        assert!(matches!(first_rule(&m), Rule::ConstantData { .. }));

        let mut m = sample();
        let bad = TensorData {
            elem: ElemType::F32,
            shape: vec![4, 3, 3, 3],
            payload: crate::tensor::Payload::Bytes(Arc::from(vec![0u8; 7])),
        };
        m.set_constant(w, Some(Arc::new(bad)));
        assert!(matches!(first_rule(&m), Rule::ConstantData { .. }));
    }

    #[test]
    fn result_types_checked_against_inference() {
        let mut m = sample();
        let y = m.lookup("y").unwrap();
        m.set_ty(y, f("N,4,7,6"));
        let e = verify(&m).unwrap_err();
        assert_eq!(
            e.rule,
            Rule::ResultType {
                index: 0,
                value: "y".into(),
                declared: "f32[N,4,7,6]".into(),
                inferred: "f32[N,4,6,6]".into()
            }
        );
        assert_eq!(e.location.node.as_deref(), Some("Conv \"conv1\""));
        // infer_module reports the same contradiction, or replaces on request.
        assert!(crate::ops::infer_module(&mut m.clone()).is_err());
        crate::ops::infer_module_with(&mut m, crate::ops::DeclaredTypes::Replace).unwrap();
        assert_eq!(m.ty(y), &f("N,4,6,6"));

        let mut m = sample();
        let z = m.lookup("z").unwrap();
        m.set_ty(z, Type::tensor(ElemType::F16, vec![]));
        assert!(matches!(first_rule(&m), Rule::ResultType { .. }));

        // Inference failure (channel mismatch) is reported.
        let mut m = sample();
        let x = m.lookup("x").unwrap();
        m.set_ty(x, f("N,5,8,8"));
        assert!(matches!(first_rule(&m), Rule::Infer(_)));
    }

    /// cond: bool[] -> If with two branches each giving one value.
    fn if_module(then_outs: usize) -> Module {
        let mut m = Module::new("g");
        let cond = m
            .add_value("cond", Type::tensor(ElemType::Bool, vec![]))
            .unwrap();
        let x = m.add_value("x", f("N")).unwrap();
        let t1 = m.add_value("t1", f("N")).unwrap();
        let e1 = m.add_value("e1", f("N")).unwrap();
        let out = m.add_value("out", unranked()).unwrap();
        m.body.inputs.extend([cond, x]);
        let then_r = Region {
            nodes: vec![Node::new("Neg", vec![Some(x)], vec![t1])],
            outputs: vec![t1; then_outs],
            ..Region::default()
        };
        let else_r = Region {
            nodes: vec![Node::new("Abs", vec![Some(x)], vec![e1])],
            outputs: vec![e1],
            ..Region::default()
        };
        let mut n = Node::new("If", vec![Some(cond)], vec![out]);
        n.name = "branch".into();
        n.attrs.insert("then_branch".into(), Attr::Graph(then_r));
        n.attrs.insert("else_branch".into(), Attr::Graph(else_r));
        m.body.nodes.push(n);
        m.body.outputs.push(out);
        m
    }

    #[test]
    fn if_regions() {
        let mut m = if_module(1);
        verify(&m).unwrap();
        crate::ops::infer_module(&mut m).unwrap();
        assert_eq!(m.ty(m.lookup("out").unwrap()), &f("N"));

        let m = if_module(2);
        assert!(matches!(first_rule(&m), Rule::RegionSignature(_)));

        // A value of a branch is not visible outside it.
        let mut m = if_module(1);
        let t1 = m.lookup("t1").unwrap();
        m.body.outputs.push(t1);
        assert_eq!(
            first_rule(&m),
            Rule::RegionOutputUndefined {
                index: 1,
                value: "t1".into()
            }
        );

        // A branch may not use the If's own result.
        let mut m = if_module(1);
        let out = m.lookup("out").unwrap();
        if let Some(Attr::Graph(r)) = m.body.nodes[0].attrs.get_mut("then_branch") {
            r.nodes[0].inputs[0] = Some(out);
        }
        let e = verify(&m).unwrap_err();
        assert_eq!(e.location.region, "main/0:If \"branch\".then_branch");
        assert!(matches!(e.rule, Rule::UseBeforeDef { .. }));
    }

    fn loop_module(body_inputs: usize) -> Module {
        let mut m = Module::new("g");
        let trip = m
            .add_value("trip", Type::tensor(ElemType::I64, vec![]))
            .unwrap();
        let init = m.add_value("init", f("3")).unwrap();
        let i = m
            .add_value("i", Type::tensor(ElemType::I64, vec![]))
            .unwrap();
        let c = m
            .add_value("c", Type::tensor(ElemType::Bool, vec![]))
            .unwrap();
        let acc = m.add_value("acc", f("3")).unwrap();
        let acc2 = m.add_value("acc2", unranked()).unwrap();
        let fin = m.add_value("fin", unranked()).unwrap();
        let scan = m.add_value("scan", unranked()).unwrap();
        m.body.inputs.extend([trip, init]);
        let body = Region {
            inputs: [i, c, acc][..body_inputs].to_vec(),
            nodes: vec![Node::new("Add", vec![Some(acc), Some(init)], vec![acc2])],
            outputs: vec![c, acc2, acc2],
            ..Region::default()
        };
        let mut n = Node::new("Loop", vec![Some(trip), None, Some(init)], vec![fin, scan]);
        n.attrs.insert("body".into(), Attr::Graph(body));
        m.body.nodes.push(n);
        m.body.outputs.extend([fin, scan]);
        m
    }

    #[test]
    fn loop_regions() {
        let mut m = loop_module(3);
        verify(&m).unwrap();
        crate::ops::infer_module(&mut m).unwrap();
        assert_eq!(m.ty(m.lookup("acc2").unwrap()), &f("3"));
        assert_eq!(m.ty(m.lookup("fin").unwrap()), &f("3"));
        assert_eq!(m.ty(m.lookup("scan").unwrap()), &f("?,3"));
        let m = loop_module(2);
        let e = verify(&m).unwrap_err();
        assert!(
            matches!(e.rule, Rule::RegionSignature(ref s) if s.contains("body has 2 inputs")),
            "{e}"
        );
    }

    #[test]
    fn scan_signature() {
        let mut m = Module::new("g");
        let s0 = m.add_value("s0", f("4")).unwrap();
        let xs = m.add_value("xs", f("T,4")).unwrap();
        let st = m.add_value("st", f("4")).unwrap();
        let xi = m.add_value("xi", f("4")).unwrap();
        let st2 = m.add_value("st2", unranked()).unwrap();
        let fs = m.add_value("fs", unranked()).unwrap();
        let ys = m.add_value("ys", unranked()).unwrap();
        m.body.inputs.extend([s0, xs]);
        let body = Region {
            inputs: vec![st, xi],
            nodes: vec![Node::new("Add", vec![Some(st), Some(xi)], vec![st2])],
            outputs: vec![st2, st2],
            ..Region::default()
        };
        let mut n = Node::new("Scan", vec![Some(s0), Some(xs)], vec![fs, ys]);
        n.attrs.insert("body".into(), Attr::Graph(body));
        n.attrs.insert("num_scan_inputs".into(), Attr::Int(1));
        m.body.nodes.push(n);
        m.body.outputs.extend([fs, ys]);
        verify(&m).unwrap();
        crate::ops::infer_module(&mut m).unwrap();
        assert_eq!(m.ty(ys), &f("T,4"));
        m.body.nodes[0]
            .attrs
            .insert("num_scan_inputs".into(), Attr::Int(3));
        assert!(matches!(first_rule(&m), Rule::RegionSignature(_)));
    }

    #[test]
    fn shape_values_propagate_to_reshape() {
        // r1 = Reshape(x, Concat(Gather(Shape(x), [0,1]), [12, 64]))
        // r2 = Reshape(x, Concat(Unsqueeze(Shape(x)[0] * Shape(x)[1]), [-1]))
        let mut m = Module::new("g");
        let i64t = |s: &str| {
            Type::Tensor(TensorType {
                elem: ElemType::I64,
                shape: Some(crate::ops::tests::d(s)),
                quant: None,
            })
        };
        let un = || Type::Tensor(TensorType::unranked(ElemType::I64));
        let x = m.add_value("x", f("N,seq,768")).unwrap();
        m.body.inputs.push(x);
        let cst = |m: &mut Module, name: &str, shape: Vec<u64>, v: &[i64]| {
            let id = m.add_constant_unique(name, Arc::new(TensorData::from_i64(shape, v).unwrap()));
            m.body.constants.push(id);
            id
        };
        let idx01 = cst(&mut m, "idx01", vec![2], &[0, 1]);
        let i0 = cst(&mut m, "i0", vec![], &[0]);
        let i1 = cst(&mut m, "i1", vec![], &[1]);
        let ax0 = cst(&mut m, "ax0", vec![1], &[0]);
        let minus1 = cst(&mut m, "minus1", vec![1], &[-1]);
        let names = ["s", "g", "c", "shp", "a", "b", "ab", "abu", "shp2"];
        let ids: Vec<ValueId> = names
            .iter()
            .map(|n| m.add_value(n, un()).unwrap())
            .collect();
        let [s, g, c, shp, a, b, ab, abu, shp2] = ids[..] else {
            unreachable!()
        };
        let r1 = m.add_value("r1", unranked()).unwrap();
        let r2 = m.add_value("r2", unranked()).unwrap();
        let mut constant = Node::new("Constant", vec![], vec![c]);
        constant
            .attrs
            .insert("value_ints".into(), Attr::Ints(vec![12, 64]));
        let mut concat = Node::new("Concat", vec![Some(g), Some(c)], vec![shp]);
        concat.attrs.insert("axis".into(), Attr::Int(0));
        let mut concat2 = Node::new("Concat", vec![Some(abu), Some(minus1)], vec![shp2]);
        concat2.attrs.insert("axis".into(), Attr::Int(0));
        m.body.nodes = vec![
            Node::new("Shape", vec![Some(x)], vec![s]),
            Node::new("Gather", vec![Some(s), Some(idx01)], vec![g]),
            constant,
            concat,
            Node::new("Reshape", vec![Some(x), Some(shp)], vec![r1]),
            Node::new("Gather", vec![Some(s), Some(i0)], vec![a]),
            Node::new("Gather", vec![Some(s), Some(i1)], vec![b]),
            Node::new("Mul", vec![Some(a), Some(b)], vec![ab]),
            Node::new("Unsqueeze", vec![Some(ab), Some(ax0)], vec![abu]),
            concat2,
            Node::new("Reshape", vec![Some(x), Some(shp2)], vec![r2]),
        ];
        m.body.outputs = vec![r1, r2];
        crate::ops::infer_module(&mut m).unwrap();
        assert_eq!(m.ty(s), &i64t("3"));
        assert_eq!(m.ty(ab), &i64t(""));
        assert_eq!(m.ty(r1), &f("N,seq,12,64"));
        assert_eq!(m.ty(r2), &f("N*seq,768"));
        verify(&m).unwrap();
    }

    #[test]
    fn verify_all_collects_every_error() {
        let mut m = sample();
        m.body.nodes[1].op = "Nope".into();
        m.body.nodes[0].attrs.insert("bogus".into(), Attr::Int(1));
        let errs = verify_all(&m);
        assert_eq!(errs.len(), 2);
        assert_eq!(
            errs[0].rule,
            Rule::UnknownAttr {
                name: "bogus".into()
            }
        );
        assert_eq!(errs[1].rule, Rule::UnknownOp);
    }
}

#[cfg(test)]
mod fusion_tests {
    use super::*;

    const OK: &str = "module @f opset(ai.onnx = 17) {
  input %qk: f32[1,2,4,4]
  input %mask: f32[1,1,1,4]
  %p = kiln.Fusion(%qk, %mask) {
    body = graph {
      input %qk_in: f32[1,2,4,4]
      input %mask_in: f32[1,1,1,4]
      const %scale: f32[] = dense[2.828427]
      %d = Div(%qk_in, %scale) : f32[1,2,4,4]
      %am = Add(%d, %mask_in) : f32[1,2,4,4]
      %p_out = Softmax(%am) {axis = -1} : f32[1,2,4,4]
      return %p_out
    },
    kind = \"reduction\"
  } : f32[1,2,4,4]
  return %p
}
";

    fn rule(src: &str) -> Rule {
        let m = crate::parse_module(src).expect("parse");
        verify(&m).expect_err("invalid").rule
    }

    #[test]
    fn spec_example_verifies_and_infers() {
        let mut m = crate::parse_module(OK).expect("parse");
        verify(&m).expect("valid");
        crate::ops::infer_module(&mut m).expect("infer");
    }

    #[test]
    fn fusion_body_is_closed() {
        // The body uses the outer %mask instead of its input.
        let src = OK.replace("Add(%d, %mask_in)", "Add(%d, %mask)");
        assert!(
            matches!(rule(&src), Rule::UseBeforeDef { .. }),
            "{:?}",
            rule(&src)
        );
    }

    #[test]
    fn fusion_signature() {
        let src = OK.replace("kiln.Fusion(%qk, %mask)", "kiln.Fusion(%qk, %qk)");
        assert!(matches!(rule(&src), Rule::RegionSignature(m) if m.contains("body input 1")));
        let src = OK.replace("kiln.Fusion(%qk, %mask)", "kiln.Fusion(%qk)");
        assert!(matches!(rule(&src), Rule::RegionSignature(m) if m.contains("1 operands")));
        let src = OK.replace("\"reduction\"", "\"loop\"");
        assert!(matches!(rule(&src), Rule::RegionSignature(m) if m.contains("kind `loop`")));
    }
}
