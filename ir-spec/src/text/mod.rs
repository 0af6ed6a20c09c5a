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
//! - [`lexer`]: tokens with spans and line/column.
//! - [`printer`]: [`print_module`], [`print_type`].
//! - [`parser`]: [`parse_module`]; checks syntax, names (defined before use,
//!   unique module-wide) and constant data against its type, but not op
//!   semantics (that is the verifier's job).

mod lexer;
mod parser;
mod printer;
#[cfg(test)]
mod tests;

use std::ops::Range;

pub use parser::parse_module;
pub use printer::{print_module, print_type};

/// Printer settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrintOptions {
    /// Constants with more elements than this print as `elided`; `None`
    /// prints every constant in full.
    pub elide_threshold: Option<u64>,
}

impl Default for PrintOptions {
    fn default() -> Self {
        PrintOptions {
            elide_threshold: Some(16),
        }
    }
}

/// A syntax or naming error in `.kir` text, at a 1-based line and column
/// (in characters) and a byte span of the source.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{col}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub col: usize,
    pub message: String,
    pub span: Range<usize>,
}

impl ParseError {
    pub(crate) fn new(line: usize, col: usize, span: Range<usize>, message: String) -> ParseError {
        ParseError {
            line,
            col,
            message,
            span,
        }
    }

    /// A diagnostic showing the offending line with a caret under the span,
    /// headed by `filename:line:col`. No colors.
    pub fn render(&self, filename: &str, src: &str) -> String {
        use ariadne::{Config, IndexType, Label, Report, ReportKind, Source};
        let clamp = |mut i: usize| {
            i = i.min(src.len());
            while !src.is_char_boundary(i) {
                i -= 1;
            }
            i
        };
        let span = clamp(self.span.start)..clamp(self.span.end.max(self.span.start));
        let mut out = Vec::new();
        let written = Report::build(ReportKind::Error, (filename, span.clone()))
            .with_config(
                Config::default()
                    .with_color(false)
                    .with_index_type(IndexType::Byte),
            )
            .with_message(&self.message)
            .with_label(Label::new((filename, span)).with_message(&self.message))
            .finish()
            .write((filename, Source::from(src)), &mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        let here = format!("{filename}:{}:{}", self.line, self.col);
        match written {
            Ok(()) if text.contains(&here) => text,
            // ariadne counts lines/columns its own way on odd input; keep
            // our position in the output regardless.
            _ => format!("{here}: {}\n{text}", self.message),
        }
    }
}

impl std::fmt::Display for crate::Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&print_module(self, &PrintOptions::default()))
    }
}
