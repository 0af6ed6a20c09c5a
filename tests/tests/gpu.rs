//! The GPU backend. Without a device: every shader the gpu lowering
//! generates for the node suite and the shared models passes naga's
//! validation. On a device (Mesa's lavapipe in CI, with
//! `KILN_GPU_ADAPTER=llvmpipe` so that a silent fallback to another
//! adapter fails instead of passing): the node suite and the shared
//! models run on `--backend gpu` and agree with the reference outputs.
//! Without a device and without `KILN_GPU_ADAPTER`, the device tests say
//! so and pass.

use kiln_compiler::conformance::{report_line, run_test_on, Outcome, Tolerance};
use kiln_compiler::lower::gpu::GpuOptions;
use kiln_compiler::Target;
use kiln_runtime::gpu::Gpu;
use kiln_tests::{listed, node_suite_dir, shared_models, zoo_models};

fn gpu() -> Target {
    Target::Gpu(GpuOptions::default())
}

/// The device, checked against `KILN_GPU_ADAPTER` when that is set; `None`
/// (the test then passes, saying why) when there is none and none was
/// asked for.
fn device() -> Option<String> {
    let want = std::env::var("KILN_GPU_ADAPTER")
        .ok()
        .filter(|s| !s.is_empty());
    match Gpu::open() {
        Ok(g) => {
            let name = g.adapter();
            if let Some(w) = &want {
                assert!(
                    name.contains(w.as_str()),
                    "KILN_GPU_ADAPTER={w}, but the adapter is {name}"
                );
                if let Ok(b) = std::env::var("WGPU_BACKEND") {
                    assert!(
                        format!("{:?}", g.info.backend).eq_ignore_ascii_case(&b),
                        "WGPU_BACKEND={b}, but the adapter runs on {:?}",
                        g.info.backend
                    );
                }
            }
            eprintln!("gpu tests on {name}");
            Some(name)
        }
        Err(e) => {
            assert!(want.is_none(), "KILN_GPU_ADAPTER is set, but: {e}");
            eprintln!("skipped: no GPU adapter ({e})");
            None
        }
    }
}

/// Every generated shader is valid WGSL (naga), for every node test the
/// interpreter passes and every shared model: no device needed.
#[test]
fn naga_validates_every_generated_shader() {
    let dir = node_suite_dir();
    let mut folders: Vec<_> = listed("tests/conformance/interp-passing.txt")
        .into_iter()
        .map(|n| dir.join(n))
        .collect();
    folders.extend(shared_models());
    folders.extend(zoo_models());
    let (mut shaders, mut invalid) = (0, vec![]);
    for f in &folders {
        let m = kiln_compiler::load_model(f).expect("loads");
        let Ok(Some(inputs)) = kiln_compiler::check::inputs_from_test_folder(&m, f) else {
            continue;
        };
        let shapes = kiln_compiler::lower::shapes_of(&inputs);
        let Ok(lowered) = kiln_compiler::compile::prepare(&m, &gpu(), &shapes) else {
            continue;
        };
        for (node, r) in kiln_compiler::lower::gpu::shaders(&lowered) {
            for src in r.into_iter().flatten() {
                shaders += 1;
                if let Err(e) = kiln_runtime::gpu::wgsl::validate(&src) {
                    invalid.push(format!("{} {node}: {e}", f.display()));
                }
            }
        }
    }
    assert!(
        invalid.is_empty(),
        "{} invalid:\n{}",
        invalid.len(),
        invalid.join("\n")
    );
    assert!(shaders > 1000, "only {shaders} shaders generated");
    eprintln!("{shaders} generated shaders valid");
}

/// The node suite on the device: every test the interpreter passes, except
/// those listed with a reason in `gpu-known-failures.txt`.
#[test]
fn gpu_passes_the_node_suite() {
    if device().is_none() {
        return;
    }
    let known = listed("tests/conformance/gpu-known-failures.txt");
    let dir = node_suite_dir();
    let (mut lost, mut ran, mut all_gpu) = (vec![], 0, 0);
    let mut f32_with_cpu: Vec<String> = vec![];
    for name in listed("tests/conformance/interp-passing.txt") {
        if known.contains(&name) {
            continue;
        }
        let r = run_test_on(&dir.join(&name), Tolerance::default(), &gpu());
        if r.outcome != Outcome::Pass {
            lost.push(report_line(&r));
        }
        ran += 1;
        let m = kiln_compiler::load_model(&dir.join(&name)).expect("loads");
        let Ok(Some(inputs)) = kiln_compiler::check::inputs_from_test_folder(&m, &dir.join(&name))
        else {
            continue;
        };
        let shapes = kiln_compiler::lower::shapes_of(&inputs);
        let Ok(exe) = kiln_compiler::compile(&m, &gpu(), &shapes) else {
            continue;
        };
        if exe.report().contains(" on the gpu, 0 on the cpu") {
            all_gpu += 1;
        } else if f32_only(exe.module()) {
            // Every value an f32 tensor of static shape, no control flow:
            // nothing should need the host.
            f32_with_cpu.push(name.clone());
        }
    }
    assert!(
        lost.is_empty(),
        "gpu fails {}:\n{}",
        lost.len(),
        lost.join("\n")
    );
    eprintln!("{ran} node tests pass on the gpu backend; {all_gpu} with no cpu step");
    eprintln!(
        "{} f32-only node tests with a cpu step: {}",
        f32_with_cpu.len(),
        f32_with_cpu.join(" ")
    );
}

/// Whether every value of the module's top level is an f32 tensor of
/// static shape and no node holds a region.
fn f32_only(m: &kiln_ir::Module) -> bool {
    let f32_static = |v: kiln_ir::ValueId| {
        m.ty(v)
            .as_tensor()
            .is_some_and(|t| t.elem == kiln_ir::ElemType::F32)
            && m.static_shape(v).is_ok()
    };
    m.body.nodes.iter().all(|n| {
        n.regions().next().is_none() || n.op == "kiln.Fusion"
    } && n.inputs.iter().flatten().all(|&v| f32_static(v))
        && n.outputs.iter().all(|&o| f32_static(o)))
}

/// The shared models (and the zoo, when present) on the device, at the
/// issue's tolerance: rtol 1e-3, atol 1e-4.
#[test]
fn gpu_runs_the_shared_models() {
    if device().is_none() {
        return;
    }
    let known = listed("tests/conformance/gpu-known-failures.txt");
    let tol = Tolerance {
        rtol: 1e-3,
        atol: 1e-4,
        quantized: false,
    };
    let mut failures = vec![];
    for m in shared_models().into_iter().chain(zoo_models()) {
        let name = m
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string();
        if known.contains(&name) {
            continue;
        }
        let r = run_test_on(&m, tol, &gpu());
        if r.outcome != Outcome::Pass {
            failures.push(report_line(&r));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `run` from several threads at once is safe and gives every caller the
/// same answer (runs take turns on the executable's buffers).
#[test]
fn gpu_runs_from_several_threads() {
    if device().is_none() {
        return;
    }
    let dir = node_suite_dir().join("test_basic_conv_with_padding");
    let m = kiln_compiler::load_model(&dir).expect("loads");
    let inputs = kiln_compiler::check::inputs_from_test_folder(&m, &dir)
        .expect("reads inputs")
        .expect("has test data");
    let shapes = kiln_compiler::lower::shapes_of(&inputs);
    let exe = kiln_compiler::compile(&m, &gpu(), &shapes).expect("compiles");
    assert!(
        exe.report().contains(" on the gpu, 0 on the cpu"),
        "{}",
        exe.report()
    );
    let want = exe.run(&inputs).expect("runs");
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..8 {
                        let got = exe.run(&inputs).expect("runs");
                        assert_eq!(
                            format!("{got:?}"),
                            format!("{want:?}"),
                            "a concurrent run differs"
                        );
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
    });
}

/// `If` runs on the device: the host reads the condition (its one
/// transfer besides inputs and outputs), then records the taken branch,
/// whose fused shaders read an outer value the device made; both branches
/// agree with the interpreter.
#[test]
fn gpu_runs_if_branches_on_the_device() {
    if device().is_none() {
        return;
    }
    let src = "module @m opset(ai.onnx = 17) {\n  input %x: f32[2,3]\n  input %k: f32[]\n\
  %s = ReduceSum(%x) {keepdims = 0, noop_with_empty_axes = 0} : f32[]\n  %c = Greater(%s, %k) : bool[]\n  %h = Relu(%x) : f32[2,3]\n\
  %y = If(%c) {\n    else_branch = graph {\n      %e = Neg(%h) : f32[2,3]\n      return %e\n    },\n\
    then_branch = graph {\n      %t1 = Exp(%h) : f32[2,3]\n      %t2 = Mul(%t1, %x) : f32[2,3]\n      return %t2\n    }\n  } : f32[2,3]\n  return %y\n}\n";
    let m = kiln_ir::text::parse_module(src).expect("parses");
    let x = kiln_runtime::Tensor::from_f32(vec![2, 3], vec![0.5, -1.0, 2.0, 3.0, -0.25, 1.0])
        .expect("x");
    for k in [0.0f32, 100.0] {
        let mut inputs = std::collections::HashMap::new();
        inputs.insert("x".to_string(), kiln_runtime::Value::tensor(x.clone()));
        let kt = kiln_runtime::Tensor::from_f32(vec![], vec![k]).expect("k");
        inputs.insert("k".to_string(), kiln_runtime::Value::tensor(kt));
        let want = kiln_runtime::Interpreter::new(&m)
            .run(&inputs)
            .expect("interprets");
        let shapes = kiln_compiler::lower::shapes_of(&inputs);
        let exe = kiln_compiler::compile(&m, &gpu(), &shapes).expect("compiles");
        let report = exe.report();
        assert!(
            report.contains("(If): branch on the host's copy"),
            "{report}"
        );
        assert!(report.contains("0 on the cpu"), "{report}");
        assert!(report.contains("the condition of"), "{report}");
        let got = exe.run(&inputs).expect("runs");
        kiln_compiler::conformance::compare(&got[0], &want[0], Tolerance::default())
            .unwrap_or_else(|e| panic!("k = {k}: {e}"));
    }
}
