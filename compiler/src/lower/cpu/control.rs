//! Control flow for the CPU backend: each region of an `If`, `Loop`,
//! `Scan` or `SequenceMap` becomes a module of its own, compiled by the
//! same pipeline as a model (so a loop body gets fusion, packed weights
//! and its memory plan) and run by a [`ControlStep`].
//!
//! A region may read values of the regions around it. Its module takes
//! those as graph inputs after the region's own inputs (the captures),
//! except constants, which it holds itself: a body's weights are then
//! packed when the body is compiled, as a model's are.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kiln_ir::{Attr, Module, Node, Region, Type, ValueId};
use kiln_runtime::cpu::control::{ControlStep, RegionCompiler, RegionProgram};
use kiln_runtime::Executable;

use super::CpuOptions;

/// Compiles a module for the CPU at the given shapes (the compile entry
/// point, passed down so the lowering need not import it).
pub type CompileFn =
    fn(&Module, &CpuOptions, &HashMap<String, Vec<usize>>) -> Result<Box<dyn Executable>, String>;

/// The step for a node with regions. Regions whose inputs all have static
/// types are compiled now, for those shapes; the others at their first
/// run, for the shapes it brings.
pub fn control(
    m: &Module,
    n: &Node,
    opts: &CpuOptions,
    compile: CompileFn,
) -> Result<ControlStep, String> {
    // Kiln's own ops with a region (`kiln.Fusion`) hold a closed body
    // their kernel generates code for, not control flow.
    if n.op.starts_with("kiln.") || kiln_runtime::interp::kernels::lookup(&n.op).is_none() {
        return Err(format!("no kernel runs the regions of {}", n.op));
    }
    let o = opts.clone();
    let compiler: RegionCompiler = Arc::new(move |m, shapes| compile(m, &o, shapes));
    let mut regions = vec![];
    for (name, r) in n.regions() {
        let (sub, captures) = region_module(m, r, &format!("{}.{name}", m.name))?;
        let shapes: Vec<Option<Vec<usize>>> = sub
            .body
            .inputs
            .iter()
            .map(|&i| sub.static_shape(i).ok())
            .collect();
        let all_static = sub
            .body
            .inputs
            .iter()
            .zip(&shapes)
            .all(|(&i, s)| s.is_some() || !matches!(sub.ty(i), Type::Tensor(_)));
        let program = RegionProgram::new(sub, captures, compiler.clone(), opts.limits);
        if all_static {
            program.precompile(shapes);
        }
        regions.push(program);
    }
    Ok(ControlStep { regions })
}

/// `r` as a module of its own, named `name`, and the values of enclosing
/// regions it reads that are not constants (its trailing graph inputs, in
/// that order). Only the values the region touches are in the module.
pub(super) fn region_module(
    m: &Module,
    r: &Region,
    name: &str,
) -> Result<(Module, Vec<ValueId>), String> {
    let mut defined = HashSet::new();
    let mut used = vec![];
    scan_region(r, &mut defined, &mut used);
    let mut seen = HashSet::new();
    let free: Vec<ValueId> = used
        .into_iter()
        .filter(|v| !defined.contains(v) && seen.insert(*v))
        .collect();
    let (consts, captures): (Vec<ValueId>, Vec<ValueId>) =
        free.into_iter().partition(|&v| m.constant(v).is_some());

    let mut sub = Module::new(name);
    sub.opsets = m.opsets.clone();
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    let mut id = |sub: &mut Module, v: ValueId| -> Result<ValueId, String> {
        if let Some(&n) = map.get(&v) {
            return Ok(n);
        }
        let n = sub
            .add_value(m.name(v), m.ty(v).clone())
            .map_err(|e| e.to_string())?;
        sub.set_constant(n, m.constant(v).cloned());
        map.insert(v, n);
        Ok(n)
    };
    let mut body = remap_region(r, &mut sub, &mut id)?;
    for &c in &captures {
        body.inputs.push(id(&mut sub, c)?);
    }
    for &c in &consts {
        body.constants.push(id(&mut sub, c)?);
    }
    sub.body = body;
    Ok((sub, captures))
}

/// What a region defines (inputs, constants, results, in nested regions
/// too) and every value it reads, in first-use order.
fn scan_region(r: &Region, defined: &mut HashSet<ValueId>, used: &mut Vec<ValueId>) {
    defined.extend(&r.inputs);
    defined.extend(&r.constants);
    for n in &r.nodes {
        used.extend(n.inputs.iter().flatten());
        for (_, sub) in n.regions() {
            scan_region(sub, defined, used);
        }
        defined.extend(&n.outputs);
    }
    used.extend(&r.outputs);
}

type IdMap<'a> = dyn FnMut(&mut Module, ValueId) -> Result<ValueId, String> + 'a;

/// A copy of `r` with every value renamed by `id` (into `sub`).
fn remap_region(r: &Region, sub: &mut Module, id: &mut IdMap) -> Result<Region, String> {
    let mut out = Region::default();
    for &v in &r.inputs {
        out.inputs.push(id(sub, v)?);
    }
    for &v in &r.constants {
        out.constants.push(id(sub, v)?);
    }
    for n in &r.nodes {
        let mut c = n.clone();
        for v in c.inputs.iter_mut().flatten() {
            *v = id(sub, *v)?;
        }
        for v in c.outputs.iter_mut() {
            *v = id(sub, *v)?;
        }
        for a in c.attrs.values_mut() {
            match a {
                Attr::Graph(g) => *g = remap_region(g, sub, id)?,
                Attr::Graphs(gs) => {
                    for g in gs.iter_mut() {
                        *g = remap_region(g, sub, id)?;
                    }
                }
                _ => {}
            }
        }
        out.nodes.push(c);
    }
    for &v in &r.outputs {
        out.outputs.push(id(sub, v)?);
    }
    Ok(out)
}
