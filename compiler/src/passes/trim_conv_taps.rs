//! Pass `trim-conv-taps`: the kernel taps of a Conv that read only padding,
//! for every output, are dropped.
//!
//! Why: a dilated conv over a map smaller than its reach (DeepLabV3's ASPP:
//! 3x3 at dilations 12, 24 and 36 over a 16x16 map) multiplies zeros for
//! most of its taps; from dilation 16 on, only the centre tap reads the
//! input and the conv is a 1x1 over 8640 channels' worth of zeros. Dropping
//! each spatial axis's leading and trailing taps that never touch the input,
//! and shrinking that axis's pads by as many dilation steps, keeps every
//! output exactly (the dropped products were all `w · 0`) and removes the
//! work on every backend. Taps that some outputs read and others do not
//! stay: their zero products are still correct.
//!
//! Rewritten: Conv with a constant f32 weight, a static input shape and
//! explicit pads (`auto_pad` NOTSET or absent), in every region. A trimmed
//! axis never gets negative pads: a leading tap is dropped only while the
//! pad covers its dilation step (and a trailing one likewise), so the
//! output size, `(in + pads - dilation·(k-1) - 1) / stride + 1`, is
//! unchanged term by term.

use std::sync::Arc;

use kiln_ir::{Attr, ElemType, Module, Node, TensorData, ValueId};

use super::{expand_nodes, Expansion};

pub fn run(m: &mut Module) -> Result<bool, String> {
    let mut body = std::mem::take(&mut m.body);
    let changed = expand_nodes(m, &mut body, &mut |m, n| trim(m, n));
    m.body = body;
    Ok(changed)
}

/// One spatial axis of a conv: its input and output sizes, kernel,
/// stride, dilation and pads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Axis {
    input: u64,
    output: u64,
    kernel: u64,
    stride: u64,
    dilation: u64,
    pad_begin: u64,
    pad_end: u64,
}

impl Axis {
    /// Does tap `t` read an input element (not padding) for some output?
    /// Output `o` reads `o·stride + t·dilation - pad_begin`.
    fn reads_input(&self, t: u64) -> bool {
        let base = (t * self.dilation) as i128 - self.pad_begin as i128;
        let s = self.stride as i128;
        // The first output whose read is not before the input.
        let o0 = if base >= 0 { 0 } else { (-base + s - 1) / s };
        o0 < self.output as i128 && o0 * s + base < self.input as i128
    }

    /// The taps `first..=last` to keep: every tap that reads the input,
    /// and those outside them the pads cannot absorb. `None` when nothing
    /// would be dropped, or no tap reads the input (left as it is).
    fn kept(&self) -> Option<(u64, u64)> {
        let k = self.kernel;
        let first = (0..k).find(|&t| self.reads_input(t))?;
        let last = (0..k).rev().find(|&t| self.reads_input(t))?;
        let first = first.min(self.pad_begin / self.dilation);
        let last = last.max((k - 1).saturating_sub(self.pad_end / self.dilation));
        (first > 0 || last < k - 1).then_some((first, last))
    }
}

/// A Conv's geometry, per spatial axis, where this pass applies.
fn axes(m: &Module, n: &Node) -> Option<Vec<Axis>> {
    if n.op != "Conv"
        || n.attrs
            .get("auto_pad")
            .and_then(Attr::as_str)
            .is_some_and(|a| a != "NOTSET")
    {
        return None;
    }
    let dims = |v: ValueId| -> Option<Vec<u64>> {
        Some(
            m.static_shape(v)
                .ok()?
                .into_iter()
                .map(|d| d as u64)
                .collect(),
        )
    };
    let (x, w, y) = (
        dims(n.input(0)?)?,
        dims(n.input(1)?)?,
        dims(*n.outputs.first()?)?,
    );
    let r = x.len().checked_sub(2)?;
    if r == 0 || w.len() != r + 2 || y.len() != r + 2 {
        return None;
    }
    let ints = |name: &str, default: u64, len: usize| -> Option<Vec<u64>> {
        match n.attrs.get(name).and_then(Attr::as_ints) {
            None => Some(vec![default; len]),
            Some(v) if v.len() == len && v.iter().all(|&a| a >= 0) => {
                Some(v.iter().map(|&a| a as u64).collect())
            }
            Some(_) => None,
        }
    };
    let (strides, dilations, pads) = (
        ints("strides", 1, r)?,
        ints("dilations", 1, r)?,
        ints("pads", 0, 2 * r)?,
    );
    (0..r)
        .map(|d| {
            let a = Axis {
                input: x[d + 2],
                output: y[d + 2],
                kernel: w[d + 2],
                stride: strides[d],
                dilation: dilations[d],
                pad_begin: pads[d],
                pad_end: pads[r + d],
            };
            (a.kernel > 0 && a.stride > 0 && a.dilation > 0).then_some(a)
        })
        .collect()
}

fn trim(m: &mut Module, n: &Node) -> Option<Expansion> {
    let axes = axes(m, n)?;
    let wv = n.input(1)?;
    let data = m.constant(wv)?;
    if data.elem != ElemType::F32 {
        return None;
    }
    let kept: Vec<Option<(u64, u64)>> = axes.iter().map(Axis::kept).collect();
    if kept.iter().all(Option::is_none) {
        return None;
    }
    let range: Vec<(u64, u64)> = axes
        .iter()
        .zip(&kept)
        .map(|(a, k)| k.unwrap_or((0, a.kernel - 1)))
        .collect();
    let values = data.to_f64_vec()?;
    let shape = data.shape.clone();
    let r = axes.len();
    let new_kernel: Vec<u64> = range.iter().map(|&(f, l)| l - f + 1).collect();
    let mut new_shape = shape[..2].to_vec();
    new_shape.extend(&new_kernel);
    // Row-major copy of the kept window of every [M, C/group] kernel.
    let old_vol: u64 = shape[2..].iter().product();
    let new_vol: u64 = new_kernel.iter().product();
    let filters = shape[0] * shape[1];
    let mut out = Vec::with_capacity((filters * new_vol) as usize);
    for f in 0..filters {
        for i in 0..new_vol {
            // Position in the new window, then in the old one.
            let (mut rem, mut at) = (i, 0u64);
            let mut stride_old = old_vol;
            for d in 0..r {
                let inner_new: u64 = new_kernel[d + 1..].iter().product();
                stride_old /= shape[d + 2];
                let t = rem / inner_new;
                rem %= inner_new;
                at += (t + range[d].0) * stride_old;
            }
            out.push(values[(f * old_vol + at) as usize] as f32);
        }
    }
    let weight = TensorData::from_f32(new_shape, &out).ok()?;
    let hint = format!("{}_trimmed", m.name(wv));
    let w = m.add_constant_unique(&hint, Arc::new(weight));
    let mut node = n.clone();
    node.inputs[1] = Some(w);
    let mut pads = vec![0i64; 2 * r];
    for (d, a) in axes.iter().enumerate() {
        let (first, last) = range[d];
        pads[d] = (a.pad_begin - first * a.dilation) as i64;
        pads[r + d] = (a.pad_end - (a.kernel - 1 - last) * a.dilation) as i64;
    }
    node.attrs.insert("pads".into(), Attr::Ints(pads));
    node.attrs.insert(
        "kernel_shape".into(),
        Attr::Ints(new_kernel.iter().map(|&k| k as i64).collect()),
    );
    Some((vec![node], vec![w]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axis(input: u64, kernel: u64, stride: u64, dilation: u64, pads: (u64, u64)) -> Axis {
        let reach = dilation * (kernel - 1) + 1;
        Axis {
            input,
            output: (input + pads.0 + pads.1 - reach) / stride + 1,
            kernel,
            stride,
            dilation,
            pad_begin: pads.0,
            pad_end: pads.1,
        }
    }

    #[test]
    fn taps_that_read_only_padding_go() {
        // ASPP at dilation 24 on 16: only the centre tap reads the input.
        assert_eq!(axis(16, 3, 1, 24, (24, 24)).kept(), Some((1, 1)));
        // Dilation 12 on 16: every tap reads some input; nothing goes.
        assert_eq!(axis(16, 3, 1, 12, (12, 12)).kept(), None);
        // A pad too small to absorb a whole dilation step keeps the tap.
        assert_eq!(axis(16, 3, 1, 24, (20, 28)).kept(), Some((0, 1)));
        // Strided: tap 0 reads row 2·o - 5 for o < 3 (input 2): never.
        assert_eq!(axis(2, 3, 2, 5, (5, 5)).kept(), Some((1, 1)));
        // An ordinary 3x3 keeps all its taps.
        assert_eq!(axis(7, 3, 1, 1, (1, 1)).kept(), None);
        // Output sizes are unchanged by construction.
        for a in [
            axis(16, 3, 1, 24, (24, 24)),
            axis(16, 3, 1, 24, (20, 28)),
            axis(2, 3, 2, 5, (5, 5)),
        ] {
            let (f, l) = a.kept().expect("trimmed");
            let b = Axis {
                kernel: l - f + 1,
                pad_begin: a.pad_begin - f * a.dilation,
                pad_end: a.pad_end - (a.kernel - 1 - l) * a.dilation,
                ..a
            };
            let reach = b.dilation * (b.kernel - 1) + 1;
            assert_eq!(
                (b.input + b.pad_begin + b.pad_end - reach) / b.stride + 1,
                a.output,
                "{a:?}"
            );
        }
    }
}
