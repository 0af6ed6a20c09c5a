//! What the importer makes of small ONNX graphs, as printed IR: each test
//! builds a graph, imports it, and snapshots the text. Older op versions
//! show their canonical rewrite here.

use kiln_compiler::onnx::{import_model_bytes, proto};
use kiln_ir::text::{print_module, PrintOptions};
use kiln_tests::*;

fn ir(b: OnnxBuilder) -> String {
    let m = import_model_bytes(&b.bytes(), None, &Default::default()).expect("import");
    kiln_ir::verify::verify(&m).expect("verify");
    print_module(&m, &PrintOptions::default())
}

fn f32t(dims: &[&str]) -> proto::TypeProto {
    tensor_type(F32, dims)
}

#[test]
fn conv_relu_maxpool() {
    let w: Vec<f32> = (0..8 * 3 * 3 * 3).map(|i| i as f32 * 0.01).collect();
    let b = OnnxBuilder::new("conv_relu", 17)
        .input("x", f32t(&["N", "3", "32", "32"]))
        .initializer(f32_tensor("w", &[8, 3, 3, 3], &w))
        .initializer(f32_tensor("b", &[8], &[0.5; 8]))
        .node_with(
            "Conv",
            &["x", "w", "b"],
            &["c"],
            vec![
                attr_ints("pads", &[1, 1, 1, 1]),
                attr_ints("strides", &[2, 2]),
            ],
        )
        .node("Relu", &["c"], &["r"])
        .node_with(
            "MaxPool",
            &["r"],
            &["y"],
            vec![
                attr_ints("kernel_shape", &[2, 2]),
                attr_ints("strides", &[2, 2]),
            ],
        )
        .output("y", f32t(&["N", "8", "8", "8"]));
    insta::assert_snapshot!(ir(b));
}

#[test]
fn matmul_gelu_with_symbolic_batch() {
    let w: Vec<f32> = (0..16 * 4).map(|i| (i % 7) as f32).collect();
    let b = OnnxBuilder::new("mlp", 17)
        .input("x", f32t(&["batch", "seq", "16"]))
        .initializer(f32_tensor("w", &[16, 4], &w))
        .initializer(f32_tensor("half", &[], &[0.5]))
        .initializer(f32_tensor(
            "rsqrt2",
            &[],
            &[std::f32::consts::FRAC_1_SQRT_2],
        ))
        .initializer(f32_tensor("one", &[], &[1.0]))
        .node("MatMul", &["x", "w"], &["h"])
        .node("Mul", &["h", "rsqrt2"], &["s"])
        .node("Erf", &["s"], &["e"])
        .node("Add", &["e", "one"], &["e1"])
        .node("Mul", &["h", "e1"], &["he"])
        .node("Mul", &["he", "half"], &["y"])
        .output("y", f32t(&["batch", "seq", "4"]));
    insta::assert_snapshot!(ir(b));
}

#[test]
fn reshape_flattens_symbolic_dims() {
    let b = OnnxBuilder::new("reshape", 17)
        .input("x", f32t(&["N", "seq", "12"]))
        .initializer(i64_tensor("shape", &[2], &[-1, 12]))
        .node("Reshape", &["x", "shape"], &["y"])
        .node("Shape", &["y"], &["s"])
        .output("s", tensor_type(I64, &["2"]))
        .output("y", f32t(&["?", "12"]));
    insta::assert_snapshot!(ir(b));
}

#[test]
fn squeeze_v11_axes_become_an_operand() {
    let b = OnnxBuilder::new("squeeze11", 11)
        .input("x", f32t(&["1", "3", "1", "5"]))
        .node_with("Squeeze", &["x"], &["y"], vec![attr_ints("axes", &[0, 2])])
        .node_with("Unsqueeze", &["y"], &["z"], vec![attr_ints("axes", &[-1])])
        .output("z", f32t(&["3", "5", "1"]));
    insta::assert_snapshot!(ir(b));
}

#[test]
fn softmax_v11_on_a_middle_axis_is_coerced_to_2d() {
    let b = OnnxBuilder::new("softmax11", 11)
        .input("x", f32t(&["2", "3", "4"]))
        .node_with("Softmax", &["x"], &["y"], vec![attr_int("axis", 1)])
        .node_with("LogSoftmax", &["x"], &["z"], vec![attr_int("axis", 2)])
        .output("y", f32t(&["2", "3", "4"]))
        .output("z", f32t(&["2", "3", "4"]));
    insta::assert_snapshot!(ir(b));
}

#[test]
fn upsample_v9_becomes_resize() {
    let b = OnnxBuilder::new("upsample9", 9)
        .input("x", f32t(&["1", "1", "2", "2"]))
        .initializer(f32_tensor("scales", &[4], &[1.0, 1.0, 2.0, 3.0]))
        .node_with(
            "Upsample",
            &["x", "scales"],
            &["y"],
            vec![attr_string("mode", "nearest")],
        )
        .output("y", f32t(&["1", "1", "4", "6"]));
    insta::assert_snapshot!(ir(b));
}

#[test]
fn slice_v9_clip_v6_pad_v2_attributes_become_operands() {
    let b = OnnxBuilder::new("old_ops", 9)
        .input("x", f32t(&["4", "6"]))
        .node_with(
            "Slice",
            &["x"],
            &["s"],
            vec![
                attr_ints("starts", &[1, 0]),
                attr_ints("ends", &[3, 100]),
                attr_ints("axes", &[0, 1]),
            ],
        )
        .node_with(
            "Clip",
            &["s"],
            &["c"],
            vec![attr_float("min", -1.0), attr_float("max", 1.0)],
        )
        .node_with(
            "Pad",
            &["c"],
            &["p"],
            vec![attr_ints("pads", &[0, 1, 0, 1]), attr_float("value", 0.25)],
        )
        .output("p", f32t(&["2", "8"]));
    // At opset 9, Slice-1, Clip-6 and Pad-2 are the versions in force.
    insta::assert_snapshot!(ir(b));
}

#[test]
fn split_v11_without_sizes_splits_evenly() {
    let b = OnnxBuilder::new("split11", 11)
        .input("x", f32t(&["6", "4"]))
        .node_with("Split", &["x"], &["a", "b", "c"], vec![attr_int("axis", 0)])
        .output("a", f32t(&["2", "4"]))
        .output("b", f32t(&["2", "4"]))
        .output("c", f32t(&["2", "4"]));
    insta::assert_snapshot!(ir(b));
}

#[test]
fn constant_nodes_become_constants() {
    let value = proto::AttributeProto {
        name: Some("value".into()),
        t: Some(i64_tensor("", &[3], &[2, 1, 0])),
        r#type: Some(4),
        ..Default::default()
    };
    let b = OnnxBuilder::new("consts", 17)
        .input("x", f32t(&["2", "3", "4"]))
        .node_with("Constant", &[], &["perm"], vec![value])
        .node_with(
            "Constant",
            &[],
            &["eps"],
            vec![attr_float("value_float", 1e-5)],
        )
        .node_with(
            "Transpose",
            &["x"],
            &["t"],
            vec![attr_ints("perm", &[2, 1, 0])],
        )
        .node("Add", &["t", "eps"], &["y"])
        .output("y", f32t(&["4", "3", "2"]));
    insta::assert_snapshot!(ir(b));
}

#[test]
fn if_branches_capture_outer_values() {
    let then_g = OnnxBuilder::new("then", 17)
        .node("Neg", &["x"], &["t"])
        .output("t", f32t(&["3"]))
        .graph();
    let else_g = OnnxBuilder::new("else", 17)
        .node("Abs", &["x"], &["e"])
        .output("e", f32t(&["3"]))
        .graph();
    let b = OnnxBuilder::new("if", 17)
        .input("cond", tensor_type(BOOL, &[]))
        .input("x", f32t(&["3"]))
        .node_with(
            "If",
            &["cond"],
            &["y"],
            vec![
                attr_graph("then_branch", then_g),
                attr_graph("else_branch", else_g),
            ],
        )
        .output("y", f32t(&["3"]));
    insta::assert_snapshot!(ir(b));
}

#[test]
fn loop_carries_state_through_its_body() {
    let body = OnnxBuilder::new("body", 17)
        .input("i", tensor_type(I64, &[]))
        .input("cond_in", tensor_type(BOOL, &[]))
        .input("acc", f32t(&["2"]))
        .node("Add", &["acc", "step"], &["acc_out"])
        .node("Identity", &["cond_in"], &["cond_out"])
        .output("cond_out", tensor_type(BOOL, &[]))
        .output("acc_out", f32t(&["2"]))
        .graph();
    let b = OnnxBuilder::new("loop", 17)
        .input("n", tensor_type(I64, &[]))
        .input("init", f32t(&["2"]))
        .initializer(f32_tensor("step", &[2], &[1.0, 2.0]))
        .node_with(
            "Loop",
            &["n", "", "init"],
            &["final"],
            vec![attr_graph("body", body)],
        )
        .output("final", f32t(&["2"]));
    insta::assert_snapshot!(ir(b));
}

#[test]
fn model_local_functions_are_inlined() {
    // A function `local.Square(X) -> Y` computing X*X, called twice.
    let f = proto::FunctionProto {
        name: Some("Square".into()),
        domain: Some("local".into()),
        input: vec!["X".into()],
        output: vec!["Y".into()],
        node: vec![proto::NodeProto {
            op_type: Some("Mul".into()),
            input: vec!["X".into(), "X".into()],
            output: vec!["Y".into()],
            ..Default::default()
        }],
        opset_import: vec![proto::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        ..Default::default()
    };
    let b = OnnxBuilder::new("func", 17)
        .input("x", f32t(&["4"]))
        .output("y", f32t(&["4"]));
    let mut m = b.model();
    let g = m.graph.as_mut().expect("graph");
    for (i, o) in [("x", "x2"), ("x2", "y")] {
        g.node.push(proto::NodeProto {
            op_type: Some("Square".into()),
            domain: Some("local".into()),
            input: vec![i.into()],
            output: vec![o.into()],
            ..Default::default()
        });
    }
    m.functions.push(f);
    m.opset_import.push(proto::OperatorSetIdProto {
        domain: Some("local".into()),
        version: Some(1),
    });
    let mk = kiln_compiler::onnx::import::import_model(&m, Default::default()).expect("import");
    kiln_ir::verify::verify(&mk).expect("verify");
    insta::assert_snapshot!(print_module(&mk, &PrintOptions::default()));
}

#[test]
fn shared_models_print() {
    for dir in shared_models() {
        let m = kiln_compiler::load_model(&dir).expect("import");
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("model")
            .to_string();
        insta::assert_snapshot!(
            format!("shared_model_{name}"),
            print_module(&m, &PrintOptions::default())
        );
    }
}

#[test]
fn external_data_is_read_from_the_model_folder() {
    let dir = std::env::temp_dir().join(format!("kiln-ext-ok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // Two f32 values at offset 4 of weights.bin (after 4 bytes of padding).
    let mut bin = vec![0xffu8; 4];
    bin.extend(1.5f32.to_le_bytes());
    bin.extend((-2.0f32).to_le_bytes());
    std::fs::write(dir.join("weights.bin"), bin).expect("write weights");
    let kv = |k: &str, v: &str| proto::StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v.into()),
    };
    let w = proto::TensorProto {
        name: Some("w".into()),
        dims: vec![2],
        data_type: Some(F32),
        data_location: Some(1),
        external_data: vec![
            kv("location", "weights.bin"),
            kv("offset", "4"),
            kv("length", "8"),
        ],
        ..Default::default()
    };
    let b = OnnxBuilder::new("ext", 17)
        .input("x", f32t(&["2"]))
        .initializer(w)
        .node("Mul", &["x", "w"], &["y"])
        .output("y", f32t(&["2"]));
    std::fs::write(dir.join("model.onnx"), b.bytes()).expect("write model");
    let m = kiln_compiler::load_model(&dir.join("model.onnx")).expect("import");
    let _ = std::fs::remove_dir_all(&dir);
    insta::assert_snapshot!(print_module(&m, &PrintOptions::default()));
}
