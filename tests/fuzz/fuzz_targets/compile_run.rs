//! Bytes → import + verify → `-O2` on the interpreter and the cpu
//! backend → a run on seeded random inputs: errors are fine, panics,
//! aborts and hangs are not, and where both backends run they agree on
//! which outputs exist. Limits are kept small so that a model asking for
//! much fails fast instead of exhausting the fuzzer's memory.
#![no_main]

use std::collections::HashMap;

use kiln_compiler::compile::InterpOptions;
use kiln_compiler::lower::cpu::CpuOptions;
use kiln_compiler::{compile, Target};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let limits = kiln_ir::Limits {
        tensor_bytes: 16 << 20,
        memory_bytes: 64 << 20,
        nodes: 2000,
        depth: 8,
        loop_iterations: 1000,
    };
    let Ok(m) =
        kiln_compiler::onnx::import_model_bytes(data, None, &limits).map_err(|e| e.to_string())
    else {
        return;
    };
    if kiln_ir::verify::verify(&m).is_err() {
        return;
    }
    let Ok(inputs) = kiln_compiler::check::random_inputs(&m, &HashMap::new(), 1) else {
        return;
    };
    let shapes = kiln_compiler::lower::shapes_of(&inputs);
    let interp = Target::Interp(InterpOptions {
        opt_level: 2,
        verify_each: true,
        limits,
    });
    let cpu = Target::Cpu(CpuOptions {
        opt_level: 2,
        threads: 1,
        limits,
        ..Default::default()
    });
    let mut counts = vec![];
    for target in [interp, cpu] {
        if let Ok(exe) = compile(&m, &target, &shapes) {
            if let Ok(out) = exe.run(&inputs) {
                counts.push(out.len());
            }
        }
    }
    if let [a, b] = counts[..] {
        assert_eq!(a, b, "the backends give different numbers of outputs");
    }
});
