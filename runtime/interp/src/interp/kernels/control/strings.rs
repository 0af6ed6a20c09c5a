//! String ops: `StringConcat`, `StringSplit`, `StringNormalizer`,
//! `RegexFullMatch` (with a small backtracking matcher for the RE2 syntax
//! subset models use) and `TfIdfVectorizer` (n-gram counting over ints or
//! strings).

use std::collections::HashMap;

use crate::interp::kernels::ctx::{bail, tensor, Ctx, KResult, KernelFn};
use crate::interp::kernels::shape::{broadcast_indices, broadcast_shape};
use crate::tensor::{Data, Tensor};
use crate::value::Value;

pub fn lookup(op: &str) -> Option<KernelFn> {
    Some(match op {
        "StringConcat" => string_concat,
        "StringSplit" => string_split,
        "StringNormalizer" => string_normalizer,
        "RegexFullMatch" => regex_full_match,
        "TfIdfVectorizer" => tfidf,
        _ => return None,
    })
}

fn strings<'a>(t: &'a Tensor, what: &str) -> KResult<&'a [String]> {
    match &t.data {
        Data::Str(v) => Ok(v),
        _ => bail!("{what} must be a string tensor, got {}", t.elem()),
    }
}

fn string_concat(_: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let (a, b) = (tensor(inputs, 0)?, tensor(inputs, 1)?);
    let (sa, sb) = (strings(a, "X")?, strings(b, "Y")?);
    let shape = broadcast_shape(&a.shape, &b.shape)?;
    let ia = broadcast_indices(&a.shape, &shape);
    let ib = broadcast_indices(&b.shape, &shape);
    let out = ia
        .iter()
        .zip(&ib)
        .map(|(&i, &j)| format!("{}{}", sa[i], sb[j]))
        .collect();
    Ok(vec![Value::tensor(Tensor::new(shape, Data::Str(out))?)])
}

/// Python's `str.split(None, maxsplit)`: runs of whitespace separate,
/// leading whitespace is dropped, the rest after `maxsplit` pieces kept
/// (less its leading whitespace).
fn split_whitespace(s: &str, maxsplit: Option<usize>) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        if maxsplit.is_some_and(|m| out.len() >= m) {
            out.push(rest.to_string());
            break;
        }
        match rest.find(char::is_whitespace) {
            Some(end) => {
                out.push(rest[..end].to_string());
                rest = rest[end..].trim_start();
            }
            None => {
                out.push(rest.to_string());
                break;
            }
        }
    }
    out
}

fn string_split(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let xs = strings(x, "X")?;
    let delim = ctx.attr_str("delimiter").unwrap_or("").to_string();
    let maxsplit = ctx
        .attr("maxsplit")
        .and_then(|a| a.as_int())
        .filter(|&m| m >= 0)
        .map(|m| m as usize);
    let parts: Vec<Vec<String>> = xs
        .iter()
        .map(|s| {
            if delim.is_empty() {
                split_whitespace(s, maxsplit)
            } else {
                let n = maxsplit.map_or(usize::MAX, |m| m.saturating_add(1));
                s.splitn(n, delim.as_str()).map(str::to_string).collect()
            }
        })
        .collect();
    let width = parts.iter().map(Vec::len).max().unwrap_or(0);
    let lens = parts.iter().map(|p| p.len() as i64).collect();
    let mut flat = Vec::with_capacity(parts.len() * width);
    for mut p in parts {
        p.resize(width, String::new());
        flat.extend(p);
    }
    let mut shape = x.shape.clone();
    shape.push(width);
    Ok(vec![
        Value::tensor(Tensor::new(shape, Data::Str(flat))?),
        Value::tensor(Tensor::new(x.shape.clone(), Data::I64(lens))?),
    ])
}

fn string_normalizer(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let xs = strings(x, "X")?;
    let action = ctx
        .attr_str("case_change_action")
        .unwrap_or("NONE")
        .to_string();
    let case = |s: &str| -> KResult<String> {
        Ok(match action.as_str() {
            "LOWER" => s.to_lowercase(),
            "UPPER" => s.to_uppercase(),
            "NONE" => s.to_string(),
            other => bail!("unknown case_change_action `{other}`"),
        })
    };
    let sensitive = ctx.attr_int("is_case_sensitive", 0) != 0;
    let raw_stops: Vec<String> = ctx
        .attr_strings("stopwords")
        .map(<[String]>::to_vec)
        .unwrap_or_default();
    let stops = raw_stops
        .iter()
        .map(|w| case(w))
        .collect::<KResult<Vec<_>>>()?;
    let remove = |s: &str, stops: &[String]| -> String {
        s.split(' ')
            .filter(|w| !stops.iter().any(|x| x == w))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = Vec::with_capacity(xs.len());
    for s in xs {
        let mut s = s.clone();
        if sensitive && !raw_stops.is_empty() {
            s = remove(&s, &raw_stops);
        }
        s = case(&s)?;
        if !sensitive && !stops.is_empty() {
            s = remove(&s, &stops);
        }
        out.push(s);
    }
    let t = match x.rank() {
        1 => {
            let mut v: Vec<String> = out.into_iter().filter(|s| !s.is_empty()).collect();
            if v.is_empty() {
                v.push(String::new());
            }
            Tensor::new(vec![v.len()], Data::Str(v))?
        }
        2 if x.shape[0] == 1 => {
            let mut v: Vec<String> = out.into_iter().filter(|s| !s.is_empty()).collect();
            if v.is_empty() {
                v.push(String::new());
            }
            Tensor::new(vec![1, v.len()], Data::Str(v))?
        }
        2 => Tensor::new(x.shape.clone(), Data::Str(out))?,
        r => bail!("X must be a vector or a matrix, got rank {r}"),
    };
    Ok(vec![Value::tensor(t)])
}

fn regex_full_match(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let xs = strings(x, "X")?;
    let pattern = ctx
        .attr_str("pattern")
        .ok_or("attribute `pattern` is required")?;
    let re = Regex::parse(pattern)?;
    let out = xs.iter().map(|s| re.full_match(s)).collect();
    Ok(vec![Value::tensor(Tensor::new(
        x.shape.clone(),
        Data::Bool(out),
    )?)])
}

// ---------------------------------------------------------------------------
// A backtracking regular-expression matcher: literals, `.`, classes with
// ranges and negation, `\d \D \w \W \s \S` (ASCII, as RE2), `\b \B`, `^ $`,
// groups (capturing or `(?:...)`), alternation, and the quantifiers
// `* + ? {n} {n,} {n,m}` (greedy, or lazy with a trailing `?`).

#[derive(Debug, Clone)]
enum ClassItem {
    Range(char, char),
    Perl(char),
}

#[derive(Debug, Clone)]
enum Re {
    Char(char),
    Any,
    Class(Vec<ClassItem>, bool),
    Start,
    End,
    WordBoundary(bool),
    Alt(Vec<Re>),
    Concat(Vec<Re>),
    Repeat(Box<Re>, usize, Option<usize>, bool),
}

struct Regex(Re);

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn perl_class(k: char, c: char) -> bool {
    match k {
        'd' => c.is_ascii_digit(),
        'D' => !c.is_ascii_digit(),
        'w' => is_word(c),
        'W' => !is_word(c),
        's' => matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'),
        'S' => !matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'),
        _ => false,
    }
}

struct Parser<'p> {
    s: &'p [char],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }
    fn err<T>(&self, what: &str) -> KResult<T> {
        bail!("invalid regex pattern at {}: {what}", self.i)
    }
    fn alt(&mut self) -> KResult<Re> {
        let mut alts = vec![self.concat()?];
        while self.peek() == Some('|') {
            self.i += 1;
            alts.push(self.concat()?);
        }
        Ok(if alts.len() == 1 {
            alts.pop().unwrap_or(Re::Concat(vec![]))
        } else {
            Re::Alt(alts)
        })
    }
    fn concat(&mut self) -> KResult<Re> {
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let atom = self.atom()?;
            items.push(self.quantified(atom)?);
        }
        Ok(Re::Concat(items))
    }
    fn number(&mut self) -> Option<usize> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.s[start..self.i]
            .iter()
            .collect::<String>()
            .parse()
            .ok()
    }
    fn quantified(&mut self, atom: Re) -> KResult<Re> {
        let mut atom = atom;
        loop {
            let (min, max) = match self.peek() {
                Some('*') => (0, None),
                Some('+') => (1, None),
                Some('?') => (0, Some(1)),
                Some('{') => {
                    let save = self.i;
                    self.i += 1;
                    let Some(min) = self.number() else {
                        self.i = save;
                        return Ok(atom);
                    };
                    let max = if self.peek() == Some(',') {
                        self.i += 1;
                        self.number()
                    } else {
                        Some(min)
                    };
                    if self.peek() != Some('}') {
                        return self.err("unterminated repetition");
                    }
                    if max.is_some_and(|m| m < min) {
                        return self.err("bad repetition range");
                    }
                    (min, max)
                }
                _ => return Ok(atom),
            };
            self.i += 1;
            let greedy = if self.peek() == Some('?') {
                self.i += 1;
                false
            } else {
                true
            };
            atom = Re::Repeat(Box::new(atom), min, max, greedy);
        }
    }
    fn escape(&mut self) -> KResult<Result<char, Re>> {
        let Some(c) = self.peek() else {
            return self.err("trailing backslash");
        };
        self.i += 1;
        Ok(match c {
            'd' | 'D' | 'w' | 'W' | 's' | 'S' => Err(Re::Class(vec![ClassItem::Perl(c)], false)),
            'b' => Err(Re::WordBoundary(true)),
            'B' => Err(Re::WordBoundary(false)),
            'n' => Ok('\n'),
            't' => Ok('\t'),
            'r' => Ok('\r'),
            'f' => Ok('\x0c'),
            'v' => Ok('\x0b'),
            'A' => Err(Re::Start),
            'z' => Err(Re::End),
            c if c.is_ascii_alphanumeric() => {
                return self.err(&format!("unsupported escape \\{c}"))
            }
            c => Ok(c),
        })
    }
    fn atom(&mut self) -> KResult<Re> {
        let Some(c) = self.peek() else {
            return self.err("unexpected end");
        };
        self.i += 1;
        Ok(match c {
            '.' => Re::Any,
            '^' => Re::Start,
            '$' => Re::End,
            '(' => {
                if self.s[self.i..].starts_with(&['?', ':']) {
                    self.i += 2;
                } else if self.peek() == Some('?') {
                    return self.err("unsupported group flag");
                }
                let inner = self.alt()?;
                if self.peek() != Some(')') {
                    return self.err("missing `)`");
                }
                self.i += 1;
                inner
            }
            '[' => self.class()?,
            '\\' => match self.escape()? {
                Ok(c) => Re::Char(c),
                Err(re) => re,
            },
            '*' | '+' | '?' => return self.err("nothing to repeat"),
            c => Re::Char(c),
        })
    }
    fn class(&mut self) -> KResult<Re> {
        let negated = self.peek() == Some('^');
        if negated {
            self.i += 1;
        }
        let mut items = Vec::new();
        let mut first = true;
        loop {
            let Some(c) = self.peek() else {
                return self.err("missing `]`");
            };
            self.i += 1;
            if c == ']' && !first {
                break;
            }
            first = false;
            let lo = if c == '\\' {
                match self.escape()? {
                    Ok(c) => c,
                    Err(Re::Class(mut v, _)) => {
                        items.append(&mut v);
                        continue;
                    }
                    Err(_) => return self.err("bad escape in class"),
                }
            } else {
                c
            };
            if self.peek() == Some('-') && self.s.get(self.i + 1).is_some_and(|&n| n != ']') {
                self.i += 1;
                let mut hi = self.s[self.i];
                self.i += 1;
                if hi == '\\' {
                    match self.escape()? {
                        Ok(c) => hi = c,
                        Err(_) => return self.err("bad class range"),
                    }
                }
                if hi < lo {
                    return self.err("bad class range");
                }
                items.push(ClassItem::Range(lo, hi));
            } else {
                items.push(ClassItem::Range(lo, lo));
            }
        }
        Ok(Re::Class(items, negated))
    }
}

impl Regex {
    fn parse(p: &str) -> KResult<Regex> {
        let chars: Vec<char> = p.chars().collect();
        let mut parser = Parser { s: &chars, i: 0 };
        let re = parser.alt()?;
        if parser.i != chars.len() {
            return parser.err("unmatched `)`");
        }
        Ok(Regex(re))
    }

    fn full_match(&self, s: &str) -> bool {
        let chars: Vec<char> = s.chars().collect();
        let n = chars.len();
        m(&self.0, &chars, 0, &mut |j| j == n)
    }
}

fn m(re: &Re, s: &[char], i: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    let one = |f: &dyn Fn(char) -> bool| s.get(i).is_some_and(|&c| f(c));
    match re {
        Re::Char(c) => one(&|x| x == *c) && k(i + 1),
        Re::Any => one(&|x| x != '\n') && k(i + 1),
        Re::Class(items, neg) => {
            let hit = |c: char| {
                items.iter().any(|it| match *it {
                    ClassItem::Range(lo, hi) => lo <= c && c <= hi,
                    ClassItem::Perl(p) => perl_class(p, c),
                }) != *neg
            };
            one(&hit) && k(i + 1)
        }
        Re::Start => i == 0 && k(i),
        Re::End => i == s.len() && k(i),
        Re::WordBoundary(want) => {
            let before = i > 0 && is_word(s[i - 1]);
            let after = s.get(i).is_some_and(|&c| is_word(c));
            (before != after) == *want && k(i)
        }
        Re::Alt(alts) => alts.iter().any(|a| m(a, s, i, k)),
        Re::Concat(items) => seq(items, s, i, k),
        Re::Repeat(inner, min, max, greedy) => rep(inner, *min, *max, *greedy, 0, s, i, k),
    }
}

fn seq(items: &[Re], s: &[char], i: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    match items.split_first() {
        None => k(i),
        Some((first, rest)) => m(first, s, i, &mut |j| seq(rest, s, j, k)),
    }
}

#[allow(clippy::too_many_arguments)]
fn rep(
    re: &Re,
    min: usize,
    max: Option<usize>,
    greedy: bool,
    count: usize,
    s: &[char],
    i: usize,
    k: &mut dyn FnMut(usize) -> bool,
) -> bool {
    let can_more = max.is_none_or(|mx| count < mx);
    // Beyond the minimum an iteration must consume input, so empty
    // matches cannot loop forever.
    let more = |k: &mut dyn FnMut(usize) -> bool| {
        can_more
            && m(re, s, i, &mut |j| {
                (count < min || j > i) && rep(re, min, max, greedy, count + 1, s, j, k)
            })
    };
    #[allow(clippy::if_same_then_else)] // the order of the tries differs
    if greedy {
        more(k) || (count >= min && k(i))
    } else {
        (count >= min && k(i)) || more(k)
    }
}

// ---------------------------------------------------------------------------

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Int(i64),
    Str(String),
}

fn tfidf(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let keys: Vec<Key> = match &x.data {
        Data::Str(v) => v.iter().cloned().map(Key::Str).collect(),
        d if d.elem().is_int() => d.to_i64().into_iter().map(Key::Int).collect(),
        d => bail!("X must hold strings or integers, got {}", d.elem()),
    };
    let min_gram = ctx.attr_int("min_gram_length", 1).max(1) as usize;
    let max_gram = ctx.attr_int("max_gram_length", 1).max(1) as usize;
    let max_skip = ctx.attr_int("max_skip_count", 0).max(0) as usize;
    let mode = ctx.attr_str("mode").unwrap_or("TF").to_string();
    let counts: Vec<usize> = ctx
        .attr_ints("ngram_counts")
        .unwrap_or(&[])
        .iter()
        .map(|&c| c.max(0) as usize)
        .collect();
    let indexes: Vec<i64> = ctx.attr_ints("ngram_indexes").unwrap_or(&[]).to_vec();
    let weights: Vec<f64> = ctx
        .attr_floats("weights")
        .unwrap_or(&[])
        .iter()
        .map(|&w| w as f64)
        .collect();
    let pool: Vec<Key> = match (
        ctx.attr_ints("pool_int64s"),
        ctx.attr_strings("pool_strings"),
    ) {
        (Some(v), _) if !v.is_empty() => v.iter().map(|&i| Key::Int(i)).collect(),
        (_, Some(v)) => v.iter().cloned().map(Key::Str).collect(),
        _ => Vec::new(),
    };
    let out_size = indexes.iter().copied().max().map_or(0, |m| m + 1).max(0) as usize;
    if indexes.iter().any(|&i| i < 0) {
        bail!("ngram_indexes must not be negative");
    }
    // Every pool n-gram (of a size in range) by its 1-based id; their
    // proper prefixes map to 0 so the walk knows to go on.
    let mut grams: HashMap<Vec<Key>, usize> = HashMap::new();
    let mut id = 1;
    for (g, &start) in counts.iter().enumerate() {
        let size = g + 1;
        let end = counts.get(g + 1).copied().unwrap_or(pool.len());
        if start > end || end > pool.len() {
            bail!(
                "ngram_counts {counts:?} do not fit a pool of {}",
                pool.len()
            );
        }
        let n = (end - start) / size;
        for j in 0..n {
            if size >= min_gram && size <= max_gram {
                let gram = &pool[start + j * size..start + (j + 1) * size];
                for p in 1..size {
                    grams.entry(gram[..p].to_vec()).or_insert(0);
                }
                grams.insert(gram.to_vec(), id);
            }
            id += 1;
        }
    }
    let (rows, cols, out_shape) = match x.shape[..] {
        [] => (1, 1, vec![out_size]),
        [c] => (1, c, vec![out_size]),
        [b, c] => (b, c, vec![b, out_size]),
        _ => bail!("X must have rank 1 or 2, got shape {:?}", x.shape),
    };
    let mut freq = vec![0f64; rows * out_size];
    for r in 0..rows {
        let row = &keys[r * cols..(r + 1) * cols];
        let mut start_size = min_gram;
        for skip in 1..=max_skip + 1 {
            for s in 0..cols {
                if s + skip * (start_size - 1) >= cols {
                    break;
                }
                let mut prefix = Vec::with_capacity(max_gram);
                for size in 1..=max_gram {
                    let item = s + (size - 1) * skip;
                    if item >= cols {
                        break;
                    }
                    prefix.push(row[item].clone());
                    match grams.get(&prefix) {
                        None => break,
                        Some(&gid) if gid != 0 && size >= start_size => {
                            let oi = *indexes
                                .get(gid - 1)
                                .ok_or("ngram_indexes is shorter than the pool")?
                                as usize;
                            freq[r * out_size + oi] += 1.0;
                        }
                        _ => {}
                    }
                }
            }
            if start_size == 1 {
                start_size = 2;
                if start_size > max_gram {
                    break;
                }
            }
        }
    }
    let out: Vec<f64> = freq
        .iter()
        .enumerate()
        .map(|(p, &f)| {
            let w = if weights.is_empty() {
                1.0
            } else {
                weights.get(p % out_size).copied().unwrap_or(0.0)
            };
            match mode.as_str() {
                "IDF" => {
                    if f > 0.0 {
                        w
                    } else {
                        0.0
                    }
                }
                "TFIDF" => w * f,
                _ => f,
            }
        })
        .collect();
    Ok(vec![Value::tensor(Tensor::new(
        out_shape,
        Data::from_f64(kiln_ir::ElemType::F32, &out),
    )?)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_subset() {
        let re = Regex::parse(r"www\.[\w.-]+\.\bcom\b").unwrap();
        assert!(re.full_match("www.google.com"));
        assert!(!re.full_match("www.google.com.x"));
        let re = Regex::parse(r"(\W|^)[\w.\-]{0,25}@(yahoo|gmail)\.com(\W|$)").unwrap();
        assert!(re.full_match("account@gmail.com"));
        assert!(!re.full_match("account@hotmail.com"));
        assert!(Regex::parse("a{2,1}").is_err());
        assert!(Regex::parse("(a").is_err());
        assert!(Regex::parse("(a*)*b").unwrap().full_match("aaab"));
        assert!(Regex::parse("a+?b").unwrap().full_match("aab"));
    }

    #[test]
    fn whitespace_split() {
        assert_eq!(split_whitespace("  a b  c ", None), vec!["a", "b", "c"]);
        assert_eq!(split_whitespace("a  b c ", Some(1)), vec!["a", "b c "]);
    }
}
