//! The fusion rules of pass `fuse`: which ops are fusible (their class) and
//! the table of grouping rules, one small function each. The plan they
//! read (and its terms: `Class`, `Kind`, `Merge`) is in `plan.rs`; the
//! machinery that applies them and rewrites the module is in `mod.rs`.
//!
//! Every rule keeps one invariant of a group: only its root's results are
//! used outside it (every other member has all its users inside). With
//! that, a group never needs a value computed after its root, so fusing
//! cannot create a cycle, and nothing is recomputed: a value with users in
//! several groups is a group output.

use kiln_ir::ops::Reduction;
use kiln_ir::{Module, Node, Type};

use super::plan::Plan;
// The plan's terms, at the paths they have always had.
pub use super::plan::{Class, Kind, Merge};

/// The class of a node, or why it is not fusible. The class comes from
/// the op's traits (`kiln_ir::ops::traits`), not from a list here: any
/// pointwise or channelwise op is elementwise, any reduction or
/// normalization a reduction, any contraction an anchor. Whether a backend
/// can compile the resulting group is the backend's business: the CPU
/// backend generates code for some bodies and runs the others on the
/// interpreter, so fusion needs no list of what a backend supports.
pub fn classify(m: &Module, n: &Node) -> Result<Class, String> {
    let op = n.op.as_str();
    if op == "kiln.Fusion" {
        return Err("already a fusion".into());
    }
    let t = kiln_ir::ops::traits(op);
    let class = if t.is_pointwise() || t.channelwise {
        Class::Elementwise
    } else if t.reduction != Reduction::No {
        Class::Reduction
    } else if t.contraction {
        Class::Anchor
    } else {
        return Err(format!(
            "{op} is not elementwise, a reduction or a matmul/conv"
        ));
    };
    let results = match class {
        Class::Reduction => !n.outputs.is_empty(),
        _ => n.outputs.len() == 1,
    };
    if !results {
        return Err(format!("{op} with {} results", n.outputs.len()));
    }
    // Channelwise ops are per-channel maps in inference mode only.
    if t.channelwise
        && n.attr("training_mode")
            .and_then(|a| a.as_int())
            .unwrap_or(0)
            != 0
    {
        return Err(format!("training-mode {op}"));
    }
    // A reduction's axes (or any operand inference reads the values of)
    // given only at run time: a fusion body would hide them from the
    // per-value specialization that lowers the node alone.
    if class == Class::Reduction
        && kiln_ir::ops::value_operands(m, n)
            .iter()
            .any(|&k| n.input(k).is_some_and(|v| m.constant(v).is_none()))
    {
        return Err(format!("{op} with operand values known only at run time"));
    }
    if class == Class::Elementwise {
        // Integer scalars and vectors are shape arithmetic: keep them as
        // they are so shape values still propagate to Reshape & co.
        match m.ty(n.outputs[0]) {
            Type::Tensor(t) => {
                let int = t.elem.is_int();
                if int && t.rank().is_some_and(|r| r <= 1) {
                    return Err(format!(
                        "{op} on integer rank<=1 values is shape arithmetic"
                    ));
                }
            }
            _ => return Err(format!("{op} on a non-tensor value")),
        }
    }
    Ok(class)
}

/// A grouping rule: looks at node `i` of the plan's region.
pub type RuleFn = fn(&Plan, usize) -> Vec<Merge>;

/// In which order a rule visits the nodes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Consumers before producers (a producer joins its consumers' group).
    Backward,
    /// Producers before consumers.
    Forward,
}

/// The rules, applied one after the other, each over the whole region.
pub const RULES: &[(&str, Order, RuleFn)] = &[
    (
        "elementwise producer joins its consumers",
        Order::Backward,
        elementwise_into_consumers,
    ),
    (
        "reduction absorbs its elementwise producers",
        Order::Forward,
        reduction_absorbs_producers,
    ),
    (
        "matmul/conv takes an elementwise epilogue",
        Order::Forward,
        epilogue,
    ),
];

/// (1) An elementwise node joins the group of its consumers when all of
/// them are elementwise and in one group, and its result is not a region
/// output: chains and DAGs (a value used twice inside, like `x * sigmoid(x)`)
/// become one group.
fn elementwise_into_consumers(p: &Plan, i: usize) -> Vec<Merge> {
    if p.class[i] != Ok(Class::Elementwise) {
        return vec![];
    }
    let v = p.nodes[i].outputs[0];
    let Some(g) = p.sole_user_group(v) else {
        return vec![];
    };
    if !p.is_elementwise_group(g) {
        return vec![];
    }
    vec![Merge {
        from: p.group_of[i],
        into: g,
        kind: Kind::Elementwise,
        anchor: None,
    }]
}

/// (2) A reduction (or Softmax, LogSoftmax, LayerNormalization) absorbs
/// each elementwise group whose root result it alone uses.
fn reduction_absorbs_producers(p: &Plan, i: usize) -> Vec<Merge> {
    if p.class[i] != Ok(Class::Reduction) {
        return vec![];
    }
    let mut out = vec![];
    let mut seen = vec![];
    for v in p.nodes[i].inputs.iter().flatten() {
        let Some(&d) = p.def.get(v) else { continue };
        let g = p.group_of[d];
        if seen.contains(&g) || g == p.group_of[i] {
            continue;
        }
        seen.push(g);
        if p.is_elementwise_group(g)
            && p.groups[g].root == d
            && p.sole_user_group(*v) == Some(p.group_of[i])
        {
            out.push(Merge {
                from: g,
                into: p.group_of[i],
                kind: Kind::Reduction,
                anchor: None,
            });
        }
    }
    out
}

/// (3) A MatMul/Gemm/Conv/ConvTranspose whose users are all in one
/// elementwise group becomes that group's root op: bias Add, activation
/// and residual Add applied to its output in the same kernel. The users
/// may be several: SiLU, `x * Sigmoid(x)`, reads the conv's result twice.
fn epilogue(p: &Plan, i: usize) -> Vec<Merge> {
    if p.class[i] != Ok(Class::Anchor) {
        return vec![];
    }
    let v = p.nodes[i].outputs[0];
    let Some(g) = p.sole_user_group(v) else {
        return vec![];
    };
    if !p.is_elementwise_group(g) || p.groups[g].anchor.is_some() {
        return vec![];
    }
    vec![Merge {
        from: p.group_of[i],
        into: g,
        kind: Kind::Epilogue,
        anchor: Some(i),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(text: &str) -> Vec<(String, Result<Class, String>)> {
        let m = kiln_ir::parse_module(text).expect("parse");
        m.body
            .nodes
            .iter()
            .map(|n| (n.op.clone(), classify(&m, n)))
            .collect()
    }

    /// The classes come from the op traits. Shrink, BitShift and the
    /// Bitwise ops are pointwise (the memory plan always said so; fusion's
    /// own list left them out), and so are Identity, Binarizer and the
    /// string ops; LpNormalization is a normalization like Softmax,
    /// DeformConv a contraction like Conv.
    #[test]
    fn classes_follow_the_op_traits() {
        let got = classes(
            r#"module @c opset(ai.onnx = 22, ai.onnx.ml = 5) {
  input %x: f32[2,3,4,4]
  input %u: u32[2,3]
  input %i: i32[2,3]
  input %w: f32[5,3,3,3]
  input %off: f32[2,18,2,2]
  input %s: string[2,3]
  %a = Shrink(%x) : f32[2,3,4,4]
  %b = BitShift(%u, %u) {direction = "LEFT"} : u32[2,3]
  %c = BitwiseAnd(%i, %i) : i32[2,3]
  %d = BitwiseNot(%i) : i32[2,3]
  %e = Identity(%x) : f32[2,3,4,4]
  %f = ai.onnx.ml.Binarizer(%x) : f32[2,3,4,4]
  %g = StringConcat(%s, %s) : string[2,3]
  %h = LpNormalization(%x) : f32[2,3,4,4]
  %k = Softmax(%x) : f32[2,3,4,4]
  %l = DeformConv(%x, %w, %off) : f32[2,5,2,2]
  %n = Conv(%x, %w) : f32[2,5,2,2]
  %t = Transpose(%x) : f32[4,4,3,2]
  %v = BitwiseAnd(%u, %u) : u32[2,3]
  return %a, %b, %c, %d, %e, %f, %g, %h, %k, %l, %n, %t, %v
}"#,
        );
        let want = [
            ("Shrink", Ok(Class::Elementwise)),
            ("BitShift", Ok(Class::Elementwise)),
            ("BitwiseAnd", Ok(Class::Elementwise)),
            ("BitwiseNot", Ok(Class::Elementwise)),
            ("Identity", Ok(Class::Elementwise)),
            ("ai.onnx.ml.Binarizer", Ok(Class::Elementwise)),
            ("StringConcat", Ok(Class::Elementwise)),
            ("LpNormalization", Ok(Class::Reduction)),
            ("Softmax", Ok(Class::Reduction)),
            ("DeformConv", Ok(Class::Anchor)),
            ("Conv", Ok(Class::Anchor)),
            (
                "Transpose",
                Err("Transpose is not elementwise, a reduction or a matmul/conv".to_string()),
            ),
            ("BitwiseAnd", Ok(Class::Elementwise)),
        ];
        let want: Vec<(String, Result<Class, String>)> =
            want.into_iter().map(|(o, c)| (o.to_string(), c)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn channelwise_ops_fuse_in_inference_mode_only() {
        let got = classes(
            r#"module @bn opset(ai.onnx = 22) {
  input %x: f32[2,3,4]
  input %p: f32[3]
  %a = BatchNormalization(%x, %p, %p, %p, %p) : f32[2,3,4]
  %b = BatchNormalization(%x, %p, %p, %p, %p) {training_mode = 1} : f32[2,3,4]
  return %a, %b
}"#,
        );
        assert_eq!(got[0].1, Ok(Class::Elementwise));
        assert_eq!(got[1].1, Err("training-mode BatchNormalization".into()));
    }
}
