//! Lowering: from an optimized module to something that runs.
//!
//! - [`specialize`]: bind graph inputs to concrete shapes and infer again,
//!   so every shape in the module is static (XLA compiles per shape too).
//! - [`cpu`]: the CPU backend — each top-level node becomes a native step
//!   (kernel library, Cranelift-compiled fusion) or an interpreter step.
//! - [`gpu`]: the GPU backend — each top-level node becomes generated WGSL
//!   shaders, or a CPU step with transfers.
//! - `common`: what both lowerings read the same way (pads, conv and pool
//!   geometry, one-node regions).

mod common;
pub mod cpu;
pub mod gpu;

use std::collections::HashMap;

use kiln_ir::{Dim, Module, TensorType, Type};
use kiln_runtime::Value;

/// A copy of `m` whose tensor graph inputs named in `shapes` take those
/// shapes, with types inferred again downstream (dims the model left
/// symbolic or unknown become known).
pub fn specialize(m: &Module, shapes: &HashMap<String, Vec<usize>>) -> Result<Module, String> {
    let mut c = m.clone();
    for &i in &m.body.inputs {
        let (Some(shape), Some(tt)) = (shapes.get(m.name(i)), m.ty(i).as_tensor()) else {
            continue;
        };
        if let Some(declared) = &tt.shape {
            if declared.len() != shape.len() {
                return Err(format!(
                    "graph input %{}: declared rank {}, given shape {shape:?}",
                    m.name(i),
                    declared.len()
                ));
            }
        }
        let dims = shape.iter().map(|&d| Dim::Known(d as u64)).collect();
        c.set_ty(i, Type::Tensor(TensorType::new(tt.elem, dims)));
    }
    kiln_ir::ops::infer_module_with(&mut c, kiln_ir::ops::DeclaredTypes::Replace)
        .map_err(|e| e.to_string())?;
    Ok(c)
}

/// Optimize a specialized module at `level`, inferring types again after
/// each round: folding a shape computation (`Expand` to `Where(Equal(
/// ConstantOfShape(Shape(x)), ..))`) makes its consumers' shapes static
/// only once inference sees the folded constant, which can then fold more.
/// The rounds run without fusion, to a fixed point: a fusion region hides
/// its nodes from folding and keeps the types its body had when it was
/// made, so fusing a chain whose shapes are not yet static (a detector's
/// resize, from sizes computed out of the input's shape, feeds the whole
/// backbone) would leave them dynamic for good. Fusion runs once, last.
pub fn optimize_static(m: &mut Module, level: u8, skip: &[&str]) -> Result<(), String> {
    if level == 0 {
        return Ok(());
    }
    let infer = |m: &mut Module| {
        kiln_ir::ops::infer_module_with(m, kiln_ir::ops::DeclaredTypes::Replace)
            .map_err(|e| e.to_string())
    };
    // Each round resolves one more link of shape → value → shape; exports
    // seen so far need at most four.
    for _ in 0..16 {
        let changed = crate::passes::optimize(m, 1, skip).map_err(|e| e.to_string())?;
        if !changed {
            break;
        }
        infer(m)?;
    }
    if level > 1 && crate::passes::optimize(m, level, skip).map_err(|e| e.to_string())? {
        infer(m)?;
    }
    Ok(())
}

/// The shapes of tensor values given by name.
pub fn shapes_of(inputs: &HashMap<String, Value>) -> HashMap<String, Vec<usize>> {
    inputs
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_tensor()?.shape.clone())))
        .collect()
}
