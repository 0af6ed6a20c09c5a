//! The `simplify` pass, specified by example: each `tests/passes/simplify/*.kir`
//! file is parsed, verified, simplified, and snapshotted as
//! `<input>\n--- after simplify ---\n<output>`; the interpreter checks on
//! seeded random inputs that the outputs did not change. A second group runs
//! the pass on the shared models, checks their outputs on the models' own
//! test inputs, and reports node counts before and after.

use std::collections::HashMap;

use kiln_ir::text::{parse_module, print_module, PrintOptions};
use kiln_ir::{ElemType, Module, Node, TensorData};
use kiln_runtime::{Interpreter, Tensor, Value};
use kiln_tests::{repo_root, shared_models};

/// A small deterministic generator (SplitMix64), so snapshots and checks do
/// not depend on a crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-2, 2).
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
    }
}

/// Random values for every graph input, from the declared static shapes.
fn random_inputs(m: &Module, seed: u64) -> HashMap<String, Value> {
    let mut rng = Rng(seed);
    let mut out = HashMap::new();
    for &i in &m.body.inputs {
        let t = m.ty(i).as_tensor().expect("tensor input");
        let shape: Vec<usize> = t
            .static_shape()
            .expect("static input shape")
            .iter()
            .map(|&d| d as usize)
            .collect();
        let n: usize = shape.iter().product();
        let tensor = match t.elem {
            ElemType::F32 => Tensor::from_f32(shape, (0..n).map(|_| rng.f32()).collect()).unwrap(),
            ElemType::Bool => {
                let v: Vec<f64> = (0..n).map(|_| (rng.next() & 1) as f64).collect();
                Tensor::new(
                    shape,
                    kiln_runtime::tensor::Data::from_f64(ElemType::Bool, &v),
                )
                .unwrap()
            }
            e => panic!("no random inputs of type {e}"),
        };
        out.insert(m.name(i).to_string(), Value::tensor(tensor));
    }
    out
}

fn assert_close(before: &[Value], after: &[Value], what: &str) {
    assert_eq!(before.len(), after.len(), "{what}: output count");
    for (k, (a, b)) in before.iter().zip(after).enumerate() {
        let (a, b) = (
            a.as_tensor().expect("tensor"),
            b.as_tensor().expect("tensor"),
        );
        assert_eq!(a.shape, b.shape, "{what}: output {k} shape");
        for (j, (x, y)) in a.to_f64().iter().zip(b.to_f64()).enumerate() {
            let ok = (x - y).abs() <= 1e-6 + 1e-3 * x.abs() || (x.is_nan() && y.is_nan());
            assert!(ok, "{what}: output {k}[{j}]: {x} before, {y} after");
        }
    }
}

fn check_case(name: &str) {
    let path = repo_root()
        .join("tests/passes/simplify")
        .join(format!("{name}.kir"));
    let src = std::fs::read_to_string(&path).expect("read case");
    let before = parse_module(&src).unwrap_or_else(|e| panic!("{}", e.render(name, &src)));
    kiln_ir::verify::verify(&before).expect("input verifies");
    let mut after = before.clone();
    kiln_compiler::passes::run_named(&mut after, "simplify").expect("simplify");
    let opts = PrintOptions::default();
    let text = format!(
        "{}\n--- after simplify ---\n{}",
        print_module(&before, &opts),
        print_module(&after, &opts)
    );
    insta::assert_snapshot!(name, text);
    // A second run finds nothing more: the pass runs to its fixed point.
    let mut again = after.clone();
    assert!(
        !kiln_compiler::passes::run_named(&mut again, "simplify").unwrap(),
        "{name}: not a fixed point"
    );
    for seed in [1, 2, 3] {
        let inputs = random_inputs(&before, seed);
        let want = Interpreter::new(&before).run(&inputs).expect("run before");
        let got = Interpreter::new(&after).run(&inputs).expect("run after");
        assert_close(&want, &got, name);
    }
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            check_case(stringify!($name));
        }
    )*};
}

cases!(
    identities,
    chains,
    batchnorm,
    gemm,
    gelu,
    gelu_shared,
    layernorm,
    softmax,
    hardswish,
    nested
);

/// Turn `ConstantOfShape` nodes with constant shapes into constants (what
/// `constant-fold` will do; resnet50_light makes every weight this way).
fn fold_constant_of_shape(m: &mut Module) {
    let body = std::mem::take(&mut m.body);
    let mut kept: Vec<Node> = vec![];
    let mut consts = body.constants.clone();
    for n in &body.nodes {
        let shape = (n.op == "ConstantOfShape")
            .then(|| n.input(0))
            .flatten()
            .and_then(|s| m.constant(s))
            .and_then(|d| d.to_i64_vec());
        let fill = n.attr("value").and_then(|a| a.as_tensor()).cloned();
        match (shape, fill) {
            (Some(shape), Some(fill)) if fill.numel() == 1 => {
                let n_el: usize = shape.iter().map(|&d| d as usize).product();
                let bytes = fill.bytes().expect("dense fill").repeat(n_el);
                let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
                let data = TensorData::from_bytes(fill.elem, shape, bytes).expect("data");
                m.set_constant(n.outputs[0], Some(std::sync::Arc::new(data)));
                consts.push(n.outputs[0]);
            }
            _ => kept.push(n.clone()),
        }
    }
    m.body = kiln_ir::Region {
        constants: consts,
        nodes: kept,
        ..body
    };
    kiln_ir::verify::verify(m).expect("folded module verifies");
}

fn op_counts(m: &Module) -> std::collections::BTreeMap<String, usize> {
    let mut c = std::collections::BTreeMap::new();
    m.body
        .walk(&mut |n| *c.entry(n.op.clone()).or_default() += 1);
    c
}

/// The models' own test inputs.
fn model_inputs(dir: &std::path::Path, m: &Module) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    let data = dir.join("test_data_set_0");
    for k in 0.. {
        let p = data.join(format!("input_{k}.pb"));
        let Ok(bytes) = std::fs::read(&p) else { break };
        let idx = &m.body.inputs;
        let name = kiln_compiler::testdata::pb_tensor_name(&bytes)
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| m.name(idx[k]).to_string());
        let id = m.lookup(&name).expect("input by name");
        out.insert(
            name,
            kiln_compiler::testdata::read_value(&p, m.ty(id)).expect("input value"),
        );
    }
    out
}

/// What the pass does to each shared model: node counts before/after (the
/// numbers in the report), every Conv absorbing its BatchNorm, GELU found,
/// and unchanged outputs on the models' inputs.
#[test]
fn shared_models_simplify() {
    for dir in shared_models() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let mut m = kiln_compiler::load_model(&dir).expect("load");
        let imported = m.body.node_count();
        fold_constant_of_shape(&mut m);
        let before = m.clone();
        let n0 = before.body.node_count();
        kiln_compiler::passes::run_named(&mut m, "simplify").expect("simplify");
        let (c0, c1) = (op_counts(&before), op_counts(&m));
        let delta: Vec<String> = c0
            .keys()
            .chain(c1.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter_map(|op| {
                let (a, b) = (
                    c0.get(op).copied().unwrap_or(0),
                    c1.get(op).copied().unwrap_or(0),
                );
                (a != b).then(|| format!("{op} {a}->{b}"))
            })
            .collect();
        eprintln!(
            "{name}: {n0} -> {} nodes ({}); {imported} as imported",
            m.body.node_count(),
            delta.join(", ")
        );
        match name.as_str() {
            "resnet50_light" => {
                assert_eq!(
                    c1.get("BatchNormalization"),
                    None,
                    "every BN folds into its Conv"
                );
            }
            "minilm_l3" => {
                assert_eq!(
                    c1.get("Gelu"),
                    Some(&3),
                    "the three Erf GELUs are recognized"
                );
                assert_eq!(c1.get("Erf"), None);
            }
            "ppocr_mobile_v2_cls" => {
                assert_eq!(c1.get("BatchNormalization"), None);
                assert!(c1.get("HardSwish").is_some_and(|&n| n > 0));
            }
            _ => {}
        }
        let inputs = model_inputs(&dir, &before);
        let want = Interpreter::new(&before).run(&inputs).expect("run before");
        let got = Interpreter::new(&m).run(&inputs).expect("run after");
        if name == "resnet50_light" {
            // Logits near 1e19 with constant weights: compare the softmax
            // output loosely; it checks shape and the absence of NaN.
            for v in &got {
                assert!(v
                    .as_tensor()
                    .unwrap()
                    .to_f64()
                    .iter()
                    .all(|x| x.is_finite()));
            }
        }
        assert_close(&want, &got, &name);
    }
}
