//! The Kiln IR: a typed SSA graph shared by every importer, pass and backend.
//!
//! - [`types`]: element types, symbolic dims, shapes, value types.
//! - [`tensor`]: constant data, stored once behind `Arc`.
//! - [`attr`]: node attributes, including nested regions.
//! - [`module`]: the module, its regions, nodes and value arena.
//! - [`ops`]: the op registry: arity, attribute schemas, shape inference.
//! - [`verify`]: the verifier.
//! - [`text`]: the textual format (printer and parser); see `SPEC.md`.

pub mod attr;
pub mod constant_pool;
pub mod limits;
pub mod module;
pub mod ops;
pub mod tensor;
pub mod text;
pub mod types;
pub mod verify;

pub use attr::{Attr, AttrKind, Attrs};
pub use constant_pool::ConstantPool;
pub use limits::{LimitError, Limits};
pub use module::{Module, Node, Region, ValueData, ValueId};
pub use tensor::{Payload, TensorData};
pub use text::{parse_module, print_module, print_type, ParseError, PrintOptions};
pub use types::{Dim, ElemType, QuantParams, SymExpr, TensorType, Type};
