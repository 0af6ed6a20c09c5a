//! Lexer for the `.kir` text format: turns source text into tokens, each
//! with its byte span and 1-based line/column.
//!
//! Tokens are coarse on purpose: `%name`/`@name` (bare or quoted) come out
//! as one token, numbers keep their source text (the parser decides int vs
//! float and does the sign, so `-` is always punctuation), and strings have
//! their escapes decoded into bytes (a `\x{NN}` escape may make them
//! non-UTF-8, which string tensor data needs). `hex"..."` is one token.

use std::ops::Range;

use super::error::ParseError;

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Tok {
    /// `%name` or `%"name"`.
    Value(String),
    /// `@name` or `@"name"`.
    At(String),
    /// `[A-Za-z_][A-Za-z0-9_.]*`: keywords, op names, elem types, symbols.
    Ident(String),
    /// An unsigned number's text: `3`, `1.5`, `1e-5`.
    Num(String),
    /// A quoted string, escapes decoded.
    Str(Vec<u8>),
    /// `hex"..."`, decoded.
    Hex(Vec<u8>),
    Punct(char),
    Eof,
}

#[derive(Clone, Debug)]
pub(super) struct Token {
    pub tok: Tok,
    pub span: Range<usize>,
    pub line: usize,
    pub col: usize,
}

pub(super) struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    line: usize,
    col: usize,
}

const PUNCT: &str = "(){}[]<>,=:*+-?";

pub(super) fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.'
}

impl<'a> Lexer<'a> {
    pub fn new(src: &'a str) -> Lexer<'a> {
        Lexer {
            src,
            pos: 0,
            line: 1,
            col: 1,
        }
    }

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.bump();
        }
        &self.src[start..self.pos]
    }

    /// An error spanning from a saved position to the current one (at least
    /// one character when not at the end).
    fn err(&self, (start, line, col): (usize, usize, usize), msg: String) -> ParseError {
        let mut end = self.pos.max(start);
        if end == start {
            end += self.src[start..].chars().next().map_or(0, char::len_utf8);
        }
        ParseError::new(line, col, start..end, msg)
    }

    fn here(&self) -> (usize, usize, usize) {
        (self.pos, self.line, self.col)
    }

    pub fn next_token(&mut self) -> Result<Token, ParseError> {
        loop {
            match self.peek() {
                Some(' ' | '\t' | '\r' | '\n') => {
                    self.bump();
                }
                Some('#') => {
                    self.take_while(|c| c != '\n');
                }
                _ => break,
            }
        }
        let at = self.here();
        let tok = match self.peek() {
            None => Tok::Eof,
            Some(sigil @ ('%' | '@')) => {
                self.bump();
                let name = if self.peek() == Some('"') {
                    let s = self.string(at)?;
                    String::from_utf8(s)
                        .map_err(|_| self.err(at, "name is not valid UTF-8".into()))?
                } else {
                    let s = self.take_while(is_name_char);
                    if s.is_empty() {
                        return Err(self.err(at, format!("expected a name after `{sigil}`")));
                    }
                    s.to_string()
                };
                if sigil == '%' {
                    Tok::Value(name)
                } else {
                    Tok::At(name)
                }
            }
            Some('"') => Tok::Str(self.string(at)?),
            Some(c) if c.is_ascii_digit() => {
                let start = self.pos;
                while let Some(c) = self.peek() {
                    let after_exp =
                        matches!(self.src[start..self.pos].chars().last(), Some('e' | 'E'));
                    if is_name_char(c) || (after_exp && (c == '+' || c == '-')) {
                        self.bump();
                    } else {
                        break;
                    }
                }
                Tok::Num(self.src[start..self.pos].to_string())
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let id = self.take_while(is_name_char);
                if id == "hex" && self.peek() == Some('"') {
                    Tok::Hex(self.hex(at)?)
                } else {
                    Tok::Ident(id.to_string())
                }
            }
            Some(c) if PUNCT.contains(c) => {
                self.bump();
                Tok::Punct(c)
            }
            Some(c) => return Err(self.err(at, format!("unexpected character {c:?}"))),
        };
        Ok(Token {
            tok,
            span: at.0..self.pos,
            line: at.1,
            col: at.2,
        })
    }

    /// A quoted string starting at the current `"`; `at` is where the token
    /// began (for the unterminated-string error).
    fn string(&mut self, at: (usize, usize, usize)) -> Result<Vec<u8>, ParseError> {
        self.bump();
        let mut out = Vec::new();
        loop {
            let esc = self.here();
            match self.bump() {
                None | Some('\n') => return Err(self.err_unterminated(at)),
                Some('"') => return Ok(out),
                Some('\\') => match self.bump() {
                    Some('\\') => out.push(b'\\'),
                    Some('"') => out.push(b'"'),
                    Some('n') => out.push(b'\n'),
                    Some('t') => out.push(b'\t'),
                    Some('r') => out.push(b'\r'),
                    Some(k @ ('u' | 'x')) => {
                        let v = self.braced_hex(esc, if k == 'u' { 6 } else { 2 })?;
                        if k == 'x' {
                            out.push(v as u8);
                        } else {
                            let c = char::from_u32(v).ok_or_else(|| {
                                self.err(esc, format!("invalid char escape \\u{{{v:x}}}"))
                            })?;
                            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                        }
                    }
                    _ => return Err(self.err(esc, "unknown escape in string".into())),
                },
                Some(c) => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
    }

    fn err_unterminated(&self, at: (usize, usize, usize)) -> ParseError {
        let end = self.src[at.0..]
            .find('\n')
            .map_or(self.src.len(), |i| at.0 + i);
        ParseError::new(at.1, at.2, at.0..end, "unterminated string".into())
    }

    /// `{H..}` of an escape, up to `max` hex digits.
    fn braced_hex(&mut self, esc: (usize, usize, usize), max: usize) -> Result<u32, ParseError> {
        let bad = |l: &Self| l.err(esc, "malformed escape: expected `{` hex digits `}`".into());
        if self.bump() != Some('{') {
            return Err(bad(self));
        }
        let digits = self.take_while(|c| c.is_ascii_hexdigit());
        if digits.is_empty() || digits.len() > max || self.bump() != Some('}') {
            return Err(bad(self));
        }
        u32::from_str_radix(digits, 16).map_err(|_| bad(self))
    }

    /// The body of `hex"..."`, starting at its `"`.
    fn hex(&mut self, at: (usize, usize, usize)) -> Result<Vec<u8>, ParseError> {
        self.bump();
        let mut nibbles = Vec::new();
        loop {
            let here = self.here();
            match self.bump() {
                None | Some('\n') => return Err(self.err_unterminated(at)),
                Some('"') => break,
                Some(c) => match c.to_digit(16) {
                    Some(d) => nibbles.push(d as u8),
                    None => return Err(self.err(here, format!("bad hex digit {c:?}"))),
                },
            }
        }
        if nibbles.len() % 2 != 0 {
            return Err(self.err(at, "odd number of hex digits".into()));
        }
        Ok(nibbles.chunks(2).map(|p| (p[0] << 4) | p[1]).collect())
    }
}
