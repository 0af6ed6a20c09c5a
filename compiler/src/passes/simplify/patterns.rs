//! Pattern rules: activations and normalizations that exporters emit as a
//! handful of elementwise ops, replaced by the single op they compute.
//!
//! Products are matched up to commutativity and association: a tree of
//! `Mul`s (and divisions by one-element constants) is flattened into its
//! non-constant factors and one constant scale, so `x*0.5*(1+erf)`,
//! `0.5*(x*(1+erf))` and `(x*(1+erf))/2` are one pattern.

use super::cx::{
    approx, attr_float, attr_int, broadcasts_into, float_data, node_from, Action, Cx, Rewrite, Use,
};
use kiln_ir::{Attr, ElemType, ValueId};

/// A flattened product: `scale * leaves[0] * leaves[1] * ...`.
struct Product {
    leaves: Vec<ValueId>,
    scale: f64,
    nodes: Vec<usize>,
}

/// Flatten the product rooted at node `root` (a `Mul`, or a `Div` by a
/// one-element constant). Interior Muls are followed only when the root of
/// their subtree is their single use.
fn product_at(cx: &Cx, root: usize) -> Option<Product> {
    let mut p = Product {
        leaves: vec![],
        scale: 1.0,
        nodes: vec![root],
    };
    fn operand(cx: &Cx, v: ValueId, parent: usize, p: &mut Product, depth: usize) -> Option<()> {
        if let Some(c) = cx.scalar(v) {
            p.scale *= c;
            return Some(());
        }
        if depth < 6 && cx.single_use_by(v, parent) {
            if let Some(k) = cx.producer_any(v) {
                if expand(cx, k, p, depth + 1).is_some() {
                    return Some(());
                }
            }
        }
        p.leaves.push(v);
        Some(())
    }
    fn expand(cx: &Cx, k: usize, p: &mut Product, depth: usize) -> Option<()> {
        let n = cx.node(k);
        let (a, b) = (n.input(0)?, n.input(1)?);
        match n.op.as_str() {
            "Mul" => {
                p.nodes.push(k);
                operand(cx, a, k, p, depth)?;
                operand(cx, b, k, p, depth)
            }
            "Div" => {
                let c = cx.scalar(b)?;
                if c == 0.0 {
                    return None;
                }
                p.nodes.push(k);
                p.scale /= c;
                operand(cx, a, k, p, depth)
            }
            _ => None,
        }
    }
    let n = cx.node(root);
    let (a, b) = (n.input(0)?, n.input(1)?);
    match n.op.as_str() {
        "Mul" => {
            operand(cx, a, root, &mut p, 0)?;
            operand(cx, b, root, &mut p, 0)?;
        }
        "Div" => {
            let c = cx.scalar(b)?;
            if c == 0.0 {
                return None;
            }
            p.scale /= c;
            operand(cx, a, root, &mut p, 0)?;
        }
        _ => return None,
    }
    Some(p)
}

/// `Add(v, 1)` or `Add(1, v)` produced in this region: `(node, v)`.
fn plus_one(cx: &Cx, v: ValueId) -> Option<(usize, ValueId)> {
    let k = cx.producer(v, "Add")?;
    let n = cx.node(k);
    let (a, b) = (n.input(0)?, n.input(1)?);
    if cx.scalar(b).is_some_and(|c| c == 1.0) {
        Some((k, a))
    } else if cx.scalar(a).is_some_and(|c| c == 1.0) {
        Some((k, b))
    } else {
        None
    }
}

/// The two leaves `[x, f(x)]` of a two-factor product, trying both orders;
/// `inner(cx, g)` returns `(x, nodes)` when `g` has the right shape.
fn two_factors(
    cx: &Cx,
    p: &Product,
    inner: impl Fn(&Cx, ValueId) -> Option<(ValueId, Vec<usize>)>,
) -> Option<(ValueId, Vec<usize>)> {
    if p.leaves.len() != 2 {
        return None;
    }
    for (x, g) in [(p.leaves[0], p.leaves[1]), (p.leaves[1], p.leaves[0])] {
        if let Some((gx, nodes)) = inner(cx, g) {
            if gx == x {
                return Some((x, nodes));
            }
        }
    }
    None
}

fn float_tensor(cx: &Cx, x: ValueId) -> bool {
    cx.elem(x).is_some_and(ElemType::is_float)
}

fn single_op(cx: &Cx, i: usize, op: &str, x: ValueId, mut nodes: Vec<usize>) -> Option<Rewrite> {
    let root = cx.node(i);
    nodes.push(i);
    let n = node_from(root, op, vec![Some(x)], vec![*root.outputs.first()?]);
    Some(Rewrite {
        pattern: nodes,
        action: Action::Node(n),
    })
}

/// `0.5 * x * (1 + Erf(x / sqrt(2)))` in any Mul order (`x / sqrt(2)` may be
/// `x * (1/sqrt(2))`) → `Gelu(x)`.
pub(super) fn gelu_erf(cx: &mut Cx, i: usize) -> Option<Rewrite> {
    let p = product_at(cx, i)?;
    if !approx(p.scale, 0.5, 1e-5) {
        return None;
    }
    let (x, mut nodes) = two_factors(cx, &p, |cx, g| {
        let (add, e) = plus_one(cx, g)?;
        let erf = cx.producer(e, "Erf")?;
        let s = cx.node(erf).input(0)?;
        let sp = product_at(cx, cx.producer(s, "Div").or_else(|| cx.producer(s, "Mul"))?)?;
        if sp.leaves.len() != 1 || !approx(sp.scale, std::f64::consts::FRAC_1_SQRT_2, 1e-5) {
            return None;
        }
        let mut nodes = vec![add, erf];
        nodes.extend(sp.nodes);
        Some((sp.leaves[0], nodes))
    })?;
    if !float_tensor(cx, x) {
        return None;
    }
    nodes.extend(p.nodes.iter().copied().filter(|&k| k != i));
    let mut rw = single_op(cx, i, "Gelu", x, nodes)?;
    if let Action::Node(n) = &mut rw.action {
        n.attrs
            .insert("approximate".into(), Attr::String("none".into()));
    }
    Some(rw)
}

/// `0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`, `x^3` as
/// `Pow(x, 3)` or a product of three `x` → `Gelu(x, approximate="tanh")`.
pub(super) fn gelu_tanh(cx: &mut Cx, i: usize) -> Option<Rewrite> {
    let p = product_at(cx, i)?;
    if !approx(p.scale, 0.5, 1e-5) {
        return None;
    }
    let (x, mut nodes) = two_factors(cx, &p, |cx, g| {
        let (add, th) = plus_one(cx, g)?;
        let tanh = cx.producer(th, "Tanh")?;
        let t = cx.node(tanh).input(0)?;
        let tp = product_at(cx, cx.producer(t, "Mul").or_else(|| cx.producer(t, "Div"))?)?;
        if tp.leaves.len() != 1 || !approx(tp.scale, (2.0 / std::f64::consts::PI).sqrt(), 1e-4) {
            return None;
        }
        let sum = cx.producer(tp.leaves[0], "Add")?;
        let sn = cx.node(sum);
        let mut nodes = vec![add, tanh, sum];
        nodes.extend(tp.nodes);
        for (x, q) in [(sn.input(0)?, sn.input(1)?), (sn.input(1)?, sn.input(0)?)] {
            let Some(qk) = cx.producer(q, "Mul").or_else(|| cx.producer(q, "Div")) else {
                continue;
            };
            let Some(qp) = product_at(cx, qk) else {
                continue;
            };
            if !approx(qp.scale, 0.044715, 1e-4) {
                continue;
            }
            let cube = match qp.leaves.as_slice() {
                [a, b, c] if *a == x && *b == x && *c == x => Some(vec![]),
                [pw] => cx.producer(*pw, "Pow").and_then(|k| {
                    let n = cx.node(k);
                    (n.input(0)? == x && cx.scalar(n.input(1)?)? == 3.0).then(|| vec![k])
                }),
                _ => None,
            };
            if let Some(extra) = cube {
                nodes.extend(qp.nodes);
                nodes.extend(extra);
                return Some((x, nodes));
            }
        }
        None
    })?;
    if !float_tensor(cx, x) {
        return None;
    }
    nodes.extend(p.nodes.iter().copied().filter(|&k| k != i));
    let mut rw = single_op(cx, i, "Gelu", x, nodes)?;
    if let Action::Node(n) = &mut rw.action {
        n.attrs
            .insert("approximate".into(), Attr::String("tanh".into()));
    }
    Some(rw)
}

/// `x * HardSigmoid(x, alpha=1/6, beta=0.5)` and
/// `x * Clip(x + 3, 0, 6) / 6` (any Mul/Div order) → `HardSwish(x)`.
pub(super) fn hardswish(cx: &mut Cx, i: usize) -> Option<Rewrite> {
    let p = product_at(cx, i)?;
    let scale = p.scale;
    let (x, mut nodes) = two_factors(cx, &p, |cx, g| {
        if let Some(k) = cx.producer(g, "HardSigmoid") {
            let n = cx.node(k);
            let (a, b) = (
                attr_float(n, "alpha", 0.2) as f64,
                attr_float(n, "beta", 0.5) as f64,
            );
            let ok = approx(scale, 1.0, 1e-5) && approx(a, 1.0 / 6.0, 1e-4) && approx(b, 0.5, 1e-5);
            return if ok {
                Some((n.input(0)?, vec![k]))
            } else {
                None
            };
        }
        let k = cx.producer(g, "Clip")?;
        let n = cx.node(k);
        if !approx(scale, 1.0 / 6.0, 1e-5)
            || cx.scalar(n.input(1)?)? != 0.0
            || cx.scalar(n.input(2)?)? != 6.0
        {
            return None;
        }
        let s = cx.producer(n.input(0)?, "Add")?;
        let sn = cx.node(s);
        let (a, b) = (sn.input(0)?, sn.input(1)?);
        let x = if cx.scalar(b) == Some(3.0) {
            a
        } else if cx.scalar(a) == Some(3.0) {
            b
        } else {
            return None;
        };
        Some((x, vec![k, s]))
    })?;
    if !float_tensor(cx, x) {
        return None;
    }
    nodes.extend(p.nodes.iter().copied().filter(|&k| k != i));
    single_op(cx, i, "HardSwish", x, nodes)
}

/// Normalized, sorted axes of a reduction with keepdims=1 and constant axes.
fn reduce_axes(cx: &Cx, k: usize, rank: usize) -> Option<Vec<usize>> {
    let n = cx.node(k);
    if attr_int(n, "keepdims", 1) != 1 {
        return None;
    }
    let axes = cx.const_i64(n.input(1)?)?;
    let mut v: Vec<usize> = axes
        .iter()
        .map(|&a| {
            let a = if a < 0 { a + rank as i64 } else { a };
            (0..rank as i64).contains(&a).then_some(a as usize)
        })
        .collect::<Option<_>>()?;
    v.sort_unstable();
    v.dedup();
    (!v.is_empty()).then_some(v)
}

/// `(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) * gamma + beta`, the
/// means over the trailing `k` axes (`^2` as `Pow(d, 2)` or `Mul(d, d)`),
/// gamma and beta constants (each optional) → `LayerNormalization(x, gamma,
/// beta, axis=-k, epsilon=eps)`.
pub(super) fn layer_norm(cx: &mut Cx, i: usize) -> Option<Rewrite> {
    let ln = match_layer_norm(cx, i)?;
    // A larger match (this result times gamma, plus beta) rooted at the
    // single user wins: leave this one to it.
    let out = *cx.node(i).outputs.first()?;
    if let [Use::Node(u)] = cx.uses(out) {
        if match_layer_norm(cx, *u).is_some() {
            return None;
        }
    }
    let elem = cx.elem(ln.x)?;
    let gamma = match ln.gamma {
        Some(g) => g,
        None => {
            let hint = format!("{}_ones", cx.name(ln.x));
            cx.new_const(&hint, float_data(elem, vec![1], &[1.0])?)
        }
    };
    let root = cx.node(i);
    let mut n = node_from(
        root,
        "LayerNormalization",
        vec![Some(ln.x), Some(gamma), ln.beta],
        vec![*root.outputs.first()?],
    );
    n.attrs.insert("axis".into(), Attr::Int(-(ln.k as i64)));
    n.attrs.insert("epsilon".into(), Attr::Float(ln.eps as f32));
    Some(Rewrite {
        pattern: ln.pattern,
        action: Action::Node(n),
    })
}

/// A matched decomposed LayerNorm (nothing created yet).
struct LayerNormMatch {
    x: ValueId,
    gamma: Option<ValueId>,
    beta: Option<ValueId>,
    /// Number of trailing axes normalized.
    k: usize,
    eps: f64,
    pattern: Vec<usize>,
}

fn match_layer_norm(cx: &Cx, i: usize) -> Option<LayerNormMatch> {
    let mut pattern = vec![i];
    let mut cur = i;
    // Peel `+ beta` and `* gamma`: one operand constant, the other computed.
    let mut peel = |cur: &mut usize, op: &str, next: &[&str]| -> Option<ValueId> {
        let n = cx.node(*cur);
        if n.op != op {
            return None;
        }
        let (a, b) = (n.input(0)?, n.input(1)?);
        let (c, v) = if cx.m.constant(b).is_some() {
            (b, a)
        } else {
            (a, b)
        };
        cx.m.constant(c)?;
        let k = next.iter().find_map(|op| cx.producer(v, op))?;
        if !cx.single_use_by(v, *cur) {
            return None;
        }
        *cur = k;
        pattern.push(k);
        Some(c)
    };
    let beta = peel(&mut cur, "Add", &["Mul", "Div"]);
    let gamma = peel(&mut cur, "Mul", &["Div"]);
    let div = cx.node(cur);
    if div.op != "Div" {
        return None;
    }
    let (d, den) = (div.input(0)?, div.input(1)?);
    let sqrt = cx.producer(den, "Sqrt")?;
    let add = cx.producer(cx.node(sqrt).input(0)?, "Add")?;
    let an = cx.node(add);
    let (var, eps) = match (an.input(0)?, an.input(1)?) {
        (v, e) if cx.scalar(e).is_some() => (v, cx.scalar(e)?),
        (e, v) => (v, cx.scalar(e)?),
    };
    let var_mean = cx.producer(var, "ReduceMean")?;
    let sq = cx.node(var_mean).input(0)?;
    let sq_node = cx.producer(sq, "Pow").or_else(|| cx.producer(sq, "Mul"))?;
    let sqn = cx.node(sq_node);
    let squares_d = match sqn.op.as_str() {
        "Pow" => sqn.input(0)? == d && cx.scalar(sqn.input(1)?)? == 2.0,
        _ => sqn.input(0)? == d && sqn.input(1)? == d,
    };
    if !squares_d {
        return None;
    }
    let sub = cx.producer(d, "Sub")?;
    let (x, mu) = (cx.node(sub).input(0)?, cx.node(sub).input(1)?);
    let mean = cx.producer(mu, "ReduceMean")?;
    if cx.node(mean).input(0)? != x || !float_tensor(cx, x) {
        return None;
    }
    let rank = cx.rank(x)?;
    let axes = reduce_axes(cx, mean, rank)?;
    if reduce_axes(cx, var_mean, rank)? != axes {
        return None;
    }
    let k = axes.len();
    if axes != (rank - k..rank).collect::<Vec<_>>() {
        return None;
    }
    // Scale and bias broadcast over the normalized axes only.
    let fits = |c: ValueId| {
        cx.m.constant(c).is_some_and(|d| d.shape.len() <= k) && broadcasts_into(cx, c, x)
    };
    if !gamma.is_none_or(fits) || !beta.is_none_or(fits) {
        return None;
    }
    pattern.extend([sqrt, add, var_mean, sq_node, sub, mean]);
    Some(LayerNormMatch {
        x,
        gamma,
        beta,
        k,
        eps,
        pattern,
    })
}

/// `Exp(x - ReduceMax(x, a)) / ReduceSum(Exp(...), a)`, or without the max
/// subtraction, over one axis `a` (keepdims=1) → `Softmax(x, axis=a)`.
pub(super) fn softmax(cx: &mut Cx, i: usize) -> Option<Rewrite> {
    let n = cx.node(i);
    if n.op != "Div" {
        return None;
    }
    let (e, s) = (n.input(0)?, n.input(1)?);
    let sum = cx.producer(s, "ReduceSum")?;
    if cx.node(sum).input(0)? != e {
        return None;
    }
    let exp = cx.producer(e, "Exp")?;
    let z = cx.node(exp).input(0)?;
    let mut pattern = vec![i, sum, exp];
    let mut x = z;
    if let Some(sub) = cx.producer(z, "Sub") {
        let (a, b) = (cx.node(sub).input(0)?, cx.node(sub).input(1)?);
        if let Some(mx) = cx.producer(b, "ReduceMax") {
            if cx.node(mx).input(0)? == a {
                let rank = cx.rank(a)?;
                if reduce_axes(cx, mx, rank)? != reduce_axes(cx, sum, rank)? {
                    return None;
                }
                x = a;
                pattern.extend([sub, mx]);
            }
        }
    }
    if !float_tensor(cx, x) {
        return None;
    }
    let axes = reduce_axes(cx, sum, cx.rank(x)?)?;
    let [axis] = axes.as_slice() else { return None };
    let root = cx.node(i);
    let mut sm = node_from(root, "Softmax", vec![Some(x)], vec![*root.outputs.first()?]);
    sm.attrs.insert("axis".into(), Attr::Int(*axis as i64));
    Some(Rewrite {
        pattern,
        action: Action::Node(sm),
    })
}
