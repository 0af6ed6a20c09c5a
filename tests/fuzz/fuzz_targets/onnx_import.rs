//! Bytes → `load_onnx_bytes` (decode, import, canonicalize, infer,
//! verify): any input gives a module or an error, never a panic, an
//! abort or a hang.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = kiln_compiler::load::load_onnx_bytes(data, "fuzz.onnx");
});
