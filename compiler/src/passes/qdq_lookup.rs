//! Pass `qdq-lookup`: a function of one 8-bit tensor written in QDQ form
//! becomes a 256-entry table, `kiln.Lookup`.
//!
//! - `Q(f(DQ(x)))`, where `f` is any graph of pointwise float ops whose
//!   other operands are scalar constants (HardSwish, Sigmoid, LeakyRelu,
//!   `x · HardSigmoid(x)`, a Clip, a requantization with no op at all)
//!   and the DQ and the Q have one scale and zero point each: the result
//!   is a function of the byte `x` alone, so it is evaluated for all 256
//!   bytes at compile time, by the interpreter (the oracle, so the table
//!   is exactly what the unfolded graph computes, rounding included).
//! - `Q(Concat(DQ(x₁), …, DQ(xₙ)))` where some inputs' scale or zero
//!   point differ from the Q's (SqueezeNet's fire modules, Inception,
//!   YOLO necks): each such input is requantized to the Q's grid by its
//!   table, and the Concat runs on bytes. (`fold-qdq` takes the case where
//!   every input already is on the Q's grid.)
//!
//! Each rewrite turns three passes over f32 data (dequantize, op,
//! quantize) into one over bytes. It runs after `fold-qdq`, which has made
//! the convs and matmuls around these patterns integer ops, and before
//! constant folding. The float nodes it replaces are left to DCE.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kiln_interp::{Interpreter, Value};
use kiln_ir::ops::Pointwise;
use kiln_ir::{Attr, ElemType, Module, Node, Region, TensorData, TensorType, Type, ValueId};

pub fn run(m: &mut Module) -> Result<bool, String> {
    let mut uses: HashMap<ValueId, usize> = HashMap::new();
    super::fold_qdq::count_uses(&m.body, &mut uses);
    let mut body = std::mem::take(&mut m.body);
    let changed = rewrite_region(m, &mut body, &uses);
    m.body = body;
    Ok(changed)
}

fn rewrite_region(m: &mut Module, r: &mut Region, uses: &HashMap<ValueId, usize>) -> bool {
    let mut changed = false;
    for n in &mut r.nodes {
        for sub in n.regions_mut() {
            changed |= rewrite_region(m, sub, uses);
        }
    }
    let def: HashMap<ValueId, usize> = r
        .nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.outputs.iter().map(move |&o| (o, i)))
        .collect();
    let mut replace: HashMap<usize, Vec<Node>> = HashMap::new();
    for qi in 0..r.nodes.len() {
        let site = Site { r, def: &def, uses };
        let nodes = chain(m, &site, qi).or_else(|| concat(m, &site, qi));
        if let Some(nodes) = nodes {
            replace.insert(qi, nodes);
        }
    }
    if replace.is_empty() {
        return changed;
    }
    let old = std::mem::take(&mut r.nodes);
    for (i, n) in old.into_iter().enumerate() {
        match replace.remove(&i) {
            Some(nodes) => r.nodes.extend(nodes),
            None => r.nodes.push(n),
        }
    }
    for id in new_constants(m, r) {
        r.constants.push(id);
    }
    true
}

/// The tables made for this region (named `lookup_table*`), not yet
/// listed among its constants.
fn new_constants(m: &Module, r: &Region) -> Vec<ValueId> {
    let listed: HashSet<ValueId> = r.constants.iter().copied().collect();
    let mut ids: Vec<ValueId> = r
        .nodes
        .iter()
        .filter(|n| n.op == "kiln.Lookup")
        .filter_map(|n| n.input(1))
        .filter(|v| !listed.contains(v) && m.constant(*v).is_some())
        .collect();
    ids.sort_by_key(|v| v.index());
    ids.dedup();
    ids
}

/// Where a pattern is looked for: a region, the node defining each of
/// its values, and every value's uses in the module.
#[derive(Clone, Copy)]
struct Site<'a> {
    r: &'a Region,
    def: &'a HashMap<ValueId, usize>,
    uses: &'a HashMap<ValueId, usize>,
}

fn elem(m: &Module, v: ValueId) -> Option<ElemType> {
    m.ty(v).as_tensor().map(|t| t.elem)
}

fn is_byte(e: Option<ElemType>) -> bool {
    matches!(e, Some(ElemType::U8 | ElemType::I8))
}

/// A constant whose data is present.
fn known(m: &Module, v: ValueId) -> Option<&Arc<TensorData>> {
    m.constant(v).filter(|d| !d.is_elided())
}

/// A DequantizeLinear or QuantizeLinear with one scale and one zero point,
/// both constants, between f32 and an 8-bit type; its (scale, zero)
/// values.
fn per_tensor(m: &Module, n: &Node, op: &str) -> Option<(f64, i64)> {
    if n.op != op || n.attr("block_size").and_then(Attr::as_int).unwrap_or(0) != 0 {
        return None;
    }
    let (x, y) = (n.input(0)?, *n.outputs.first()?);
    let bytes = if op == "DequantizeLinear" { x } else { y };
    let float = if op == "DequantizeLinear" { y } else { x };
    if !is_byte(elem(m, bytes)) || elem(m, float) != Some(ElemType::F32) {
        return None;
    }
    let scale = known(m, n.input(1)?)?.to_f64_vec()?;
    let zero = match n.input(2) {
        Some(z) => known(m, z)?.to_i64_vec()?,
        None => vec![0],
    };
    (scale.len() == 1 && zero.len() == 1).then(|| (scale[0], zero[0]))
}

/// `Q(f(DQ(x)))` at `qi` as `kiln.Lookup(x, table)`.
fn chain(m: &mut Module, site: &Site, qi: usize) -> Option<Vec<Node>> {
    let Site { r, def, uses } = *site;
    let qn = &r.nodes[qi];
    per_tensor(m, qn, "QuantizeLinear")?;
    let top = qn.input(0)?;
    // Walk up from the Q's operand: pointwise f32 nodes down to one DQ.
    let mut inside: HashSet<usize> = HashSet::new();
    let mut dq: Option<usize> = None;
    let mut todo = vec![top];
    let mut seen: HashSet<ValueId> = HashSet::new();
    while let Some(v) = todo.pop() {
        if !seen.insert(v) {
            continue;
        }
        let i = *def.get(&v)?;
        let n = &r.nodes[i];
        if per_tensor(m, n, "DequantizeLinear").is_some() {
            if dq.is_some_and(|d| d != i) {
                return None;
            }
            dq = Some(i);
            continue;
        }
        let t = kiln_ir::ops::traits(&n.op);
        if t.pointwise == Pointwise::No
            || n.outputs.len() != 1
            || elem(m, v) != Some(ElemType::F32)
            || kiln_ir::ops::traits::is_random(m, n)
            || n.regions().next().is_some()
        {
            return None;
        }
        inside.insert(i);
        for &a in n.inputs.iter().flatten() {
            match known(m, a) {
                Some(d) if d.numel() == 1 => {}
                Some(_) => return None,
                None => todo.push(a),
            }
        }
    }
    let dq = dq?;
    // Every value made inside is read only inside (or, the top, by the Q).
    let mut reads: HashMap<ValueId, usize> = HashMap::new();
    for &i in inside.iter().chain([&qi]) {
        for &a in r.nodes[i].inputs.iter().flatten() {
            *reads.entry(a).or_default() += 1;
        }
    }
    let escapes = inside
        .iter()
        .map(|&i| r.nodes[i].outputs[0])
        .any(|v| uses.get(&v) != reads.get(&v));
    if escapes {
        return None;
    }
    let mut order: Vec<usize> = inside.into_iter().collect();
    order.sort_unstable();
    let x = r.nodes[dq].input(0)?;
    let nodes: Vec<&Node> = order.iter().map(|&i| &r.nodes[i]).collect();
    let qn = r.nodes[qi].clone();
    let table = table(m, &r.nodes[dq], &nodes, &qn)?;
    let mut node = Node::new(
        "kiln.Lookup",
        vec![Some(x), Some(table)],
        qn.outputs.clone(),
    );
    node.name = qn.name.clone();
    Some(vec![node])
}

/// `Q(Concat(DQ(x₁), …))` at `qi`, some inputs on other grids than the
/// Q's, as a Concat of bytes, those inputs requantized by their tables.
fn concat(m: &mut Module, site: &Site, qi: usize) -> Option<Vec<Node>> {
    let Site { r, def, uses } = *site;
    let qn = r.nodes[qi].clone();
    let grid = per_tensor(m, &qn, "QuantizeLinear")?;
    let y = *qn.outputs.first()?;
    let cat_out = qn.input(0)?;
    let cat = r.nodes[*def.get(&cat_out)?].clone();
    if cat.op != "Concat" || uses.get(&cat_out) != Some(&1) {
        return None;
    }
    let mut nodes = vec![];
    let mut operands = vec![];
    let mut requantized = false;
    for &a in &cat.inputs {
        let dq = &r.nodes[*def.get(&a?)?];
        let g = per_tensor(m, dq, "DequantizeLinear")?;
        let x = dq.input(0)?;
        if elem(m, x) != elem(m, y) {
            return None;
        }
        if g == grid {
            operands.push(Some(x));
            continue;
        }
        // The Q as if it read this input alone.
        let mut q_alone = qn.clone();
        q_alone.inputs[0] = dq.outputs.first().copied();
        let table = table(m, dq, &[], &q_alone)?;
        let ty = match m.ty(x) {
            Type::Tensor(t) => Type::Tensor(TensorType {
                quant: None,
                ..t.clone()
            }),
            _ => return None,
        };
        let v = m.add_value_unique(&format!("{}_requantized", m.name(x)), ty);
        let mut l = Node::new("kiln.Lookup", vec![Some(x), Some(table)], vec![v]);
        if !qn.name.is_empty() {
            l.name = format!("{}_requantize", qn.name);
        }
        nodes.push(l);
        operands.push(Some(v));
        requantized = true;
    }
    if !requantized {
        return None;
    }
    let mut node = cat.clone();
    node.inputs = operands;
    node.outputs = vec![y];
    nodes.push(node);
    Some(nodes)
}

/// The table of `q(f(dq(b)))` for every byte `b` of the DQ's input type,
/// in index order (u8: 0 to 255; i8: -128 to 127), run by the
/// interpreter on a module of those nodes alone; its constant in `m`.
fn table(m: &mut Module, dq: &Node, chain: &[&Node], q: &Node) -> Option<ValueId> {
    let x_elem = elem(m, dq.input(0)?)?;
    let y_elem = elem(m, *q.outputs.first()?)?;
    let mut t = Module::new("qdq-lookup");
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    let bytes: Vec<u8> = (0..=255u8)
        .map(|i| if x_elem == ElemType::I8 { i ^ 0x80 } else { i })
        .collect();
    let x = t
        .add_value("x", Type::Tensor(TensorType::known(x_elem, &[256])))
        .ok()?;
    t.set_constant(
        x,
        Some(Arc::new(
            TensorData::from_bytes(x_elem, vec![256], bytes).ok()?,
        )),
    );
    t.body.constants.push(x);
    map.insert(dq.input(0)?, x);
    let unranked = |e: ElemType| {
        Type::Tensor(TensorType {
            elem: e,
            shape: None,
            quant: None,
        })
    };
    for n in std::iter::once(dq).chain(chain.iter().copied()).chain([q]) {
        let mut c = n.clone();
        for slot in c.inputs.iter_mut() {
            let Some(v) = *slot else { continue };
            let id = match map.get(&v) {
                Some(&id) => id,
                None => {
                    let d = known(m, v)?.clone();
                    let id = t.add_value_unique(m.name(v), m.ty(v).clone());
                    t.set_constant(id, Some(d));
                    t.body.constants.push(id);
                    map.insert(v, id);
                    id
                }
            };
            *slot = Some(id);
        }
        for o in c.outputs.iter_mut() {
            let e = elem(m, *o)?;
            let id = t.add_value_unique(m.name(*o), unranked(e));
            map.insert(*o, id);
            *o = id;
        }
        t.body.nodes.push(c);
    }
    t.body.outputs = vec![*map.get(q.outputs.first()?)?];
    let values = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Interpreter::new(&t).run(&HashMap::new())
    }))
    .ok()?
    .ok()?;
    let data = match values.first()? {
        Value::Tensor(v) => v.to_data(),
        _ => return None,
    };
    if data.elem != y_elem || data.numel() != 256 {
        return None;
    }
    let table = TensorData::from_bytes(y_elem, vec![256], data.bytes()?.to_vec()).ok()?;
    Some(m.add_constant_unique("lookup_table", Arc::new(table)))
}
