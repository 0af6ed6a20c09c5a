//! Pass `fuse`: each `tests/passes/fuse/*.kir` is parsed, verified, fused
//! with `run_named`, snapshotted as `<input> --- after fuse --- <output>`,
//! and run on the interpreter on seeded random inputs before and after:
//! the results must agree. The shared models are measured (kernels before
//! and after) and checked against the fusion targets.

use std::collections::HashMap;
use std::path::PathBuf;

use kiln_compiler::passes;
use kiln_ir::{parse_module, print_module, Dim, ElemType, Module, PrintOptions, Type};
use kiln_runtime::{Data, Interpreter, Tensor, Value};

fn dir() -> PathBuf {
    kiln_tests::repo_root().join("tests/passes/fuse")
}

/// xorshift; deterministic per seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32(&mut self) -> f32 {
        (self.next() % 20001) as f32 / 10000.0 - 1.0
    }
}

/// Random inputs from the declared static shapes (f32, bool, i64).
fn inputs(m: &Module, seed: u64) -> HashMap<String, Value> {
    let mut r = Rng(seed);
    m.body
        .inputs
        .iter()
        .map(|&i| {
            let Type::Tensor(t) = m.ty(i) else {
                panic!("tensor inputs only")
            };
            let shape: Vec<usize> = t
                .shape
                .as_ref()
                .expect("ranked")
                .iter()
                .map(|d| match d {
                    Dim::Known(n) => *n as usize,
                    _ => 2,
                })
                .collect();
            let n: usize = shape.iter().product();
            let data = match t.elem {
                ElemType::F32 => Data::F32((0..n).map(|_| r.f32()).collect()),
                ElemType::Bool => Data::Bool((0..n).map(|_| r.next().is_multiple_of(2)).collect()),
                ElemType::I64 => Data::I64((0..n).map(|_| (r.next() % 2) as i64).collect()),
                e => panic!("no random {e} inputs"),
            };
            (
                m.name(i).to_string(),
                Value::tensor(Tensor::new(shape, data).expect("tensor")),
            )
        })
        .collect()
}

fn assert_same(before: &Module, after: &Module, seeds: &[u64]) {
    for &seed in seeds {
        let ins = inputs(before, seed);
        let a = Interpreter::new(before).run(&ins).expect("run before");
        let b = Interpreter::new(after).run(&ins).expect("run after");
        assert_eq!(a.len(), b.len());
        for (k, (x, y)) in a.iter().zip(&b).enumerate() {
            let (x, y) = (
                x.as_tensor().expect("tensor"),
                y.as_tensor().expect("tensor"),
            );
            assert_eq!(x.shape, y.shape, "output {k}");
            for (p, q) in x.to_f64().iter().zip(y.to_f64()) {
                let ok = (p - q).abs() <= 1e-6 + 1e-3 * q.abs() || (p.is_nan() && q.is_nan());
                assert!(ok, "output {k}: {p} vs {q} (seed {seed})");
            }
        }
    }
}

fn check(file: &str) {
    let src = std::fs::read_to_string(dir().join(file)).expect("read");
    let before = parse_module(&src).expect("parse");
    kiln_ir::verify::verify(&before).expect("verify input");
    let mut after = before.clone();
    passes::run_named(&mut after, "fuse").expect("fuse");
    let opts = PrintOptions::default();
    let text = format!(
        "{}\n--- after fuse ---\n{}",
        print_module(&before, &opts),
        print_module(&after, &opts)
    );
    insta::assert_snapshot!(file.trim_end_matches(".kir"), text);
    // Text round-trip of the fused module.
    let again = parse_module(&print_module(&after, &opts)).expect("reparse");
    assert_eq!(print_module(&again, &opts), print_module(&after, &opts));
    assert_same(&before, &after, &[1, 2, 3]);
    // Idempotent: a second run finds nothing more.
    let mut twice = after.clone();
    assert!(
        !passes::run_named(&mut twice, "fuse").expect("fuse again"),
        "{file}: second run changed"
    );
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { check(concat!(stringify!($name), ".kir")); })*
        #[test]
        fn every_file_has_a_test() {
            let named = [$(concat!(stringify!($name), ".kir")),*];
            for e in std::fs::read_dir(dir()).expect("dir") {
                let f = e.expect("entry").file_name().to_string_lossy().to_string();
                assert!(named.contains(&f.as_str()), "{f} has no test");
            }
        }
    };
}

cases!(
    elementwise_chain,
    dag_silu,
    conv_silu_epilogue,
    multi_use_output,
    attention_softmax,
    reduce_sum_square,
    conv_epilogue,
    gemm_shared_output,
    matmul_gelu,
    nothing_to_fuse,
    nested_if,
    bn_skip_branch,
);

fn explain_file(file: &str) -> Vec<String> {
    let src = std::fs::read_to_string(dir().join(file)).expect("read");
    passes::fuse::explain(&parse_module(&src).expect("parse"))
}

#[test]
fn explain_says_why_pairs_are_not_fused() {
    assert_eq!(
        explain_file("attention_softmax.kir"),
        ["%qk (MatMul) -> %d (Div): consumer's group is a reduction fusion: an epilogue joins elementwise groups only"]
    );
    assert_eq!(
        explain_file("gemm_shared_output.kir"),
        [
            "%g (Gemm) -> %r (Relu): %g used by 2 consumers: kept as a group output",
            "%g (Gemm) -> %s (Sigmoid): %g used by 2 consumers: kept as a group output",
        ]
    );
    assert_eq!(
        explain_file("nothing_to_fuse.kir"),
        [
            "%t (Transpose) -> %r (Relu): producer is not fusible (Transpose is not elementwise, a reduction or a matmul/conv)",
            "%r (Relu) -> %u (Transpose): consumer is not fusible (Transpose is not elementwise, a reduction or a matmul/conv)",
        ]
    );
    assert_eq!(
        explain_file("conv_epilogue.kir"),
        ["%c2 (Conv) -> %s (Add): consumer's group already has a root op (Conv %c1)"]
    );
    assert_eq!(explain_file("matmul_gelu.kir"), Vec::<String>::new());
}

// ------------------------------------------------------------ shared models

/// Kernels of the top-level region: fusions plus unfused ops.
fn kernels(m: &Module) -> usize {
    m.body.nodes.len()
}

fn fused(model: &str) -> Option<(Module, Module)> {
    let path = kiln_tests::repo_root()
        .join("../shared/models")
        .join(model)
        .join("model.onnx");
    if !path.exists() {
        eprintln!("skipping {model}: {} not found", path.display());
        return None;
    }
    let before = kiln_compiler::load_model(&path).expect("load");
    let mut after = before.clone();
    passes::run_named(&mut after, "fuse").expect("fuse");
    let groups = after
        .body
        .nodes
        .iter()
        .filter(|n| n.op == "kiln.Fusion")
        .count();
    eprintln!(
        "{model}: {} kernels before, {} after ({groups} fusions, {} unfused ops)",
        kernels(&before),
        kernels(&after),
        kernels(&after) - groups
    );
    let mut hist: HashMap<&str, usize> = HashMap::new();
    for n in after.body.nodes.iter().filter(|n| n.op != "kiln.Fusion") {
        *hist.entry(n.op.as_str()).or_default() += 1;
    }
    let mut hist: Vec<_> = hist.into_iter().collect();
    hist.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    eprintln!("  unfused: {hist:?}");
    let mut kinds: HashMap<&str, usize> = HashMap::new();
    for n in after.body.nodes.iter().filter(|n| n.op == "kiln.Fusion") {
        *kinds.entry(kind(n)).or_default() += 1;
    }
    eprintln!("  fusions by kind: {kinds:?}");
    Some((before, after))
}

fn body_ops(n: &kiln_ir::Node) -> Vec<&str> {
    n.attr("body")
        .and_then(|a| a.as_graph())
        .map(|b| b.nodes.iter().map(|x| x.op.as_str()).collect())
        .unwrap_or_default()
}

fn kind(n: &kiln_ir::Node) -> &str {
    n.attr("kind").and_then(|a| a.as_str()).unwrap_or("")
}

#[test]
fn minilm_attention_scale_mask_softmax_is_one_kernel() {
    let Some((_, after)) = fused("minilm_l3") else {
        return;
    };
    let softmaxes: Vec<&kiln_ir::Node> = after
        .body
        .nodes
        .iter()
        .filter(|n| body_ops(n).contains(&"Softmax"))
        .collect();
    assert_eq!(softmaxes.len(), 3, "one fused Softmax per layer");
    for n in softmaxes {
        assert_eq!(kind(n), "reduction");
        assert_eq!(body_ops(n), ["Div", "Add", "Softmax"]);
    }
    assert!(!after.body.nodes.iter().any(|n| n.op == "Softmax"));
}

#[test]
fn resnet50_every_conv_relu_is_an_epilogue() {
    let Some((before, after)) = fused("resnet50_light") else {
        return;
    };
    assert!(
        !after.body.nodes.iter().any(|n| n.op == "Relu"),
        "a Relu was left unfused"
    );
    let relus_before = before.body.nodes.iter().filter(|n| n.op == "Relu").count();
    let epilogues: Vec<_> = after
        .body
        .nodes
        .iter()
        .filter(|n| kind(n) == "epilogue")
        .collect();
    let relus_after: usize = epilogues
        .iter()
        .map(|n| body_ops(n).iter().filter(|o| **o == "Relu").count())
        .sum();
    assert_eq!(relus_before, relus_after);
    for n in &epilogues {
        assert_eq!(body_ops(n)[0], "Conv");
    }
}

#[test]
fn shared_models_fuse_and_verify() {
    for model in [
        "minilm_l3",
        "resnet50_light",
        "squeezenet_rand",
        "ppocr_mobile_v2_cls",
    ] {
        if let Some((before, after)) = fused(model) {
            assert_same(&before, &after, &[7]);
        }
    }
}

/// Fusing every model of the ONNX node suite leaves a valid module (no
/// error, no panic) that computes exactly what the unfused one does on
/// the test's first data set (the same kernels run in the same order).
#[test]
fn node_suite_models_stay_valid_and_equal() {
    let (mut fused_models, mut compared) = (0, 0);
    for dir in kiln_tests::node_tests() {
        let Ok(m) = kiln_compiler::load_model(&dir.join("model.onnx")) else {
            continue;
        };
        let mut after = m.clone();
        match passes::run_named(&mut after, "fuse") {
            Ok(true) => fused_models += 1,
            Ok(false) => continue,
            Err(e) => panic!("{}: {e}", dir.display()),
        }
        let set = dir.join("test_data_set_0");
        let mut ins = HashMap::new();
        for (k, &i) in m.body.inputs.iter().enumerate() {
            let f = set.join(format!("input_{k}.pb"));
            if let Ok(v) = kiln_compiler::testdata::read_value(&f, m.ty(i)) {
                ins.insert(m.name(i).to_string(), v);
            }
        }
        let Ok(want) = Interpreter::new(&m).run(&ins) else {
            continue;
        };
        let got = Interpreter::new(&after)
            .run(&ins)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        assert_eq!(format!("{want:?}"), format!("{got:?}"), "{}", dir.display());
        compared += 1;
    }
    eprintln!(
        "node suite: fuse changed {fused_models} models, {compared} compared on the interpreter"
    );
}
