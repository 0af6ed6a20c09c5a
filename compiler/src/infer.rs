//! Glue between the importer and the IR's shape inference: each node's
//! result types are inferred as the importer adds it (later canonical
//! rewrites need operand ranks), and the whole module is inferred once more
//! at the end, when shape values computed by `Shape`/`Gather`/`Concat`
//! chains can flow into `Reshape` and friends.

use kiln_ir::ops::{infer_node, lookup, refine};
use kiln_ir::{Module, Node};

use crate::onnx::import::placeholder_type;

/// Infer `node`'s result types and store them on its result values. A
/// value still holding the importer's placeholder takes the inferred type;
/// a declared type (ONNX value_info) is refined by it, and contradicting it
/// is an error.
pub fn infer_and_refine(m: &mut Module, node: &Node) -> Result<(), String> {
    if lookup(&node.op).is_none() {
        return Err(format!(
            "unknown op `{}`: Kiln has no definition for it",
            node.op
        ));
    }
    let inferred = infer_node(m, node).map_err(|e| e.to_string())?;
    let placeholder = placeholder_type();
    for (&o, inf) in node.outputs.iter().zip(&inferred) {
        let cur = m.ty(o);
        let new = if *cur == placeholder {
            inf.clone()
        } else {
            refine(cur, inf).ok_or_else(|| {
                format!(
                    "result `{}` is declared {} but its operands make it {}",
                    m.name(o),
                    kiln_ir::print_type(cur),
                    kiln_ir::print_type(inf)
                )
            })?
        };
        m.set_ty(o, new);
    }
    Ok(())
}
