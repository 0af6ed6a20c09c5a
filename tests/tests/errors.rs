//! Bad input gets a clear error, never a panic: the exact messages for
//! malformed ONNX, unknown ops, wrong attributes, absurd sizes, unsafe
//! external data paths, and typos in text IR (with line:col and a caret).

use kiln_compiler::load::{load_onnx_bytes, parse_text};
use kiln_compiler::onnx::proto;
use kiln_tests::*;

fn onnx_error(bytes: &[u8]) -> String {
    match load_onnx_bytes(bytes, "bad.onnx") {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn text_error(src: &str) -> String {
    match parse_text(src, "typo.kir") {
        Ok(m) => match kiln_ir::verify::verify(&m) {
            Ok(()) => panic!("expected an error"),
            Err(e) => format!("typo.kir: the model is invalid: {e}"),
        },
        Err(e) => e.to_string(),
    }
}

fn small_model() -> OnnxBuilder {
    OnnxBuilder::new("small", 17)
        .input("x", tensor_type(F32, &["2", "3"]))
        .node("Relu", &["x"], &["y"])
        .output("y", tensor_type(F32, &["2", "3"]))
}

#[test]
fn truncated_protobuf() {
    let bytes = small_model().bytes();
    insta::assert_snapshot!(onnx_error(&bytes[..bytes.len() - 7]));
}

#[test]
fn every_truncation_of_a_real_model_fails_cleanly() {
    let bytes = small_model().bytes();
    for n in 0..bytes.len() {
        let _ = load_onnx_bytes(&bytes[..n], "cut.onnx");
    }
}

#[test]
fn not_a_model_at_all() {
    insta::assert_snapshot!(onnx_error(b"\xff\xff\xff\xff this is not protobuf"));
}

#[test]
fn unknown_op() {
    let b = OnnxBuilder::new("unknown", 17)
        .input("x", tensor_type(F32, &["2"]))
        .node("FrobnicateV2", &["x"], &["y"])
        .output("y", tensor_type(F32, &["2"]));
    insta::assert_snapshot!(onnx_error(&b.bytes()));
}

#[test]
fn wrong_attribute_type() {
    let b = OnnxBuilder::new("badattr", 17)
        .input("x", tensor_type(F32, &["1", "1", "4", "4"]))
        .initializer(f32_tensor("w", &[1, 1, 1, 1], &[1.0]))
        .node_with(
            "Conv",
            &["x", "w"],
            &["y"],
            vec![attr_float("strides", 2.0)],
        )
        .output("y", tensor_type(F32, &["1", "1", "4", "4"]));
    insta::assert_snapshot!(onnx_error(&b.bytes()));
}

#[test]
fn input_used_before_definition() {
    let b = OnnxBuilder::new("undef", 17)
        .input("x", tensor_type(F32, &["2"]))
        .node("Add", &["x", "later"], &["y"])
        .node("Relu", &["x"], &["later"])
        .output("y", tensor_type(F32, &["2"]));
    insta::assert_snapshot!(onnx_error(&b.bytes()));
}

#[test]
fn inconsistent_shapes() {
    let b = OnnxBuilder::new("mismatch", 17)
        .input("a", tensor_type(F32, &["2", "3"]))
        .input("b", tensor_type(F32, &["4", "5"]))
        .node("MatMul", &["a", "b"], &["y"])
        .output("y", tensor_type(F32, &["2", "5"]));
    insta::assert_snapshot!(onnx_error(&b.bytes()));
}

#[test]
fn absurd_tensor_size_fails_without_allocating() {
    let t = proto::TensorProto {
        name: Some("huge".into()),
        dims: vec![1 << 20, 1 << 20, 1 << 20],
        data_type: Some(F32),
        raw_data: Some(vec![0; 4].into()),
        ..Default::default()
    };
    let b = small_model().initializer(t);
    insta::assert_snapshot!(onnx_error(&b.bytes()));
}

#[test]
fn data_shorter_than_shape() {
    let b = small_model().initializer(f32_tensor("w", &[4, 4], &[1.0, 2.0]));
    insta::assert_snapshot!(onnx_error(&b.bytes()));
}

#[test]
fn external_data_may_not_leave_the_model_folder() {
    let t = proto::TensorProto {
        name: Some("w".into()),
        dims: vec![2],
        data_type: Some(F32),
        data_location: Some(1),
        external_data: vec![proto::StringStringEntryProto {
            key: Some("location".into()),
            value: Some("../../etc/passwd".into()),
        }],
        ..Default::default()
    };
    let dir = std::env::temp_dir().join(format!("kiln-extdata-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("model.onnx");
    std::fs::write(&path, small_model().initializer(t).bytes()).expect("write model");
    let err = kiln_compiler::load_model(&path)
        .map(|_| ())
        .expect_err("must fail")
        .to_string();
    let _ = std::fs::remove_dir_all(&dir);
    insta::assert_snapshot!(err.replace(&dir.display().to_string(), "$DIR"));
}

#[test]
fn text_missing_equals() {
    insta::assert_snapshot!(text_error(
        "module @m opset(ai.onnx = 17) {\n  input %x: f32[2]\n  %y Relu(%x) : f32[2]\n  return %y\n}\n"
    ));
}

#[test]
fn text_unknown_element_type() {
    insta::assert_snapshot!(text_error(
        "module @m opset(ai.onnx = 17) {\n  input %x: f33[2]\n  return %x\n}\n"
    ));
}

#[test]
fn text_undefined_value() {
    insta::assert_snapshot!(text_error(
        "module @m opset(ai.onnx = 17) {\n  input %x: f32[2]\n  %y = Add(%x, %z) : f32[2]\n  return %y\n}\n"
    ));
}

#[test]
fn text_duplicate_value() {
    insta::assert_snapshot!(text_error(
        "module @m opset(ai.onnx = 17) {\n  input %x: f32[2]\n  %x = Relu(%x) : f32[2]\n  return %x\n}\n"
    ));
}

#[test]
fn text_unterminated_string() {
    insta::assert_snapshot!(text_error(
        "module @m opset(ai.onnx = 17) {\n  input %x: f32[2]\n  %y = Relu(%x) : f32[2] loc(\"oops)\n  return %y\n}\n"
    ));
}

#[test]
fn text_dense_data_does_not_match_shape() {
    insta::assert_snapshot!(text_error(
        "module @m opset(ai.onnx = 17) {\n  const %c: i64[3] = dense[1, 2]\n  return %c\n}\n"
    ));
}

#[test]
fn text_wrong_result_type_is_a_verifier_error() {
    insta::assert_snapshot!(text_error(
        "module @m opset(ai.onnx = 17) {\n  input %x: f32[2,3]\n  %y = Transpose(%x) : f32[2,3]\n  return %y\n}\n"
    ));
}

mod fuzz {
    use proptest::prelude::*;

    fn seed_model() -> Vec<u8> {
        let path = kiln_tests::repo_root().join("tests/models/tiny_cnn/model.onnx");
        std::fs::read(path).expect("tiny_cnn model")
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Corrupted models (bytes overwritten at random places) import or
        /// fail with an error; they never panic or allocate absurdly.
        #[test]
        fn corrupted_models_never_panic(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let mut bytes = seed_model();
            for (at, b) in edits {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            let _ = kiln_compiler::load::load_onnx_bytes(&bytes, "fuzz.onnx");
        }
    }
}

/// `kiln.FusedConv` in text IR: an unknown activation and a residual of
/// the wrong shape are verifier errors naming the node, not panics.
#[test]
fn fused_conv_bad_activation_and_residual() {
    let src = |act: &str, z: &str| {
        format!(
            "module @m opset(ai.onnx = 22) {{
  input %x: f32[1,2,4,4]
  input %w: f32[3,2,1,1]
  input %z: f32[{z}]
  %y = kiln.FusedConv(%x, %w, none, %z) {{activation = \"{act}\"}} : f32[1,3,4,4]
  return %y
}}
"
        )
    };
    let act = text_error(&src("Tanh", "1,3,4,4"));
    assert!(act.contains("activation") && act.contains("Tanh"), "{act}");
    let shape = text_error(&src("Relu", "1,3,2,2"));
    assert!(
        shape.contains("residual Z must have the result's shape"),
        "{shape}"
    );
    // The well-formed node verifies.
    let ok = parse_text(&src("Relu", "1,3,4,4"), "ok.kir").expect("parses");
    kiln_ir::verify::verify(&ok).expect("verifies");
}

/// `kiln.Lookup` written by hand with a table that is not 256 bytes, and
/// with an f32 operand: each is a verifier error naming the node, not a
/// panic at run time.
#[test]
fn lookup_with_a_bad_table() {
    let short = "module @m opset(ai.onnx = 21) {\n  input %x: u8[4]\n  const %t: u8[3] = dense[1, 2, 3]\n  %y = kiln.Lookup(%x, %t) : u8[4]\n  return %y\n}\n";
    let float = "module @m opset(ai.onnx = 21) {\n  input %x: f32[4]\n  const %t: u8[256] = elided\n  %y = kiln.Lookup(%x, %t) : u8[4]\n  return %y\n}\n";
    let (short, float) = (text_error(short), text_error(float));
    assert!(
        short.contains("[256]") && short.contains("kiln.Lookup"),
        "{short}"
    );
    assert!(
        float.contains("u8 or i8") && float.contains("kiln.Lookup"),
        "{float}"
    );
}
