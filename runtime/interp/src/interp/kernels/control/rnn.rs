//! Recurrent layers: `RNN`, `GRU` and `LSTM`, one shared driver (layouts,
//! directions, sequence lengths, initial states, clipping) around a
//! per-kind cell. Computed in f64, rounded to the input's element type.

use super::common::from_f64;
use crate::interp::kernels::ctx::{bail, opt_tensor, tensor, Ctx, KResult, KernelFn};
use crate::value::Value;

pub fn lookup(op: &str) -> Option<KernelFn> {
    Some(match op {
        "RNN" => rnn,
        "GRU" => gru,
        "LSTM" => lstm,
        _ => return None,
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Rnn,
    Gru,
    Lstm,
}

impl Kind {
    fn gates(self) -> usize {
        match self {
            Kind::Rnn => 1,
            Kind::Gru => 3,
            Kind::Lstm => 4,
        }
    }
    fn default_acts(self) -> &'static [&'static str] {
        match self {
            Kind::Rnn => &["Tanh"],
            Kind::Gru => &["Sigmoid", "Tanh"],
            Kind::Lstm => &["Sigmoid", "Tanh", "Tanh"],
        }
    }
}

#[derive(Clone, Copy)]
struct Act {
    kind: ActKind,
    alpha: f64,
    beta: f64,
}

#[derive(Clone, Copy)]
enum ActKind {
    Relu,
    Tanh,
    Sigmoid,
    Affine,
    LeakyRelu,
    ThresholdedRelu,
    ScaledTanh,
    HardSigmoid,
    Elu,
    Softsign,
    Softplus,
}

impl Act {
    fn apply(&self, x: f64) -> f64 {
        let (a, b) = (self.alpha, self.beta);
        match self.kind {
            ActKind::Relu => x.max(0.0),
            ActKind::Tanh => x.tanh(),
            ActKind::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            ActKind::Affine => a * x + b,
            ActKind::LeakyRelu => {
                if x < 0.0 {
                    a * x
                } else {
                    x
                }
            }
            ActKind::ThresholdedRelu => {
                if x > a {
                    x
                } else {
                    0.0
                }
            }
            ActKind::ScaledTanh => a * (b * x).tanh(),
            ActKind::HardSigmoid => (a * x + b).clamp(0.0, 1.0),
            ActKind::Elu => {
                if x < 0.0 {
                    a * (x.exp() - 1.0)
                } else {
                    x
                }
            }
            ActKind::Softsign => x / (1.0 + x.abs()),
            ActKind::Softplus => (1.0 + x.exp()).ln(),
        }
    }
}

/// Parse the activation list; functions that take alpha/beta consume the
/// next entries of `activation_alpha`/`activation_beta` (as onnxruntime).
fn activations(ctx: &Ctx, kind: Kind, dirs: usize) -> KResult<Vec<Act>> {
    let per = kind.default_acts().len();
    let names: Vec<String> = match ctx.attr_strings("activations") {
        Some(v) => v.to_vec(),
        None => (0..dirs)
            .flat_map(|_| kind.default_acts().iter().map(|s| s.to_string()))
            .collect(),
    };
    if names.len() != per * dirs {
        bail!("expected {} activations, got {}", per * dirs, names.len());
    }
    let alphas = ctx.attr_floats("activation_alpha").unwrap_or(&[]).to_vec();
    let betas = ctx.attr_floats("activation_beta").unwrap_or(&[]).to_vec();
    let (mut ai, mut bi) = (0, 0);
    let mut out = Vec::with_capacity(names.len());
    for n in &names {
        let (k, da, db, ua, ub) = match n.to_ascii_lowercase().as_str() {
            "relu" => (ActKind::Relu, 0.0, 0.0, false, false),
            "tanh" => (ActKind::Tanh, 0.0, 0.0, false, false),
            "sigmoid" => (ActKind::Sigmoid, 0.0, 0.0, false, false),
            "affine" => (ActKind::Affine, 1.0, 0.0, true, true),
            "leakyrelu" => (ActKind::LeakyRelu, 0.01, 0.0, true, false),
            "thresholdedrelu" => (ActKind::ThresholdedRelu, 1.0, 0.0, true, false),
            "scaledtanh" => (ActKind::ScaledTanh, 1.0, 1.0, true, true),
            "hardsigmoid" => (ActKind::HardSigmoid, 0.2, 0.5, true, true),
            "elu" => (ActKind::Elu, 1.0, 0.0, true, false),
            "softsign" => (ActKind::Softsign, 0.0, 0.0, false, false),
            "softplus" => (ActKind::Softplus, 0.0, 0.0, false, false),
            _ => bail!("unknown activation `{n}`"),
        };
        let mut alpha = da;
        let mut beta = db;
        if ua {
            if let Some(&a) = alphas.get(ai) {
                alpha = a as f64;
                ai += 1;
            }
        }
        if ub {
            if let Some(&b) = betas.get(bi) {
                beta = b as f64;
                bi += 1;
            }
        }
        out.push(Act {
            kind: k,
            alpha,
            beta,
        });
    }
    Ok(out)
}

fn rnn(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    run(ctx, inputs, Kind::Rnn)
}
fn gru(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    run(ctx, inputs, Kind::Gru)
}
fn lstm(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    run(ctx, inputs, Kind::Lstm)
}

fn run(ctx: &mut Ctx, inputs: &[Option<Value>], kind: Kind) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let w = tensor(inputs, 1)?;
    let r = tensor(inputs, 2)?;
    let layout = ctx.attr_int("layout", 0);
    let [a0, a1, isz] = x.shape[..] else {
        bail!("X must have rank 3, got shape {:?}", x.shape)
    };
    let (seq, batch) = if layout == 0 { (a0, a1) } else { (a1, a0) };
    let dirs = match ctx.attr_str("direction").unwrap_or("forward") {
        "forward" | "reverse" => 1,
        "bidirectional" => 2,
        d => bail!("unknown direction `{d}`"),
    };
    let reverse_only = ctx.attr_str("direction") == Some("reverse");
    let g = kind.gates();
    let [wd, wg, wi] = w.shape[..] else {
        bail!("W must have rank 3, got shape {:?}", w.shape)
    };
    if wd != dirs || wi != isz || wg % g != 0 {
        bail!(
            "W shape {:?} does not fit {dirs} direction(s), {g} gates and input size {isz}",
            w.shape
        );
    }
    let h = wg / g;
    if let Some(hs) = ctx.attr("hidden_size").and_then(|a| a.as_int()) {
        if hs as usize != h {
            bail!("hidden_size {hs} disagrees with W's {h}");
        }
    }
    if r.shape != [dirs, g * h, h] {
        bail!("R has shape {:?}, expected {:?}", r.shape, [dirs, g * h, h]);
    }
    let xv = x.to_f64();
    let wv = w.to_f64();
    let rv = r.to_f64();
    let bv = match opt_tensor(inputs, 3)? {
        Some(b) if b.shape == [dirs, 2 * g * h] => b.to_f64(),
        Some(b) => bail!(
            "B has shape {:?}, expected {:?}",
            b.shape,
            [dirs, 2 * g * h]
        ),
        None => vec![0.0; dirs * 2 * g * h],
    };
    let lens: Vec<usize> = match opt_tensor(inputs, 4)? {
        Some(l) => {
            let v = l.to_i64();
            if v.len() != batch || v.iter().any(|&s| s < 0 || s as usize > seq) {
                bail!("sequence_lens {v:?} must give {batch} lengths within 0..={seq}");
            }
            v.into_iter().map(|s| s as usize).collect()
        }
        None => vec![seq; batch],
    };
    // A state operand [dirs, batch, h] (layout 1: [batch, dirs, h]) as
    // [dir][batch][h].
    let state = |i: usize, what: &str| -> KResult<Vec<f64>> {
        let Some(t) = opt_tensor(inputs, i)? else {
            return Ok(vec![0.0; dirs * batch * h]);
        };
        let want = if layout == 0 {
            [dirs, batch, h]
        } else {
            [batch, dirs, h]
        };
        if t.shape != want {
            bail!("{what} has shape {:?}, expected {want:?}", t.shape);
        }
        let v = t.to_f64();
        if layout == 0 {
            return Ok(v);
        }
        let mut out = vec![0.0; v.len()];
        for d in 0..dirs {
            for b in 0..batch {
                let (src, dst) = ((b * dirs + d) * h, (d * batch + b) * h);
                out[dst..dst + h].copy_from_slice(&v[src..src + h]);
            }
        }
        Ok(out)
    };
    let mut hs = state(5, "initial_h")?;
    let mut cs = if kind == Kind::Lstm {
        state(6, "initial_c")?
    } else {
        Vec::new()
    };
    let peep = match (kind, opt_tensor(inputs, 7)?) {
        (Kind::Lstm, Some(p)) if p.shape == [dirs, 3 * h] => p.to_f64(),
        (Kind::Lstm, Some(p)) => bail!("P has shape {:?}, expected {:?}", p.shape, [dirs, 3 * h]),
        _ => vec![0.0; dirs * 3 * h],
    };
    let acts = activations(ctx, kind, dirs)?;
    let clip = ctx
        .attr("clip")
        .and_then(|a| a.as_float())
        .map(|c| c as f64);
    let lbr = ctx.attr_int("linear_before_reset", 0) != 0;
    let couple = ctx.attr_int("input_forget", 0) != 0;
    let per = kind.default_acts().len();

    // Y as [seq][dir][batch][h].
    let mut y = vec![0.0; seq * dirs * batch * h];
    let mut xw = vec![0.0; g * h];
    let mut hr = vec![0.0; g * h];
    let cl = |v: f64| match clip {
        Some(c) => v.clamp(-c, c),
        None => v,
    };
    for d in 0..dirs {
        let reverse = d == 1 || reverse_only;
        let wd = &wv[d * g * h * isz..(d + 1) * g * h * isz];
        let rd = &rv[d * g * h * h..(d + 1) * g * h * h];
        let (wb, rb) = (
            &bv[d * 2 * g * h..d * 2 * g * h + g * h],
            &bv[d * 2 * g * h + g * h..(d + 1) * 2 * g * h],
        );
        let pd = &peep[d * 3 * h..(d + 1) * 3 * h];
        let a = &acts[d * per..(d + 1) * per];
        for (b, &len) in lens.iter().enumerate() {
            for step in 0..len {
                let t = if reverse { len - 1 - step } else { step };
                let xo = if layout == 0 {
                    (t * batch + b) * isz
                } else {
                    (b * seq + t) * isz
                };
                let xt = &xv[xo..xo + isz];
                let hb = (d * batch + b) * h;
                let hprev: Vec<f64> = hs[hb..hb + h].to_vec();
                for j in 0..g * h {
                    xw[j] = wb[j]
                        + wd[j * isz..(j + 1) * isz]
                            .iter()
                            .zip(xt)
                            .map(|(p, q)| p * q)
                            .sum::<f64>();
                    hr[j] = rb[j]
                        + rd[j * h..(j + 1) * h]
                            .iter()
                            .zip(&hprev)
                            .map(|(p, q)| p * q)
                            .sum::<f64>();
                }
                match kind {
                    Kind::Rnn => {
                        for j in 0..h {
                            hs[hb + j] = a[0].apply(cl(xw[j] + hr[j]));
                        }
                    }
                    Kind::Gru => {
                        let z: Vec<f64> = (0..h).map(|j| a[0].apply(cl(xw[j] + hr[j]))).collect();
                        let rg: Vec<f64> = (0..h)
                            .map(|j| a[0].apply(cl(xw[h + j] + hr[h + j])))
                            .collect();
                        let reset: Vec<f64> = rg.iter().zip(&hprev).map(|(p, q)| p * q).collect();
                        for j in 0..h {
                            let pre = if lbr {
                                xw[2 * h + j] + rg[j] * hr[2 * h + j]
                            } else {
                                // (r ⊙ H) R_h^T + Rb_h
                                let row = &rd[(2 * h + j) * h..(2 * h + j + 1) * h];
                                xw[2 * h + j]
                                    + row.iter().zip(&reset).map(|(p, q)| p * q).sum::<f64>()
                                    + rb[2 * h + j]
                            };
                            let hh = a[1].apply(cl(pre));
                            hs[hb + j] = (1.0 - z[j]) * hh + z[j] * hprev[j];
                        }
                    }
                    Kind::Lstm => {
                        for j in 0..h {
                            let cprev = cs[hb + j];
                            let i = a[0].apply(cl(xw[j] + hr[j] + pd[j] * cprev));
                            let f = if couple {
                                1.0 - i
                            } else {
                                a[0].apply(cl(xw[2 * h + j]
                                    + hr[2 * h + j]
                                    + pd[2 * h + j] * cprev))
                            };
                            let c = a[1].apply(cl(xw[3 * h + j] + hr[3 * h + j]));
                            let cn = f * cprev + i * c;
                            let o = a[0].apply(cl(xw[h + j] + hr[h + j] + pd[h + j] * cn));
                            cs[hb + j] = cn;
                            hs[hb + j] = o * a[2].apply(cn);
                        }
                    }
                }
                let yo = ((t * dirs + d) * batch + b) * h;
                y[yo..yo + h].copy_from_slice(&hs[hb..hb + h]);
            }
        }
    }
    let elem = x.elem();
    let (y_shape, y_data) = if layout == 0 {
        (vec![seq, dirs, batch, h], y)
    } else {
        let mut out = vec![0.0; y.len()];
        for t in 0..seq {
            for d in 0..dirs {
                for b in 0..batch {
                    let (src, dst) = (
                        ((t * dirs + d) * batch + b) * h,
                        ((b * seq + t) * dirs + d) * h,
                    );
                    out[dst..dst + h].copy_from_slice(&y[src..src + h]);
                }
            }
        }
        (vec![batch, seq, dirs, h], out)
    };
    let state_out = |v: &[f64]| -> KResult<Value> {
        if layout == 0 {
            return Ok(Value::tensor(from_f64(elem, vec![dirs, batch, h], v)?));
        }
        let mut out = vec![0.0; v.len()];
        for d in 0..dirs {
            for b in 0..batch {
                let (src, dst) = ((d * batch + b) * h, (b * dirs + d) * h);
                out[dst..dst + h].copy_from_slice(&v[src..src + h]);
            }
        }
        Ok(Value::tensor(from_f64(elem, vec![batch, dirs, h], &out)?))
    };
    let mut results = vec![
        Value::tensor(from_f64(elem, y_shape, &y_data)?),
        state_out(&hs)?,
    ];
    if kind == Kind::Lstm {
        results.push(state_out(&cs)?);
    }
    Ok(results)
}
