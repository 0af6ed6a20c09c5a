//! The op registry: every op Kiln's IR accepts (the ONNX ops at their newest
//! version in onnx 1.17), with arity, attribute schema, a one-line summary
//! and a shape/type inference rule.
//!
//! The static part of the table is generated ([`schemas.rs`], by
//! `gen_schemas.py`), with the few ops of opsets 23-24 written by hand
//! (`schemas_opset24.rs`); inference rules are hand-written in `rules/`, one
//! module per op family, and linked by op name (`rules/mod.rs`) when the
//! registry (`registry.rs`: [`lookup`], [`all`]) is first used. What a
//! schema says and what a rule sees ([`OpSchema`], [`InferCtx`], ...) is
//! `schema.rs`, below all of them. Module-wide inference
//! ([`infer_module`]) lives in `infer.rs`. The facts passes and backends
//! ask about an op (pointwise, in-place operands, random, weights, ...)
//! are one table in `traits.rs` ([`OpTraits`]); the conv/pool window
//! arithmetic (`auto_pad`, dilations, `ceil_mode`) is `geometry.rs`.
//!
//! This file only declares the modules and re-exports their items.

mod dims;
pub mod geometry;
mod infer;
pub mod kiln;
mod quant_params;
mod registry;
mod rules;
pub(crate) mod schema;
#[rustfmt::skip]
mod schemas;
mod schemas_opset24;
pub mod traits;
mod values;

pub use dims::{broadcast_dims, broadcast_shapes};
pub use infer::{
    infer_module, infer_module_with, infer_node, refine, value_operands, DeclaredTypes,
    ModuleInferError,
};
pub(crate) use infer::{node_ctx, Known};
pub use registry::{all, lookup, traits};
pub use rules::elem_from_onnx;
pub use schema::{AttrSpec, InferCtx, InferError, InferFn, IntValues, OpSchema, ParamOption};
pub use schemas::CATALOG;
pub use traits::{OpTraits, Pointwise, Random, Reduction};

#[cfg(test)]
pub(crate) mod tests;
