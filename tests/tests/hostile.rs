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
