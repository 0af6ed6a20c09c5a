//! Pass `resolve-pads` (lowering): a window op's `auto_pad` becomes
//! explicit `pads` once its input's spatial sizes are known.
//!
//! Why: `SAME_UPPER`/`SAME_LOWER` pads depend on the input size, so before
//! this pass every consumer (inference, the interpreter, each backend's
//! kernel planning) resolved them again. After specialization the sizes are
//! static: resolved here once, by `kiln_ir::ops::geometry` (the one place
//! that knows ONNX's rule), backends see explicit pads only, and dumps show
//! the pads that run. The output size is unchanged: SAME pads make the
//! explicit-pads formula give exactly `ceil(n / stride)`, with or without
//! `ceil_mode` (the division is exact). `ceil_mode` itself goes: ONNX
//! ignores it under `auto_pad`, and VALID's zero pads with it would round
//! up where VALID rounds down.
//!
//! Rewritten: Conv, kiln.FusedConv, ConvInteger, MaxPool, AveragePool and
//! LpPool whose `auto_pad` is not NOTSET, whose input has a static spatial
//! shape and whose kernel size is known (the weight's static shape for the
//! convs, `kernel_shape` for the pools), in every region (fusion bodies
//! included). `VALID` becomes zero pads.

use kiln_ir::ops::geometry::{self, AutoPad, Window};
use kiln_ir::{Attr, Dim, Module, Region};

/// The window ops this pass rewrites, and the operand holding the weight
/// whose spatial dims are the kernel (`None`: `kernel_shape`).
const WINDOW_OPS: &[(&str, Option<usize>)] = &[
    ("AveragePool", None),
    ("Conv", Some(1)),
    ("ConvInteger", Some(1)),
    ("LpPool", None),
    ("MaxPool", None),
    ("kiln.FusedConv", Some(1)),
];

pub fn run(m: &mut Module) -> Result<bool, String> {
    let mut body = std::mem::take(&mut m.body);
    let changed = resolve_region(m, &mut body);
    m.body = body;
    Ok(changed)
}

fn resolve_region(m: &Module, r: &mut Region) -> bool {
    let mut changed = false;
    for node in &mut r.nodes {
        for sub in node.regions_mut() {
            changed |= resolve_region(m, sub);
        }
        let Some(&(_, weight)) = WINDOW_OPS.iter().find(|(op, _)| *op == node.op) else {
            continue;
        };
        let auto = match AutoPad::parse(node.attrs.get("auto_pad").and_then(Attr::as_str)) {
            Ok(AutoPad::NotSet) | Err(_) => continue,
            Ok(a) => a,
        };
        let Some(input) = node.input(0).and_then(|x| known_dims(m, x)) else {
            continue;
        };
        if input.len() < 3 {
            continue;
        }
        let spatial = &input[2..];
        let r = spatial.len();
        let kernel: Vec<u64> = match weight {
            Some(w) => match node.input(w).and_then(|w| known_dims(m, w)) {
                Some(ws) if ws.len() == r + 2 => ws[2..].to_vec(),
                _ => continue,
            },
            None => match node.attrs.get("kernel_shape").and_then(Attr::as_ints) {
                Some(k) if k.len() == r && k.iter().all(|&x| x > 0) => {
                    k.iter().map(|&x| x as u64).collect()
                }
                _ => continue,
            },
        };
        let per_axis = |name: &str| -> Option<Vec<u64>> {
            match node.attrs.get(name).and_then(Attr::as_ints) {
                None => Some(vec![1; r]),
                Some(v) if v.len() == r && v.iter().all(|&x| x > 0) => {
                    Some(v.iter().map(|&x| x as u64).collect())
                }
                Some(_) => None,
            }
        };
        let (Some(strides), Some(dilations)) = (per_axis("strides"), per_axis("dilations")) else {
            continue;
        };
        let mut pads = vec![0i64; 2 * r];
        for i in 0..r {
            let w = Window::new(kernel[i], strides[i], dilations[i]);
            let [b, e] = geometry::resolve_pads(auto, spatial[i], w, [0, 0]);
            (pads[i], pads[i + r]) = (b, e);
        }
        node.attrs.remove("auto_pad");
        // `ceil_mode` only applies to explicit pads (auto_pad ignores it):
        // kept, it would add a window to VALID's `floor((n - e) / s) + 1`.
        node.attrs.remove("ceil_mode");
        node.attrs.insert("pads".into(), Attr::Ints(pads));
        changed = true;
    }
    changed
}

/// A value's dims, if all are known.
fn known_dims(m: &Module, v: kiln_ir::ValueId) -> Option<Vec<u64>> {
    m.ty(v)
        .as_tensor()?
        .shape
        .as_ref()?
        .iter()
        .map(|d| match d {
            Dim::Known(k) => Some(*k),
            _ => None,
        })
        .collect()
}
