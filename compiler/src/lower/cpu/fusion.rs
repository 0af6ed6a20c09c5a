//! Planning `kiln.Fusion` steps: the anchor (a MatMul/Gemm/Conv/FusedConv
//! first in the body) on the kernel library and the rest of the body
//! compiled by Cranelift into one loop; a region the loops cannot express
//! whole splits into producers plus an odometer reduction. Single nodes
//! the loops can express compile as one-node regions. (A residual Add and a
//! Relu that ride on a conv's tiles were made part of the conv by the
//! `conv-epilogue` pass: see `epilogue.rs`.)

use kiln_ir::{Attr, Module, Node, Region, ValueId};
use kiln_runtime::cpu::jit::{compile_region_for, TargetCpu};
use kiln_runtime::cpu::steps::dense::{AnchorOnly, Dense, DenseKernel};
use kiln_runtime::cpu::steps::fusion::{Fusion, SplitReduction, Unfused, UnfusedNode, UnfusedSrc};
use kiln_runtime::cpu::NativeStep;

use super::dense::{plan_dense, Weights, DENSE_OPS};
use super::tile_store::fold_product;

/// `kiln.Fusion`: the body compiled by Cranelift; an epilogue's anchor
/// (its first node, a MatMul/Gemm/Conv) planned on the kernel library.
pub(super) fn fusion(
    m: &Module,
    n: &Node,
    target: TargetCpu,
    weights: &mut Weights,
) -> Result<NativeStep, String> {
    let Some(Attr::Graph(body)) = n.attrs.get("body") else {
        return Err("fusion without a body".into());
    };
    let operand_of = |v: ValueId| body.inputs.iter().position(|&b| b == v);
    let outer = |v: ValueId| operand_of(v).and_then(|k| n.inputs.get(k).copied().flatten());
    let first = body.nodes.first().ok_or("empty fusion body")?;
    let is_anchor = DENSE_OPS.contains(&first.op.as_str());
    let (anchor, tail_nodes, mut captured) = if is_anchor {
        // Operands, or constants the fuse pass copied into the body (a
        // quantized product's scalar scale and zero point), which the
        // plan must then hold itself: the step gets only operands.
        let outer_inputs: Vec<Option<ValueId>> = first
            .inputs
            .iter()
            .map(|v| v.and_then(|v| outer(v).or(m.constant(v).map(|_| v))))
            .collect();
        if first
            .inputs
            .iter()
            .flatten()
            .any(|&v| operand_of(v).is_none() && m.constant(v).is_none())
        {
            return Err("anchor reads a value of its body".into());
        }
        let p = plan_dense(m, first, &outer_inputs, weights)?;
        let copied =
            first.inputs.iter().enumerate().any(|(i, v)| {
                v.is_some_and(|v| operand_of(v).is_none()) && !p.captured.contains(&i)
            });
        if copied {
            return Err("anchor reads a constant of its body its kernel does not hold".into());
        }
        let map: Vec<Option<usize>> = first
            .inputs
            .iter()
            .map(|v| v.and_then(operand_of))
            .collect();
        let captured: Vec<usize> = p
            .captured
            .iter()
            .filter_map(|&i| map.get(i).copied().flatten())
            .collect();
        (Some((p, map)), &body.nodes[1..], captured)
    } else {
        (None, &body.nodes[..], vec![])
    };
    let mut anchor_value = if is_anchor {
        first.outputs.first().copied()
    } else {
        None
    };
    // A packed MatMul's or Gemm's column bias and activation go into its tile
    // store (see `tile_store.rs`); the rest stays the generated loop's.
    let mut anchor = anchor;
    let mut tail_nodes = tail_nodes;
    if let (Some(v), Some((p, _))) = (anchor_value, anchor.as_mut()) {
        let out_shape = p.plan.out_shape().to_vec();
        let store = match &mut p.plan {
            Dense::MatMul(plan) => plan.folded_store(),
            Dense::Gemm(plan) => plan.folded_store(),
            _ => None,
        };
        if let Some(store) = store {
            let f = fold_product(m, body, store, &out_shape, tail_nodes, v, &outer, weights);
            if let Some(f) = f {
                anchor_value = Some(f.value);
                tail_nodes = f.rest;
                p.what.push_str(&f.what);
                captured.extend(f.bias_operand);
            }
        }
    }
    // A BatchNormalization's statistics are read as the outer constants
    // themselves: the generated loop folds them into a per-channel scale
    // and shift at compile time.
    let tail_nodes: Vec<Node> = tail_nodes
        .iter()
        .map(|x| {
            let mut x = x.clone();
            if x.op == "BatchNormalization" {
                for v in x.inputs.iter_mut().skip(1).flatten() {
                    if let Some(c) = outer(*v).filter(|&c| m.constant(c).is_some()) {
                        *v = c;
                    }
                }
            }
            x
        })
        .collect();
    // The generated loop's region: the anchor's result (if any), then the
    // body inputs the remaining nodes read.
    let mut used: Vec<ValueId> = tail_nodes
        .iter()
        .flat_map(|x| x.inputs.iter().flatten().copied())
        .collect();
    used.extend(&body.outputs);
    let mut inputs = vec![];
    let mut shapes = vec![];
    let mut jit_operands = vec![];
    if tail_nodes.is_empty() {
        if let Some((p, map)) = anchor {
            // The anchor alone (the epilogue pass unwraps such fusions;
            // this keeps any other producer of one correct).
            let flops = p.plan.flops();
            let k = AnchorOnly {
                anchor: DenseKernel { plan: p.plan },
                map,
            };
            return Ok(NativeStep {
                kernel: Box::new(k),
                what: p.what,
                flops,
                captured,
            });
        }
    }
    if let (Some(v), Some((p, _))) = (anchor_value, &anchor) {
        inputs.push(v);
        shapes.push(p.plan.out_shape().to_vec());
    }
    for (k, &b) in body.inputs.iter().enumerate() {
        if used.contains(&b) {
            inputs.push(b);
            let v = n
                .inputs
                .get(k)
                .copied()
                .flatten()
                .ok_or("omitted fusion operand")?;
            shapes.push(m.static_shape(v)?);
            jit_operands.push(k);
        }
    }
    captured.retain(|k| !jit_operands.contains(k));
    if tail_nodes.is_empty() {
        return Err("fusion of a lone matmul/conv".into());
    }
    let region = Region {
        inputs,
        constants: body.constants.clone(),
        nodes: tail_nodes,
        outputs: body.outputs.clone(),
    };
    let jit = match compile_region_for(m, &region, &shapes, target) {
        Ok(j) => j,
        Err(why) if anchor.is_none() => {
            return split_reduction(m, n, &region, &shapes, &jit_operands, target).map_err(|_| why)
        }
        Err(why) => return Err(why),
    };
    let in_place = match (anchor_value, &anchor) {
        (Some(v), Some((p, _))) => {
            jit.output_shapes().len() == 1
                && jit.output_shapes()[0].as_slice() == p.plan.out_shape()
                && !body.outputs.contains(&v)
        }
        _ => false,
    };
    let (what, flops) = match &anchor {
        Some((p, _)) => (format!("{} + {}", p.what, jit.describe()), p.plan.flops()),
        None => (jit.describe().to_string(), 0.0),
    };
    let k = Fusion {
        anchor: anchor.map(|(p, map)| (p.plan, map)),
        jit,
        jit_operands,
        in_place,
    };
    Ok(NativeStep {
        kernel: Box::new(k),
        what,
        flops,
        captured,
    })
}

/// A reduction fusion whose reduction the generated loops cannot express
/// (a sum over a middle axis: mean pooling over a sequence): the
/// elementwise producers still run as one generated loop, and the
/// reduction on the odometer kernel, instead of the whole region on the
/// interpreter.
fn split_reduction(
    m: &Module,
    n: &Node,
    region: &Region,
    shapes: &[Vec<usize>],
    jit_operands: &[usize],
    target: TargetCpu,
) -> Result<NativeStep, String> {
    let (last, producers) = region.nodes.split_last().ok_or("empty body")?;
    let x = last.input(0).ok_or("reduction without operand")?;
    if producers.is_empty()
        || !last.op.starts_with("Reduce")
        || region.outputs != last.outputs
        || region.inputs.contains(&x)
    {
        return Err("not a producers + reduction region".into());
    }
    let prefix = Region {
        inputs: region.inputs.clone(),
        constants: region.constants.clone(),
        nodes: producers.to_vec(),
        outputs: vec![x],
    };
    let jit = compile_region_for(m, &prefix, shapes, target)?;
    let out = m.static_shape(*n.outputs.first().ok_or("no result")?)?;
    let reduce = super::movement::reduce_of_shape(m, last, jit.output_shapes()[0].clone(), out)?;
    let what = format!("{} then {}", jit.describe(), reduce.what);
    let producers = Fusion {
        anchor: None,
        jit,
        jit_operands: jit_operands.to_vec(),
        in_place: false,
    };
    let k = SplitReduction {
        producers,
        reduce: reduce.kernel,
    };
    Ok(NativeStep::new(Box::new(k), what, 0.0))
}

/// Any other node the generated loops can express (a lone Softmax, Relu,
/// ...): compiled as a one-node region.
pub(super) fn single_node_loop(
    m: &Module,
    n: &Node,
    target: TargetCpu,
) -> Result<NativeStep, String> {
    let crate::lower::common::OneNode {
        region,
        shapes,
        operands,
    } = crate::lower::common::one_node_region(m, n)?;
    let jit = compile_region_for(m, &region, &shapes, target)?;
    let what = jit.describe().to_string();
    let k = Fusion {
        anchor: None,
        jit,
        jit_operands: operands,
        in_place: false,
    };
    Ok(NativeStep::new(Box::new(k), what, 0.0))
}

/// A fusion region neither code generator takes (values that are not
/// f32, an op without a generated form) as its nodes' own native kernels
/// run in order ([`Unfused`]): native as long as every node of the body
/// lowers on its own.
pub(super) fn unfused(
    m: &Module,
    n: &Node,
    target: TargetCpu,
    weights: &mut Weights,
) -> Result<NativeStep, String> {
    use std::collections::HashMap;
    let Some(Attr::Graph(body)) = n.attrs.get("body") else {
        return Err("fusion without a body".into());
    };
    let mut values: Vec<(kiln_ir::ElemType, Vec<usize>)> = vec![];
    let mut consts = vec![];
    let mut src: HashMap<ValueId, UnfusedSrc> = HashMap::new();
    for (k, &v) in body.inputs.iter().enumerate() {
        src.insert(v, UnfusedSrc::Operand(k));
    }
    let mut nodes = vec![];
    let mut whats = vec![];
    for bn in &body.nodes {
        let step = super::lower_node(m, bn, target, weights)
            .map_err(|e| format!("{} in the body: {e}", bn.op))?;
        let mut operands = vec![];
        for (k, v) in bn.inputs.iter().enumerate() {
            let s = match v {
                None => UnfusedSrc::None,
                Some(_) if step.captured.contains(&k) => UnfusedSrc::None,
                Some(v) => match (src.get(v), m.constant(*v)) {
                    (Some(s), _) => *s,
                    (None, Some(d)) => {
                        let t = kiln_runtime::tensor::Tensor::from_data(d)
                            .map_err(|e| e.to_string())?;
                        consts.push(t);
                        let s = UnfusedSrc::Const(consts.len() - 1);
                        src.insert(*v, s);
                        s
                    }
                    (None, None) => return Err("a body operand from outside the body".into()),
                },
            };
            operands.push(s);
        }
        let mut results = vec![];
        for &o in &bn.outputs {
            let elem = m
                .ty(o)
                .as_tensor()
                .ok_or("a body value is not a tensor")?
                .elem;
            if !kiln_runtime::cpu::view::is_viewable(elem) {
                return Err(format!("a body value of {elem}"));
            }
            values.push((elem, m.static_shape(o)?));
            src.insert(o, UnfusedSrc::Value(values.len() - 1));
            results.push(values.len() - 1);
        }
        whats.push(step.what.clone());
        nodes.push(UnfusedNode {
            kernel: step.kernel,
            operands,
            results,
        });
    }
    let outputs = body
        .outputs
        .iter()
        .map(|o| src.get(o).copied().ok_or("a body result made outside it"))
        .collect::<Result<Vec<_>, _>>()?;
    let k = Unfused {
        nodes,
        values,
        consts,
        outputs,
    };
    Ok(NativeStep::new(
        Box::new(k),
        format!("unfused: {}", whats.join(", ")),
        0.0,
    ))
}
