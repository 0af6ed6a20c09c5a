//! Window geometry of Conv, ConvTranspose and the pools: ONNX's rule for
//! `auto_pad` (NOTSET, VALID, SAME_UPPER, SAME_LOWER), dilations and
//! `ceil_mode`, per spatial axis, in one place. Shape inference
//! (`rules/nn.rs`), the interpreter's kernels and the CPU lowering all resolve
//! pads and output sizes here, so they cannot disagree.
//!
//! Forward windows (Conv, pools), for input size `n`, stride `s` and
//! extent `e = (kernel - 1) * dilation + 1`:
//! - NOTSET: pads as given; `out = floor((n + pb + pe - e) / s) + 1`, or with
//!   `ceil_mode` the ceiling, less one when that last window would start
//!   in the end padding (`(out - 1) * s >= n + pb`: it would see no input);
//! - VALID: no pads; `out = floor((n - e) / s) + 1` (`ceil_mode` ignored);
//! - SAME_UPPER / SAME_LOWER: `out = ceil(n / s)` (`ceil_mode` ignored);
//!   the total padding `max(0, (out - 1) * s + e - n)` is split in half,
//!   the odd one at the end (UPPER) or at the beginning (LOWER).
//!
//! A window larger than the padded input has no output size (`None`).
//!
//! Slice ([`slice_range`]): negative bounds count from the end; forward
//! steps clamp both to `[0, n]`, backward ones to `[-1, n - 1]`; the count
//! is computed in u64, so steps and bounds at i64's ends cannot overflow.
//!
//! ConvTranspose ([`Transposed`]) follows ONNX's reference: explicit
//! `pads` win; without them, SAME gives `out = n * s` (or `output_shape`)
//! and splits the total padding `s * (n - 1) + output_padding + e - out`
//! as above.

use super::dims::{add_const, div_ceil, mul_const};
use crate::types::Dim;

/// The `auto_pad` attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoPad {
    NotSet,
    Valid,
    SameUpper,
    SameLower,
}

impl AutoPad {
    /// The attribute's value; absent or empty means NOTSET.
    pub fn parse(s: Option<&str>) -> Result<AutoPad, String> {
        Ok(match s.unwrap_or("NOTSET") {
            "NOTSET" | "" => AutoPad::NotSet,
            "VALID" => AutoPad::Valid,
            "SAME_UPPER" => AutoPad::SameUpper,
            "SAME_LOWER" => AutoPad::SameLower,
            other => return Err(format!("unknown auto_pad `{other}`")),
        })
    }

    pub fn is_same(self) -> bool {
        matches!(self, AutoPad::SameUpper | AutoPad::SameLower)
    }

    /// A total padding split into [begin, end]: the odd one at the end
    /// for SAME_UPPER, at the beginning otherwise.
    fn split(self, total: i64) -> [i64; 2] {
        let half = total.div_euclid(2);
        match self {
            AutoPad::SameUpper => [half, total - half],
            _ => [total - half, half],
        }
    }
}

/// One spatial axis of a sliding window. Kernel, stride and dilation are
/// positive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub kernel: u64,
    pub stride: u64,
    pub dilation: u64,
}

impl Window {
    pub fn new(kernel: u64, stride: u64, dilation: u64) -> Window {
        Window {
            kernel,
            stride,
            dilation,
        }
    }

    /// The input span one window covers, `(kernel - 1) * dilation + 1`
    /// (saturating).
    pub fn extent(&self) -> u64 {
        self.kernel
            .saturating_sub(1)
            .saturating_mul(self.dilation)
            .saturating_add(1)
    }
}

fn to_i64(x: u64) -> i64 {
    i64::try_from(x).unwrap_or(i64::MAX)
}

/// The explicit pads [begin, end] of one axis of a forward window (Conv,
/// pools) over an input of size `input`; `pads` are the `pads`
/// attribute's values for this axis (used by NOTSET only).
pub fn resolve_pads(auto_pad: AutoPad, input: u64, w: Window, pads: [i64; 2]) -> [i64; 2] {
    match auto_pad {
        AutoPad::NotSet => pads,
        AutoPad::Valid => [0, 0],
        AutoPad::SameUpper | AutoPad::SameLower => {
            let out = to_i64(input.div_ceil(w.stride.max(1)));
            let total = (out - 1)
                .saturating_mul(to_i64(w.stride))
                .saturating_add(to_i64(w.extent()))
                .saturating_sub(to_i64(input))
                .max(0);
            auto_pad.split(total)
        }
    }
}

/// The output size of one axis of a forward window (Conv, pools); `None`
/// when the window does not fit in the (padded) input.
pub fn output_size(
    auto_pad: AutoPad,
    input: u64,
    w: Window,
    pads: [i64; 2],
    ceil_mode: bool,
) -> Option<u64> {
    let s = w.stride.max(1);
    let ext = w.extent();
    match auto_pad {
        AutoPad::SameUpper | AutoPad::SameLower => Some(input.div_ceil(s)),
        AutoPad::Valid => input.checked_sub(ext).map(|span| span / s + 1),
        AutoPad::NotSet => {
            let (n, s) = (i128::from(input), i128::from(s));
            let padded = n + i128::from(pads[0]) + i128::from(pads[1]);
            let span = padded - i128::from(ext);
            if span < 0 {
                return None;
            }
            let mut out = if ceil_mode {
                (span + s - 1) / s + 1
            } else {
                span / s + 1
            };
            if ceil_mode && (out - 1) * s >= n + i128::from(pads[0]) {
                out -= 1;
            }
            u64::try_from(out).ok()
        }
    }
}

/// [`output_size`] for a dim that may be symbolic: exact where the
/// arithmetic is (known sizes, exact divisions), `Unknown` otherwise.
/// `Err` when a known input is smaller than the window.
pub fn output_dim(
    auto_pad: AutoPad,
    input: &Dim,
    w: Window,
    pads: [i64; 2],
    ceil_mode: bool,
) -> Result<Dim, String> {
    if let Dim::Known(n) = input {
        return output_size(auto_pad, *n, w, pads, ceil_mode)
            .map(Dim::Known)
            .ok_or_else(|| format!("window of size {} larger than the padded input", w.extent()));
    }
    let s = w.stride.max(1);
    let ext = to_i64(w.extent());
    Ok(match auto_pad {
        AutoPad::SameUpper | AutoPad::SameLower => div_ceil(input, s),
        AutoPad::Valid => add_const(&add_const(input, -ext).div_floor(s), 1),
        AutoPad::NotSet => {
            let span = add_const(input, pads[0].saturating_add(pads[1]).saturating_sub(ext));
            // Symbolic division is exact or unknown, so ceil == floor here;
            // then the last window starts at `n + pb + pe - e`, in the end
            // padding exactly when `pe >= e`.
            let q = span.div_floor(s);
            if ceil_mode && pads[1] >= ext {
                q
            } else {
                add_const(&q, 1)
            }
        }
    })
}

/// One spatial axis of a ConvTranspose: its attributes for that axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transposed {
    pub auto_pad: AutoPad,
    pub window: Window,
    /// The `pads` attribute's [begin, end]; `None` when it is absent.
    pub pads: Option<[i64; 2]>,
    pub output_padding: u64,
    /// The `output_shape` attribute's value for this axis (it wins).
    pub output_shape: Option<u64>,
}

impl Transposed {
    /// The output size before any padding is removed:
    /// `stride * (input - 1) + output_padding + extent`.
    fn full(&self, input: u64) -> i64 {
        to_i64(self.window.stride)
            .saturating_mul(to_i64(input) - 1)
            .saturating_add(to_i64(self.output_padding))
            .saturating_add(to_i64(self.window.extent()))
    }

    /// The output size over an input of size `input`.
    pub fn output_size(&self, input: u64) -> u64 {
        if let Some(o) = self.output_shape {
            return o;
        }
        let out = match self.pads {
            Some([pb, pe]) => self.full(input).saturating_sub(pb).saturating_sub(pe),
            None if self.auto_pad.is_same() => return input.saturating_mul(self.window.stride),
            None => self.full(input),
        };
        u64::try_from(out).unwrap_or(0)
    }

    /// The pads [begin, end]: the output positions cut from each end of
    /// the full result.
    pub fn resolve_pads(&self, input: u64) -> [i64; 2] {
        match self.pads {
            Some(p) => p,
            None if self.auto_pad.is_same() => {
                let cut = self
                    .full(input)
                    .saturating_sub(to_i64(self.output_size(input)));
                self.auto_pad.split(cut)
            }
            None => [0, 0],
        }
    }

    /// [`Transposed::output_size`] for a dim that may be symbolic.
    pub fn output_dim(&self, input: &Dim) -> Dim {
        if let Some(o) = self.output_shape {
            return Dim::Known(o);
        }
        if let Dim::Known(n) = input {
            return Dim::Known(self.output_size(*n));
        }
        let cut = match self.pads {
            Some([pb, pe]) => pb.saturating_add(pe),
            None if self.auto_pad.is_same() => return mul_const(input, self.window.stride),
            None => 0,
        };
        add_const(
            &mul_const(&add_const(input, -1), self.window.stride),
            to_i64(self.output_padding)
                .saturating_add(to_i64(self.window.extent()))
                .saturating_sub(cut),
        )
    }
}

/// The first index and the element count of ONNX `Slice` along an axis of
/// size `n` (`step` non-zero).
pub fn slice_range(start: i64, end: i64, step: i64, n: u64) -> (i64, u64) {
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    let norm = |v: i64| if v < 0 { v.saturating_add(n) } else { v };
    let (b, e) = if step > 0 {
        (norm(start).clamp(0, n), norm(end).clamp(0, n))
    } else {
        (norm(start).clamp(-1, n - 1), norm(end).clamp(-1, n - 1))
    };
    // |e - b| fits in u64: both lie in [-1, n].
    let span = if step > 0 { e - b } else { b - e };
    let len = if span > 0 {
        (span as u64 - 1) / step.unsigned_abs() + 1
    } else {
        0
    };
    (b, len)
}

/// The element offset of a sub-box of a row-major tensor of `shape` when
/// the box is one contiguous run of it, else `None`: the box takes
/// `len[d]` elements from `first[d]` in steps of `step[d]` along each
/// axis d. Contiguous when, past some axis k, every axis is whole (from 0,
/// step 1), axis k is taken in step 1 (or one element), and every axis
/// before k holds one element. A `Slice` or `Split` result of this form
/// can be a view of its operand's bytes; an empty box is not.
pub fn contiguous_block(shape: &[u64], first: &[u64], len: &[u64], step: &[i64]) -> Option<u64> {
    let r = shape.len();
    if first.len() != r || len.len() != r || step.len() != r || len.contains(&0) {
        return None;
    }
    let whole = |d: usize| first[d] == 0 && len[d] == shape[d] && (len[d] <= 1 || step[d] == 1);
    // Axes k.. are the partial axis and the whole ones after it.
    let k = (0..r).rev().find(|&d| !whole(d)).unwrap_or(0);
    let fits = |d: usize| first[d].checked_add(len[d]).is_some_and(|e| e <= shape[d]);
    if !(0..r).all(fits) || (len[k] > 1 && step[k] != 1) || len[..k].iter().any(|&l| l != 1) {
        return None;
    }
    let mut offset = 0u64;
    let mut stride = 1u64;
    for d in (0..r).rev() {
        offset = offset.checked_add(first[d].checked_mul(stride)?)?;
        stride = stride.checked_mul(shape[d])?;
    }
    Some(offset)
}

/// Where element `i` of a `Pad` result along an axis of input size `n`
/// reads (`i` already shifted by the axis's begin pad): `Some(index)` into
/// the input, or `None` for the fill value. `mode` is the attribute's
/// string; `Err` for an unknown mode. Outside the input, `edge` repeats the
/// border, `wrap` continues periodically and `reflect` mirrors without
/// repeating the border, as often as it takes (numpy's `pad`); an empty
/// axis has nothing to read (callers reject padding it but in constant
/// mode).
pub fn pad_source(mode: &str, i: i64, n: i64) -> Result<Option<i64>, String> {
    if (0..n).contains(&i) {
        return Ok(Some(i));
    }
    Ok(match mode {
        "constant" => None,
        _ if n <= 0 => None,
        "edge" => Some(i.clamp(0, n - 1)),
        "wrap" => Some(i.rem_euclid(n)),
        "reflect" if n == 1 => Some(0),
        "reflect" => {
            let p = 2 * (n - 1);
            let m = i.rem_euclid(p);
            Some(if m < n { m } else { p - m })
        }
        other => return Err(format!("Pad: unknown mode `{other}`")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_blocks() {
        let s = [1, 6, 4, 5];
        // Channels 2..5 of a batch-1 tensor: one run from 2·20.
        assert_eq!(
            contiguous_block(&s, &[0, 2, 0, 0], &[1, 3, 4, 5], &[1; 4]),
            Some(40)
        );
        // Rows 1..3 of channel 4: the last partial axis is H.
        assert_eq!(
            contiguous_block(&s, &[0, 4, 1, 0], &[1, 1, 2, 5], &[1; 4]),
            Some(85)
        );
        // Two channels with a partial W: not one run.
        assert_eq!(
            contiguous_block(&s, &[0, 0, 0, 1], &[1, 2, 4, 4], &[1; 4]),
            None
        );
        // A step of 2 over channels, or a reversed axis: not one run.
        assert_eq!(
            contiguous_block(&s, &[0, 0, 0, 0], &[1, 3, 4, 5], &[1, 2, 1, 1]),
            None
        );
        assert_eq!(
            contiguous_block(&s, &[0, 5, 0, 0], &[1, 6, 4, 5], &[1, -1, 1, 1]),
            None
        );
        // One element along a stepped axis is fine; the whole tensor is.
        assert_eq!(
            contiguous_block(&s, &[0, 3, 0, 0], &[1, 1, 4, 5], &[1, -1, 1, 1]),
            Some(60)
        );
        assert_eq!(contiguous_block(&s, &[0; 4], &s, &[1; 4]), Some(0));
        // Batch 2 channel slices are two runs; empty boxes are not views.
        assert_eq!(
            contiguous_block(&[2, 6, 4], &[0, 2, 0], &[2, 3, 4], &[1; 3]),
            None
        );
        assert_eq!(contiguous_block(&s, &[0; 4], &[1, 0, 4, 5], &[1; 4]), None);
        // Out of range.
        assert_eq!(
            contiguous_block(&s, &[0, 5, 0, 0], &[1, 2, 4, 5], &[1; 4]),
            None
        );
    }

    const NOTSET: AutoPad = AutoPad::NotSet;

    fn w(kernel: u64, stride: u64, dilation: u64) -> Window {
        Window::new(kernel, stride, dilation)
    }

    #[test]
    fn auto_pad_parses_onnx_values() {
        assert_eq!(AutoPad::parse(None), Ok(AutoPad::NotSet));
        assert_eq!(AutoPad::parse(Some("")), Ok(AutoPad::NotSet));
        assert_eq!(AutoPad::parse(Some("SAME_LOWER")), Ok(AutoPad::SameLower));
        assert!(AutoPad::parse(Some("same")).is_err());
    }

    #[test]
    fn same_pads_put_the_odd_one_at_the_end_for_upper() {
        // n=5, k=3, s=2: out 3, total (3-1)*2+3-5 = 2.
        assert_eq!(
            resolve_pads(AutoPad::SameUpper, 5, w(3, 2, 1), [0, 0]),
            [1, 1]
        );
        // n=4, k=3, s=2: out 2, total 1.
        assert_eq!(
            resolve_pads(AutoPad::SameUpper, 4, w(3, 2, 1), [9, 9]),
            [0, 1]
        );
        assert_eq!(
            resolve_pads(AutoPad::SameLower, 4, w(3, 2, 1), [9, 9]),
            [1, 0]
        );
        // Dilation 2 makes the extent 5: total (2-1)*2+5-4 = 3.
        assert_eq!(
            resolve_pads(AutoPad::SameLower, 4, w(3, 2, 2), [0, 0]),
            [2, 1]
        );
        // A kernel smaller than the stride needs no padding (never negative).
        assert_eq!(
            resolve_pads(AutoPad::SameUpper, 5, w(1, 3, 1), [0, 0]),
            [0, 0]
        );
        assert_eq!(
            output_size(AutoPad::SameUpper, 5, w(1, 3, 1), [0, 0], true),
            Some(2)
        );
        assert_eq!(resolve_pads(AutoPad::Valid, 5, w(3, 1, 1), [2, 2]), [0, 0]);
        assert_eq!(resolve_pads(NOTSET, 5, w(3, 1, 1), [2, 1]), [2, 1]);
    }

    #[test]
    fn output_sizes_follow_onnx() {
        assert_eq!(output_size(NOTSET, 5, w(3, 1, 1), [1, 1], false), Some(5));
        assert_eq!(output_size(NOTSET, 7, w(3, 2, 1), [1, 1], false), Some(4));
        assert_eq!(output_size(NOTSET, 6, w(3, 2, 1), [0, 0], false), Some(2));
        assert_eq!(output_size(NOTSET, 6, w(3, 2, 1), [0, 0], true), Some(3));
        // maxpool_2d_ceil_output_size_reduce_by_one: n=2, k=1, s=2, ceil:
        // ceil(1/2)+1 = 2, but the second window would start at 2 >= 2.
        assert_eq!(output_size(NOTSET, 2, w(1, 2, 1), [0, 0], true), Some(1));
        assert_eq!(output_size(NOTSET, 4, w(1, 2, 1), [0, 1], true), Some(2));
        // Dilations widen the window.
        assert_eq!(output_size(NOTSET, 7, w(3, 1, 2), [0, 0], false), Some(3));
        assert_eq!(output_size(NOTSET, 2, w(3, 1, 1), [0, 0], false), None);
        assert_eq!(
            output_size(AutoPad::Valid, 6, w(3, 2, 1), [5, 5], true),
            Some(2)
        );
        assert_eq!(
            output_size(AutoPad::Valid, 2, w(3, 1, 1), [0, 0], false),
            None
        );
        assert_eq!(
            output_size(AutoPad::SameLower, 7, w(3, 2, 1), [0, 0], false),
            Some(4)
        );
    }

    #[test]
    fn symbolic_dims_agree_with_known_ones() {
        let cases = [
            (NOTSET, w(3, 1, 1), [1, 1], false),
            (NOTSET, w(3, 2, 1), [1, 1], false),
            (NOTSET, w(2, 2, 1), [0, 0], true),
            (NOTSET, w(1, 2, 1), [0, 1], true),
            (AutoPad::Valid, w(3, 1, 2), [0, 0], false),
            (AutoPad::SameUpper, w(3, 2, 1), [0, 0], true),
        ];
        for (ap, win, pads, ceil) in cases {
            // 2*N: divisions by 2 are exact, by 1 trivially.
            let sym = Dim::sym("N").mul(&Dim::Known(2));
            let d = output_dim(ap, &sym, win, pads, ceil).unwrap();
            for n in [3u64, 4, 8] {
                let got = d
                    .to_expr()
                    .and_then(|e| e.eval(&|_| Some(n as i64)))
                    .map(|v| v as u64);
                if got.is_some() {
                    assert_eq!(
                        got,
                        output_size(ap, 2 * n, win, pads, ceil),
                        "{ap:?} {win:?} {pads:?} ceil={ceil} n={}",
                        2 * n
                    );
                }
            }
        }
    }

    #[test]
    fn conv_transpose_geometry_follows_the_reference() {
        let t = |auto_pad, window, pads, output_padding, output_shape| Transposed {
            auto_pad,
            window,
            pads,
            output_padding,
            output_shape,
        };
        // convtranspose_autopad_same: n=3, k=3, s=2, SAME_UPPER: out 6,
        // total 2*2+3-6 = 1, the odd one at the end.
        let same = t(AutoPad::SameUpper, w(3, 2, 1), None, 0, None);
        assert_eq!(same.output_size(3), 6);
        assert_eq!(same.resolve_pads(3), [0, 1]);
        let lower = Transposed {
            auto_pad: AutoPad::SameLower,
            ..same
        };
        assert_eq!(lower.resolve_pads(3), [1, 0]);
        // Explicit pads win over SAME, as in the reference.
        let explicit = Transposed {
            pads: Some([1, 1]),
            ..same
        };
        assert_eq!(explicit.resolve_pads(3), [1, 1]);
        assert_eq!(explicit.output_size(3), 5);
        // NOTSET: s*(n-1) + output_padding + e - pads.
        assert_eq!(
            t(NOTSET, w(3, 3, 1), Some([1, 2]), 1, None).output_size(3),
            7
        );
        assert_eq!(t(NOTSET, w(3, 1, 2), None, 0, None).output_size(3), 7);
        // output_shape wins; SAME then splits what it cuts.
        assert_eq!(t(NOTSET, w(3, 3, 1), None, 0, Some(10)).output_size(3), 10);
        let shaped = t(AutoPad::SameUpper, w(3, 3, 1), None, 0, Some(8));
        assert_eq!(shaped.resolve_pads(3), [0, 1]);
        let n = Dim::sym("N");
        assert_eq!(same.output_dim(&n), mul_const(&n, 2));
        let padded = t(NOTSET, w(3, 3, 1), Some([1, 2]), 1, None);
        assert_eq!(padded.output_dim(&Dim::Known(3)), Dim::Known(7));
        // 3*(N-1) + 1 + 3 - 3 at N = 3 is 7.
        let sym = padded.output_dim(&n).to_expr().unwrap();
        assert_eq!(sym.eval(&|_| Some(3)), Some(7));
    }

    #[test]
    fn slice_range_clamps_and_never_overflows() {
        assert_eq!(slice_range(1, 4, 1, 5), (1, 3));
        assert_eq!(slice_range(-1, i64::MIN, -1, 5), (4, 5));
        assert_eq!(slice_range(i64::MAX, i64::MIN, -2, 5), (4, 3));
        // Steps at i64's ends take one element (or none).
        assert_eq!(slice_range(1, i64::MIN, i64::MIN, 3), (1, 1));
        assert_eq!(slice_range(0, i64::MAX, i64::MAX, 3), (0, 1));
        assert_eq!(slice_range(2, 2, 1, 3).1, 0);
        assert_eq!(slice_range(0, 9, 1, 0), (0, 0));
    }
}
