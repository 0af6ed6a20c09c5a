//! The textual form of the IR (`.kir`): a deterministic printer and a
//! parser, with print → parse → print giving identical text.
//!
//! In outline (the printer's exact layout is the canonical form):
//!
//! ```text
//! module @NAME opset(DOMAIN = VERSION, ...) {
//!   input %x: f32[N,3]
//!   const %w: i64[2] = dense[1, -1]          # or `elided`, or hex"..."
//!   %y, %i = TopK(%x, %k, none) {axis = 1} : f32[N,5], i64[N,5] loc("topk")
//!   %z = If(%c) {
//!     else_branch = graph {
//!       return %x
//!     },
//!     then_branch = graph {
//!       return %y
//!     }
//!   } : f32[N,5]
//!   return %z
//! }
//! ```
//!
//! - [`error`]: [`ParseError`], what the lexer and the parser report.
//! - [`lexer`]: tokens with spans and line/column.
//! - [`printer`]: [`print_module`], [`print_type`], [`PrintOptions`], and
//!   `Display` for modules.
//! - [`parser`]: [`parse_module`]; checks syntax, names (defined before use,
//!   unique module-wide) and constant data against its type, but not op
//!   semantics (that is the verifier's job).
//!
//! This file only declares them and re-exports their items.

mod error;
mod lexer;
mod parser;
mod printer;
#[cfg(test)]
mod tests;

pub use error::ParseError;
pub use parser::parse_module;
pub use printer::{print_module, print_type, PrintOptions};
