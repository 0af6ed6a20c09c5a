//! Machine-readable (JSON) and drawable (Graphviz dot) forms of a module.
//! The text form lives in `kiln_ir::text`; these two are for tools and
//! for people who want a picture.

use std::fmt::Write;

use kiln_ir::{Attr, Dim, Module, Region, TensorData, Type, ValueId};
use serde_json::{json, Map, Value};

fn dim_json(d: &Dim) -> Value {
    match d {
        Dim::Known(n) => json!(n),
        Dim::Sym(e) => json!(e.to_string()),
        Dim::Unknown => Value::Null,
    }
}

/// `{"elem": "f32", "shape": [1, "N", null]}`; `shape` is null for an
/// unknown rank, a dim is null when unknown and a string when symbolic.
pub fn type_json(t: &Type) -> Value {
    match t {
        Type::Tensor(t) => {
            let mut o = json!({
                "elem": t.elem.name(),
                "shape": t.shape.as_ref().map(|s| s.iter().map(dim_json).collect::<Vec<_>>()),
            });
            if let Some(q) = &t.quant {
                o["quant"] = json!({
                    "axis": q.axis, "block_size": q.block_size,
                    "scale": q.scale, "zero_point": q.zero_point,
                });
            }
            o
        }
        Type::Sequence(e) => json!({ "sequence": type_json(e) }),
        Type::Optional(e) => json!({ "optional": type_json(e) }),
        Type::Map(k, v) => json!({ "map": { "key": k.name(), "value": type_json(v) } }),
    }
}

fn float_json(f: f64) -> Value {
    serde_json::Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or_else(|| json!(f.to_string()))
}

/// An f32 as the JSON number with its shortest round-trip digits (not the
/// f64 widening's `0.10000000149011612`); NaN and infinities as strings.
fn f32_json(f: f32) -> Value {
    float_json(f.to_string().parse::<f64>().unwrap_or(f as f64))
}

/// A constant: its type, and its values when small enough to be useful.
fn tensor_json(t: &TensorData, elide: u64) -> Value {
    let mut o = json!({ "elem": t.elem.name(), "shape": t.shape, "bytes": t.byte_size() });
    if t.numel() <= elide {
        let narrow = !matches!(t.elem, kiln_ir::ElemType::F64);
        if let Some(v) = t.to_f64_vec().filter(|_| t.elem.is_float()) {
            o["values"] = Value::Array(
                v.into_iter()
                    .map(|x| {
                        if narrow {
                            f32_json(x as f32)
                        } else {
                            float_json(x)
                        }
                    })
                    .collect(),
            );
        } else if let Some(v) = t.to_i64_vec() {
            o["values"] = json!(v);
        } else if let kiln_ir::Payload::Strings(s) = &t.payload {
            o["values"] = json!(s
                .iter()
                .map(|x| String::from_utf8_lossy(x).into_owned())
                .collect::<Vec<_>>());
        }
    }
    if t.is_elided() {
        o["elided"] = json!(true);
    }
    o
}

fn attr_json(m: &Module, a: &Attr, elide: u64) -> Value {
    match a {
        Attr::Int(i) => json!(i),
        Attr::Float(f) => f32_json(*f),
        Attr::String(s) => json!(s),
        Attr::Tensor(t) => json!({ "tensor": tensor_json(t, elide) }),
        Attr::Graph(r) => json!({ "graph": region_json(m, r, elide) }),
        Attr::Type(t) => json!({ "type": type_json(t) }),
        Attr::Ints(v) => json!(v),
        Attr::Floats(v) => Value::Array(v.iter().map(|f| f32_json(*f)).collect()),
        Attr::Strings(v) => json!(v),
        Attr::Tensors(v) => {
            json!({ "tensors": v.iter().map(|t| tensor_json(t, elide)).collect::<Vec<_>>() })
        }
        Attr::Graphs(v) => {
            json!({ "graphs": v.iter().map(|r| region_json(m, r, elide)).collect::<Vec<_>>() })
        }
        Attr::Types(v) => json!({ "types": v.iter().map(type_json).collect::<Vec<_>>() }),
    }
}

fn value_json(m: &Module, v: ValueId) -> Value {
    json!({ "name": m.name(v), "type": type_json(m.ty(v)) })
}

fn region_json(m: &Module, r: &Region, elide: u64) -> Value {
    let nodes: Vec<Value> = r
        .nodes
        .iter()
        .map(|n| {
            let attrs: Map<String, Value> = n
                .attrs
                .iter()
                .map(|(k, a)| (k.clone(), attr_json(m, a, elide)))
                .collect();
            json!({
                "op": n.op,
                "name": n.name,
                "inputs": n.inputs.iter().map(|i| i.map(|v| m.name(v))).collect::<Vec<_>>(),
                "outputs": n.outputs.iter().map(|&v| value_json(m, v)).collect::<Vec<_>>(),
                "attrs": attrs,
            })
        })
        .collect();
    json!({
        "inputs": r.inputs.iter().map(|&v| value_json(m, v)).collect::<Vec<_>>(),
        "constants": r.constants.iter().map(|&v| {
            let mut o = value_json(m, v);
            if let Some(d) = m.constant(v) { o["data"] = tensor_json(d, elide); }
            o
        }).collect::<Vec<_>>(),
        "nodes": nodes,
        "outputs": r.outputs.iter().map(|&v| m.name(v)).collect::<Vec<_>>(),
    })
}

/// The module as one JSON document. Constants with more than `elide`
/// elements carry their type and size but not their values.
pub fn module_json(m: &Module, elide: u64) -> Value {
    let opsets: Map<String, Value> = m
        .opsets
        .iter()
        .map(|(d, v)| (d.clone(), json!(v)))
        .collect();
    json!({ "name": m.name, "opsets": opsets, "body": region_json(m, &m.body, elide) })
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The module as a Graphviz digraph: ops are boxes, graph inputs and
/// outputs ellipses, constants small grey notes; edges carry the value's
/// name and type; nested regions are clusters.
pub fn module_dot(m: &Module) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", dot_escape(&m.name));
    let _ = writeln!(out, "  rankdir=TB;\n  node [fontname=\"Helvetica\", fontsize=10];\n  edge [fontname=\"Helvetica\", fontsize=8];");
    let mut producer = std::collections::HashMap::new();
    let mut counter = 0usize;
    region_dot(m, &m.body, &mut out, &mut producer, &mut counter, 1);
    for (i, &o) in m.body.outputs.iter().enumerate() {
        let _ = writeln!(
            out,
            "  out{i} [shape=ellipse, style=filled, fillcolor=\"#d0f0d0\", label=\"{}\"];",
            dot_escape(m.name(o))
        );
        if let Some(p) = producer.get(&o) {
            let _ = writeln!(
                out,
                "  {p} -> out{i} [label=\"{}\"];",
                dot_escape(&kiln_ir::text::print_type(m.ty(o)))
            );
        }
    }
    out.push_str("}\n");
    out
}

fn region_dot(
    m: &Module,
    r: &Region,
    out: &mut String,
    producer: &mut std::collections::HashMap<ValueId, String>,
    counter: &mut usize,
    depth: usize,
) {
    let ind = "  ".repeat(depth);
    for &v in &r.inputs {
        let id = format!("v{}", v.0);
        let _ = writeln!(
            out,
            "{ind}{id} [shape=ellipse, style=filled, fillcolor=\"#d0e0f8\", label=\"{}\\n{}\"];",
            dot_escape(m.name(v)),
            dot_escape(&kiln_ir::text::print_type(m.ty(v)))
        );
        producer.insert(v, id);
    }
    for &v in &r.constants {
        let id = format!("v{}", v.0);
        let _ = writeln!(out, "{ind}{id} [shape=note, style=filled, fillcolor=\"#eeeeee\", fontsize=8, label=\"{}\\n{}\"];",
            dot_escape(m.name(v)), dot_escape(&kiln_ir::text::print_type(m.ty(v))));
        producer.insert(v, id);
    }
    for n in &r.nodes {
        *counter += 1;
        let id = format!("n{counter}");
        let label = if n.name.is_empty() {
            n.op.clone()
        } else {
            format!("{}\\n{}", n.op, dot_escape(&n.name))
        };
        let _ = writeln!(out, "{ind}{id} [shape=box, style=\"rounded,filled\", fillcolor=\"#fff4d0\", label=\"{label}\"];");
        for v in n.inputs.iter().flatten() {
            if let Some(p) = producer.get(v) {
                let _ = writeln!(
                    out,
                    "{ind}{p} -> {id} [label=\"{}\"];",
                    dot_escape(&kiln_ir::text::print_type(m.ty(*v)))
                );
            }
        }
        for (name, sub) in n.regions() {
            *counter += 1;
            let _ = writeln!(
                out,
                "{ind}subgraph cluster_{counter} {{\n{ind}  label=\"{} {}\";\n{ind}  style=dashed;",
                dot_escape(&n.op),
                dot_escape(name)
            );
            region_dot(m, sub, out, producer, counter, depth + 1);
            let _ = writeln!(out, "{ind}}}");
        }
        for &o in &n.outputs {
            producer.insert(o, id.clone());
        }
    }
}
