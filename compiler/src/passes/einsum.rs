//! Pass `einsum`: an `Einsum` of float operands with static shapes becomes
//! the ops it is made of: `ReduceSum` over letters only one operand has
//! and nothing later needs, then, operand pair by operand pair, a
//! `Transpose` of each to `[batch, free, contracted]` /
//! `[batch, contracted, free]` order, a `Reshape` to three dims, a
//! batched `MatMul`, and a `Reshape` back; a last `Transpose` puts the
//! letters in the output's order. (onnxruntime's Einsum kernel works the
//! same way.)
//!
//! Why: attention written with `torch.einsum` (window attention, relative
//! position terms, some LLM exports) reaches ONNX as Einsum, which no
//! backend lowered: it ran on the interpreter. As matmuls and movement it
//! runs on the dense kernels, and the simplifier and fusion see it.
//!
//! Applies where every operand has a static shape, each letter one size
//! throughout (no broadcasting of size-1 dims under `...`), and no letter
//! repeats within one operand (a diagonal); other Einsums stay as they
//! are. Implicit outputs (no `->`) follow ONNX: the letters that occur
//! once, in alphabetical order, after the ellipsis dims.

use std::collections::HashMap;
use std::sync::Arc;

use kiln_ir::{Attr, Module, Node, TensorData, TensorType, Type, ValueId};

pub fn run(m: &mut Module) -> Result<bool, String> {
    let mut body = std::mem::take(&mut m.body);
    let changed = super::expand_nodes(m, &mut body, &mut |m, n| {
        if n.op == "Einsum" {
            expand(m, n)
        } else {
            None
        }
    });
    m.body = body;
    Ok(changed)
}

/// An equation with `...` spelled out: each operand's letters (one per
/// dim) and the output's.
pub(crate) struct Equation {
    pub operands: Vec<Vec<char>>,
    pub output: Vec<char>,
}

/// Parse `eq` for operands of `ranks`; `None` where this pass does not
/// apply (a repeated letter in one term, ranks that do not fit).
pub(crate) fn parse(eq: &str, ranks: &[usize]) -> Option<Equation> {
    let eq: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != ranks.len() {
        return None;
    }
    // Letters for the ellipsis dims: ones the equation does not use.
    let used: Vec<char> = eq.chars().filter(char::is_ascii_alphabetic).collect();
    let spare: Vec<char> = ('A'..='Z')
        .chain('a'..='z')
        .filter(|c| !used.contains(c))
        .collect();
    let mut ell_rank = 0;
    let mut operands = Vec::with_capacity(terms.len());
    let expand_term = |t: &str, rank: Option<usize>, ell_rank: &mut usize| -> Option<Vec<char>> {
        let letters: Vec<char> = t.replace("...", "").chars().collect();
        if !letters.iter().all(char::is_ascii_alphabetic) {
            return None;
        }
        if !t.contains("...") {
            return (rank.is_none_or(|r| r == letters.len())).then_some(letters);
        }
        let e = match rank {
            Some(r) => r.checked_sub(letters.len())?,
            None => *ell_rank,
        };
        *ell_rank = (*ell_rank).max(e);
        // Ellipsis dims align to the right, as numpy broadcasts them.
        let ell: Vec<char> = spare.get(spare.len().checked_sub(e)?..)?.to_vec();
        let at = t.find("...")?;
        let before = t[..at].chars().count();
        let mut v = letters[..before].to_vec();
        v.extend(ell);
        v.extend_from_slice(&letters[before..]);
        Some(v)
    };
    for (t, &r) in terms.iter().zip(ranks) {
        let v = expand_term(t, Some(r), &mut ell_rank)?;
        let mut seen = v.clone();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != v.len() {
            return None;
        }
        operands.push(v);
    }
    let output = match rhs {
        Some(r) => expand_term(r, None, &mut ell_rank)?,
        None => {
            let ell: Vec<char> = spare[spare.len() - ell_rank..].to_vec();
            let mut once: Vec<char> = used
                .iter()
                .copied()
                .filter(|c| used.iter().filter(|d| *d == c).count() == 1)
                .collect();
            once.sort_unstable();
            ell.into_iter().chain(once).collect()
        }
    };
    let all: Vec<char> = operands.iter().flatten().copied().collect();
    if !output.iter().all(|c| all.contains(c)) {
        return None;
    }
    Some(Equation { operands, output })
}

/// How the letters of a product of `a` and `b` divide, in `a`'s order
/// (`b`'s for its free ones): shared and kept (`batch`), shared and
/// summed by the product, and free in one operand (letters neither the
/// other operand nor `keep` has are summed before, so free ones are kept).
pub(crate) struct Letters {
    pub batch: Vec<char>,
    pub summed: Vec<char>,
    pub a_free: Vec<char>,
    pub b_free: Vec<char>,
}

impl Letters {
    pub(crate) fn of(a: &[char], b: &[char], keep: &[char]) -> Letters {
        let pick = |from: &[char], f: &dyn Fn(char) -> bool| {
            from.iter().copied().filter(|&c| f(c)).collect()
        };
        Letters {
            batch: pick(a, &|c| b.contains(&c) && keep.contains(&c)),
            summed: pick(a, &|c| b.contains(&c) && !keep.contains(&c)),
            a_free: pick(a, &|c| !b.contains(&c) && keep.contains(&c)),
            b_free: pick(b, &|c| !a.contains(&c) && keep.contains(&c)),
        }
    }
}

/// Builds the replacement nodes.
struct Builder<'a> {
    m: &'a mut Module,
    elem: kiln_ir::ElemType,
    hint: String,
    nodes: Vec<Node>,
    consts: Vec<ValueId>,
    size: HashMap<char, u64>,
}

/// A value and the letter of each of its dims.
#[derive(Clone)]
struct Term {
    v: ValueId,
    letters: Vec<char>,
}

impl Builder<'_> {
    fn value(&mut self, dims: &[u64]) -> ValueId {
        let ty = Type::Tensor(TensorType::known(self.elem, dims));
        let hint = format!("{}_einsum", self.hint);
        self.m.add_value_unique(&hint, ty)
    }

    fn ints(&mut self, v: &[i64]) -> Option<ValueId> {
        let data = TensorData::from_i64(vec![v.len() as u64], v).ok()?;
        let hint = format!("{}_einsum_shape", self.hint);
        let id = self.m.add_constant_unique(&hint, Arc::new(data));
        self.consts.push(id);
        Some(id)
    }

    fn dims(&self, letters: &[char]) -> Vec<u64> {
        letters.iter().map(|c| self.size[c]).collect()
    }

    /// `t` with its dims in the order of `letters` (a permutation).
    fn transpose(&mut self, t: Term, letters: &[char]) -> Term {
        if t.letters == letters {
            return t;
        }
        let perm: Vec<i64> = letters
            .iter()
            .map(|c| t.letters.iter().position(|d| d == c).unwrap_or(0) as i64)
            .collect();
        let out = self.value(&self.dims(letters));
        let mut n = Node::new("Transpose", vec![Some(t.v)], vec![out]);
        n.attrs.insert("perm".into(), Attr::Ints(perm));
        self.nodes.push(n);
        Term {
            v: out,
            letters: letters.to_vec(),
        }
    }

    /// `v` (of `from` dims) reshaped to `to`, into `out` if given.
    fn reshape(
        &mut self,
        v: ValueId,
        from: &[u64],
        to: &[u64],
        out: Option<ValueId>,
    ) -> Option<ValueId> {
        if from == to && out.is_none() {
            return Some(v);
        }
        let shape = self.ints(&to.iter().map(|&d| d as i64).collect::<Vec<_>>())?;
        let out = out.unwrap_or_else(|| self.value(to));
        self.nodes
            .push(Node::new("Reshape", vec![Some(v), Some(shape)], vec![out]));
        Some(out)
    }

    /// `t` summed over the letters not in `keep`.
    fn reduce(&mut self, t: Term, keep: &[char]) -> Option<Term> {
        let axes: Vec<i64> = (0..t.letters.len())
            .filter(|&i| !keep.contains(&t.letters[i]))
            .map(|i| i as i64)
            .collect();
        if axes.is_empty() {
            return Some(t);
        }
        let letters: Vec<char> = t
            .letters
            .iter()
            .copied()
            .filter(|c| keep.contains(c))
            .collect();
        let axes = self.ints(&axes)?;
        let out = self.value(&self.dims(&letters));
        let mut n = Node::new("ReduceSum", vec![Some(t.v), Some(axes)], vec![out]);
        n.attrs.insert("keepdims".into(), Attr::Int(0));
        self.nodes.push(n);
        Some(Term { v: out, letters })
    }

    /// The product of `a` and `b` summed over their shared letters not in
    /// `keep`: a batched MatMul.
    fn contract(&mut self, a: Term, b: Term, keep: &[char]) -> Option<Term> {
        let Letters {
            batch,
            summed,
            a_free,
            b_free,
        } = Letters::of(&a.letters, &b.letters, keep);
        let prod = |s: &Self, l: &[char]| s.dims(l).iter().product::<u64>();
        let (nb, nk) = (prod(self, &batch), prod(self, &summed));
        let (na, nn) = (prod(self, &a_free), prod(self, &b_free));
        let a_order: Vec<char> = [&batch[..], &a_free, &summed].concat();
        let b_order: Vec<char> = [&batch[..], &summed, &b_free].concat();
        let a = self.transpose(a, &a_order);
        let b = self.transpose(b, &b_order);
        // Without batch letters a plain 2-D product: a constant operand
        // is then a weight matrix the dense kernels pack once.
        let lead: &[u64] = if batch.is_empty() { &[] } else { &[nb] };
        let three = |x: u64, y: u64| [lead, &[x, y]].concat();
        let av = self.reshape(a.v, &self.dims(&a_order), &three(na, nk), None)?;
        let bv = self.reshape(b.v, &self.dims(&b_order), &three(nk, nn), None)?;
        let out = self.value(&three(na, nn));
        self.nodes
            .push(Node::new("MatMul", vec![Some(av), Some(bv)], vec![out]));
        let letters: Vec<char> = [&batch[..], &a_free, &b_free].concat();
        let v = self.reshape(out, &three(na, nn), &self.dims(&letters), None)?;
        Some(Term { v, letters })
    }
}

/// The nodes and constants that compute Einsum node `n`, if this pass
/// applies to it.
fn expand(m: &mut Module, n: &Node) -> Option<(Vec<Node>, Vec<ValueId>)> {
    let eq = n.attr("equation").and_then(Attr::as_str)?.to_string();
    let inputs: Vec<ValueId> = n.inputs.iter().copied().collect::<Option<_>>()?;
    let out = *n.outputs.first()?;
    let elem = m.ty(out).as_tensor()?.elem;
    if !elem.is_float() || inputs.is_empty() {
        return None;
    }
    let mut shapes = Vec::with_capacity(inputs.len());
    for &v in &inputs {
        if m.ty(v).as_tensor()?.elem != elem {
            return None;
        }
        shapes.push(m.static_shape(v).ok()?);
    }
    let ranks: Vec<usize> = shapes.iter().map(Vec::len).collect();
    let e = parse(&eq, &ranks)?;
    let mut size = HashMap::new();
    for (letters, shape) in e.operands.iter().zip(&shapes) {
        for (&c, &d) in letters.iter().zip(shape) {
            if *size.entry(c).or_insert(d as u64) != d as u64 {
                return None;
            }
        }
    }
    let out_shape = m.static_shape(out).ok()?;
    let want: Vec<u64> = e.output.iter().map(|c| size[c]).collect();
    if out_shape.iter().map(|&d| d as u64).collect::<Vec<_>>() != want {
        return None;
    }
    let mut b = Builder {
        hint: m.name(out).to_string(),
        m,
        elem,
        nodes: vec![],
        consts: vec![],
        size,
    };
    let terms: Vec<Term> = inputs
        .iter()
        .zip(&e.operands)
        .map(|(&v, l)| Term {
            v,
            letters: l.clone(),
        })
        .collect();
    // Letters needed after operand i: the output's and later operands'.
    let needed_after = |terms: &[Term], i: usize| -> Vec<char> {
        let mut k = e.output.clone();
        for t in &terms[i + 1..] {
            k.extend(&t.letters);
        }
        k
    };
    let first = terms[0].clone();
    let keep = needed_after(&terms, 0);
    let mut acc = b.reduce(first, &keep)?;
    for i in 1..terms.len() {
        let keep = needed_after(&terms, i);
        // Letters of this operand only: summed before the product.
        let mut own_keep = keep.clone();
        own_keep.extend(&acc.letters);
        let t = b.reduce(terms[i].clone(), &own_keep)?;
        // Shared letters nothing later needs are summed by the product;
        // the accumulator's other letters are all needed (those that
        // were not went in the reduction before).
        acc = b.contract(acc, t, &keep)?;
    }
    let acc = b.transpose(acc, &e.output);
    // The last node writes the Einsum's own result.
    let dims = b.dims(&e.output);
    match b.nodes.last_mut() {
        Some(last) if last.outputs == [acc.v] => last.outputs = vec![out],
        _ => {
            b.reshape(acc.v, &dims, &dims, Some(out))?;
        }
    }
    for node in &mut b.nodes {
        node.name = n.name.clone();
    }
    Some((b.nodes, b.consts))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn equations_spell_out_ellipses_and_implicit_outputs() {
        let e = parse("bij,bjk->bik", &[3, 3]).expect("applies");
        assert_eq!(e.output, vec!['b', 'i', 'k']);
        let e = parse("ij,jk", &[2, 2]).expect("applies");
        assert_eq!(e.output, vec!['i', 'k']);
        let e = parse("...ij,...jk->...ik", &[4, 3]).expect("applies");
        assert_eq!(e.operands[0].len(), 4);
        assert_eq!(e.operands[1].len(), 3);
        assert_eq!(e.output.len(), 4);
        // The one ellipsis dim of the second operand is the first
        // operand's last (they align to the right).
        assert_eq!(e.operands[1][0], e.operands[0][1]);
        assert_eq!(e.output[..2], e.operands[0][..2]);
        // A diagonal (a letter twice in one term) is left alone.
        assert!(parse("ii->i", &[2]).is_none());
        // A rank that does not fit the term.
        assert!(parse("ij->i", &[3]).is_none());
    }
}
