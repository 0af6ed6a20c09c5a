//! `RNN`, `GRU` and `LSTM` in their common form (the cpu backend's
//! `Recurrent` description: default activations, no clip, no peepholes,
//! full-length sequences) as a sequence of shaders: the input projection
//! of the whole sequence for every direction as one tiled GEMM into
//! scratch, an init shader for the state, then one shader per time step
//! (two for GRU's default reset-before form, whose candidate needs the
//! whole reset vector) over every direction, batch row and hidden unit.
//! The step shaders are one text: each binds a 4-byte buffer holding its
//! step number, so one pipeline serves the whole sequence. The state
//! lives in two halves of a scratch buffer, read from one and written to
//! the other by alternate steps.

use std::fmt::Write;

use kiln_ir::Node;

use crate::cpu::rnn::{Cell, Recurrent};
use crate::gpu::kernels::dense::gemm_dispatch;
use crate::gpu::kernels::quant::{weight_read, QuantWeights};
use crate::gpu::wgsl::{grid_for, Bind, GpuKernel, Shader, WG};

/// Scratch buffers: 0 the projection, 1 the hidden state (two halves),
/// 2 the cell state (LSTM), 3 r ⊙ h and 4 z (GRU, reset before).
const PROJ: usize = 0;
const HS: usize = 1;
const CS: usize = 2;
const RH: usize = 3;
const ZS: usize = 4;

/// The kernel of a recurrent node `n` (operands X, W, R, B, -, initial_h,
/// initial_c; results Y, Y_h, Y_c, where present).
///
/// `kiln.DequantLSTM` passes its 8-bit W and R as `quant`: read and
/// dequantized where the f32 kernel reads the f32 weights.
pub fn recurrent(
    n: &Node,
    l: &Recurrent,
    quant: Option<(QuantWeights, QuantWeights)>,
) -> Result<GpuKernel, String> {
    let (seq, batch, input, h, dirs) = (l.seq, l.batch, l.input, l.hidden, l.dirs);
    if seq == 0 || batch == 0 || h == 0 {
        return Err("an empty sequence".into());
    }
    let g = match l.cell {
        Cell::Rnn => 1,
        Cell::Gru { .. } => 3,
        Cell::Lstm => 4,
    };
    let gh = g * h;
    let has_b = n.input(3).is_some();
    // 1. The projection P[d][t·batch + b][gate·H + j] = X·Wᵀ + Wb.
    let mut sh = Shader::new(n);
    let x = sh.bind(Bind::Operand(0), "f32");
    let w = weight(
        &mut sh,
        quant.as_ref().map(|q| &q.0),
        1,
        &format!("(z * {gh}u + n) * {input}u + k"),
    )?;
    let p = sh.bind(Bind::Scratch(PROJ), "f32");
    let row = if l.batch_major {
        format!("((m % {batch}u) * {seq}u + m / {batch}u)")
    } else {
        "m".to_string()
    };
    let wb = if has_b {
        let b = sh.bind(Bind::Operand(3), "f32");
        format!(" + {b}[z * {}u + n]", 2 * gh)
    } else {
        String::new()
    };
    let _ = write!(
        sh.fns,
        "fn load_a(z: u32, m: u32, k: u32) -> f32 {{ return {x}[{row} * {input}u + k]; }}\n\
         fn load_b(z: u32, k: u32, n: u32) -> f32 {{ return {w}; }}\n\
         fn store(z: u32, m: u32, n: u32, acc: f32) {{ {p}[(z * {sb}u + m) * {gh}u + n] = acc{wb}; }}\n",
        sb = seq * batch
    );
    let mut dispatches = vec![gemm_dispatch(sh, dirs, seq * batch, gh, input)?];
    // 2. The initial state.
    let units = dirs * batch * h;
    let mut sh = Shader::new(n);
    let hs = sh.bind(Bind::Scratch(HS), "f32");
    // initial_h and initial_c are [dirs, batch, H], or [batch, dirs, H]
    // batch-major.
    let at0 = if l.batch_major {
        format!("((gid / {h}u) % {batch}u * {dirs}u + gid / ({h}u * {batch}u)) * {h}u + gid % {h}u")
    } else {
        "gid".to_string()
    };
    let h0 = match n.input(5) {
        Some(_) => format!("{}[{at0}]", sh.bind(Bind::Operand(5), "f32")),
        None => "0.0".into(),
    };
    let mut init = format!("if (gid >= {units}u) {{ return; }}\n{hs}[gid] = {h0};\n");
    if l.cell == Cell::Lstm {
        let cs = sh.bind(Bind::Scratch(CS), "f32");
        let c0 = match n.input(6) {
            Some(_) => format!("{}[{at0}]", sh.bind(Bind::Operand(6), "f32")),
            None => "0.0".into(),
        };
        let _ = writeln!(init, "{cs}[gid] = {c0};");
    }
    dispatches.push(sh.finish(WG, &init, grid_for(units as u64)?));
    // 3. The steps.
    let mut data = vec![];
    for s in 0..seq {
        data.push((s as u32).to_le_bytes().to_vec());
    }
    let step_shaders = step_shaders(n, l, g, has_b, quant.as_ref().map(|q| &q.1))?;
    for s in 0..seq {
        for text in &step_shaders {
            let mut d = text.clone();
            // The step number: this step's own data buffer.
            for b in &mut d.bindings {
                if *b == Bind::Data(0) {
                    *b = Bind::Data(s);
                }
            }
            dispatches.push(d);
        }
    }
    let mut scratch = vec![4 * (dirs * seq * batch * gh) as u64, 4 * 2 * units as u64];
    scratch.push(if l.cell == Cell::Lstm {
        4 * 2 * units as u64
    } else {
        4
    });
    scratch.push(4 * units as u64);
    scratch.push(4 * units as u64);
    Ok(GpuKernel {
        dispatches,
        data,
        scratch,
        check: None,
        describe: format!("{} hidden {h}, {seq} steps", n.op),
        flops: 2.0 * (seq * batch * dirs * gh * (input + h)) as f64,
    })
}

/// Element `i` of the weights at operand `op`: f32, or quantized.
fn weight(
    sh: &mut Shader,
    quant: Option<&QuantWeights>,
    op: usize,
    i: &str,
) -> Result<String, String> {
    match quant {
        Some(q) => weight_read(sh, q, i),
        None => Ok(format!("{}[{i}]", sh.bind(Bind::Operand(op), "f32"))),
    }
}

/// The shader(s) of one time step; `Data(0)` binds the step number.
fn step_shaders(
    n: &Node,
    l: &Recurrent,
    g: usize,
    has_b: bool,
    quant_r: Option<&QuantWeights>,
) -> Result<Vec<crate::gpu::wgsl::Dispatch>, String> {
    let (seq, batch, h, dirs) = (l.seq, l.batch, l.hidden, l.dirs);
    let gh = g * h;
    let units = dirs * batch * h;
    let head = |sh: &mut Shader| -> String {
        let step = sh.bind(Bind::Data(0), "u32");
        let reverse = if dirs == 2 {
            "d == 1u".to_string()
        } else {
            format!("{}", l.reverse)
        };
        format!(
            "if (gid >= {units}u) {{ return; }}\nlet s = {step}[0];\nlet j = gid % {h}u; let b = (gid / {h}u) % {batch}u; let d = gid / ({h}u * {batch}u);\n\
             var t = s; if ({reverse}) {{ t = {last}u - s; }}\n\
             let rd = (s % 2u) * {units}u; let wr = ((s + 1u) % 2u) * {units}u;\n\
             let me = (d * {batch}u + b) * {h}u;\n",
            last = seq - 1
        )
    };
    let y_at = if l.batch_major {
        format!("((b * {seq}u + t) * {dirs}u + d) * {h}u + j")
    } else {
        format!("((t * {dirs}u + d) * {batch}u + b) * {h}u + j")
    };
    let yh_at = if l.batch_major {
        format!("(b * {dirs}u + d) * {h}u + j")
    } else {
        "me + j".to_string()
    };
    // Writes of the new state `hn` (and `cn`) and the results.
    let finish = |sh: &mut Shader, lstm: bool| -> String {
        let hs = sh.bind(Bind::Scratch(HS), "f32");
        let mut s = format!("{hs}[wr + me + j] = hn;\n");
        if lstm {
            let cs = sh.bind(Bind::Scratch(CS), "f32");
            let _ = writeln!(s, "{cs}[wr + me + j] = cn;");
        }
        if !n.outputs.is_empty() {
            let _ = writeln!(s, "{}[{y_at}] = hn;", sh.bind(Bind::Result(0), "f32"));
        }
        let mut last = String::new();
        if n.outputs.len() > 1 {
            let _ = write!(last, "{}[{yh_at}] = hn; ", sh.bind(Bind::Result(1), "f32"));
        }
        if lstm && n.outputs.len() > 2 {
            let _ = write!(last, "{}[{yh_at}] = cn; ", sh.bind(Bind::Result(2), "f32"));
        }
        if !last.is_empty() {
            let _ = writeln!(s, "if (s == {}u) {{ {last}}}", seq - 1);
        }
        s
    };
    // pre(gate) = P + Rb + Σ_k h_prev[k]·R[gate·H + j][k].
    let pre_fn = |sh: &mut Shader| -> Result<String, String> {
        let p = sh.bind(Bind::Scratch(PROJ), "f32");
        let r = weight(sh, quant_r, 2, "wrow + k")?;
        let hs = sh.bind(Bind::Scratch(HS), "f32");
        let rb = if has_b {
            format!(
                "{}[d * {}u + {gh}u + gate * {h}u + j]",
                sh.bind(Bind::Operand(3), "f32"),
                2 * gh
            )
        } else {
            "0.0".into()
        };
        let _ = write!(
            sh.fns,
            "fn proj(d: u32, t: u32, b: u32, gate: u32, j: u32) -> f32 {{ return {p}[(d * {sb}u + t * {batch}u + b) * {gh}u + gate * {h}u + j]; }}\n\
             fn rb(d: u32, gate: u32, j: u32) -> f32 {{ return {rb}; }}\n\
             fn rdot(d: u32, gate: u32, j: u32, hp: u32) -> f32 {{ var a = 0.0; let wrow = (d * {gh}u + gate * {h}u + j) * {h}u; for (var k = 0u; k < {h}u; k = k + 1u) {{ a = fma({hs}[hp + k], {r}, a); }} return a; }}\n\
             fn pre(d: u32, t: u32, b: u32, gate: u32, j: u32, hp: u32) -> f32 {{ return proj(d, t, b, gate, j) + rb(d, gate, j) + rdot(d, gate, j, hp); }}\n\
             fn sig(x: f32) -> f32 {{ return 1.0 / (1.0 + exp(-x)); }}\n",
            sb = seq * batch
        );
        Ok(hs)
    };
    let tanh = crate::gpu::wgsl::H_TANH;
    let mut out = vec![];
    match l.cell {
        Cell::Rnn => {
            let mut sh = Shader::new(n);
            sh.helper(tanh);
            pre_fn(&mut sh)?;
            let mut body = head(&mut sh);
            body.push_str("let hn = ktanh(pre(d, t, b, 0u, j, rd + me));\n");
            body.push_str(&finish(&mut sh, false));
            out.push(sh.finish(WG, &body, grid_for(units as u64)?));
        }
        Cell::Lstm => {
            let mut sh = Shader::new(n);
            sh.helper(tanh);
            pre_fn(&mut sh)?;
            let cs = sh.bind(Bind::Scratch(CS), "f32");
            let mut body = head(&mut sh);
            // Gates in ONNX order: i, o, f, c.
            let _ = writeln!(
                body,
                "let hp = rd + me;\nlet ig = sig(pre(d, t, b, 0u, j, hp)); let og = sig(pre(d, t, b, 1u, j, hp));\n\
                 let fg = sig(pre(d, t, b, 2u, j, hp)); let cg = ktanh(pre(d, t, b, 3u, j, hp));\n\
                 let cn = fg * {cs}[rd + me + j] + ig * cg;\nlet hn = og * ktanh(cn);"
            );
            body.push_str(&finish(&mut sh, true));
            out.push(sh.finish(WG, &body, grid_for(units as u64)?));
        }
        Cell::Gru {
            linear_before_reset,
        } => {
            // Gates in ONNX order: z, r, h.
            if linear_before_reset {
                let mut sh = Shader::new(n);
                sh.helper(tanh);
                let hs = pre_fn(&mut sh)?;
                let mut body = head(&mut sh);
                let _ = writeln!(
                    body,
                    "let hp = rd + me;\nlet zg = sig(pre(d, t, b, 0u, j, hp)); let rg = sig(pre(d, t, b, 1u, j, hp));\n\
                     let nh = ktanh(proj(d, t, b, 2u, j) + rg * (rdot(d, 2u, j, hp) + rb(d, 2u, j)));\n\
                     let hn = (1.0 - zg) * nh + zg * {hs}[hp + j];"
                );
                body.push_str(&finish(&mut sh, false));
                out.push(sh.finish(WG, &body, grid_for(units as u64)?));
            } else {
                // Phase A: z, and r ⊙ h_prev for the candidate's product.
                let mut sh = Shader::new(n);
                let hs = pre_fn(&mut sh)?;
                let rh = sh.bind(Bind::Scratch(RH), "f32");
                let zs = sh.bind(Bind::Scratch(ZS), "f32");
                let mut body = head(&mut sh);
                let _ = writeln!(
                    body,
                    "let hp = rd + me;\n{zs}[me + j] = sig(pre(d, t, b, 0u, j, hp));\n{rh}[me + j] = sig(pre(d, t, b, 1u, j, hp)) * {hs}[hp + j];"
                );
                out.push(sh.finish(WG, &body, grid_for(units as u64)?));
                // Phase B: the candidate from (r ⊙ h)·Rhᵀ, then the state.
                let mut sh = Shader::new(n);
                sh.helper(tanh);
                let hs = pre_fn(&mut sh)?;
                let rh = sh.bind(Bind::Scratch(RH), "f32");
                let zs = sh.bind(Bind::Scratch(ZS), "f32");
                let r = weight(&mut sh, quant_r, 2, "wrow + k")?;
                let mut body = head(&mut sh);
                let _ = writeln!(
                    body,
                    "let hp = rd + me;\nvar a = 0.0; let wrow = (d * {gh}u + 2u * {h}u + j) * {h}u;\n\
                     for (var k = 0u; k < {h}u; k = k + 1u) {{ a = fma({rh}[me + k], {r}, a); }}\n\
                     let nh = ktanh(proj(d, t, b, 2u, j) + a + rb(d, 2u, j));\nlet zg = {zs}[me + j];\n\
                     let hn = (1.0 - zg) * nh + zg * {hs}[hp + j];"
                );
                body.push_str(&finish(&mut sh, false));
                out.push(sh.finish(WG, &body, grid_for(units as u64)?));
            }
        }
    }
    Ok(out)
}
