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

/// Deterministic integers in `lo..=hi`, written as a text-IR list.
fn ints_in(seed: u32, n: usize, lo: i64, hi: i64) -> String {
    let mut rng = kiln_runtime::interp::kernels::Rng::new(seed);
    let v: Vec<String> = (0..n)
        .map(|_| {
            (lo + (rng.uniform() * (hi - lo + 1) as f64) as i64)
                .min(hi)
                .to_string()
        })
        .collect();
    v.join(", ")
}

/// `n` deterministic 4-bit values packed two to a byte (low nibble
/// first), as text IR's `hex"..."`.
fn nibbles_hex(seed: u32, n: usize) -> String {
    let mut rng = kiln_runtime::interp::kernels::Rng::new(seed);
    let v: Vec<u8> = (0..n).map(|_| (rng.uniform() * 16.0) as u8 & 15).collect();
    v.chunks(2)
        .map(|p| format!("{:02x}", p[0] | p.get(1).copied().unwrap_or(0) << 4))
        .collect()
}

/// The quantized path on the device, against the interpreter, with no
/// cpu step: integer convs (u8 and i8 operands mixed, zero points per
/// tensor and per channel, groups, strides, dilations, 1-D) and matmuls
/// (broadcast batches, per-column zero points; f16 scales: 0.01, 0.004
/// and 0.012 as f16 bits), the exact i32 sums of the Integer ops,
/// (de)quantization per tensor, axis and block, 4-, 8- and 16-bit,
/// 8-bit MaxPool, and packed bytes moved by Transpose, Slice, Concat,
/// Gather and Reshape at odd sizes (words straddle rows and parts), casts
/// to 8- and 16-bit types, and
/// `kiln.Lookup` (written, and made by `qdq-lookup` at `-O2`), and weights
/// kept quantized: `kiln.DequantMatMul` (4-bit blocks, 8-bit columns) and
/// `kiln.DequantLSTM` (per-direction scales, compared at atol 1e-4).
///
/// The result scales are chosen so that outputs spread over tens of
/// steps: an error of a fraction of a typical sum shows.
///
/// Tolerance: one step of the result's scale. Both sides sum exactly in
/// integers; the requantizing multiply is f32 on the device, and a sum
/// whose scaled value lies within rounding of a half step may round to
/// the other neighbour. The i32 sums are compared exactly.
#[test]
fn gpu_runs_the_quantized_path_on_the_device() {
    if device().is_none() {
        return;
    }
    let w8 = |seed, n| ints_in(seed, n, -127, 127);
    let u8s = |seed, n| ints_in(seed, n, 0, 255);
    let cases: Vec<(&str, Vec<usize>, f64, String)> = vec![
        (
            "conv u8 x i8, per-channel scales, bias, pads",
            vec![1, 3, 7, 9],
            0.04,
            format!(
                "  const %sx: f32[] = dense[0.01]\n  const %zx: u8[] = dense[128]\n\
                 const %w: i8[5,3,3,3] = dense[{}]\n  const %sw: f32[5] = dense[0.011, 0.007, 0.013, 0.009, 0.02]\n\
                 const %b: i32[5] = dense[{}]\n  const %sy: f32[] = dense[0.04]\n  const %zy: u8[] = dense[100]\n\
                 %xq = QuantizeLinear(%x, %sx, %zx) : u8[1,3,7,9]\n\
                 %y = QLinearConv(%xq, %sx, %zx, %w, %sw, %zy_w, %sy, %zy, %b) {{pads = [1, 1, 1, 1]}} : u8[1,5,7,9]\n\
                 %out = DequantizeLinear(%y, %sy, %zy) : f32[1,5,7,9]",
                w8(1, 135),
                ints_in(2, 5, -300, 300)
            )
            .replace("%zy_w", "%zw")
            .replace("const %sy", "const %zw: i8[] = dense[0]\n  const %sy"),
        ),
        (
            "depthwise i8 x u8, per-channel zero points, stride 2",
            vec![2, 4, 6, 6],
            0.01,
            format!(
                "  const %sx: f32[] = dense[0.01]\n  const %zx: i8[] = dense[-3]\n\
                 const %w: u8[4,1,3,3] = dense[{}]\n  const %sw: f32[] = dense[0.004]\n\
                 const %zw: u8[4] = dense[120, 130, 128, 127]\n  const %sy: f32[] = dense[0.01]\n  const %zy: i8[] = dense[5]\n\
                 %xq = QuantizeLinear(%x, %sx, %zx) : i8[2,4,6,6]\n\
                 %y = QLinearConv(%xq, %sx, %zx, %w, %sw, %zw, %sy, %zy) {{group = 4, pads = [1, 1, 1, 1], strides = [2, 2]}} : i8[2,4,3,3]\n\
                 %out = DequantizeLinear(%y, %sy, %zy) : f32[2,4,3,3]",
                u8s(3, 36)
            ),
        ),
        (
            "1-D conv, dilation 2, u8 x u8",
            vec![1, 2, 10],
            0.008,
            format!(
                "  const %sx: f32[] = dense[0.01]\n  const %zx: u8[] = dense[100]\n\
                 const %w: u8[3,2,3] = dense[{}]\n  const %sw: f32[] = dense[0.005]\n\
                 const %zw: u8[] = dense[128]\n  const %sy: f32[] = dense[0.008]\n  const %zy: u8[] = dense[128]\n\
                 %xq = QuantizeLinear(%x, %sx, %zx) : u8[1,2,10]\n\
                 %y = QLinearConv(%xq, %sx, %zx, %w, %sw, %zw, %sy, %zy) {{dilations = [2], pads = [2, 2]}} : u8[1,3,10]\n\
                 %out = DequantizeLinear(%y, %sy, %zy) : f32[1,3,10]",
                u8s(4, 18)
            ),
        ),
        (
            "ConvInteger, exact sums",
            vec![1, 2, 5, 5],
            0.0,
            format!(
                "  const %sx: f32[] = dense[0.01]\n  const %zx: u8[] = dense[7]\n\
                 const %w: u8[3,2,2,2] = dense[{}]\n  const %zw: u8[] = dense[3]\n\
                 %xq = QuantizeLinear(%x, %sx, %zx) : u8[1,2,5,5]\n\
                 %y = ConvInteger(%xq, %w, %zx, %zw) {{pads = [0, 1, 1, 0]}} : i32[1,3,5,5]\n\
                 %out = Cast(%y) {{to = 1}} : f32[1,3,5,5]",
                u8s(5, 24)
            ),
        ),
        (
            "MatMulInteger, broadcast batch, per-column zero points",
            vec![2, 3, 5],
            0.0,
            format!(
                "  const %sx: f32[] = dense[0.01]\n  const %zx: u8[] = dense[128]\n\
                 const %b: i8[5,7] = dense[{}]\n  const %zb: i8[7] = dense[{}]\n\
                 %xq = QuantizeLinear(%x, %sx, %zx) : u8[2,3,5]\n\
                 %y = MatMulInteger(%xq, %b, %zx, %zb) : i32[2,3,7]\n\
                 %out = Cast(%y) {{to = 1}} : f32[2,3,7]",
                w8(6, 35),
                ints_in(7, 7, -5, 5)
            ),
        ),
        (
            "QLinearMatMul u8",
            vec![3, 5],
            0.012,
            format!(
                "  const %sx: f32[] = dense[0.01]\n  const %zx: u8[] = dense[128]\n\
                 const %b: u8[5,4] = dense[{}]\n  const %sb: f32[] = dense[0.004]\n  const %zb: u8[] = dense[128]\n\
                 const %sy: f32[] = dense[0.012]\n  const %zy: u8[] = dense[128]\n\
                 %xq = QuantizeLinear(%x, %sx, %zx) : u8[3,5]\n\
                 %y = QLinearMatMul(%xq, %sx, %zx, %b, %sb, %zb, %sy, %zy) : u8[3,4]\n\
                 %out = DequantizeLinear(%y, %sy, %zy) : f32[3,4]",
                u8s(8, 20)
            ),
        ),
        (
            "packed bytes: per-axis Q, Transpose, Slice, Concat, Gather, Reshape",
            vec![2, 3, 5],
            0.0,
            "  const %s: f32[3] = dense[0.01, 0.02, 0.005]\n  const %z: u8[3] = dense[128, 100, 3]\n\
             const %st: i64[1] = dense[1]\n  const %en: i64[1] = dense[4]\n  const %ax: i64[1] = dense[0]\n\
             const %ix: i64[3] = dense[2, 0, -1]\n  const %sh: i64[2] = dense[6, 3]\n\
             %q = QuantizeLinear(%x, %s, %z) : u8[2,3,5]\n\
             %t = Transpose(%q) {perm = [2, 0, 1]} : u8[5,2,3]\n\
             %sl = Slice(%t, %st, %en, %ax) : u8[3,2,3]\n\
             %c = Concat(%sl, %t, %sl) {axis = 0} : u8[11,2,3]\n\
             %g = Gather(%c, %ix) {axis = 0} : u8[3,2,3]\n\
             %r = Reshape(%g, %sh) : u8[6,3]\n\
             %out = Cast(%r) {to = 1} : f32[6,3]"
                .into(),
        ),
        (
            "kiln.Lookup of i8 by an i8 table",
            vec![3, 7, 5],
            0.0,
            format!(
                "  const %s: f32[] = dense[0.008]\n  const %z: i8[] = dense[-2]\n  const %t: i8[256] = dense[{}]\n\
                 %q = QuantizeLinear(%x, %s, %z) : i8[3,7,5]\n\
                 %l = kiln.Lookup(%q, %t) : i8[3,7,5]\n\
                 %out = Cast(%l) {{to = 1}} : f32[3,7,5]",
                ints_in(10, 256, -128, 127)
            ),
        ),
        (
            "a QDQ HardSwish (a lookup table at -O2)",
            vec![1, 5, 3, 3],
            0.01,
            "  const %s: f32[] = dense[0.02]\n  const %z: u8[] = dense[128]\n\
             const %s2: f32[] = dense[0.01]\n  const %z2: u8[] = dense[10]\n\
             %q = QuantizeLinear(%x, %s, %z) : u8[1,5,3,3]\n\
             %d = DequantizeLinear(%q, %s, %z) : f32[1,5,3,3]\n\
             %h = HardSwish(%d) : f32[1,5,3,3]\n\
             %q2 = QuantizeLinear(%h, %s2, %z2) : u8[1,5,3,3]\n\
             %out = DequantizeLinear(%q2, %s2, %z2) : f32[1,5,3,3]"
                .into(),
        ),
        (
            "kiln.DequantMatMul: 4-bit blocks of 16 rows, 8-bit per column",
            vec![3, 32],
            1e-4,
            format!(
                "  const %w4: u4[32,5] = hex\"{}\"\n  const %s4: f32[2,5] = dense[{}]\n  const %z4: u4[2,5] = hex\"{}\"\n\
                 const %w8: i8[5,6] = dense[{}]\n  const %s8: f32[6] = dense[0.01, 0.02, 0.015, 0.005, 0.03, 0.012]\n\
                 const %z8: i8[6] = dense[0, 3, -2, 1, 0, -5]\n\
                 %h = kiln.DequantMatMul(%x, %w4, %s4, %z4) {{axis = 0, block_size = 16}} : f32[3,5]\n\
                 %out = kiln.DequantMatMul(%h, %w8, %s8, %z8) : f32[3,6]",
                nibbles_hex(11, 160),
                (0..10).map(|i| format!("{}", 0.01 + 0.002 * i as f32)).collect::<Vec<_>>().join(", "),
                nibbles_hex(12, 10),
                w8(13, 30)
            ),
        ),
        (
            "kiln.DequantLSTM, both directions, per-direction scales and zero points",
            vec![5, 1, 4],
            1e-4,
            format!(
                "  const %w: i8[2,12,4] = dense[{}]\n  const %r: i8[2,12,3] = dense[{}]\n\
                 const %sw: f32[2] = dense[0.004, 0.0047]\n  const %zw: i8[2] = dense[2, -3]\n\
                 const %sr: f32[2] = dense[0.003, 0.0021]\n  const %zr: i8[2] = dense[-1, 4]\n\
                 %out, %yh, %yc = kiln.DequantLSTM(%x, %w, %r, none, none, none, none, none, %sw, %zw, %sr, %zr) {{direction = \"bidirectional\", hidden_size = 3}} : f32[5,2,1,3], f32[2,1,3], f32[2,1,3]",
                w8(14, 96),
                w8(15, 72)
            ),
        ),
        (
            "QLinearMatMul with f16 scales, i8",
            vec![3, 5],
            0.012,
            format!(
                "  const %sx: f32[] = dense[0.01]\n  const %zx: i8[] = dense[3]\n\
                 const %hx: f16[] = hex\"1f21\"\n  const %b: i8[5,4] = dense[{}]\n  const %hb: f16[] = hex\"191c\"\n\
                 const %zb: i8[] = dense[-2]\n  const %hy: f16[] = hex\"2522\"\n  const %sy: f32[] = dense[0.012]\n\
                 const %zy: i8[] = dense[0]\n\
                 %xq = QuantizeLinear(%x, %sx, %zx) : i8[3,5]\n\
                 %y = QLinearMatMul(%xq, %hx, %zx, %b, %hb, %zb, %hy, %zy) : i8[3,4]\n\
                 %out = DequantizeLinear(%y, %sy, %zy) : f32[3,4]",
                w8(16, 20)
            ),
        ),
        (
            "4-bit (de)quantization per axis",
            vec![2, 3, 7],
            0.3,
            "  const %s: f32[3] = dense[0.15, 0.2, 0.3]\n  const %z: u4[3] = hex\"7803\"\n\
             %q = QuantizeLinear(%x, %s, %z) {axis = 1} : u4[2,3,7]\n\
             %out = DequantizeLinear(%q, %s, %z) {axis = 1} : f32[2,3,7]"
                .into(),
        ),
        (
            "Casts to 8- and 16-bit integers: truncated and wrapped, as numpy's astype",
            vec![3, 11],
            0.0,
            // (Transposes between the casts keep fusion from making one
            // region of them: a fusion with 8-bit values inside still
            // takes a cpu step.)
            "  const %k: f32[] = dense[300.0]\n\
             %m = Mul(%x, %k) : f32[3,11]\n\
             %t = Transpose(%m) {perm = [1, 0]} : f32[11,3]\n\
             %c8 = Cast(%t) {to = 3} : i8[11,3]\n\
             %t8 = Transpose(%c8) {perm = [1, 0]} : i8[3,11]\n\
             %c16 = Cast(%m) {to = 5} : i16[3,11]\n\
             %t16 = Transpose(%c16) {perm = [1, 0]} : i16[11,3]\n\
             %i = Cast(%t16) {to = 6} : i32[11,3]\n\
             %ti = Transpose(%i) {perm = [1, 0]} : i32[3,11]\n\
             %u = Cast(%ti) {to = 2} : u8[3,11]\n\
             %tu = Transpose(%u) {perm = [1, 0]} : u8[11,3]\n\
             %a = Cast(%t8) {to = 1} : f32[3,11]\n\
             %b = Cast(%tu) {to = 1} : f32[11,3]\n\
             %br = Reshape(%b, %s33) : f32[3,11]\n\
             const %s33: i64[2] = dense[3, 11]\n\
             %out = Concat(%a, %br) {axis = 0} : f32[6,11]"
                .into(),
        ),
        (
            "blocked i8 and 16-bit (de)quantization, 8-bit MaxPool",
            vec![1, 2, 7, 7],
            0.0,
            format!(
                "  const %sb: f32[1,2,2,7] = dense[{}]\n  const %zb: i8[1,2,2,7] = dense[{}]\n\
                 const %s16: f32[] = dense[0.0001]\n  const %z16: i16[] = dense[-7]\n\
                 %q = QuantizeLinear(%x, %sb, %zb) {{axis = 2, block_size = 4}} : i8[1,2,7,7]\n\
                 %p = MaxPool(%q) {{kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [2, 2]}} : i8[1,2,4,4]\n\
                 %d = DequantizeLinear(%q, %sb, %zb) {{axis = 2, block_size = 4}} : f32[1,2,7,7]\n\
                 %q16 = QuantizeLinear(%d, %s16, %z16) : i16[1,2,7,7]\n\
                 %d16 = DequantizeLinear(%q16, %s16, %z16) : f32[1,2,7,7]\n\
                 %pf = Cast(%p) {{to = 1}} : f32[1,2,4,4]\n\
                 %pr = Reshape(%pf, %flat) : f32[32]\n\
                 %dr = Reshape(%d16, %flat98) : f32[98]\n\
                 %out = Concat(%pr, %dr) {{axis = 0}} : f32[130]\n\
                 const %flat: i64[1] = dense[32]\n  const %flat98: i64[1] = dense[98]",
                (0..28).map(|i| format!("{}", 0.004 + 0.001 * (i % 5) as f32)).collect::<Vec<_>>().join(", "),
                ints_in(9, 28, -4, 4)
            ),
        ),
    ];
    for (what, shape, step, body) in cases {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        // Constants first, then nodes (the text IR reads them in order).
        let (consts, nodes): (Vec<&str>, Vec<&str>) = body
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .partition(|l| l.starts_with("const"));
        let src = format!(
            "module @q opset(ai.onnx = 21) {{\n  input %x: f32[{}]\n  {}\n  {}\n  return %out\n}}\n",
            dims.join(","),
            consts.join("\n  "),
            nodes.join("\n  ")
        );
        let m = kiln_ir::parse_module(&src).unwrap_or_else(|e| panic!("{what}: {e}\n{src}"));
        kiln_ir::verify::verify(&m).unwrap_or_else(|e| panic!("{what}: {e}\n{src}"));
        let n: usize = shape.iter().product();
        let mut rng = kiln_runtime::interp::kernels::Rng::new(n as u32);
        let x: Vec<f32> = (0..n).map(|_| (2.0 * rng.uniform() - 1.0) as f32).collect();
        let inputs: std::collections::HashMap<String, kiln_runtime::Value> = [(
            "x".to_string(),
            kiln_runtime::Value::tensor(
                kiln_runtime::Tensor::new(shape.clone(), kiln_runtime::Data::F32(x))
                    .expect("tensor"),
            ),
        )]
        .into();
        let want = kiln_runtime::Interpreter::new(&m)
            .run(&inputs)
            .unwrap_or_else(|e| panic!("{what}: interpreter: {e}"));
        for level in [0, 2] {
            let target = Target::Gpu(GpuOptions {
                opt_level: level,
                ..Default::default()
            });
            let exe =
                kiln_compiler::compile(&m, &target, &kiln_compiler::lower::shapes_of(&inputs))
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
            let report = exe.report();
            assert!(
                report.contains(" on the gpu, 0 on the cpu"),
                "{what} at -O{level}: a cpu step\n{report}"
            );
            let got = exe.run(&inputs).unwrap_or_else(|e| panic!("{what}: {e}"));
            let tol = Tolerance {
                rtol: 0.0,
                atol: step * 1.001,
                quantized: false,
            };
            kiln_compiler::conformance::compare(&got[0], &want[0], tol)
                .unwrap_or_else(|e| panic!("{what} at -O{level}: {e}"));
        }
    }
}

/// Malformed quantized models get an error from the verifier, the gpu
/// lowering or the run, never a panic and never a result: scales and zero
/// points of the wrong size or type, blocks that do not tile their axis.
#[test]
fn gpu_rejects_malformed_quantized_models() {
    if device().is_none() {
        return;
    }
    let cases = [
        (
            "three scales for an axis of four",
            "  const %s: f32[3] = dense[0.1, 0.2, 0.3]\n  const %z: u8[3] = dense[1, 2, 3]\n  \
             %q = QuantizeLinear(%x, %s, %z) {axis = 1} : u8[2,4]\n  \
             %out = DequantizeLinear(%q, %s, %z) {axis = 1} : f32[2,4]",
        ),
        (
            "a zero point of another length than its scales",
            "  const %s: f32[4] = dense[0.1, 0.2, 0.3, 0.4]\n  const %z: u8[2] = dense[1, 2]\n  \
             %q = QuantizeLinear(%x, %s, %z) {axis = 1} : u8[2,4]\n  \
             %out = DequantizeLinear(%q, %s, %z) {axis = 1} : f32[2,4]",
        ),
        (
            "blocks whose scales do not tile the axis",
            "  const %s: f32[2,3] = dense[0.1, 0.2, 0.3, 0.1, 0.2, 0.3]\n  \
             %q = QuantizeLinear(%x, %s) {axis = 1, block_size = 2} : i8[2,4]\n  \
             %out = DequantizeLinear(%q, %s) {axis = 1, block_size = 2} : f32[2,4]",
        ),
        (
            "an integer product with a zero point per row of the wrong count",
            "  const %s: f32[] = dense[0.05]\n  const %za: u8[3] = dense[1, 2, 3]\n  \
             const %w: i8[4,3] = dense[1, -2, 3, -4, 5, -6, 7, -8, 9, -10, 11, -12]\n  \
             const %zw: i8[] = dense[0]\n  \
             %q = QuantizeLinear(%x, %s) : u8[2,4]\n  \
             %p = MatMulInteger(%q, %w, %za, %zw) : i32[2,3]\n  \
             %out = Cast(%p) {to = 1} : f32[2,3]",
        ),
        (
            "a scale operand of the wrong element type",
            "  const %s: i32[] = dense[3]\n  \
             %q = QuantizeLinear(%x, %s) : u8[2,4]\n  \
             %out = DequantizeLinear(%q, %s) : f32[2,4]",
        ),
    ];
    let inputs: std::collections::HashMap<String, kiln_runtime::Value> = [(
        "x".to_string(),
        kiln_runtime::Value::tensor(
            kiln_runtime::Tensor::new(
                vec![2, 4],
                kiln_runtime::Data::F32(vec![0.5, -1.0, 2.0, 0.25, -0.75, 1.5, 0.0, 3.0]),
            )
            .expect("tensor"),
        ),
    )]
    .into();
    for (what, body) in cases {
        let src = format!(
            "module @q opset(ai.onnx = 21) {{\n  input %x: f32[2,4]\n{body}\n  return %out\n}}\n"
        );
        let rejected = match kiln_ir::parse_module(&src) {
            Err(e) => format!("parse: {e}"),
            Ok(m) => match kiln_ir::verify::verify(&m) {
                Err(e) => format!("verify: {e}"),
                Ok(()) => match kiln_compiler::compile(
                    &m,
                    &gpu(),
                    &kiln_compiler::lower::shapes_of(&inputs),
                ) {
                    Err(e) => format!("compile: {e}"),
                    Ok(exe) => match exe.run(&inputs) {
                        Err(e) => format!("run: {e}"),
                        Ok(v) => panic!("{what}: ran and returned {v:?}"),
                    },
                },
            },
        };
        eprintln!("{what}: {rejected}");
    }
}
