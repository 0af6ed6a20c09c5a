//! [`ParseError`]: a syntax or naming error in `.kir` text, where it is,
//! and its rendering as a diagnostic. Its own module because the lexer and
//! the parser both report it.

use std::ops::Range;

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
