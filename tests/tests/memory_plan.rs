//! The memory plan (`kiln_compiler::passes::memory_plan`), specified by:
//!
//! - snapshots of `render` for the hand-written modules under
//!   `tests/passes/memory-plan/*.kir` (what is reused, what runs in place);
//! - `check` and an independent simulation on the shared models and on
//!   random DAG modules: the simulation runs the schedule over a tagged
//!   arena and asserts that every operand still holds its own tag when a
//!   node reads it;
//! - exact errors for sizes the plan cannot know.

use std::collections::HashMap;
use std::path::PathBuf;

use kiln_compiler::passes::memory_plan::{
    check, plan, plan_with, render, MemoryPlan, PlanOptions, ALIGN,
};
use kiln_ir::{parse_module, Attr, ElemType, Module, Node, Region, TensorType, Type, ValueId};
use kiln_tests::{repo_root, shared_models};
use proptest::prelude::*;

fn dims(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
    pairs.iter().map(|&(k, v)| (k.to_string(), v)).collect()
}

/// Every value a node reads: operands, nested operands, nested outputs.
fn node_uses(n: &Node, out: &mut Vec<ValueId>) {
    out.extend(n.inputs.iter().flatten().copied());
    for (_, r) in n.regions() {
        region_uses(r, out);
    }
}

fn region_uses(r: &Region, out: &mut Vec<ValueId>) {
    for n in &r.nodes {
        node_uses(n, out);
    }
    out.extend(r.outputs.iter().copied());
}

/// Run the schedule over an arena of 64-byte chunks: each node first reads
/// its operands (every chunk must still carry the operand's tag, or that
/// of a part placed inside it), then writes its results' tags (a
/// concatenation leaves its parts' chunks as they are: they are its
/// bytes already). Catches any clobbering the plan allows, independently
/// of `check`.
fn simulate(m: &Module, p: &MemoryPlan) {
    let chunks = (p.arena_bytes / ALIGN) as usize;
    let mut arena: Vec<Option<ValueId>> = vec![None; chunks];
    let by_value: HashMap<ValueId, (usize, usize)> = p
        .buffers
        .iter()
        .map(|b| {
            let first = (b.offset / ALIGN) as usize;
            (b.value, (first, first + b.size.div_ceil(ALIGN) as usize))
        })
        .collect();
    let part_of: HashMap<ValueId, ValueId> = p
        .buffers
        .iter()
        .filter_map(|b| Some((b.value, b.part_of?)))
        .collect();
    // Whether chunk tag `t` stands for value `v`: `v` itself or a part of it.
    let holds = |t: ValueId, v: ValueId| {
        let mut at = Some(t);
        while let Some(x) = at {
            if x == v {
                return true;
            }
            at = part_of.get(&x).copied();
        }
        false
    };
    let mut written = std::collections::HashSet::new();
    for &ni in &p.schedule {
        let n = &m.body.nodes[ni];
        let mut uses = vec![];
        node_uses(n, &mut uses);
        for v in uses {
            if let Some(&(a, b)) = by_value.get(&v) {
                assert!(
                    written.contains(&v),
                    "%{} read before it is written",
                    m.name(v)
                );
                for (c, tag) in arena[a..b].iter().enumerate() {
                    assert!(
                        tag.is_some_and(|t| holds(t, v)),
                        "%{} (chunk {}) was clobbered before {} read it",
                        m.name(v),
                        a + c,
                        n.describe()
                    );
                }
            }
        }
        for &r in &n.outputs {
            if let Some(&(a, b)) = by_value.get(&r) {
                for tag in &mut arena[a..b] {
                    if !tag.is_some_and(|t| t != r && holds(t, r)) {
                        *tag = Some(r);
                    }
                }
                written.insert(r);
            }
        }
    }
}

/// The plan with the default options, checked and simulated; the plans
/// that place a concatenation's operands inside it, a slice's results
/// inside their operand, and both, are checked and simulated too.
fn plan_and_check(m: &Module, d: &HashMap<String, u64>) -> MemoryPlan {
    let p = plan(m, d).unwrap_or_else(|e| panic!("plan of {}: {e}", m.name));
    check(&p).unwrap_or_else(|e| panic!("check of {}: {e}", m.name));
    simulate(m, &p);
    assert!(
        p.arena_bytes <= p.naive_bytes,
        "{}: arena above naive",
        m.name
    );
    for (concat_in_place, slice_in_place) in [(true, false), (false, true), (true, true)] {
        let opts = PlanOptions {
            concat_in_place,
            slice_in_place,
            ..PlanOptions::default()
        };
        let q = plan_with(m, d, &opts).unwrap_or_else(|e| panic!("plan of {}: {e}", m.name));
        check(&q).unwrap_or_else(|e| {
            panic!(
                "check of {} (concat in place {concat_in_place}, slices {slice_in_place}): {e}",
                m.name
            )
        });
        simulate(m, &q);
    }
    p
}

fn kir_files() -> Vec<PathBuf> {
    let dir = repo_root().join("tests/passes/memory-plan");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read tests/passes/memory-plan")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "kir"))
        .collect();
    v.sort();
    v
}

/// `render` of each hand-written module, with N = 2 and seq = 128.
#[test]
fn hand_written_plans() {
    let d = dims(&[("N", 2), ("seq", 128)]);
    let files = kir_files();
    assert!(files.len() >= 3);
    for f in files {
        let src = std::fs::read_to_string(&f).unwrap();
        let m = parse_module(&src)
            .unwrap_or_else(|e| panic!("{}: {}", f.display(), e.render("x.kir", &src)));
        kiln_ir::verify::verify(&m).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let p = plan_and_check(&m, &d);
        let name = f.file_stem().unwrap().to_string_lossy().to_string();
        insta::assert_snapshot!(
            name,
            format!("{src}\n--- memory plan ---\n{}", render(&m, &p))
        );
    }
}

#[test]
fn unbound_symbol_is_an_error_naming_the_value() {
    let src =
        std::fs::read_to_string(repo_root().join("tests/passes/memory-plan/symbolic.kir")).unwrap();
    let m = parse_module(&src).unwrap();
    assert_eq!(
        plan(&m, &dims(&[("N", 2)])).unwrap_err(),
        "value %a: dim seq of f32[2,seq] needs a size for seq"
    );
}

#[test]
fn unknown_dim_is_an_error_naming_the_value() {
    let src = "module @u opset(ai.onnx = 22) {\n  input %x: f32[?,4]\n  %a = Relu(%x) : f32[?,4]\n  %y = Neg(%a) : f32[?,4]\n  return %y\n}\n";
    let m = parse_module(src).unwrap();
    assert_eq!(
        plan(&m, &HashMap::new()).unwrap_err(),
        "value %a has an unknown dim (f32[?,4]): its byte size is unknown"
    );
}

/// The shared models: a valid plan each, and the numbers for the record
/// (printed; `cargo test -- --nocapture` shows them). minilm's symbols are
/// batch 1 and sequence 128; ppocr's input has unnamed dims, so the test
/// gives it the model's usual 1x3x48x192.
#[test]
fn shared_models_plan() {
    let d = dims(&[("batch_size", 1), ("sequence_length", 128)]);
    for dir in shared_models() {
        let mut m = kiln_compiler::load_model(&dir.join("model.onnx")).unwrap();
        if dir.ends_with("ppocr_mobile_v2_cls") {
            let x = m.body.inputs[0];
            m.set_ty(
                x,
                Type::Tensor(TensorType::known(ElemType::F32, &[1, 3, 48, 192])),
            );
        }
        let p = plan_and_check(&m, &d);
        let in_place = p.buffers.iter().filter(|b| b.in_place_of.is_some()).count();
        // The lower bound of any placement: the most bytes live at once
        // (a handed-over operand counted once).
        let peak = (0..p.schedule.len())
            .map(|pos| {
                p.buffers
                    .iter()
                    .filter(|b| b.live.0 <= pos && pos <= b.live.1)
                    .filter(|b| {
                        !(b.live.1 == pos
                            && p.buffers.iter().any(|r| r.in_place_of == Some(b.value)))
                    })
                    .map(|b| b.size.div_ceil(ALIGN) * ALIGN)
                    .sum::<u64>()
            })
            .max()
            .unwrap_or(0);
        assert!(peak <= p.arena_bytes);
        println!(
            "{:<22} nodes {:>4}  buffers {:>4}  in-place {:>4}  peak_live {:>10}  arena_bytes {:>10}  naive_bytes {:>10}  ({:.1}%)",
            dir.file_name().unwrap().to_string_lossy(),
            m.body.nodes.len(),
            p.buffers.len(),
            in_place,
            peak,
            p.arena_bytes,
            p.naive_bytes,
            100.0 * p.arena_bytes as f64 / p.naive_bytes.max(1) as f64
        );
    }
}

// ------------------------------------------------------------ random DAGs

/// A small deterministic random source (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A random valid module: unary and binary elementwise ops (broadcasting
/// included), Concat, Slice of rows, Transpose, MatMul, and If nodes whose
/// branches read outer values, over f32 values of assorted 2-D shapes.
fn random_module(seed: u64, nodes: usize) -> Module {
    let mut rng = Rng(seed | 1);
    let mut m = Module::new("random");
    m.opsets.push((String::new(), 22));
    let t = |r: u64, c: u64| Type::Tensor(TensorType::known(ElemType::F32, &[r, c]));
    let shape =
        |m: &Module, v: ValueId| m.ty(v).as_tensor().and_then(|t| t.static_shape()).unwrap();
    let cond = m
        .add_value("cond", Type::Tensor(TensorType::known(ElemType::Bool, &[])))
        .unwrap();
    m.body.inputs.push(cond);
    let mut vals = vec![];
    for i in 0..2 {
        let x = m
            .add_value(
                &format!("x{i}"),
                t(1 + rng.below(8) as u64, [1, 16, 32][rng.below(3)]),
            )
            .unwrap();
        m.body.inputs.push(x);
        vals.push(x);
    }
    for i in 0..nodes {
        let a = vals[rng.below(vals.len())];
        let sa = shape(&m, a);
        let same: Vec<ValueId> = vals
            .iter()
            .copied()
            .filter(|&v| shape(&m, v) == sa)
            .collect();
        let name = format!("v{i}");
        let (node, ty) = match rng.below(8) {
            0 | 1 => {
                let op = ["Relu", "Neg", "Sigmoid", "Exp"][rng.below(4)];
                (Node::new(op, vec![Some(a)], vec![]), t(sa[0], sa[1]))
            }
            2 | 3 => {
                let b = same[rng.below(same.len())];
                let op = ["Add", "Mul", "Sub"][rng.below(3)];
                let ops = if rng.below(2) == 0 {
                    vec![Some(a), Some(b)]
                } else {
                    vec![Some(b), Some(a)]
                };
                (Node::new(op, ops, vec![]), t(sa[0], sa[1]))
            }
            4 => {
                let cols: Vec<ValueId> = vals
                    .iter()
                    .copied()
                    .filter(|&v| shape(&m, v)[1] == sa[1])
                    .collect();
                let b = cols[rng.below(cols.len())];
                let rows = sa[0] + shape(&m, b)[0];
                let mut n = Node::new("Concat", vec![Some(a), Some(b)], vec![]);
                n.attrs.insert("axis".into(), Attr::Int(0));
                (n, t(rows, sa[1]))
            }
            5 => {
                // Transpose, or MatMul with something whose rows match.
                let k: Vec<ValueId> = vals
                    .iter()
                    .copied()
                    .filter(|&v| shape(&m, v)[0] == sa[1])
                    .collect();
                if k.is_empty() {
                    let mut n = Node::new("Transpose", vec![Some(a)], vec![]);
                    n.attrs.insert("perm".into(), Attr::Ints(vec![1, 0]));
                    (n, t(sa[1], sa[0]))
                } else {
                    let b = k[rng.below(k.len())];
                    (
                        Node::new("MatMul", vec![Some(a), Some(b)], vec![]),
                        t(sa[0], shape(&m, b)[1]),
                    )
                }
            }
            7 => {
                // A block of rows (contiguous: the plan may place it inside
                // its operand).
                let lo = rng.below(sa[0] as usize) as i64;
                let hi = lo + 1 + rng.below(sa[0] as usize - lo as usize) as i64;
                let mut int = |v: i64| {
                    let d = kiln_ir::TensorData::from_i64(vec![1], &[v]).unwrap();
                    let c = m.add_constant_unique("c", std::sync::Arc::new(d));
                    m.body.constants.push(c);
                    c
                };
                let (starts, ends, axes) = (int(lo), int(hi), int(0));
                let n = Node::new(
                    "Slice",
                    vec![Some(a), Some(starts), Some(ends), Some(axes)],
                    vec![],
                );
                (n, t((hi - lo) as u64, sa[1]))
            }
            _ => {
                // If: then returns an outer value as is, else computes from
                // another outer value of the same shape.
                let b = same[rng.below(same.len())];
                let e = m
                    .add_value(&format!("{name}_else"), t(sa[0], sa[1]))
                    .unwrap();
                let then_branch = Region {
                    outputs: vec![a],
                    ..Region::default()
                };
                let else_branch = Region {
                    nodes: vec![Node::new("Neg", vec![Some(b)], vec![e])],
                    outputs: vec![e],
                    ..Region::default()
                };
                let mut n = Node::new("If", vec![Some(cond)], vec![]);
                n.attrs
                    .insert("then_branch".into(), Attr::Graph(then_branch));
                n.attrs
                    .insert("else_branch".into(), Attr::Graph(else_branch));
                (n, t(sa[0], sa[1]))
            }
        };
        let v = m.add_value(&name, ty).unwrap();
        let mut node = node;
        node.outputs.push(v);
        m.body.nodes.push(node);
        vals.push(v);
    }
    // One to three outputs, the last value always among them.
    let last = *vals.last().unwrap();
    m.body.outputs.push(last);
    for _ in 0..rng.below(3) {
        let v = vals[2 + rng.below(vals.len() - 2)];
        if !m.body.outputs.contains(&v) {
            m.body.outputs.push(v);
        }
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn random_dags_plan_safely(seed in any::<u64>(), nodes in 1usize..40) {
        let m = random_module(seed, nodes);
        kiln_ir::verify::verify(&m).map_err(|e| TestCaseError::fail(format!("generator made an invalid module: {e}")))?;
        let p = plan_and_check(&m, &HashMap::new());
        // Every intermediate has a buffer; no input, output or constant does.
        let outputs: Vec<ValueId> = m.body.outputs.clone();
        let results: usize = m.body.nodes.iter().flat_map(|n| &n.outputs).filter(|v| !outputs.contains(v)).count();
        prop_assert_eq!(p.buffers.len(), results);
        prop_assert!(p.buffers.iter().all(|b| !outputs.contains(&b.value) && !m.body.inputs.contains(&b.value)));
    }
}

/// `src` parsed and planned with `opts`, the plan checked and simulated.
fn planned(src: &str, opts: &PlanOptions) -> (Module, MemoryPlan) {
    let m = parse_module(src).unwrap();
    let p = plan_with(&m, &HashMap::new(), opts).unwrap();
    check(&p).unwrap();
    simulate(&m, &p);
    (m, p)
}

/// With `concat_in_place`, a Concat's operands lie inside its result, at
/// their offsets, when nothing overwrites them while they are read; an
/// operand still read after the result is written over in place keeps the
/// Concat copying.
#[test]
fn concat_operands_lie_inside_the_result() {
    let opts = PlanOptions {
        concat_in_place: true,
        ..PlanOptions::default()
    };
    let placed = "module @cat opset(ai.onnx = 17) {
  input %a: f32[4,16]
  input %b: f32[4,16]
  %x = Relu(%a) : f32[4,16]
  %y = Neg(%b) : f32[4,16]
  %c = Concat(%x, %y) {axis = 0} : f32[8,16]
  %d = Sigmoid(%c) : f32[8,16]
  %e = Add(%d, %d) : f32[8,16]
  return %e
}
";
    let (m, p) = planned(placed, &opts);
    let at = |name: &str| {
        let b = p.buffers.iter().find(|b| m.name(b.value) == name).unwrap();
        (b.offset, b.part_of.map(|w| m.name(w).to_string()))
    };
    let (c, _) = at("c");
    assert_eq!(at("x"), (c, Some("c".into())));
    assert_eq!(at("y"), (c + 256, Some("c".into())));
    assert_eq!(at("d").0, c, "Sigmoid runs in place of the Concat");
    assert!(render(&m, &p).contains("part of %c"));

    // %x is read (by Exp) after the Sigmoid wrote over %c in place: no
    // parts.
    let copied = placed.replace(
        "%e = Add(%d, %d) : f32[8,16]",
        "%z = Exp(%x) : f32[4,16]\n  %e = Add(%d, %d) : f32[8,16]",
    );
    let copied = copied.replace("return %e", "return %e, %z");
    let (_, p) = planned(&copied, &opts);
    assert!(p.buffers.iter().all(|b| b.part_of.is_none()));
}

/// With `slice_in_place`, a Slice or Split result that is one contiguous
/// block of its operand lies inside it, with its in-place chain, when the
/// operand dies there; an operand read later, a block across channels of
/// a batch-2 tensor, and an unaligned block keep their own buffers.
#[test]
fn slice_results_lie_inside_the_operand() {
    let opts = PlanOptions {
        slice_in_place: true,
        ..PlanOptions::default()
    };
    let src = "module @slices opset(ai.onnx = 18) {
  input %a: f32[1,8,16]
  input %b: f32[2,8,16]
  const %s0: i64[1] = dense[2]
  const %s1: i64[1] = dense[6]
  const %ax: i64[1] = dense[1]
  const %sp: i64[2] = dense[3, 5]
  %x = Relu(%a) : f32[1,8,16]
  %y = Slice(%x, %s0, %s1, %ax) : f32[1,4,16]
  %z = Sigmoid(%y) : f32[1,4,16]
  %u = Neg(%a) : f32[1,8,16]
  %v0, %v1 = Split(%u, %sp) {axis = 1} : f32[1,3,16], f32[1,5,16]
  %w = Exp(%v1) : f32[1,5,16]
  %w2 = Add(%w, %w) : f32[1,5,16]
  %p = Relu(%b) : f32[2,8,16]
  %q = Slice(%p, %s0, %s1, %ax) : f32[2,4,16]
  %o = Neg(%q) : f32[2,4,16]
  %r = Add(%z, %z) : f32[1,4,16]
  return %r, %w2, %v0, %o
}
";
    let (m, p) = planned(src, &opts);
    let at = |name: &str| {
        let b = p.buffers.iter().find(|b| m.name(b.value) == name).unwrap();
        (b.offset, b.part_of.map(|w| m.name(w).to_string()))
    };
    let (x, _) = at("x");
    // Channels 2..6 of 16 floats start 128 bytes in.
    assert_eq!(at("y"), (x + 128, Some("x".into())));
    assert_eq!(at("z").0, x + 128, "Sigmoid runs in place of the slice");
    // %v1 starts 3·64 = 192 bytes into %u (aligned); %v0 is an output.
    let (u, _) = at("u");
    assert_eq!(at("v1"), (u + 192, Some("u".into())));
    assert_eq!(at("w").0, u + 192);
    // Batch 2: two runs, so a copy.
    assert_eq!(at("q").1, None);
    assert!(render(&m, &p).contains("part of %x"));

    // %x read again after the slice: the slice copies.
    let later = src.replace(
        "%r = Add(%z, %z)",
        "%t = Exp(%x) : f32[1,8,16]\n  %r = Add(%z, %z)",
    );
    let later = later.replace("return %r,", "return %t, %r,");
    let (m, p) = planned(&later, &opts);
    let y = p.buffers.iter().find(|b| m.name(b.value) == "y").unwrap();
    assert_eq!(y.part_of, None);

    // A slice 1 channel in: 64 bytes, aligned; 4 floats in: 16 bytes, not.
    let odd = "module @odd opset(ai.onnx = 18) {
  input %a: f32[1,8,4]
  const %s0: i64[1] = dense[1]
  const %s1: i64[1] = dense[6]
  const %ax: i64[1] = dense[1]
  %x = Relu(%a) : f32[1,8,4]
  %y = Slice(%x, %s0, %s1, %ax) : f32[1,5,4]
  %z = Sigmoid(%y) : f32[1,5,4]
  return %z
}
";
    let (m, p) = planned(odd, &opts);
    let y = p.buffers.iter().find(|b| m.name(b.value) == "y").unwrap();
    assert_eq!(y.part_of, None);
}

/// A concatenation whose operand is itself a concatenation placed in
/// place: the outer one may take it only if nothing writes over the
/// inner one's parts while they are still read (here %b, read after the
/// Exp wrote over the outer result in place). The random-DAG property
/// test found this; its module is checked as found too.
#[test]
fn nested_concat_parts_are_not_clobbered() {
    let src = "module @nested opset(ai.onnx = 17) {
  input %x: f32[4,16]
  %a = Relu(%x) : f32[4,16]
  %b = Neg(%x) : f32[4,16]
  %c = Concat(%a, %b) {axis = 0} : f32[8,16]
  %d = Sigmoid(%x) : f32[4,16]
  %e = Concat(%c, %d) {axis = 0} : f32[12,16]
  %f = Exp(%e) : f32[12,16]
  %g = Concat(%f, %b) {axis = 0} : f32[16,16]
  return %g
}
";
    let m = parse_module(src).unwrap();
    for slice_in_place in [false, true] {
        let opts = PlanOptions {
            concat_in_place: true,
            slice_in_place,
            ..PlanOptions::default()
        };
        let p = plan_with(&m, &HashMap::new(), &opts).unwrap();
        check(&p).unwrap();
        simulate(&m, &p);
        let part_of = |name: &str| {
            let b = p.buffers.iter().find(|b| m.name(b.value) == name).unwrap();
            b.part_of.map(|w| m.name(w).to_string())
        };
        assert_eq!(part_of("b"), Some("c".into()));
        assert_eq!(part_of("c"), None, "the outer Concat copies");
    }
    plan_and_check(&random_module(2848079731387269610, 39), &HashMap::new());
}
