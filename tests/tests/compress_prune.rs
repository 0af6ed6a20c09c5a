//! `kiln prune` (`kiln_compiler::compress::prune`): unstructured, N:M and
//! channel pruning on models built here; channels whose weights are zero
//! prune away exactly; sweeps are deterministic and keep the sparsest
//! level that meets the tolerance.

use std::collections::HashMap;
use std::path::PathBuf;

use kiln_compiler::compress::data::{random_sets, Inputs};
use kiln_compiler::compress::prune::{Score, Structure};
use kiln_compiler::compress::{prune, PruneOptions};
use kiln_compiler::onnx::proto;
use kiln_tests::{
    attr_float, attr_int, attr_ints, f32_tensor, seeded_weights as weights, tensor_type,
    OnnxBuilder, F32,
};
use prost::Message;

/// conv1 (8 channels; `dead` ones all zero, bias 0) → BN (mean 0, beta 0
/// on dead channels) → Relu → depthwise 3×3 → Relu → conv2 → GAP →
/// Flatten → Gemm. Dead channels contribute exactly nothing.
fn chain_model(dead: &[usize]) -> proto::ModelProto {
    let mut w1 = weights(8 * 3 * 9, 1, 0.5);
    let mut b1 = weights(8, 2, 0.1);
    let mut beta = weights(8, 3, 0.1);
    for &c in dead {
        w1[c * 27..(c + 1) * 27].iter_mut().for_each(|x| *x = 0.0);
        b1[c] = 0.0;
        beta[c] = 0.0;
    }
    let pads = || vec![attr_ints("pads", &[1, 1, 1, 1])];
    let mut dw_attrs = pads();
    dw_attrs.push(attr_int("group", 8));
    OnnxBuilder::new("chain", 13)
        .input("x", tensor_type(F32, &["1", "3", "12", "12"]))
        .output("y", tensor_type(F32, &["1", "5"]))
        .initializer(f32_tensor("w1", &[8, 3, 3, 3], &w1))
        .initializer(f32_tensor("b1", &[8], &b1))
        .initializer(f32_tensor("gamma", &[8], &weights(8, 4, 1.0)))
        .initializer(f32_tensor("beta", &[8], &beta))
        .initializer(f32_tensor("mean", &[8], &[0.0; 8]))
        .initializer(f32_tensor("var", &[8], &[1.0; 8]))
        .initializer(f32_tensor("wd", &[8, 1, 3, 3], &weights(72, 5, 0.5)))
        .initializer(f32_tensor("bd", &[8], &[0.0; 8]))
        .initializer(f32_tensor("w2", &[6, 8, 1, 1], &weights(48, 6, 0.5)))
        .initializer(f32_tensor("wf", &[5, 6], &weights(30, 7, 0.5)))
        .node_with("Conv", &["x", "w1", "b1"], &["c1"], pads())
        .node_with(
            "BatchNormalization",
            &["c1", "gamma", "beta", "mean", "var"],
            &["n1"],
            vec![attr_float("epsilon", 0.0)],
        )
        .node("Relu", &["n1"], &["r1"])
        .node_with("Conv", &["r1", "wd", "bd"], &["d"], dw_attrs)
        .node("Relu", &["d"], &["r2"])
        .node("Conv", &["r2", "w2"], &["c2"])
        .node("GlobalAveragePool", &["c2"], &["g"])
        .node("Flatten", &["g"], &["f"])
        .node_with("Gemm", &["f", "wf"], &["y"], vec![attr_int("transB", 1)])
        .model()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-prune-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn setup(m: &proto::ModelProto, name: &str, n: usize) -> (PathBuf, Vec<Inputs>) {
    let p = scratch(name);
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    let module = kiln_compiler::load_model(&p).unwrap();
    let sets = random_sets(&module, n, 11).unwrap();
    (p, sets)
}

fn opts(structure: Structure, levels: Vec<f64>) -> PruneOptions {
    PruneOptions {
        structure,
        score: Score::Magnitude,
        levels,
        tolerances: Vec::new(),
        threads: 1,
        progress: false,
    }
}

/// Removing channels that compute zeros keeps the outputs (within f32
/// rounding of the folded BN), and every reader is rewritten: the
/// depthwise conv's groups, the next conv's input channels.
#[test]
fn dead_channels_prune_away_exactly() {
    let (path, sets) = setup(&chain_model(&[2, 5]), "dead.onnx", 2);
    let p = prune(
        &path,
        &sets,
        &sets,
        &opts(Structure::Channels { l1: true }, vec![0.25]),
    )
    .unwrap();
    let r = &p.report;
    let conv1 = r.layers.iter().find(|l| l.node == "Conv_0").unwrap();
    assert_eq!(
        (conv1.channels_before, conv1.channels_after),
        (Some(8), Some(6))
    );
    assert!(r.outputs[0].cosine > 0.999_999, "{:?}", r.outputs);
    assert!(r.outputs[0].max_abs < 1e-5, "{:?}", r.outputs);
    assert!(r.size_after_bytes < r.size_before_bytes);
    // The written model verifies and its depthwise conv has 6 groups.
    let out = scratch("dead_pruned.onnx");
    std::fs::write(&out, p.to_bytes()).unwrap();
    let m = kiln_compiler::load_model(&out).unwrap();
    let mut groups = Vec::new();
    m.body.walk(&mut |n| {
        if n.op == "Conv" {
            if let Some(kiln_ir::Attr::Int(g)) = n.attr("group") {
                groups.push(*g);
            }
        }
    });
    assert!(groups.contains(&6), "{groups:?}");
    let exe = kiln_compiler::compile(
        &m,
        &kiln_compiler::Target::Interp(Default::default()),
        &HashMap::new(),
    )
    .unwrap();
    assert!(exe.run(&sets[0]).is_ok());
}

#[test]
fn unstructured_and_pattern_sparsity_are_exact_per_layer() {
    let (path, sets) = setup(&chain_model(&[]), "unstructured.onnx", 2);
    let p = prune(
        &path,
        &sets,
        &sets,
        &opts(Structure::Unstructured { global: false }, vec![0.5]),
    )
    .unwrap();
    for l in &p.report.layers {
        assert!((l.sparsity - 0.5).abs() < 0.02, "{l:?}");
    }
    let p = prune(
        &path,
        &sets,
        &sets,
        &opts(Structure::Pattern { n: 2, m: 4 }, vec![]),
    )
    .unwrap();
    // Every group of 4 along a reduction axis keeps 2: conv1 rows (27
    // long) hold 6 full groups, the Gemm's [5, 6] rows one each.
    let g = p.model.graph.as_ref().unwrap();
    let w2 = g
        .initializer
        .iter()
        .find(|t| t.name().starts_with("w2"))
        .unwrap();
    let v: Vec<f32> = w2
        .raw_data()
        .chunks(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    for row in v.chunks(8) {
        for group in row.chunks(4) {
            assert_eq!(group.iter().filter(|&&x| x == 0.0).count(), 2, "{row:?}");
        }
    }
    assert_eq!(p.report.sparsity, 0.5);
}

#[test]
fn sweeps_keep_the_sparsest_level_that_holds_and_repeat_exactly() {
    let (path, sets) = setup(&chain_model(&[]), "sweep.onnx", 3);
    let mut o = opts(
        Structure::Unstructured { global: true },
        vec![0.0, 0.2, 0.4, 0.6, 0.8],
    );
    o.tolerances = vec!["cosine=0.99".parse().unwrap()];
    let a = prune(&path, &sets[..2], &sets[2..], &o).unwrap();
    let b = prune(&path, &sets[..2], &sets[2..], &o).unwrap();
    assert_eq!(a.to_bytes(), b.to_bytes());
    let r = &a.report;
    assert_eq!(r.sweep.len(), 5);
    assert_eq!(r.sweep[0].holds, Some(true), "level 0 is the float model");
    let sparsest = r
        .sweep
        .iter()
        .filter(|p| p.holds == Some(true))
        .map(|p| p.sparsity)
        .fold(0.0, f64::max);
    assert_eq!(r.sparsity, sparsest);
    assert_eq!(r.tolerance_met, Some(true));
    // Cosine falls as sparsity grows (monotone on this model).
    let cos: Vec<f64> = r.sweep.iter().map(|p| p.metrics[0].cosine).collect();
    assert!(cos.windows(2).all(|w| w[1] <= w[0] + 1e-9), "{cos:?}");
    let svg = r.plot_svg();
    assert!(
        svg.starts_with("<svg") && svg.matches("<circle").count() == 10,
        "{svg}"
    );
    let json = serde_json::to_value(r).unwrap();
    for key in [
        "outputs",
        "layers",
        "excluded",
        "size_before_bytes",
        "size_after_bytes",
        "latency_before_ms",
        "latency_after_ms",
        "sparsity",
        "sweep",
    ] {
        assert!(json.get(key).is_some(), "no `{key}`");
    }
    for key in ["sparsity", "metrics", "latency_ms", "size_bytes"] {
        assert!(json["sweep"][0].get(key).is_some(), "sweep[0].{key}");
    }
}

#[test]
fn activation_scores_need_calibration_and_bad_levels_are_errors() {
    let (path, sets) = setup(&chain_model(&[]), "bad.onnx", 1);
    let mut o = opts(Structure::Unstructured { global: false }, vec![0.3]);
    o.score = Score::Activation;
    assert!(prune(&path, &[], &sets, &o)
        .err()
        .unwrap()
        .contains("calibration"));
    let p = prune(&path, &sets, &sets, &o).unwrap();
    assert_eq!(p.report.score, "activation");
    let o = opts(Structure::Unstructured { global: false }, vec![1.5]);
    assert!(prune(&path, &sets, &sets, &o).is_err());
}

/// ResNet-50's bottleneck convs lose 30 % of their channels; the model
/// verifies, runs, and keeps its output shape (the shared model's
/// weights are constants, so only consistency is checked here; the
/// speed-up is measured in the README).
#[test]
fn resnet50_channels_prune_consistently() {
    let dir = kiln_tests::repo_root().join("../shared/models/resnet50_light");
    if !dir.is_dir() {
        eprintln!("skipped: ../shared/models/resnet50_light is not here");
        return;
    }
    let m = kiln_compiler::load_model(&dir).unwrap();
    let sets = kiln_compiler::compress::data::read_sets(&m, &dir).unwrap();
    let p = prune(
        &dir,
        &sets,
        &sets,
        &opts(Structure::Channels { l1: true }, vec![0.3]),
    )
    .unwrap();
    let pruned: Vec<_> = p
        .report
        .layers
        .iter()
        .filter(|l| l.channels_after < l.channels_before)
        .collect();
    // conv1 and conv2 of each of the 16 bottlenecks, and the stem (its
    // channels reach, through MaxPool, two convs: the first block's conv1
    // and its projection shortcut).
    assert_eq!(pruned.len(), 33, "{:#?}", p.report.layers);
    assert!(
        p.report.achieved_sparsity > 0.15,
        "{}",
        p.report.achieved_sparsity
    );
    let out = scratch("resnet_pruned.onnx");
    std::fs::write(&out, p.to_bytes()).unwrap();
    let pm = kiln_compiler::load_model(&out).unwrap();
    let shapes = kiln_compiler::lower::shapes_of(&sets[0]);
    let exe = kiln_compiler::compile(
        &pm,
        &kiln_compiler::Target::Cpu(Default::default()),
        &shapes,
    )
    .unwrap();
    let y = exe.run(&sets[0]).unwrap();
    assert_eq!(y[0].as_tensor().unwrap().shape, vec![1, 1000]);
}

/// With `KILN_PYTHON`, onnx.checker accepts a channel-pruned model and
/// onnxruntime runs it to the original's outputs (its pruned channels
/// computed zeros).
#[test]
fn onnx_checker_and_onnxruntime_accept_the_pruned_model() {
    let Ok(python) = std::env::var("KILN_PYTHON") else {
        eprintln!("skipped: set KILN_PYTHON to a python with onnx and onnxruntime");
        return;
    };
    let (path, sets) = setup(&chain_model(&[1, 6]), "ort.onnx", 1);
    let p = prune(
        &path,
        &sets,
        &sets,
        &opts(Structure::Channels { l1: true }, vec![0.25]),
    )
    .unwrap();
    let out = scratch("ort_pruned.onnx");
    std::fs::write(&out, p.to_bytes()).unwrap();
    let run = std::process::Command::new(python)
        .arg(kiln_tests::repo_root().join("tests/models/check_onnx.py"))
        .arg(&out)
        .arg(&path)
        .arg("0.99999")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&run.stdout).to_string() + &String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success() && text.contains("onnxruntime: ok"),
        "{text}"
    );
}

/// `kiln prune` then `kiln quantize`: the pruned model quantizes like any
/// other (its pruned convs included).
#[test]
fn pruned_models_quantize() {
    let (path, sets) = setup(&chain_model(&[3]), "compose.onnx", 3);
    let p = prune(
        &path,
        &sets,
        &sets,
        &opts(Structure::Channels { l1: true }, vec![0.125]),
    )
    .unwrap();
    let pruned = scratch("compose_pruned.onnx");
    std::fs::write(&pruned, p.to_bytes()).unwrap();
    let q = kiln_compiler::compress::quantize(
        &pruned,
        &sets[..2],
        &sets[2..],
        &kiln_compiler::compress::QuantizeOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(q.report.layers.len(), 4, "{:#?}", q.report.layers);
    assert!(q.report.outputs[0].cosine > 0.99, "{:?}", q.report.outputs);
    let out = scratch("compose_int8.onnx");
    std::fs::write(&out, q.to_bytes()).unwrap();
    assert!(kiln_compiler::load_model(&out).is_ok());
}

/// A conv followed by SiLU (`x · sigmoid(x)`, which reads the conv's
/// result twice) still loses channels: both operands carry them. Dead
/// channels (SiLU(0) = 0) prune away exactly.
#[test]
fn silu_passes_channels_through() {
    let mut w1 = weights(6 * 3 * 9, 21, 0.5);
    w1[27..54].iter_mut().for_each(|x| *x = 0.0);
    let m = OnnxBuilder::new("silu", 13)
        .input("x", tensor_type(F32, &["1", "3", "8", "8"]))
        .output("y", tensor_type(F32, &["1", "4", "8", "8"]))
        .initializer(f32_tensor("w1", &[6, 3, 3, 3], &w1))
        .initializer(f32_tensor("w2", &[4, 6, 1, 1], &weights(24, 22, 0.5)))
        .node_with(
            "Conv",
            &["x", "w1"],
            &["c1"],
            vec![attr_ints("pads", &[1, 1, 1, 1])],
        )
        .node("Sigmoid", &["c1"], &["s1"])
        .node("Mul", &["c1", "s1"], &["a1"])
        .node("Conv", &["a1", "w2"], &["y"])
        .model();
    let (path, sets) = setup(&m, "silu.onnx", 2);
    let p = prune(
        &path,
        &sets,
        &sets,
        &opts(Structure::Channels { l1: true }, vec![0.2]),
    )
    .unwrap();
    let conv1 = p.report.layers.iter().find(|l| l.node == "Conv_0").unwrap();
    assert_eq!(
        (conv1.channels_before, conv1.channels_after),
        (Some(6), Some(5))
    );
    assert!(p.report.outputs[0].max_abs < 1e-5, "{:?}", p.report.outputs);
}
