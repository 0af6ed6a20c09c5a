//! Hostile input: small hand-made models that ask for too much or break
//! the rules before the verifier sees them. Each gets a clear error
//! quickly (never a panic, an abort or a hang); each case here was once a
//! panic, an abort, or minutes of work.

use std::time::{Duration, Instant};

use kiln_compiler::load::load_onnx_bytes;
use kiln_compiler::onnx::{import_model_bytes, proto};
use kiln_tests::*;

/// The error importing `bytes` within `limits`, which must come fast.
fn import_error(bytes: &[u8], limits: &kiln_ir::Limits) -> String {
    let start = Instant::now();
    let r = import_model_bytes(bytes, None, limits);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn softmax_11_with_no_results_is_an_error_not_a_panic() {
    let b = OnnxBuilder::new("softmax", 11)
        .input("x", tensor_type(F32, &["2", "3"]))
        .node_with("Softmax", &["x"], &[], vec![attr_int("axis", 0)]);
    let e = import_error(&b.bytes(), &Default::default());
    assert!(e.contains("Softmax") && e.contains("no results"), "{e}");
}

#[test]
fn scan_8_with_no_operands_is_an_error_not_a_panic() {
    let body = OnnxBuilder::new("body", 8).graph();
    let b = OnnxBuilder::new("scan", 8)
        .input("x", tensor_type(F32, &["1", "2"]))
        .node_with(
            "Scan",
            &[],
            &["y"],
            vec![attr_graph("body", body), attr_int("num_scan_inputs", 0)],
        )
        .output("y", tensor_type(F32, &["1", "2"]));
    // Import and verification return (an error or not); nothing panics.
    let _ = load_onnx_bytes(&b.bytes(), "scan8.onnx");
}

#[test]
fn a_huge_sparse_initializer_is_refused_before_it_is_built() {
    let mut model = OnnxBuilder::new("sparse", 17)
        .input("x", tensor_type(F32, &["1"]))
        .node("Identity", &["x"], &["y"])
        .output("y", tensor_type(F32, &["1"]))
        .model();
    let graph = model.graph.as_mut().expect("graph");
    graph.sparse_initializer.push(proto::SparseTensorProto {
        values: Some(f32_tensor("s", &[1], &[1.0])),
        indices: Some(i64_tensor("s_idx", &[1], &[0])),
        dims: vec![1 << 31],
    });
    let bytes = prost::Message::encode_to_vec(&model);
    let e = import_error(&bytes, &Default::default());
    assert!(
        e.contains("sparse") && e.contains("8589934592 bytes") && e.contains("limit"),
        "{e}"
    );
}

/// `f_k` calls `f_{k+1}` twice, so inlining `f_0` makes 2^depth nodes.
fn doubling_functions(depth: usize) -> Vec<u8> {
    let mut model = OnnxBuilder::new("calls", 17)
        .input("x", tensor_type(F32, &["1"]))
        .node("f0", &["x"], &["y"])
        .output("y", tensor_type(F32, &["1"]))
        .model();
    model.opset_import.push(proto::OperatorSetIdProto {
        domain: Some("local".into()),
        version: Some(1),
    });
    if let Some(n) = model.graph.as_mut().and_then(|g| g.node.first_mut()) {
        n.domain = Some("local".into());
    }
    for k in 0..=depth {
        let node = |op: &str, domain: &str, i: &str, o: &str| proto::NodeProto {
            op_type: Some(op.into()),
            domain: Some(domain.into()),
            input: vec![i.into()],
            output: vec![o.into()],
            ..Default::default()
        };
        let nodes = if k == depth {
            vec![node("Relu", "", "a", "c")]
        } else {
            let callee = format!("f{}", k + 1);
            vec![
                node(&callee, "local", "a", "b"),
                node(&callee, "local", "b", "c"),
            ]
        };
        model.functions.push(proto::FunctionProto {
            name: Some(format!("f{k}")),
            domain: Some("local".into()),
            input: vec!["a".into()],
            output: vec!["c".into()],
            node: nodes,
            opset_import: vec![
                proto::OperatorSetIdProto {
                    domain: Some(String::new()),
                    version: Some(17),
                },
                proto::OperatorSetIdProto {
                    domain: Some("local".into()),
                    version: Some(1),
                },
            ],
            ..Default::default()
        });
    }
    prost::Message::encode_to_vec(&model)
}

#[test]
fn function_calls_that_multiply_nodes_stop_at_the_node_limit() {
    // Inlined, 2^40 nodes; the limit stops it after 10,000.
    let limits = kiln_ir::Limits {
        nodes: 10_000,
        ..Default::default()
    };
    let e = import_error(&doubling_functions(40), &limits);
    assert!(e.contains("more than 10000 nodes"), "{e}");
    // Within the limit it imports: 2^6 Relus.
    let m = import_model_bytes(&doubling_functions(6), None, &limits).expect("import");
    assert_eq!(m.body.nodes.len(), 64);
}

#[test]
fn the_default_limits_stop_a_model_that_nests_functions_exponentially() {
    let e = import_error(&doubling_functions(40), &Default::default());
    assert!(e.contains("nodes"), "{e}");
}

#[test]
fn load_errors_name_the_model() {
    let b = OnnxBuilder::new("softmax", 11)
        .input("x", tensor_type(F32, &["2", "3"]))
        .node_with("Softmax", &["x"], &[], vec![attr_int("axis", 0)]);
    let e = match load_onnx_bytes(&b.bytes(), "hostile.onnx") {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("hostile.onnx"), "{e}");
}

/// Compile `bytes` for `target` and run it on `inputs`: the first error,
/// which must come within `secs`.
fn run_error(
    bytes: &[u8],
    target: &kiln_compiler::Target,
    inputs: &[(&str, kiln_runtime::Value)],
    secs: u64,
) -> String {
    let start = Instant::now();
    let m = load_onnx_bytes(bytes, "hostile.onnx").expect("imports");
    let inputs: std::collections::HashMap<String, kiln_runtime::Value> = inputs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let shapes = kiln_compiler::lower::shapes_of(&inputs);
    let r = kiln_compiler::compile(&m, target, &shapes)
        .and_then(|exe| exe.run(&inputs).map(|_| ()).map_err(|e| e.to_string()));
    assert!(
        start.elapsed() < Duration::from_secs(secs),
        "took {:?}",
        start.elapsed()
    );
    match r {
        Ok(()) => panic!("expected an error"),
        Err(e) => e,
    }
}

fn interp(limits: kiln_ir::Limits) -> kiln_compiler::Target {
    kiln_compiler::Target::Interp(kiln_compiler::compile::InterpOptions {
        limits,
        ..Default::default()
    })
}

fn cpu(limits: kiln_ir::Limits) -> kiln_compiler::Target {
    kiln_compiler::Target::Cpu(kiln_compiler::lower::cpu::CpuOptions {
        threads: 1,
        limits,
        ..Default::default()
    })
}

#[test]
fn constant_of_shape_asking_for_terabytes_is_an_error_not_an_abort() {
    // An 80-byte model: ConstantOfShape([2^20, 2^20]) of f32, 4 TiB.
    let b = OnnxBuilder::new("cos", 17)
        .initializer(i64_tensor("shape", &[2], &[1 << 20, 1 << 20]))
        .node("ConstantOfShape", &["shape"], &["y"])
        .output("y", tensor_type(F32, &["1048576", "1048576"]));
    let bytes = b.bytes();
    for target in [interp(Default::default()), cpu(Default::default())] {
        let e = run_error(&bytes, &target, &[], 2);
        assert!(
            e.contains("4398046511104 bytes") && e.contains("limit"),
            "{e}"
        );
    }
}

fn bool_scalar(name: &str, v: bool) -> proto::TensorProto {
    proto::TensorProto {
        name: Some(name.into()),
        data_type: Some(9),
        int32_data: vec![v as i32],
        ..Default::default()
    }
}

/// `while true` with a trip count of 2^62: a Loop that never ends unless
/// iterations are counted.
fn endless_loop() -> Vec<u8> {
    let body = OnnxBuilder::new("body", 17)
        .input("i", tensor_type(I64, &[]))
        .input("c", tensor_type(BOOL, &[]))
        .input("x", tensor_type(F32, &["1"]))
        .node("Identity", &["c"], &["c_out"])
        .node("Identity", &["x"], &["x_out"])
        .output("c_out", tensor_type(BOOL, &[]))
        .output("x_out", tensor_type(F32, &["1"]))
        .graph();
    OnnxBuilder::new("endless", 17)
        .input("x", tensor_type(F32, &["1"]))
        .initializer(i64_tensor("trips", &[], &[1 << 62]))
        .initializer(bool_scalar("go", true))
        .node_with(
            "Loop",
            &["trips", "go", "x"],
            &["y"],
            vec![attr_graph("body", body)],
        )
        .output("y", tensor_type(F32, &["1"]))
        .bytes()
}

#[test]
fn an_endless_loop_stops_at_the_iteration_limit() {
    let x = kiln_runtime::Value::tensor(
        kiln_runtime::Tensor::new(vec![1], kiln_runtime::Data::F32(vec![1.0])).expect("tensor"),
    );
    let limits = kiln_ir::Limits {
        loop_iterations: 1000,
        ..Default::default()
    };
    for target in [interp(limits), cpu(limits)] {
        let e = run_error(&endless_loop(), &target, &[("x", x.clone())], 2);
        assert!(e.contains("runs more than 1000 iterations"), "{e}");
    }
    // The default limit stops it too, within seconds.
    let e = run_error(
        &endless_loop(),
        &interp(Default::default()),
        &[("x", x)],
        10,
    );
    assert!(e.contains("iterations"), "{e}");
}

#[test]
fn npy_shapes_whose_byte_size_overflows_are_an_error() {
    // 2^62 x 2 elements fit a usize; times 8 bytes they do not.
    let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904, 2), }";
    let mut h = header.to_string();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((h.len() as u16).to_le_bytes());
    bytes.extend(h.as_bytes());
    bytes.extend([0u8; 16]);
    let e = kiln_compiler::testdata::read_npy(&bytes).unwrap_err();
    assert!(e.contains("overflow"), "{e}");
}

#[test]
fn data_sized_results_of_other_ops_are_checked_before_they_are_made() {
    // RandomNormal of an attribute shape, Pad by 2^40, OneHot of depth
    // 2^40: each asks for terabytes.
    let random = OnnxBuilder::new("random", 17)
        .node_with(
            "RandomNormal",
            &[],
            &["y"],
            vec![attr_ints("shape", &[1 << 20, 1 << 20])],
        )
        .output("y", tensor_type(F32, &["1048576", "1048576"]));
    let pad = OnnxBuilder::new("pad", 17)
        .input("x", tensor_type(F32, &["2"]))
        .initializer(i64_tensor("pads", &[2], &[1 << 40, 0]))
        .node("Pad", &["x", "pads"], &["y"])
        .output("y", tensor_type(F32, &["?"]));
    let one_hot = OnnxBuilder::new("onehot", 17)
        .input("x", tensor_type(F32, &["2"]))
        .initializer(i64_tensor("depth", &[], &[1 << 40]))
        .initializer(f32_tensor("values", &[2], &[0.0, 1.0]))
        .node("OneHot", &["x", "depth", "values"], &["y"])
        .output("y", tensor_type(F32, &["?", "?"]));
    let x = kiln_runtime::Value::tensor(
        kiln_runtime::Tensor::new(vec![2], kiln_runtime::Data::F32(vec![0.0, 1.0]))
            .expect("tensor"),
    );
    for (b, inputs) in [
        (random, vec![]),
        (pad, vec![("x", x.clone())]),
        (one_hot, vec![("x", x)]),
    ] {
        let bytes = b.bytes();
        for target in [interp(Default::default()), cpu(Default::default())] {
            let e = run_error(&bytes, &target, &inputs, 2);
            assert!(e.contains("limit"), "{e}");
        }
    }
}

#[test]
fn resize_by_a_million_is_checked_before_it_is_made() {
    let b = OnnxBuilder::new("resize", 17)
        .input("x", tensor_type(F32, &["1", "1", "2", "2"]))
        .initializer(f32_tensor("scales", &[4], &[1.0, 1.0, 1e6, 1e6]))
        .node("Resize", &["x", "", "scales"], &["y"])
        .output("y", tensor_type(F32, &["?", "?", "?", "?"]));
    let x = kiln_runtime::Value::tensor(
        kiln_runtime::Tensor::new(vec![1, 1, 2, 2], kiln_runtime::Data::F32(vec![0.0; 4]))
            .expect("tensor"),
    );
    let bytes = b.bytes();
    for target in [interp(Default::default()), cpu(Default::default())] {
        let e = run_error(&bytes, &target, &[("x", x.clone())], 2);
        assert!(e.contains("limit"), "{e}");
    }
}

#[test]
fn window_ops_sized_by_attributes_are_checked_before_they_are_made() {
    // MaxUnpool to an output_shape of 2^40 cells, ConvTranspose to one of
    // 2^20 x 2^20, Col2Im into an image of 2^40 x 2^40 (whose size
    // overflows usize): errors naming the limit, never an abort.
    let x = |shape: &[usize]| {
        let n = shape.iter().product();
        kiln_runtime::Value::tensor(
            kiln_runtime::Tensor::new(shape.to_vec(), kiln_runtime::Data::F32(vec![1.0; n]))
                .expect("tensor"),
        )
    };
    let unpool = OnnxBuilder::new("unpool", 17)
        .input("x", tensor_type(F32, &["1", "1", "1", "1"]))
        .initializer(i64_tensor("i", &[1, 1, 1, 1], &[0]))
        .initializer(i64_tensor("shape", &[4], &[1, 1, 1 << 20, 1 << 20]))
        .node_with(
            "MaxUnpool",
            &["x", "i", "shape"],
            &["y"],
            vec![attr_ints("kernel_shape", &[1, 1])],
        )
        .output("y", tensor_type(F32, &["?", "?", "?", "?"]));
    let transpose = OnnxBuilder::new("convt", 17)
        .input("x", tensor_type(F32, &["1", "1", "1", "1"]))
        .initializer(f32_tensor("w", &[1, 1, 1, 1], &[1.0]))
        .node_with(
            "ConvTranspose",
            &["x", "w"],
            &["y"],
            vec![
                attr_ints("output_shape", &[1 << 20, 1 << 20]),
                attr_ints("strides", &[1 << 20, 1 << 20]),
            ],
        )
        .output("y", tensor_type(F32, &["?", "?", "?", "?"]));
    let col2im = OnnxBuilder::new("col2im", 18)
        .input("x", tensor_type(F32, &["1", "1", "1"]))
        .initializer(i64_tensor("image", &[2], &[1 << 40, 1 << 40]))
        .initializer(i64_tensor("block", &[2], &[1, 1]))
        .node_with(
            "Col2Im",
            &["x", "image", "block"],
            &["y"],
            vec![attr_ints("strides", &[1 << 40, 1 << 40])],
        )
        .output("y", tensor_type(F32, &["?", "?", "?", "?"]));
    for (b, shape) in [
        (unpool, &[1usize, 1, 1, 1][..]),
        (transpose, &[1, 1, 1, 1][..]),
        (col2im, &[1, 1, 1][..]),
    ] {
        let bytes = b.bytes();
        for target in [interp(Default::default()), cpu(Default::default())] {
            let e = run_error(&bytes, &target, &[("x", x(shape))], 2);
            assert!(e.contains("limit"), "{e}");
        }
    }
}

/// `memory_bytes` bounds what a run holds at once, not only each tensor:
/// 20 fresh 256 KiB results exceed 4 MiB; Identity (which shares its
/// operand's data) and a loop's iterations (each replaces the last) do
/// not add up.
#[test]
fn a_run_holds_at_most_memory_bytes_of_values() {
    let limits = kiln_ir::Limits {
        tensor_bytes: 1 << 20,
        memory_bytes: 4 << 20,
        ..Default::default()
    };
    let chain = |n: usize, op: &str| {
        let mut s = String::from("module @chain opset(ai.onnx = 18) {\n  input %x: f32[256,256]\n");
        let mut prev = "x".to_string();
        for i in 0..n {
            s += &format!("  %v{i} = {op}(%{prev}) : f32[256,256]\n");
            prev = format!("v{i}");
        }
        s + &format!("  return %{prev}\n}}\n")
    };
    let x = kiln_runtime::Value::tensor(
        kiln_runtime::Tensor::new(vec![256, 256], kiln_runtime::Data::F32(vec![0.5; 1 << 16]))
            .expect("tensor"),
    );
    let inputs = std::collections::HashMap::from([("x".to_string(), x)]);
    let run = |src: &str| {
        let m = kiln_ir::parse_module(src).expect("parses");
        kiln_runtime::Interpreter::new(&m)
            .with_limits(limits)
            .run(&inputs)
            .map_err(|e| e.to_string())
    };
    let e = run(&chain(20, "Neg")).expect_err("20 x 256 KiB is past 4 MiB");
    assert!(
        e.contains("the values this run holds") && e.contains("limit is 4194304"),
        "{e}"
    );
    assert!(run(&chain(12, "Neg")).is_ok());
    assert!(run(&chain(40, "Identity")).is_ok());
    let looped = "module @l opset(ai.onnx = 18) {
  input %x: f32[256,256]
  const %n: i64[] = dense[100]
  %y = Loop(%n, none, %x) {
    body = graph {
      input %i: i64[]
      input %c: bool[]
      input %v: f32[256,256]
      %w = Neg(%v) : f32[256,256]
      %c_out = Identity(%c) : bool[]
      return %c_out, %w
    }
  } : f32[256,256]
  return %y
}
";
    assert!(run(looped).is_ok());
}
