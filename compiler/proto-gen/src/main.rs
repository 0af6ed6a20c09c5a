//! Regenerates `compiler/src/onnx/proto.rs` from the ONNX `.proto` files in
//! `compiler/proto/`, using `protox` (a pure-Rust protobuf compiler, so no
//! `protoc` is needed) and `prost-build` 0.13.
//!
//! Run it through `compiler/proto/regen.sh`, which also formats the result
//! and prepends the "generated, do not edit" header.

use std::path::PathBuf;

fn main() {
    let compiler_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("proto-gen lives inside compiler/")
        .to_path_buf();
    let proto_dir = compiler_dir.join("proto");
    let out_file = compiler_dir.join("src").join("onnx").join("proto.rs");

    // Paths are relative to the include dir so that onnx-data.proto's
    // `import "onnx/onnx-ml.proto";` resolves unchanged.
    // onnx-ml.proto is a superset of onnx.proto (it adds TypeProto.Opaque and
    // the `opaque_type` case), so it is the one Kiln compiles.
    let files = ["onnx/onnx-ml.proto", "onnx/onnx-data.proto"];
    let fds = protox::compile(files, [&proto_dir]).unwrap_or_else(|e| {
        eprintln!("error: compiling .proto files failed: {e:?}");
        std::process::exit(1);
    });

    let tmp = std::env::temp_dir().join(format!("kiln-proto-gen-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("create temp dir");
    prost_build::Config::new()
        .out_dir(&tmp)
        // Tensor bytes decode as slices of the (memory-mapped) model file
        // instead of copies: the importer copies each into its aligned
        // buffer once and releases the file's pages behind it.
        .bytes([".onnx.TensorProto.raw_data"])
        .compile_fds(fds)
        .expect("prost-build code generation failed");

    // Package `onnx` is written to `onnx.rs`.
    let generated = std::fs::read_to_string(tmp.join("onnx.rs")).expect("read generated onnx.rs");
    std::fs::create_dir_all(out_file.parent().unwrap()).expect("create compiler/src/onnx");
    std::fs::write(&out_file, generated).expect("write proto.rs");
    let _ = std::fs::remove_dir_all(&tmp);
    eprintln!("wrote {}", out_file.display());
}
