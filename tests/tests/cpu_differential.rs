//! Differential tests of the CPU backend: random graphs over random shapes
//! (odd sizes, size 1, every broadcast corner, sizes that are not
//! multiples of the vector width) compiled at `-O2` and compared with the
//! reference interpreter on the unoptimized module.
//!
//! Tolerance: rtol 1e-3, atol 1e-4. The backend sums in a different order
//! (blocked matmul, vectorized reductions) and uses polynomial exp/tanh/erf,
//! so results differ from the interpreter's by a few ulps times the
//! accumulation length; 1e-4 absolute covers sums of up to a few hundred
//! O(1) products, as these graphs make.

use std::collections::HashMap;

use kiln_compiler::conformance::{compare, Tolerance};
use kiln_compiler::lower::cpu::CpuOptions;
use kiln_compiler::{compile, Target};
use kiln_runtime::{Data, Interpreter, Tensor, Value};
use proptest::prelude::*;

const TOL: Tolerance = Tolerance {
    rtol: 1e-3,
    atol: 1e-4,
    quantized: false,
};

/// Deterministic values in [-1, 1).
fn values(seed: u32, n: usize) -> Vec<f32> {
    let mut rng = kiln_runtime::interp::kernels::Rng::new(seed);
    (0..n).map(|_| (2.0 * rng.uniform() - 1.0) as f32).collect()
}

fn dense(v: &[f32]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:?}")).collect();
    format!("dense[{}]", items.join(", "))
}

fn ty(shape: &[usize]) -> String {
    let d: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("f32[{}]", d.join(","))
}

/// Compile at -O2 for the inputs' shapes, run, compare with the
/// interpreter at -O0.
fn check(
    src: &str,
    inputs: &HashMap<String, Value>,
    threads: usize,
    baseline: bool,
) -> Result<(), TestCaseError> {
    let fail = |e: String| TestCaseError::fail(format!("{e}\n{src}"));
    let m = kiln_ir::parse_module(src).map_err(|e| fail(e.to_string()))?;
    kiln_ir::verify::verify(&m).map_err(|e| fail(e.to_string()))?;
    let want = Interpreter::new(&m)
        .run(inputs)
        .map_err(|e| fail(e.to_string()))?;
    let opts = CpuOptions {
        opt_level: 2,
        threads,
        target_cpu: if baseline {
            kiln_runtime::cpu::jit::TargetCpu::Baseline
        } else {
            kiln_runtime::cpu::jit::TargetCpu::Native
        },
        ..Default::default()
    };
    let exe = compile(
        &m,
        &Target::Cpu(opts),
        &kiln_compiler::lower::shapes_of(inputs),
    )
    .map_err(fail)?;
    // A first run on other data: the second reuses its freed buffers, so a
    // kernel that leaves part of its result unwritten shows stale values.
    let other: HashMap<String, Value> = inputs
        .iter()
        .map(|(k, v)| {
            let v = match v.as_tensor().map(|t| (&t.shape, &t.data)) {
                Some((shape, Data::F32(x))) => Value::tensor(
                    Tensor::new(
                        shape.clone(),
                        Data::F32(x.iter().map(|a| 3.0 - 2.0 * a).collect()),
                    )
                    .expect("same shape"),
                ),
                _ => v.clone(),
            };
            (k.clone(), v)
        })
        .collect();
    exe.run(&other).map_err(|e| fail(e.to_string()))?;
    let got = exe.run(inputs).map_err(|e| fail(e.to_string()))?;
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        compare(g, w, TOL).map_err(|e| fail(format!("output {k}: {e}")))?;
    }
    Ok(())
}

fn input(shape: &[usize], seed: u32) -> Value {
    let n = shape.iter().product();
    Value::tensor(Tensor::new(shape.to_vec(), Data::F32(values(seed, n))).expect("tensor"))
}

const DIMS: &[usize] = &[1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33];

/// Elementwise DAGs, broadcasts, reductions along the last and first axes and
/// matmuls over `x: [a, b]`, `y` broadcastable to it.
fn elementwise_module(a: usize, b: usize, y_shape: &[usize], choices: &[u8], seed: u32) -> String {
    let full = ty(&[a, b]);
    let mut lines = vec![
        format!("  input %x: {full}"),
        format!("  input %y: {}", ty(y_shape)),
        format!(
            "  const %w: {} = {}",
            ty(&[b, b]),
            dense(&values(seed ^ 0x5eed, b * b))
        ),
        format!(
            "  const %g: {} = {}",
            ty(&[b]),
            dense(&values(seed ^ 0x9, b))
        ),
        "  const %three: f32[] = dense[3.0]".to_string(),
        "  const %last: i64[1] = dense[-1]".to_string(),
        "  const %first: i64[1] = dense[0]".to_string(),
    ];
    let mut vals = vec!["x".to_string()];
    for (k, &c) in choices.iter().enumerate() {
        let p = vals[(c as usize / 16) % vals.len()].clone();
        let q = vals[(c as usize / 5) % vals.len()].clone();
        let v = format!("v{k}");
        let body = match c % 17 {
            0 => format!("%{v} = Add(%{p}, %y) : {full}"),
            1 => format!("%{v} = Mul(%{p}, %{q}) : {full}"),
            2 => format!("%{v} = Sub(%y, %{p}) : {full}"),
            3 => format!("%{v} = Div(%{p}, %three) : {full}"),
            4 => format!("%{v} = Sigmoid(%{p}) : {full}"),
            5 => format!("%{v} = Tanh(%{p}) : {full}"),
            6 => format!("%{v} = Relu(%{p}) : {full}"),
            7 => format!("%{v} = Max(%{p}, %y) : {full}"),
            8 => format!("%{v} = MatMul(%{p}, %w) : {full}"),
            9 => format!("%{v} = Softmax(%{p}) {{axis = -1}} : {full}"),
            10 => format!("%{v} = Erf(%{p}) : {full}"),
            11 => format!("%{v} = Exp(%{p}) : {full}"),
            12 => format!(
                "%{v}_m = ReduceMean(%{p}, %last) : {}\n  %{v} = Sub(%{p}, %{v}_m) : {full}",
                ty(&[a, 1])
            ),
            13 => format!("%{v} = LayerNormalization(%{p}, %g, %g) {{axis = -1}} : {full}"),
            14 => format!("%{v} = Add(%{p}, %g) : {full}"),
            // A reduction over the leading axis with a fused producer:
            // producers generated, the sum on the odometer kernel.
            15 => format!(
                "%{v}_p = Mul(%{p}, %{q}) : {full}\n  %{v}_s = ReduceSum(%{v}_p, %first) : {}\n  %{v} = Add(%{p}, %{v}_s) : {full}",
                ty(&[1, b])
            ),
            _ => format!("%{v} = Min(%{q}, %{p}) : {full}"),
        };
        lines.push(format!("  {body}"));
        vals.push(v);
    }
    let last = vals.last().cloned().unwrap_or_default();
    let mid = vals[vals.len() / 2].clone();
    format!(
        "module @random opset(ai.onnx = 18) {{\n{}\n  return %{last}, %{mid}\n}}\n",
        lines.join("\n")
    )
}

fn out_dim(i: usize, k: usize, s: usize, p: usize, d: usize) -> Option<usize> {
    let span = d * (k - 1) + 1;
    (i + 2 * p >= span).then(|| (i + 2 * p - span) / s + 1)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn elementwise_graphs_match_the_interpreter(
        a in prop::sample::select(DIMS),
        b in prop::sample::select(DIMS),
        y_kind in 0usize..6,
        choices in proptest::collection::vec(any::<u8>(), 1..12),
        seed in any::<u32>(),
        threads in 1usize..3,
        baseline in any::<bool>(),
    ) {
        let y_shape: Vec<usize> = match y_kind {
            0 => vec![a, b],
            1 => vec![b],
            2 => vec![a, 1],
            3 => vec![1, b],
            4 => vec![],
            _ => vec![1, 1],
        };
        let src = elementwise_module(a, b, &y_shape, &choices, seed);
        let inputs = HashMap::from([
            ("x".to_string(), input(&[a, b], seed)),
            ("y".to_string(), input(&y_shape, seed.wrapping_add(1))),
        ]);
        check(&src, &inputs, threads, baseline)?;
    }

    #[test]
    fn conv_nets_match_the_interpreter(
        n in 1usize..3,
        c in prop::sample::select(&[1usize, 3, 4, 8][..]),
        m_mult in 1usize..3,
        h in prop::sample::select(&[1usize, 5, 7, 9, 16][..]),
        w in prop::sample::select(&[1usize, 4, 7, 9, 16][..]),
        k in prop::sample::select(&[1usize, 3, 5][..]),
        stride in 1usize..3,
        pad in 0usize..3,
        dil in 1usize..3,
        depthwise in any::<bool>(),
        wide in any::<bool>(),
        tail in 0usize..5,
        seed in any::<u32>(),
        threads in 1usize..3,
    ) {
        let (oh, ow) = match (out_dim(h, k, stride, pad, dil), out_dim(w, k, stride, pad, dil)) {
            (Some(a), Some(b)) => (a, b),
            _ => return Ok(()),
        };
        // Wide convs (32+ channels) on maps under 64 positions take the
        // transposed product (channels in the lanes), 33 and 41 a partial
        // 16-channel panel.
        let (group, m) = match (depthwise, wide) {
            (true, _) => (c, c * m_mult),
            (false, false) => (1, 4 * m_mult),
            (false, true) => (1, 25 + 8 * m_mult),
        };
        let wshape = [m, c / group, k, k];
        let y = [n, m, oh, ow];
        let mut lines = vec![
            format!("  input %x: {}", ty(&[n, c, h, w])),
            format!("  const %w: {} = {}", ty(&wshape), dense(&values(seed ^ 0x77, wshape.iter().product()))),
            format!("  const %b: {} = {}", ty(&[m]), dense(&values(seed ^ 0x78, m))),
            format!(
                "  %c = Conv(%x, %w, %b) {{dilations = [{dil}, {dil}], group = {group}, kernel_shape = [{k}, {k}], pads = [{pad}, {pad}, {pad}, {pad}], strides = [{stride}, {stride}]}} : {}",
                ty(&y)
            ),
            format!("  %r = Relu(%c) : {}", ty(&y)),
        ];
        let out = match tail {
            0 => "r".to_string(),
            1 => {
                lines.push(format!("  %s = Add(%r, %c) : {}", ty(&y)));
                "s".to_string()
            }
            2 => {
                lines.push(format!("  %g = GlobalAveragePool(%r) : {}", ty(&[n, m, 1, 1])));
                "g".to_string()
            }
            3 => {
                // A residual block's end: the skip input added, then Relu.
                lines.insert(0, format!("  input %z: {}", ty(&y)));
                lines.push(format!("  %s = Add(%c, %z) : {}", ty(&y)));
                lines.push(format!("  %t = Relu(%s) : {}", ty(&y)));
                "t".to_string()
            }
            _ => match (out_dim(oh, 2, 2, 0, 1), out_dim(ow, 2, 2, 0, 1)) {
                (Some(ph), Some(pw)) => {
                    lines.push(format!(
                        "  %p = MaxPool(%r) {{kernel_shape = [2, 2], strides = [2, 2]}} : {}",
                        ty(&[n, m, ph, pw])
                    ));
                    "p".to_string()
                }
                _ => "r".to_string(),
            },
        };
        let src = format!(
            "module @conv opset(ai.onnx = 18) {{\n{}\n  return %{out}\n}}\n",
            lines.join("\n")
        );
        let mut inputs = HashMap::from([("x".to_string(), input(&[n, c, h, w], seed))]);
        if tail == 3 {
            inputs.insert("z".to_string(), input(&y, seed ^ 0x79));
        }
        check(&src, &inputs, threads, false)?;
    }
}

/// A residual block's end, `Relu(Conv(x) + z)`: the Add and the Relu fold
/// into the conv (it starts its tiles from bias + z, clamps as it stores),
/// and the result matches the interpreter.
#[test]
fn residual_add_folds_into_the_conv() {
    let w = values(5, 32 * 8 * 9);
    let b = values(6, 32);
    let src = format!(
        "module @res opset(ai.onnx = 18) {{
  input %x: f32[1,8,9,11]
  input %z: f32[1,32,9,11]
  const %w: f32[32,8,3,3] = {}
  const %b: f32[32] = {}
  %c = Conv(%x, %w, %b) {{kernel_shape = [3, 3], pads = [1, 1, 1, 1]}} : f32[1,32,9,11]
  %s = Add(%z, %c) : f32[1,32,9,11]
  %y = Relu(%s) : f32[1,32,9,11]
  return %y
}}
",
        dense(&w),
        dense(&b)
    );
    let inputs = HashMap::from([
        ("x".to_string(), input(&[1, 8, 9, 11], 1)),
        ("z".to_string(), input(&[1, 32, 9, 11], 2)),
    ]);
    for threads in [1, 2] {
        check(&src, &inputs, threads, false).expect("matches the interpreter");
    }
    if !is_x86_feature_detected!("avx2") || !is_x86_feature_detected!("fma") {
        return; // No implicit GEMM: the Add stays an epilogue.
    }
    let report = backend_report(&src, &inputs);
    assert!(report.contains("+ Add + Relu\n# 1 steps"), "{report}");
    // The sum also a result, with more of the tail after it: it stays in
    // the generated loop (a loop input cannot also be its result).
    let both = src.replace(
        "  return %y",
        "  %n = Neg(%s) : f32[1,32,9,11]\n  return %y, %s, %n",
    );
    for threads in [1, 2] {
        check(&both, &inputs, threads, false).expect("matches the interpreter");
    }
}

/// An attention-mask fusion: an i64 input whose only use is a Cast to f32
/// is converted outside the region, so the whole region is generated code.
#[test]
fn integer_mask_fusion_is_native() {
    let src = "module @mask opset(ai.onnx = 18) {
  input %mask: i64[2,1,1,9]
  input %s: f32[2,3,9,9]
  const %one: f32[] = dense[1.0]
  const %big: f32[] = dense[-10000.0]
  %f = Cast(%mask) {to = 1} : f32[2,1,1,9]
  %d = Sub(%one, %f) : f32[2,1,1,9]
  %b = Mul(%d, %big) : f32[2,1,1,9]
  %y = Add(%s, %b) : f32[2,3,9,9]
  return %y, %b
}
";
    let mask: Vec<i64> = (0..18).map(|i| (i % 3 != 0) as i64).collect();
    let inputs = HashMap::from([
        (
            "mask".to_string(),
            Value::tensor(Tensor::new(vec![2, 1, 1, 9], Data::I64(mask)).expect("tensor")),
        ),
        ("s".to_string(), input(&[2, 3, 9, 9], 7)),
    ]);
    for threads in [1, 2] {
        check(src, &inputs, threads, false).expect("matches the interpreter");
    }
    let report = backend_report(src, &inputs);
    assert!(report.contains(", 0 on the interpreter"), "{report}");
}

/// `kiln dump --backend-report`'s listing for `src` compiled at -O2.
fn backend_report(src: &str, inputs: &HashMap<String, Value>) -> String {
    let m = kiln_ir::parse_module(src).expect("parses");
    let opts = CpuOptions {
        opt_level: 2,
        threads: 1,
        target_cpu: kiln_runtime::cpu::jit::TargetCpu::Native,
        ..Default::default()
    };
    let exe = compile(
        &m,
        &Target::Cpu(opts),
        &kiln_compiler::lower::shapes_of(inputs),
    )
    .expect("compiles");
    exe.report()
}

/// Resize with constant scales or sizes runs natively on the interpreter's
/// plan: every mode, coordinate rule, nearest rounding, antialias, roi
/// with extrapolation, aspect-ratio policy and `axes`, down and up, checked
/// against the interpreter.
#[test]
fn resize_matches_the_interpreter_in_every_mode() {
    let x_shape = [1usize, 2, 5, 7];
    let inputs = HashMap::from([("x".to_string(), input(&x_shape, 11))]);
    let modes = [
        ("nearest", "round_prefer_floor"),
        ("nearest", "round_prefer_ceil"),
        ("nearest", "floor"),
        ("nearest", "ceil"),
        ("linear", ""),
        ("cubic", ""),
    ];
    let ctms = [
        "half_pixel",
        "pytorch_half_pixel",
        "align_corners",
        "asymmetric",
        "half_pixel_symmetric",
        "tf_crop_and_resize",
    ];
    let mut native = 0;
    for (mode, nearest) in modes {
        for ctm in ctms {
            for (k, (scales, sizes)) in [
                (Some([1.0f32, 1.0, 2.0, 1.5]), None),
                (Some([1.0, 1.0, 0.6, 0.5]), None),
                (None, Some([1i64, 2, 3, 9])),
            ]
            .into_iter()
            .enumerate()
            {
                let antialias = k == 1 && mode != "nearest";
                let roi = if ctm == "tf_crop_and_resize" {
                    "dense[0.0, 0.0, 0.1, -0.2, 1.0, 1.0, 0.8, 1.3]"
                } else {
                    "dense[]"
                };
                let roi_ty = if ctm == "tf_crop_and_resize" {
                    "f32[8]"
                } else {
                    "f32[0]"
                };
                let (operands, consts, out) = match (scales, sizes) {
                    (Some(s), _) => (
                        "%x, %roi, %scales",
                        format!("  const %scales: f32[4] = {}\n", dense(&s)),
                        x_shape
                            .iter()
                            .zip(s)
                            .map(|(&d, s)| (d as f32 * s).floor() as usize)
                            .collect::<Vec<_>>(),
                    ),
                    (None, Some(z)) => (
                        "%x, %roi, none, %sizes",
                        format!(
                            "  const %sizes: i64[4] = dense[{}, {}, {}, {}]\n",
                            z[0], z[1], z[2], z[3]
                        ),
                        z.iter().map(|&d| d as usize).collect(),
                    ),
                    _ => unreachable!(),
                };
                let mut attrs = format!(
                    "coordinate_transformation_mode = \"{ctm}\", mode = \"{mode}\", extrapolation_value = -3.0"
                );
                if !nearest.is_empty() {
                    attrs += &format!(", nearest_mode = \"{nearest}\"");
                }
                if antialias {
                    attrs += ", antialias = 1";
                }
                if mode == "cubic" && k == 2 {
                    attrs += ", exclude_outside = 1";
                }
                let src = format!(
                    "module @resize opset(ai.onnx = 19) {{
  input %x: {}
  const %roi: {roi_ty} = {roi}
{consts}  %y = Resize({operands}) {{{attrs}}} : {}
  return %y
}}
",
                    ty(&x_shape),
                    ty(&out)
                );
                check(&src, &inputs, 2, false).unwrap_or_else(|e| panic!("{e}"));
                native += backend_report(&src, &inputs).contains("1 native") as usize;
            }
        }
    }
    assert_eq!(native, modes.len() * ctms.len() * 3, "every case native");
    // `axes` and a size policy: only H and W named, the aspect kept.
    let src = format!(
        "module @resize opset(ai.onnx = 19) {{
  input %x: {}
  const %sizes: i64[2] = dense[10, 10]
  %y = Resize(%x, none, none, %sizes) {{axes = [2, 3], keep_aspect_ratio_policy = \"not_larger\", mode = \"linear\"}} : f32[1,2,7,10]
  return %y
}}
",
        ty(&x_shape)
    );
    check(&src, &inputs, 1, false).unwrap_or_else(|e| panic!("{e}"));
    assert!(backend_report(&src, &inputs).contains(", 0 on the interpreter"));
}

/// Softmax and LogSoftmax over a leading or middle axis (yolov8's DFL head
/// takes axis 1) run natively and match the interpreter, ±Inf and NaN in
/// the data included.
#[test]
fn softmax_over_any_axis_matches_the_interpreter() {
    let shape = [3usize, 5, 7];
    let mut x = values(21, 105);
    x[3] = f32::INFINITY;
    x[40] = f32::NAN;
    x[77] = f32::NEG_INFINITY;
    let inputs = HashMap::from([(
        "x".to_string(),
        Value::tensor(Tensor::new(shape.to_vec(), Data::F32(x)).expect("tensor")),
    )]);
    for op in ["Softmax", "LogSoftmax"] {
        for axis in [0, 1, -2, -3] {
            let src = format!(
                "module @s opset(ai.onnx = 18) {{\n  input %x: f32[3,5,7]\n  %y = {op}(%x) {{axis = {axis}}} : f32[3,5,7]\n  return %y\n}}\n"
            );
            check(&src, &inputs, 1, false).unwrap_or_else(|e| panic!("{e}"));
            assert!(backend_report(&src, &inputs).contains(", 0 on the interpreter"));
        }
    }
}

/// Depthwise convs on small maps with many channels (mobile nets' late
/// stages) take the channels-in-lanes path: slabs of 64 channels and a
/// partial last slab, strides, pads, dilation, batches, bias or none, one
/// and two threads, against the interpreter.
#[test]
fn depthwise_on_small_maps_matches_the_interpreter() {
    let mut cases = 0;
    for (c, hw, k, stride, pad, dil, n, bias) in [
        (72, 7, 5, 1, 2, 1, 1, true),
        (96, 14, 3, 2, 1, 1, 2, false),
        (40, 9, 3, 1, 2, 2, 1, true),
        (130, 5, 5, 2, 0, 1, 2, true),
        (64, 16, 3, 1, 1, 1, 1, false),
    ] {
        let oh = out_dim(hw, k, stride, pad, dil).expect("fits");
        let w = values(c as u32, c * k * k);
        let b = values(7, c);
        let operands = if bias { "%x, %w, %b" } else { "%x, %w" };
        let src = format!(
            "module @dw opset(ai.onnx = 18) {{
  input %x: {}
  const %w: {} = {}
  const %b: {} = {}
  %y = Conv({operands}) {{dilations = [{dil}, {dil}], group = {c}, kernel_shape = [{k}, {k}], pads = [{pad}, {pad}, {pad}, {pad}], strides = [{stride}, {stride}]}} : {}
  %z = Relu(%y) : {}
  return %z
}}
",
            ty(&[n, c, hw, hw]),
            ty(&[c, 1, k, k]),
            dense(&w),
            ty(&[c]),
            dense(&b),
            ty(&[n, c, oh, oh]),
            ty(&[n, c, oh, oh]),
        );
        let inputs = HashMap::from([("x".to_string(), input(&[n, c, hw, hw], c as u32))]);
        for threads in [1, 2] {
            check(&src, &inputs, threads, false).unwrap_or_else(|e| panic!("{e}"));
            check(&src, &inputs, threads, true).unwrap_or_else(|e| panic!("{e}"));
            cases += 1;
        }
    }
    assert_eq!(cases, 10);
}

/// A BatchNormalization that cannot fold into a conv (after a Concat, as
/// in DenseNet; on 2-D and 3-D data) runs in the generated loop as a
/// per-channel scale and shift, and matches the interpreter.
#[test]
fn batch_norm_after_concat_is_generated_code() {
    for (a, b, rest) in [
        (8usize, 4usize, vec![6usize, 5]),
        (3, 2, vec![]),
        (5, 7, vec![9]),
    ] {
        let c = a + b;
        let shape = |ch: usize| [vec![2, ch], rest.clone()].concat();
        let stat = |seed: u32, lo: f32| {
            let v: Vec<f32> = values(seed, c).iter().map(|x| x.abs() + lo).collect();
            dense(&v)
        };
        let src = format!(
            "module @bn opset(ai.onnx = 17) {{
  input %a: {}
  input %b: {}
  const %s: f32[{c}] = {}
  const %t: f32[{c}] = {}
  const %m: f32[{c}] = {}
  const %v: f32[{c}] = {}
  %x = Concat(%a, %b) {{axis = 1}} : {}
  %n = BatchNormalization(%x, %s, %t, %m, %v) {{epsilon = 0.001}} : {}
  %y = Relu(%n) : {}
  return %y
}}
",
            ty(&shape(a)),
            ty(&shape(b)),
            stat(1, 0.5),
            dense(&values(2, c)),
            dense(&values(3, c)),
            stat(4, 0.1),
            ty(&shape(c)),
            ty(&shape(c)),
            ty(&shape(c)),
        );
        let inputs = HashMap::from([
            ("a".to_string(), input(&shape(a), 5)),
            ("b".to_string(), input(&shape(b), 6)),
        ]);
        for threads in [1, 2] {
            check(&src, &inputs, threads, false).unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(backend_report(&src, &inputs).contains(", 0 on the interpreter"));
    }
}

/// RNN, GRU (both reset placements) and LSTM run natively in every
/// direction and layout, with and without bias and initial states, every
/// result used, and match the interpreter: a small layer (the packed
/// recurrence's blocks all partial), one wide enough for full blocks, and
/// a batch too large for the packed recurrence.
#[test]
fn recurrent_layers_match_the_interpreter() {
    let sizes = [
        (5usize, 3usize, 4usize, 6usize),
        (3, 2, 5, 40),
        (2, 9, 3, 5),
    ];
    let mut native = 0;
    for (seq, batch, isz, h) in sizes {
        for (op, g) in [("RNN", 1usize), ("GRU", 3), ("LSTM", 4)] {
            for (dir, dirs) in [("forward", 1usize), ("reverse", 1), ("bidirectional", 2)] {
                for layout in [0, 1] {
                    for extras in [false, true] {
                        let lbr = if op == "GRU" && extras {
                            ", linear_before_reset = 1"
                        } else {
                            ""
                        };
                        let x = if layout == 0 {
                            [seq, batch, isz]
                        } else {
                            [batch, seq, isz]
                        };
                        let state = if layout == 0 {
                            [dirs, batch, h]
                        } else {
                            [batch, dirs, h]
                        };
                        let y = if layout == 0 {
                            vec![seq, dirs, batch, h]
                        } else {
                            vec![batch, seq, dirs, h]
                        };
                        let lstm = op == "LSTM";
                        let mut lines = vec![
                            format!("  input %x: {}", ty(&x)),
                            format!("  input %h0: {}", ty(&state)),
                            format!("  input %c0: {}", ty(&state)),
                            format!(
                                "  const %w: {} = {}",
                                ty(&[dirs, g * h, isz]),
                                dense(&values(1, dirs * g * h * isz))
                            ),
                            format!(
                                "  const %r: {} = {}",
                                ty(&[dirs, g * h, h]),
                                dense(&values(2, dirs * g * h * h))
                            ),
                            format!(
                                "  const %b: {} = {}",
                                ty(&[dirs, 2 * g * h]),
                                dense(&values(3, dirs * 2 * g * h))
                            ),
                        ];
                        let operands = match (extras, lstm) {
                            (false, _) => "%x, %w, %r".to_string(),
                            (true, false) => "%x, %w, %r, %b, none, %h0".to_string(),
                            (true, true) => "%x, %w, %r, %b, none, %h0, %c0".to_string(),
                        };
                        let results = if lstm { "%y, %yh, %yc" } else { "%y, %yh" };
                        let types = if lstm {
                            format!("{}, {}, {}", ty(&y), ty(&state), ty(&state))
                        } else {
                            format!("{}, {}", ty(&y), ty(&state))
                        };
                        lines.push(format!(
                        "  {results} = {op}({operands}) {{direction = \"{dir}\", hidden_size = {h}, layout = {layout}{lbr}}} : {types}"
                    ));
                        let src = format!(
                            "module @rnn opset(ai.onnx = 14) {{\n{}\n  return {results}\n}}\n",
                            lines.join("\n")
                        );
                        let inputs = HashMap::from([
                            ("x".to_string(), input(&x, 7)),
                            ("h0".to_string(), input(&state, 8)),
                            ("c0".to_string(), input(&state, 9)),
                        ]);
                        for threads in [1, 2] {
                            check(&src, &inputs, threads, false).unwrap_or_else(|e| panic!("{e}"));
                        }
                        native += backend_report(&src, &inputs).contains(", 0 on the interpreter")
                            as usize;
                    }
                }
            }
        }
    }
    assert_eq!(native, sizes.len() * 3 * 3 * 2 * 2);
}

/// Split runs natively (each part a strided copy): sizes given, uneven
/// `num_outputs`, a negative axis and a zero-size part.
#[test]
fn split_matches_the_interpreter() {
    let x = [2usize, 7, 3];
    let inputs = HashMap::from([("x".to_string(), input(&x, 4))]);
    for body in [
        "  const %s: i64[3] = dense[2, 0, 5]\n  %a, %b, %c = Split(%x, %s) {axis = 1} : f32[2,2,3], f32[2,0,3], f32[2,5,3]\n  return %a, %b, %c",
        "  %a, %b, %c = Split(%x) {axis = -2, num_outputs = 3} : f32[2,3,3], f32[2,3,3], f32[2,1,3]\n  return %c, %a, %b",
        "  %a, %b = Split(%x) {axis = 0, num_outputs = 2} : f32[1,7,3], f32[1,7,3]\n  return %b, %a",
        "  const %s: i64[2] = dense[1, 2]\n  %a, %b = Split(%x, %s) {axis = 2} : f32[2,7,1], f32[2,7,2]\n  return %a, %b",
    ] {
        let src = format!(
            "module @split opset(ai.onnx = 18) {{\n  input %x: {}\n{body}\n}}\n",
            ty(&x)
        );
        check(&src, &inputs, 1, false).unwrap_or_else(|e| panic!("{e}"));
        assert!(backend_report(&src, &inputs).contains(", 0 on the interpreter"), "{src}");
    }
}

/// Shapes that depend on data (a NonZero's count of positives): the nodes
/// downstream are lowered per shape when they run, the matmul with its
/// bias and Relu and a Reshape whose target is computed from a Shape
/// included, and match the interpreter on two inputs with different
/// counts (two specializations of each step).
#[test]
fn data_dependent_shapes_run_natively_per_shape() {
    let w = values(3, 30);
    let b = values(4, 6);
    let src = format!(
        "module @dyn opset(ai.onnx = 18) {{
  input %x: f32[12]
  input %f: f32[12,5]
  const %zero: f32[] = dense[0.0]
  const %axes: i64[1] = dense[0]
  const %start: i64[1] = dense[0]
  const %end: i64[1] = dense[1]
  const %two: i64[1] = dense[2]
  const %three: i64[1] = dense[3]
  const %w: f32[5,6] = {}
  const %b: f32[6] = {}
  %m = Greater(%x, %zero) : bool[12]
  %nz = NonZero(%m) : i64[1,?]
  %i = Squeeze(%nz, %axes) : i64[?]
  %g = Gather(%f, %i) {{axis = 0}} : f32[?,5]
  %y = MatMul(%g, %w) : f32[?,6]
  %z = Add(%y, %b) : f32[?,6]
  %r = Relu(%z) : f32[?,6]
  %sh = Shape(%r) : i64[2]
  %rows = Slice(%sh, %start, %end) : i64[1]
  %rows2 = Mul(%rows, %two) : i64[1]
  %shape = Concat(%rows2, %three) {{axis = 0}} : i64[2]
  %out = Reshape(%r, %shape) : f32[?,3]
  return %out, %g
}}
",
        dense(&w),
        dense(&b)
    );
    let inputs = HashMap::from([
        ("x".to_string(), input(&[12], 5)),
        ("f".to_string(), input(&[12, 5], 6)),
    ]);
    for threads in [1, 2] {
        check(&src, &inputs, threads, false).expect("matches the interpreter");
    }
    // Before a run the report knows what a trial lowering (unknown dims
    // as 1) gave; the Reshape's target is known only when it runs.
    let report = backend_report(&src, &inputs);
    let line = |report: &str, v: &str| {
        report
            .lines()
            .find(|l| l.contains(&format!("%{v} (")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line(&report, "r").starts_with("native"), "{report}");
    assert!(line(&report, "out").starts_with("interp"), "{report}");
    // After runs with 7 and 5 positives, both are native, twice each.
    let m = kiln_ir::parse_module(&src).expect("parses");
    let exe = compile(
        &m,
        &Target::Cpu(CpuOptions::default()),
        &kiln_compiler::lower::shapes_of(&inputs),
    )
    .expect("compiles");
    let mut other = inputs.clone();
    other.insert("x".to_string(), input(&[12], 9));
    exe.run(&inputs).expect("runs");
    exe.run(&other).expect("runs");
    let report = exe.report();
    for v in ["g", "r", "sh", "out"] {
        let l = line(&report, v);
        assert!(
            l.starts_with("native") && l.contains("2 shapes"),
            "{report}"
        );
    }
    // NonZero sizes its result by its count: one specialization (the
    // operand's shape is the same) serves both counts.
    let l = line(&report, "nz");
    assert!(
        l.starts_with("native") && l.contains("NonZero") && l.contains("1 shapes"),
        "{report}"
    );
}

/// NonMaxSuppression (two batches, two classes, corner and centre box
/// formats) sizes its result by how many boxes it keeps: native after
/// runs with different scores, and the interpreter's answer each time.
#[test]
fn non_max_suppression_runs_natively_per_count() {
    let src = "module @nms opset(ai.onnx = 18) {
  input %boxes: f32[2,24,4]
  input %scores: f32[2,2,24]
  const %max: i64[1] = dense[30]
  const %iou: f32[1] = dense[0.3]
  const %th: f32[1] = dense[-0.5]
  %sel = NonMaxSuppression(%boxes, %scores, %max, %iou, %th) : i64[?,3]
  %cen = NonMaxSuppression(%boxes, %scores, %max, %iou) {center_point_box = 1} : i64[?,3]
  return %sel, %cen
}
";
    // Boxes of side about 2 scattered over a 3x3 field: many overlap.
    let boxes: Vec<f32> = values(41, 2 * 24 * 4)
        .chunks(4)
        .flat_map(|c| {
            let (y, x) = (1.5 * c[0] + 1.5, 1.5 * c[1] + 1.5);
            [y, x, y + 2.0 + 0.5 * c[2], x + 2.0 + 0.5 * c[3]]
        })
        .collect();
    let t = |shape: Vec<usize>, v: Vec<f32>| {
        Value::tensor(Tensor::new(shape, Data::F32(v)).expect("tensor"))
    };
    let at = |seed| {
        HashMap::from([
            ("boxes".to_string(), t(vec![2, 24, 4], boxes.clone())),
            ("scores".to_string(), t(vec![2, 2, 24], values(seed, 96))),
        ])
    };
    let m = kiln_ir::parse_module(src).expect("parses");
    let exe = compile(
        &m,
        &Target::Cpu(CpuOptions::default()),
        &kiln_compiler::lower::shapes_of(&at(42)),
    )
    .expect("compiles");
    let mut counts = vec![];
    for seed in [42, 43, 44] {
        let want = Interpreter::new(&m).run(&at(seed)).expect("interprets");
        let got = exe.run(&at(seed)).expect("runs");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(
                g.as_tensor().map(|t| (&t.shape, &t.data)),
                w.as_tensor().map(|t| (&t.shape, &t.data))
            );
        }
        counts.push(got[0].as_tensor().map(|t| t.shape[0]));
    }
    assert!(
        counts.iter().any(|&c| c != counts[0]),
        "counts {counts:?} all alike"
    );
    let report = exe.report();
    assert!(
        report.trim_end().ends_with(", 0 on the interpreter"),
        "{report}"
    );
    assert!(report.contains("NonMaxSuppression of"), "{report}");
}

/// A mask built from an integer input and a comparison, applied with
/// Where (LLaMA's causal mask): the fusion over bool values that the
/// generated loops do not take runs node by node on the typed kernels,
/// and matches the interpreter with no interpreted step.
#[test]
fn mixed_type_fusion_runs_node_by_node() {
    let src = "module @mask opset(ai.onnx = 18) {
  input %ids: i64[2,1,7]
  input %a: f32[2,7,7]
  input %x: f32[2,7,7]
  const %lim: f32[] = dense[0.25]
  const %neg: f32[] = dense[-3.5]
  const %one: i64[] = dense[1]
  %k = Sub(%ids, %one) : i64[2,1,7]
  %m = Cast(%k) {to = 9} : bool[2,1,7]
  %c = LessOrEqual(%a, %lim) : bool[2,7,7]
  %w = And(%m, %c) : bool[2,7,7]
  %n = Not(%w) : bool[2,7,7]
  %y = Where(%n, %x, %neg) : f32[2,7,7]
  return %y, %w
}
";
    let ids: Vec<i64> = (0..14).map(|i| i % 3).collect();
    let inputs = HashMap::from([
        (
            "ids".to_string(),
            Value::tensor(Tensor::new(vec![2, 1, 7], Data::I64(ids)).expect("tensor")),
        ),
        ("a".to_string(), input(&[2, 7, 7], 11)),
        ("x".to_string(), input(&[2, 7, 7], 12)),
    ]);
    for threads in [1, 2] {
        check(src, &inputs, threads, false).expect("matches the interpreter");
    }
    let report = backend_report(src, &inputs);
    assert!(report.contains(", 0 on the interpreter"), "{report}");
}

/// Index, scan and selection ops on f32 and i64 data (ArgMax/ArgMin with
/// both tie rules, GatherElements with negative indices, Tile, CumSum in
/// every direction, ScatterND with a reduction, TopK, Trilu both ways):
/// native kernels that match the interpreter, with no interpreted step.
#[test]
fn index_and_scan_ops_run_natively() {
    let upd = values(7, 40);
    let src = format!(
        "module @idx opset(ai.onnx = 18) {{
  input %x: f32[3,4,5]
  input %ids: i64[3,2,5]
  const %reps: i64[3] = dense[1, 2, 1]
  const %one: i64[] = dense[1]
  const %last: i64[] = dense[-1]
  const %k: i64[1] = dense[2]
  const %nd: i64[2,1] = dense[2, 0]
  const %upd: f32[2,4,5] = {}
  %amax = ArgMax(%x) {{axis = 1, keepdims = 0, select_last_index = 1}} : i64[3,5]
  %amin = ArgMin(%x) {{axis = -1}} : i64[3,4,1]
  %g = GatherElements(%x, %ids) {{axis = 1}} : f32[3,2,5]
  %t = Tile(%x, %reps) : f32[3,8,5]
  %c = CumSum(%x, %one) {{exclusive = 1, reverse = 1}} : f32[3,4,5]
  %ci = CumSum(%ids, %last) : i64[3,2,5]
  %s = ScatterND(%x, %nd, %upd) {{reduction = \"add\"}} : f32[3,4,5]
  %tv, %ti = TopK(%x, %k) {{axis = 1, largest = 0}} : f32[3,2,5], i64[3,2,5]
  %up = Trilu(%x, %one) : f32[3,4,5]
  %lo = Trilu(%ids, %last) {{upper = 0}} : i64[3,2,5]
  return %amax, %amin, %g, %t, %c, %ci, %s, %tv, %ti, %up, %lo
}}
",
        dense(&upd)
    );
    let ids: Vec<i64> = (0..30).map(|i| (i * 7 % 8) as i64 - 4).collect();
    let inputs = HashMap::from([
        ("x".to_string(), input(&[3, 4, 5], 11)),
        (
            "ids".to_string(),
            Value::tensor(Tensor::new(vec![3, 2, 5], Data::I64(ids)).expect("tensor")),
        ),
    ]);
    native_and_exact(&src, &inputs);
}

/// Integer elementwise ops on every integer width (Max, Min, Mod both
/// ways, Pow, the bitwise ops, BitShift, Neg, Abs), the reductions beyond
/// sum/mean/max/min over middle axes, the trigonometric functions the
/// generated loops call per lane, LayerNormalization with its
/// statistics, IsNaN/IsInf, inference Dropout, Hardmax and OneHot (of
/// i16 indices, negative ones counted from the depth): native, and the
/// interpreter's answer.
#[test]
fn integer_ops_norm_reductions_and_trig_run_natively() {
    let src = "module @ints opset(ai.onnx = 18) {
  input %a: i16[3,4]
  input %b: i16[4]
  input %u: u8[3,4]
  input %s: u8[1]
  input %x: f32[3,4,5]
  const %ax: i64[1] = dense[1]
  const %e: i16[4] = dense[0, 1, 2, 3]
  const %sc: f32[5] = dense[0.5, 1.0, -1.5, 2.0, 0.25]
  const %bi: f32[4,1] = dense[0.1, -0.2, 0.3, 0.0]
  const %depth: i64[] = dense[7]
  const %onoff: f32[2] = dense[-1.0, 2.5]
  %mx = Max(%a, %b) : i16[3,4]
  %mn = Min(%a, %b) : i16[3,4]
  %md = Mod(%a, %b) : i16[3,4]
  %mf = Mod(%a, %b) {fmod = 1} : i16[3,4]
  %pw = Pow(%b, %e) : i16[4]
  %ng = Neg(%a) : i16[3,4]
  %ab = Abs(%a) : i16[3,4]
  %ba = BitwiseAnd(%u, %s) : u8[3,4]
  %bx = BitwiseXor(%u, %s) : u8[3,4]
  %bn = BitwiseNot(%u) : u8[3,4]
  %sl = BitShift(%u, %s) {direction = \"LEFT\"} : u8[3,4]
  %sr = BitShift(%u, %s) {direction = \"RIGHT\"} : u8[3,4]
  %l2 = ReduceL2(%x, %ax) : f32[3,1,5]
  %l1 = ReduceL1(%x, %ax) {keepdims = 0} : f32[3,5]
  %pr = ReduceProd(%x, %ax) : f32[3,1,5]
  %ss = ReduceSumSquare(%x, %ax) : f32[3,1,5]
  %lse = ReduceLogSumExp(%x, %ax) : f32[3,1,5]
  %sq = Mul(%x, %x) : f32[3,4,5]
  %ls = ReduceLogSum(%sq, %ax) : f32[3,1,5]
  %sn = Sin(%x) : f32[3,4,5]
  %cs = Cos(%sn) : f32[3,4,5]
  %at = Atan(%cs) : f32[3,4,5]
  %ln, %mean, %inv = LayerNormalization(%x, %sc, %bi) {axis = 1} : f32[3,4,5], f32[3,1,1], f32[3,1,1]
  %lg = Log(%x) : f32[3,4,5]
  %nan = IsNaN(%lg) : bool[3,4,5]
  %inf = IsInf(%lg) {detect_positive = 0} : bool[3,4,5]
  %dr, %dm = Dropout(%x) : f32[3,4,5], bool[3,4,5]
  %hm = Hardmax(%x) {axis = 1} : f32[3,4,5]
  %oh = OneHot(%a, %depth, %onoff) {axis = 1} : f32[3,7,4]
  return %mx, %mn, %md, %mf, %pw, %ng, %ab, %ba, %bx, %bn, %sl, %sr, %l2, %l1, %pr, %ss, %lse, %ls, %at, %ln, %mean, %inv, %nan, %inf, %dr, %dm, %hm, %oh
}
";
    let i16s = |v: Vec<i16>, shape: Vec<usize>| {
        Value::tensor(Tensor::new(shape, Data::I16(v)).expect("tensor"))
    };
    let u8s = |v: Vec<u8>, shape: Vec<usize>| {
        Value::tensor(Tensor::new(shape, Data::U8(v)).expect("tensor"))
    };
    let a: Vec<i16> = (0..12).map(|i| (i * 7919 % 61) as i16 - 30).collect();
    let inputs = HashMap::from([
        ("a".to_string(), i16s(a, vec![3, 4])),
        ("b".to_string(), i16s(vec![3, -5, 7, 2], vec![4])),
        (
            "u".to_string(),
            u8s((0..12).map(|i| (i * 37 + 5) as u8).collect(), vec![3, 4]),
        ),
        ("s".to_string(), u8s(vec![3], vec![1])),
        ("x".to_string(), input(&[3, 4, 5], 17)),
    ]);
    native_and_exact(src, &inputs);
}

/// GridSample in every mode and padding, 2-D and 3-D, with points
/// outside the image and an infinity in one channel (whose zero padding
/// must not turn into NaN): native, and the interpreter's answer.
#[test]
fn grid_sample_runs_natively() {
    let src = "module @gs opset(ai.onnx = 20) {
  input %x: f32[2,3,5,6]
  input %g: f32[2,4,7,2]
  input %v: f32[1,2,3,4,5]
  input %h: f32[1,2,3,3,3]
  %a = GridSample(%x, %g) : f32[2,3,4,7]
  %b = GridSample(%x, %g) {mode = \"cubic\", padding_mode = \"reflection\"} : f32[2,3,4,7]
  %c = GridSample(%x, %g) {mode = \"nearest\", padding_mode = \"border\", align_corners = 1} : f32[2,3,4,7]
  %d = GridSample(%v, %h) {padding_mode = \"border\"} : f32[1,2,2,3,3]
  %e = GridSample(%v, %h) {mode = \"nearest\"} : f32[1,2,2,3,3]
  return %a, %b, %c, %d, %e
}
";
    let mut x = values(31, 2 * 3 * 5 * 6);
    x[5 * 6 + 7] = f32::INFINITY;
    let scaled = |seed, n| {
        values(seed, n)
            .iter()
            .map(|v| v * 1.3)
            .collect::<Vec<f32>>()
    };
    let t = |shape: Vec<usize>, v: Vec<f32>| {
        Value::tensor(Tensor::new(shape, Data::F32(v)).expect("tensor"))
    };
    let inputs = HashMap::from([
        ("x".to_string(), t(vec![2, 3, 5, 6], x)),
        (
            "g".to_string(),
            t(vec![2, 4, 7, 2], scaled(32, 2 * 4 * 7 * 2)),
        ),
        ("v".to_string(), input(&[1, 2, 3, 4, 5], 33)),
        ("h".to_string(), t(vec![1, 2, 3, 3, 3], scaled(34, 54))),
    ]);
    native_and_exact(src, &inputs);
}

/// Einsum (attention scores with heads in the middle, a projection by a
/// constant weight, a three-operand bilinear form, a full sum, an
/// ellipsis) becomes transposes, reshapes and matmuls: native, and the
/// interpreter's answer.
#[test]
fn einsum_runs_as_matmuls() {
    let src = format!(
        "module @ein opset(ai.onnx = 17) {{
  input %q: f32[2,8,4,16]
  input %k: f32[2,10,4,16]
  input %u: f32[3,4]
  input %v: f32[3,6]
  const %w: f32[16,5] = {}
  const %a: f32[5,4,6] = {}
  %s = Einsum(%q, %k) {{equation = \"bqhd,bkhd->bhqk\"}} : f32[2,4,8,10]
  %p = Einsum(%q, %w) {{equation = \"...d,df\"}} : f32[2,8,4,5]
  %bl = Einsum(%u, %a, %v) {{equation = \"bn,anm,bm->ba\"}} : f32[3,5]
  %t = Einsum(%u) {{equation = \"ij->\"}} : f32[]
  return %s, %p, %bl, %t
}}
",
        dense(&values(51, 80)),
        dense(&values(52, 120))
    );
    let inputs = HashMap::from([
        ("q".to_string(), input(&[2, 8, 4, 16], 53)),
        ("k".to_string(), input(&[2, 10, 4, 16], 54)),
        ("u".to_string(), input(&[3, 4], 55)),
        ("v".to_string(), input(&[3, 6], 56)),
    ]);
    native_and_exact(&src, &inputs);
    // Unoptimized (no einsum pass), each Einsum of one or two operands
    // is the native Einsum step; the three-operand one stays interpreted.
    let m = kiln_ir::parse_module(&src).expect("parses");
    let opts = CpuOptions {
        opt_level: 0,
        ..Default::default()
    };
    let exe = compile(
        &m,
        &Target::Cpu(opts),
        &kiln_compiler::lower::shapes_of(&inputs),
    )
    .expect("compiles");
    runs_as_interpreted(&m, &*exe, &inputs);
    let report = exe.report();
    assert!(
        report
            .trim_end()
            .ends_with("3 native, 1 on the interpreter (Einsum x1)"),
        "{report}"
    );
}

/// `exe` gives the interpreter's outputs of `m` (within [`TOL`]).
fn runs_as_interpreted(
    m: &kiln_ir::Module,
    exe: &dyn kiln_runtime::Executable,
    inputs: &HashMap<String, Value>,
) {
    let want = Interpreter::new(m).run(inputs).expect("interprets");
    let got = exe.run(inputs).expect("runs");
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        compare(g, w, TOL).unwrap_or_else(|e| panic!("output {k}: {e}"));
    }
}

/// Einsum of symbolic shapes (a sequence length known per run): lowered
/// per shape to the native Einsum step, the interpreter's answer at two
/// lengths.
#[test]
fn einsum_of_run_time_shapes_runs_natively() {
    let src = "module @ein opset(ai.onnx = 17) {
  input %q: f32[2,S,4,16]
  input %k: f32[2,T,4,16]
  input %t: f32[S]
  input %f: f32[8]
  %s = Einsum(%q, %k) {equation = \"bqhd,bkhd->bhqk\"} : f32[2,4,S,T]
  %o = Einsum(%t, %f) {equation = \"i,j->ij\"} : f32[S,8]
  return %s, %o
}
";
    let m = kiln_ir::parse_module(src).expect("parses");
    let at = |s: usize, t: usize| {
        HashMap::from([
            ("q".to_string(), input(&[2, s, 4, 16], 71)),
            ("k".to_string(), input(&[2, t, 4, 16], 72)),
            ("t".to_string(), input(&[s], 73)),
            ("f".to_string(), input(&[8], 74)),
        ])
    };
    let exe = compile(&m, &Target::Cpu(CpuOptions::default()), &HashMap::new()).expect("compiles");
    for (s, t) in [(5, 7), (3, 9)] {
        let inputs = at(s, t);
        runs_as_interpreted(&m, &*exe, &inputs);
    }
    let report = exe.report();
    assert!(
        report.trim_end().ends_with(", 0 on the interpreter"),
        "{report}"
    );
    assert!(report.contains("Einsum \"bqhd,bkhd->bhqk\""), "{report}");
}

/// GroupNormalization (per-channel scale, opset 21) and
/// InstanceNormalization, on a map large enough to thread: native, and
/// the interpreter's answer.
#[test]
fn group_and_instance_norm_run_natively() {
    let (s, b) = (values(8, 32), values(9, 32));
    let src = format!(
        "module @norm opset(ai.onnx = 21) {{
  input %x: f32[2,32,32,40]
  const %s: f32[32] = {}
  const %b: f32[32] = {}
  %g = GroupNormalization(%x, %s, %b) {{num_groups = 8, epsilon = 0.001}} : f32[2,32,32,40]
  %i = InstanceNormalization(%x, %s, %b) : f32[2,32,32,40]
  return %g, %i
}}
",
        dense(&s),
        dense(&b)
    );
    let inputs = HashMap::from([("x".to_string(), input(&[2, 32, 32, 40], 12))]);
    native_and_exact(&src, &inputs);
}

/// `src` matches the interpreter at 1 and 2 threads, with every step
/// native.
fn native_and_exact(src: &str, inputs: &HashMap<String, Value>) {
    for threads in [1, 2] {
        check(src, inputs, threads, false).expect("matches the interpreter");
    }
    let report = backend_report(src, inputs);
    assert!(
        report.trim_end().ends_with(", 0 on the interpreter"),
        "{report}"
    );
}

/// A Slice whose starts, ends, axes and steps are all run-time inputs:
/// each is a value operand (inference reads them one after another), so
/// the per-value specialization makes all four constants and the slice
/// runs natively, reversed steps included.
#[test]
fn slices_with_every_bound_at_run_time_run_natively() {
    let src = "module @slice opset(ai.onnx = 18) {
  input %x: f32[6,8]
  input %starts: i64[2]
  input %ends: i64[2]
  input %axes: i64[2]
  input %steps: i64[2]
  %s = Slice(%x, %starts, %ends, %axes, %steps) : f32[?,?]
  %y = Neg(%s) : f32[?,?]
  return %y
}
";
    let ints = |v: Vec<i64>| Value::tensor(Tensor::new(vec![2], Data::I64(v)).expect("tensor"));
    let inputs = HashMap::from([
        ("x".to_string(), input(&[6, 8], 61)),
        ("starts".to_string(), ints(vec![-1, 1])),
        ("ends".to_string(), ints(vec![-100, 6])),
        ("axes".to_string(), ints(vec![1, 0])),
        ("steps".to_string(), ints(vec![-2, 2])),
    ]);
    for threads in [1, 2] {
        check(src, &inputs, threads, false).expect("matches the interpreter");
    }
    let m = kiln_ir::parse_module(src).expect("parses");
    let exe = compile(
        &m,
        &Target::Cpu(CpuOptions::default()),
        &kiln_compiler::lower::shapes_of(&inputs),
    )
    .expect("compiles");
    exe.run(&inputs).expect("runs");
    let report = exe.report();
    assert!(
        report.trim_end().ends_with(", 0 on the interpreter"),
        "{report}"
    );
}

/// Operands whose values decide how a node runs, given only at run time
/// (a Slice's starts): the node is lowered per value, and when the values
/// never settle (more keys than the cache holds, over and over) new ones
/// run the interpreter's kernel instead of a lowering per run; every
/// answer stays the interpreter's.
#[test]
fn run_time_values_are_specialized_until_they_never_settle() {
    let src = "module @slice opset(ai.onnx = 18) {
  input %x: f32[64,8]
  input %start: i64[1]
  const %len: i64[1] = dense[3]
  const %axis: i64[1] = dense[0]
  %end = Add(%start, %len) : i64[1]
  %s = Slice(%x, %start, %end, %axis) : f32[3,8]
  %y = Tanh(%s) : f32[3,8]
  return %y
}
";
    let m = kiln_ir::parse_module(src).expect("parses");
    let x = input(&[64, 8], 13);
    let at = |s: i64| {
        HashMap::from([
            ("x".to_string(), x.clone()),
            (
                "start".to_string(),
                Value::tensor(Tensor::new(vec![1], Data::I64(vec![s])).expect("tensor")),
            ),
        ])
    };
    let exe = compile(
        &m,
        &Target::Cpu(CpuOptions::default()),
        &kiln_compiler::lower::shapes_of(&at(0)),
    )
    .expect("compiles");
    let slice_line = |report: &str| {
        report
            .lines()
            .find(|l| l.contains("%s ("))
            .unwrap_or_default()
            .to_string()
    };
    // A few values: each lowered once, then served from the cache.
    for s in [0, 5, 0, 5] {
        let got = exe.run(&at(s)).expect("runs");
        let want = Interpreter::new(&m).run(&at(s)).expect("interprets");
        compare(&got[0], &want[0], Tolerance::default()).expect("matches");
    }
    let l = slice_line(&exe.report());
    assert!(l.starts_with("native") && l.contains("2 shapes"), "{l}");
    // Sixty values, twice over: the keys never settle.
    for s in (0..60).chain(0..60) {
        let got = exe.run(&at(s)).expect("runs");
        let want = Interpreter::new(&m).run(&at(s)).expect("interprets");
        compare(&got[0], &want[0], Tolerance::default()).expect("matches");
    }
    let l = slice_line(&exe.report());
    assert!(l.starts_with("interp") && l.contains("never settle"), "{l}");
}

/// An index out of range in a native GatherElements or ScatterND is an
/// error naming the index, as on the interpreter, never a panic.
#[test]
fn native_index_kernels_reject_out_of_range_indices() {
    let src = "module @bad opset(ai.onnx = 18) {
  input %x: f32[3,4]
  input %ids: i64[3,2]
  input %nd: i64[1,1]
  const %u: f32[1,4] = dense[1.0, 2.0, 3.0, 4.0]
  %g = GatherElements(%x, %ids) {axis = 1} : f32[3,2]
  %s = ScatterND(%x, %nd, %u) : f32[3,4]
  return %g, %s
}
";
    let m = kiln_ir::parse_module(src).expect("parses");
    let with = |ids: Vec<i64>, nd: i64| {
        HashMap::from([
            ("x".to_string(), input(&[3, 4], 14)),
            (
                "ids".to_string(),
                Value::tensor(Tensor::new(vec![3, 2], Data::I64(ids)).expect("tensor")),
            ),
            (
                "nd".to_string(),
                Value::tensor(Tensor::new(vec![1, 1], Data::I64(vec![nd])).expect("tensor")),
            ),
        ])
    };
    let good = with(vec![0, 3, -1, -4, 2, 1], 2);
    native_and_exact(src, &good);
    let exe = compile(
        &m,
        &Target::Cpu(CpuOptions::default()),
        &kiln_compiler::lower::shapes_of(&good),
    )
    .expect("compiles");
    let e = exe
        .run(&with(vec![0, 4, 0, 0, 0, 0], 2))
        .expect_err("index 4 of 4");
    assert!(e.to_string().contains("index 4 is out of range"), "{e}");
    let e = exe.run(&with(vec![0; 6], 3)).expect_err("row 3 of 3");
    assert!(e.to_string().contains("out of range"), "{e}");
}

/// Concatenations whose operands the memory plan puts inside the result
/// (a GhostNet module: a conv and a depthwise conv of it side by side),
/// one operand also concatenated again later (copied the second time),
/// and a result overwritten in place: the same values as the
/// interpreter's, and the Concat steps copy only what is not in place.
#[test]
fn concat_operands_written_in_place() {
    let src = format!(
        "module @ghost opset(ai.onnx = 17) {{
  input %x: f32[1,8,6,6]
  const %w1: f32[8,8,1,1] = {}
  const %wd: f32[8,1,3,3] = {}
  %a = Conv(%x, %w1) : f32[1,8,6,6]
  %b = Conv(%a, %wd) {{group = 8, pads = [1, 1, 1, 1]}} : f32[1,8,6,6]
  %c = Concat(%a, %b) {{axis = 1}} : f32[1,16,6,6]
  %d = Relu(%c) : f32[1,16,6,6]
  %e = Concat(%d, %a) {{axis = 1}} : f32[1,24,6,6]
  %f = Sigmoid(%e) : f32[1,24,6,6]
  return %f
}}
",
        dense(&values(71, 64)),
        dense(&values(72, 72))
    );
    let inputs = HashMap::from([("x".to_string(), input(&[1, 8, 6, 6], 73))]);
    native_and_exact(&src, &inputs);
}

/// Slices and splits that are contiguous blocks of their operand are
/// placed inside it (GhostNet's `[:, :oup]` of a concatenation placed in
/// place itself, ShuffleNet's channel halves, a split's unaligned part
/// that keeps its copy, and an operand still read later, which keeps
/// them all copying); each result's in-place chain then writes into the
/// operand's bytes.
#[test]
fn slices_read_in_place() {
    let src = format!(
        "module @ghost opset(ai.onnx = 18) {{
  input %x: f32[1,16,4,4]
  const %w1: f32[8,16,1,1] = {}
  const %wd: f32[8,1,3,3] = {}
  const %s0: i64[1] = dense[0]
  const %s1: i64[1] = dense[12]
  const %ax: i64[1] = dense[1]
  const %sp: i64[3] = dense[4, 7, 1]
  %a = Conv(%x, %w1) : f32[1,8,4,4]
  %b = Conv(%a, %wd) {{group = 8, pads = [1, 1, 1, 1]}} : f32[1,8,4,4]
  %c = Concat(%a, %b) {{axis = 1}} : f32[1,16,4,4]
  %d = Slice(%c, %s0, %s1, %ax) : f32[1,12,4,4]
  %e = Relu(%d) : f32[1,12,4,4]
  %f0, %f1 = Split(%e) {{axis = 1, num_outputs = 2}} : f32[1,6,4,4], f32[1,6,4,4]
  %g = Sigmoid(%f1) : f32[1,6,4,4]
  %h = Concat(%g, %f0) {{axis = 1}} : f32[1,12,4,4]
  %i0, %i1, %i2 = Split(%h, %sp) {{axis = 1}} : f32[1,4,4,4], f32[1,7,4,4], f32[1,1,4,4]
  %j = Neg(%i1) : f32[1,7,4,4]
  %k = Mul(%i0, %i2) : f32[1,4,4,4]
  %l = Slice(%x, %s0, %s1, %ax) : f32[1,12,4,4]
  %m = Exp(%l) : f32[1,12,4,4]
  %n = Add(%x, %x) : f32[1,16,4,4]
  return %j, %k, %m, %n
}}
",
        dense(&values(81, 128)),
        dense(&values(82, 72))
    );
    let inputs = HashMap::from([("x".to_string(), input(&[1, 16, 4, 4], 83))]);
    native_and_exact(&src, &inputs);
}

/// Reparameterizable blocks in their training form (RepVGG, MobileOne,
/// FastViT): `act(bn(x) + conv(x) [+ conv3x3(x)])`. The skip branch's
/// BatchNormalization lands in the conv's epilogue region ahead of the
/// conv; the region runs natively (it ran on the interpreter, 2-4x the
/// model's time) and matches the interpreter.
#[test]
fn skip_branch_batch_norm_joins_a_conv_epilogue_natively() {
    let c = 6;
    let stats = |seed: u32, lo: f32| -> String {
        dense(
            &values(seed, c)
                .iter()
                .map(|v| lo + v.abs())
                .collect::<Vec<_>>(),
        )
    };
    for act in ["Relu", "Sigmoid"] {
        for second in [false, true] {
            let mut lines = vec![
                format!("  input %x: {}", ty(&[1, c, 9, 9])),
                format!("  const %g: {} = {}", ty(&[c]), stats(1, 0.5)),
                format!("  const %b: {} = {}", ty(&[c]), dense(&values(2, c))),
                format!("  const %mu: {} = {}", ty(&[c]), dense(&values(3, c))),
                format!("  const %var: {} = {}", ty(&[c]), stats(4, 0.2)),
                format!(
                    "  const %w1: {} = {}",
                    ty(&[c, c, 1, 1]),
                    dense(&values(5, c * c))
                ),
                format!(
                    "  const %w3: {} = {}",
                    ty(&[c, c, 3, 3]),
                    dense(&values(6, 9 * c * c))
                ),
                format!(
                    "  %n = BatchNormalization(%x, %g, %b, %mu, %var) : {}",
                    ty(&[1, c, 9, 9])
                ),
                format!(
                    "  %p = Conv(%x, %w1) {{kernel_shape = [1, 1]}} : {}",
                    ty(&[1, c, 9, 9])
                ),
                format!("  %s = Add(%n, %p) : {}", ty(&[1, c, 9, 9])),
            ];
            let sum = if second {
                lines.push(format!(
                    "  %q = Conv(%x, %w3) {{kernel_shape = [3, 3], pads = [1, 1, 1, 1]}} : {}",
                    ty(&[1, c, 9, 9])
                ));
                lines.push(format!("  %t = Add(%s, %q) : {}", ty(&[1, c, 9, 9])));
                "%t"
            } else {
                "%s"
            };
            lines.push(format!("  %y = {act}({sum}) : {}", ty(&[1, c, 9, 9])));
            let src = format!(
                "module @rep opset(ai.onnx = 17) {{\n{}\n  return %y\n}}\n",
                lines.join("\n")
            );
            let inputs = HashMap::from([("x".to_string(), input(&[1, c, 9, 9], 7))]);
            for threads in [1, 2] {
                check(&src, &inputs, threads, false).unwrap_or_else(|e| panic!("{e}"));
            }
            let report = backend_report(&src, &inputs);
            assert!(report.contains(", 0 on the interpreter"), "{report}");
        }
    }
}

/// SiLU after a conv, `x * Sigmoid(x)` (YOLO, EfficientNet), rides on the
/// conv's tile store as `Swish`, and so does a HardSwish (MobileNetV3),
/// each matching the interpreter for every
/// strategy that stores tiles: the small-k kernel (3 input channels), the
/// implicit GEMM (a 3x3 conv on a 12x12 map), the transposed product (a
/// 1x1 conv on a 5x5 map), with a residual added first, at 1 and 2
/// threads. Some inputs reach far into the negative tail.
#[test]
fn silu_rides_on_the_conv_tile_store() {
    let cases: [(&[usize], &[usize], &str, bool); 4] = [
        (&[1, 3, 16, 16], &[8, 3, 3, 3], "pads = [1, 1, 1, 1]", false),
        (
            &[1, 16, 12, 12],
            &[32, 16, 3, 3],
            "pads = [1, 1, 1, 1]",
            false,
        ),
        (&[1, 64, 5, 5], &[48, 64, 1, 1], "", false),
        (
            &[1, 16, 12, 12],
            &[16, 16, 3, 3],
            "pads = [1, 1, 1, 1]",
            true,
        ),
    ];
    for ((x, w, attrs, residual), hard) in cases.into_iter().flat_map(|c| [(c, false), (c, true)]) {
        let y = [x[0], w[0], x[2], x[3]];
        let wn: usize = w.iter().product();
        let scaled: Vec<f32> = values(3, wn).iter().map(|v| v * 4.0).collect();
        let mut lines = vec![
            format!("  input %x: {}", ty(x)),
            format!("  const %w: {} = {}", ty(w), dense(&scaled)),
            format!("  const %b: {} = {}", ty(&[w[0]]), dense(&values(4, w[0]))),
            format!("  %c = Conv(%x, %w, %b) {{{attrs}}} : {}", ty(&y)),
        ];
        let v = if residual {
            lines.push(format!("  %r = Add(%c, %x) : {}", ty(&y)));
            "%r"
        } else {
            "%c"
        };
        if hard {
            lines.push(format!("  %y = HardSwish({v}) : {}", ty(&y)));
        } else {
            lines.push(format!("  %s = Sigmoid({v}) : {}", ty(&y)));
            lines.push(format!("  %y = Mul({v}, %s) : {}", ty(&y)));
        }
        let src = format!(
            "module @silu opset(ai.onnx = 17) {{\n{}\n  return %y\n}}\n",
            lines.join("\n")
        )
        .replace(" {}", "");
        let inputs = HashMap::from([("x".to_string(), input(x, 5))]);
        for threads in [1, 2] {
            check(&src, &inputs, threads, false).unwrap_or_else(|e| panic!("{e}"));
        }
        let report = backend_report(&src, &inputs);
        assert!(report.contains(", 0 on the interpreter"), "{report}");
        if avx2_fma() {
            let want = if hard { "+ HardSwish" } else { "+ Swish" };
            assert!(report.contains(want), "{report}");
        }
    }
}

fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Dilated convs over maps smaller than their reach (DeepLabV3's ASPP):
/// the taps that read only padding are dropped by `trim-conv-taps`, and
/// the results match the interpreter's full convs, strided, asymmetric
/// pads and 1-D included.
#[test]
fn convs_lose_the_taps_that_read_only_padding() {
    let cases: [(&[usize], &[usize], &str); 5] = [
        // (input, weight, attributes)
        (
            &[1, 3, 6, 6],
            &[4, 3, 3, 3],
            "dilations = [8, 8], pads = [8, 8, 8, 8]",
        ),
        (
            &[1, 3, 6, 6],
            &[4, 3, 3, 3],
            "dilations = [4, 4], pads = [4, 4, 4, 4]",
        ),
        (
            &[1, 3, 3, 7],
            &[4, 3, 3, 3],
            "dilations = [5, 2], pads = [5, 3, 6, 2], strides = [2, 1]",
        ),
        (&[1, 2, 5], &[3, 2, 5], "dilations = [4], pads = [7, 9]"),
        (
            &[2, 4, 4, 4],
            &[4, 1, 3, 3],
            "dilations = [6, 6], pads = [6, 6, 6, 6], group = 4",
        ),
    ];
    for (x, w, attrs) in cases {
        let r = x.len() - 2;
        // The result shape, by the explicit-pads formula.
        let out: Vec<usize> = {
            let ints = |name: &str, d: usize| -> Vec<usize> {
                attrs
                    .split(&format!("{name} = ["))
                    .nth(1)
                    .map(|s| {
                        s[..s.find(']').expect("]")]
                            .split(',')
                            .map(|v| v.trim().parse().expect("int"))
                            .collect()
                    })
                    .unwrap_or(vec![d; if name == "pads" { 2 * r } else { r }])
            };
            let (dil, pads, st) = (ints("dilations", 1), ints("pads", 0), ints("strides", 1));
            let mut o = vec![x[0], w[0]];
            for d in 0..r {
                let reach = dil[d] * (w[d + 2] - 1) + 1;
                o.push((x[d + 2] + pads[d] + pads[r + d] - reach) / st[d] + 1);
            }
            o
        };
        let src = format!(
            "module @c opset(ai.onnx = 17) {{\n  input %x: {}\n  const %w: {} = {}\n  %y = Conv(%x, %w) {{{attrs}}} : {}\n  return %y\n}}\n",
            ty(x),
            ty(w),
            dense(&values(3, w.iter().product())),
            ty(&out)
        );
        let inputs = HashMap::from([("x".to_string(), input(x, 5))]);
        for threads in [1, 2] {
            check(&src, &inputs, threads, false).unwrap_or_else(|e| panic!("{e}"));
        }
        let mut m = kiln_ir::parse_module(&src).expect("parse");
        let trimmed = kiln_compiler::passes::run_named(&mut m, "trim-conv-taps").expect("pass");
        // The 4-dilation 3x3 on 6x6 reads the input with every tap.
        assert_eq!(trimmed, !attrs.starts_with("dilations = [4, 4]"), "{attrs}");
    }
}

/// A packed MatMul's column bias (either operand order, `[n]` or `[1,
/// n]`) and the activation after it (Relu, Clip, SiLU, Gelu in both
/// forms, HardSwish) ride on its tile store: n = 50 leaves a partial strip (and an
/// odd one on AVX-512, which pairs strips), with the rest of the epilogue
/// (a Mul) still a generated loop in some cases, at 1 and 2 threads.
/// Some inputs reach far into Gelu's negative tail.
#[test]
fn bias_and_activation_ride_on_the_matmul_tile_store() {
    let (m, k, n) = (37usize, 40usize, 50usize);
    let acts: [(&str, &str); 7] = [
        ("%y0 = Relu(%a)", "Relu"),
        ("%y0 = Clip(%a, %lo, %hi)", "Clip"),
        ("%s = Sigmoid(%a) : T\n  %y0 = Mul(%s, %a)", "Swish"),
        ("%y0 = Gelu(%a)", "Gelu"),
        ("%y0 = Gelu(%a) {approximate = \"tanh\"}", "Gelu(tanh)"),
        ("%y0 = HardSwish(%a)", "HardSwish"),
        ("%y0 = Identity(%a)", ""),
    ];
    let out = ty(&[1, m, n]);
    for (i, (act, name)) in acts.iter().enumerate() {
        let bias_shape: &[usize] = if i % 2 == 0 { &[n] } else { &[1, n] };
        let add = if i % 3 == 0 {
            "%a = Add(%b, %p)"
        } else {
            "%a = Add(%p, %b)"
        };
        let more = i % 2 == 1;
        let w: Vec<f32> = values(6, k * n).iter().map(|v| v * 2.0).collect();
        let lines = [
            format!("  input %x: {}", ty(&[1, m, k])),
            format!("  const %w: {} = {}", ty(&[k, n]), dense(&w)),
            format!("  const %b: {} = {}", ty(bias_shape), dense(&values(7, n))),
            "  const %lo: f32[] = dense[-0.5]".to_string(),
            "  const %hi: f32[] = dense[1.5]".to_string(),
            "  const %two: f32[] = dense[2.0]".to_string(),
            format!("  %p = MatMul(%x, %w) : {out}"),
            format!("  {add} : {out}"),
            format!("  {} : {out}", act.replace(": T", &format!(": {out}"))),
            if more {
                format!("  %y = Mul(%y0, %two) : {out}")
            } else {
                format!("  %y = Identity(%y0) : {out}")
            },
        ];
        let src = format!(
            "module @mm opset(ai.onnx = 20) {{\n{}\n  return %y\n}}\n",
            lines.join("\n")
        );
        let inputs = HashMap::from([("x".to_string(), input(&[1, m, k], 8))]);
        for threads in [1, 2] {
            check(&src, &inputs, threads, false).unwrap_or_else(|e| panic!("{e}"));
        }
        let report = backend_report(&src, &inputs);
        assert!(report.contains(", 0 on the interpreter"), "{report}");
        if avx2_fma() {
            let want = if name.is_empty() {
                "(packed) + bias".to_string()
            } else {
                format!("(packed) + bias + {name}")
            };
            assert!(report.contains(&want), "{want}: {report}");
        }
    }
}

/// A packed Gemm's constant per-column C (scaled by beta, B transposed or
/// not) and the activation after it ride on its tile store too; a C of
/// another shape stays the Gemm's own epilogue.
#[test]
fn gemm_bias_and_activation_ride_on_the_tile_store() {
    let (m, k, n) = (19usize, 24usize, 40usize);
    let cases: [(&[usize], &str, &str, &str); 4] = [
        (&[n], "", "%y = Gelu(%p)", "(packed) + bias + Gelu"),
        (
            &[1, n],
            "transB = 1, beta = 0.5",
            "%y = Relu(%p)",
            "(packed) + bias + Relu",
        ),
        (&[n], "alpha = 2.0", "%y = Relu(%p)", ""),
        (&[m, 1], "", "%y = Relu(%p)", ""),
    ];
    for (c_shape, attrs, act, want) in cases {
        let trans_b = attrs.contains("transB");
        let w_shape = if trans_b { [n, k] } else { [k, n] };
        let cn: usize = c_shape.iter().product();
        let lines = [
            format!("  input %x: {}", ty(&[m, k])),
            format!(
                "  const %w: {} = {}",
                ty(&w_shape),
                dense(&values(9, k * n))
            ),
            format!("  const %c: {} = {}", ty(c_shape), dense(&values(10, cn))),
            format!("  %p = Gemm(%x, %w, %c) {{{attrs}}} : {}", ty(&[m, n])),
            format!("  {act} : {}", ty(&[m, n])),
        ];
        let src = format!(
            "module @gemm opset(ai.onnx = 17) {{\n{}\n  return %y\n}}\n",
            lines.join("\n")
        )
        .replace(" {}", "");
        let inputs = HashMap::from([("x".to_string(), input(&[m, k], 11))]);
        for threads in [1, 2] {
            check(&src, &inputs, threads, false).unwrap_or_else(|e| panic!("{e}"));
        }
        let report = backend_report(&src, &inputs);
        assert!(report.contains(", 0 on the interpreter"), "{report}");
        if avx2_fma() && !want.is_empty() {
            assert!(report.contains(want), "{want}: {report}");
        } else {
            assert!(!report.contains("+ bias"), "{report}");
        }
    }
}
