//! Memory planning: where every intermediate tensor of the module's top-level
//! region lives in one scratch arena. An analysis, not a pass: it reads the
//! (final, optimized) module and changes nothing; backends lower from it.
//!
//! What it decides, in order:
//!
//! 1. **Schedule.** The region's node order (it is topological), with one
//!    deterministic change: a node that reads no other node's result (only
//!    graph inputs and constants, e.g. weights made by `ConstantOfShape`)
//!    runs right before its first consumer. That only shortens lives: in
//!    resnet50_light, weights built at the top were live to the end. No
//!    other reordering. `MemoryPlan::schedule` lists the order; live ranges
//!    are positions in it.
//! 2. **Liveness.** An intermediate is a result of a top-level node that is
//!    not a graph output. It is live from the node that defines it to its
//!    last use, both ends included; a use inside a nested region (If/Loop/
//!    Scan body, region outputs too) counts as a use at the node holding the
//!    region. A result nothing uses is live at its defining node only (the
//!    kernel still writes it). Graph inputs and outputs are the caller's
//!    buffers and constants have their own block: none is in the arena, and
//!    none is ever overwritten.
//! 3. **Sizes.** The static byte size of the value's type (sub-byte types
//!    packed); symbolic dims are evaluated with the caller's `dims` map.
//!    When some shape is not static, the plan is made on a copy of the
//!    module whose symbols are bound and whose types are inferred again, so
//!    `?` dims downstream of symbolic inputs become concrete. A size that is
//!    still unknown (unknown dim, unbound symbol, unranked,
//!    string or non-tensor type) is an error naming the value.
//! 4. **In place.** A pointwise node (by the op traits of `kiln_ir`: unary
//!    ops and views (Reshape, Flatten, Squeeze, Unsqueeze) over operand 0,
//!    broadcasting binary/variadic ops over any
//!    operand, plus `kiln.Fusion` nodes whose `kind` is `elementwise`) may
//!    write a result over an operand
//!    when the operand is an intermediate whose last use is this node, has
//!    the same byte size *and* the same element count as the result (so it
//!    is not broadcast: element i is read before element i is written, and
//!    by nobody else), and is not already given to another result. The first
//!    such operand in operand order is taken. Chains (`Relu(Add(..))`) share
//!    one buffer.
//! 5. **Concatenations in place** (when the backend asks:
//!    [`PlanOptions::concat_in_place`]). A Concat whose operands are each
//!    one contiguous block of its result (only size-1 dims before the
//!    axis: batch-1 channel concats) takes their buffers, in-place chains
//!    with them, into its own, at their byte offsets
//!    ([`Buffer::part_of`]), so their producers write straight into the
//!    result and the Concat moves nothing (GhostNet's 16 concats were 5 %
//!    of its time). Only when each operand is placed nowhere else, at an
//!    aligned offset, defined no later than the Concat, and not read after
//!    an in-place successor of the result starts writing over it; the
//!    merged buffer lives from its first part's definition to the last
//!    use of any member.
//! 6. **Slices in place** (when the backend asks:
//!    [`PlanOptions::slice_in_place`]). A Slice or Split result that is one
//!    contiguous block of its operand (`kiln_ir::ops::geometry::
//!    contiguous_block`: batch-1 channel slices, GhostNet's `[:, :oup]`,
//!    ShuffleNet's and YOLO's channel splits) takes the operand's bytes at
//!    its offset, with its in-place chain ([`Buffer::part_of`]), so the
//!    step moves nothing. Only when the operand and everything in its
//!    buffer die at this node (nobody reads the bytes the results' chains
//!    later write over), each result is placed nowhere else (in
//!    particular not inside a Concat: concatenations are placed first),
//!    and its offset keeps the alignment; the buffer then lives on to the
//!    last use of any result's chain.
//! 7. **Offsets.** Greedy by size with best fit (as in TFLite's
//!    `GreedyBySize` planner): buffers (in-place chains merged into one) are
//!    placed largest first (ties: earlier start, then lower value id); each
//!    goes into the smallest gap, among the already-placed buffers whose live
//!    ranges overlap its own, that holds it, or above all of them when none
//!    does. Every offset is a multiple of the target's alignment
//!    ([`PlanOptions::align`]: [`ALIGN`], 64 bytes, by default; GPU
//!    storage-buffer offsets need 256); each buffer takes its size rounded
//!    up to it.
//!
//! A backend that runs the plan ([`plan_with`]) also says which nodes'
//! kernels may write a result over an operand (`in_place`), and may leave
//! values with no fixed size (sequences, strings) out of the arena
//! (`skip_unsized`) instead of failing.
//!
//! `naive_bytes` is the arena without any reuse: the sum of every
//! intermediate's size, each rounded up to 64 as the arena would have to.
//! [`check`] re-derives the safety property from a plan alone, and
//! [`render`] prints it for `kiln dump`.

use std::collections::{HashMap, HashSet};

use kiln_ir::{print_type, Attr, Dim, Module, Node, Region, Type, ValueId};

/// The default alignment of buffer offsets (a cache line; the CPU
/// target's).
pub const ALIGN: u64 = 64;

/// How to plan.
#[derive(Clone, Copy)]
pub struct PlanOptions<'a> {
    /// Every offset is a multiple of this many bytes (a power of two).
    pub align: u64,
    /// Whether the node at this index of the body may write a result over
    /// an operand (its kernel allows aliasing); `None`: every pointwise
    /// node may.
    pub in_place: Option<&'a dyn Fn(usize) -> bool>,
    /// Leave values without a static byte size out of the arena instead
    /// of failing.
    pub skip_unsized: bool,
    /// Values the backend keeps outside the arena (`None`: none).
    pub keep_out: Option<&'a dyn Fn(ValueId) -> bool>,
    /// Place the operands of a concatenation inside its result (step 5 of
    /// the module comment): for a backend whose Concat copies only the
    /// operands that are not already where they belong.
    pub concat_in_place: bool,
    /// Place the results of a Slice or Split inside its operand (step 6
    /// of the module comment): for a backend whose Slice and Split copy
    /// only the results that are not already where they belong.
    pub slice_in_place: bool,
}

impl Default for PlanOptions<'_> {
    fn default() -> Self {
        PlanOptions {
            align: ALIGN,
            in_place: None,
            skip_unsized: false,
            keep_out: None,
            concat_in_place: false,
            slice_in_place: false,
        }
    }
}

/// Where one intermediate lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub value: ValueId,
    /// Byte offset in the arena (a multiple of [`ALIGN`]).
    pub offset: u64,
    /// Byte size of the value (not rounded up).
    pub size: u64,
    /// Positions in the schedule of the defining node and of the last use,
    /// both included.
    pub live: (usize, usize),
    /// The operand whose buffer this result takes over at its defining node.
    pub in_place_of: Option<ValueId>,
    /// The value whose buffer holds this value's bytes: the
    /// concatenation it is an operand of
    /// ([`PlanOptions::concat_in_place`]), or the operand it is a slice of
    /// ([`PlanOptions::slice_in_place`]).
    pub part_of: Option<ValueId>,
}

/// The memory plan of a module's top-level region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The execution order: indices into `m.body.nodes`.
    pub schedule: Vec<usize>,
    /// One buffer per intermediate, in order of definition.
    pub buffers: Vec<Buffer>,
    /// Bytes the arena needs (a multiple of [`ALIGN`]).
    pub arena_bytes: u64,
    /// Bytes without any reuse: every intermediate's size rounded up to
    /// the alignment, summed.
    pub naive_bytes: u64,
    /// The alignment of every offset.
    pub align: u64,
}

// ------------------------------------------------------------------ rules

/// The operand positions whose buffers this node's results may take over:
/// those of a pointwise op (operand 0 of a unary one, any operand of a
/// broadcasting one, an elementwise `kiln.Fusion`'s operands), from the op
/// traits (`kiln_ir::ops::traits::of_node`); empty for other nodes.
/// Softmax, CumSum, LRN and Hardmax read other elements and are not
/// pointwise; BatchNormalization reads its whole input in training mode.
fn donor_positions(node: &Node) -> Vec<usize> {
    kiln_ir::ops::traits::of_node(node)
        .in_place_operands(node.inputs.len())
        .collect()
}

/// Where a Concat's operands can lie inside its result: when every
/// operand is one contiguous block of it (nothing but size-1 dims before
/// the axis), each is an intermediate placed nowhere else, at a byte
/// offset that keeps the alignment, defined (with any in-place chain
/// behind it) no later than the Concat and overwritten by nothing while
/// the result lives (no in-place successor of the result before the last
/// use of any value in the operands' bytes: their chains, and the parts
/// of an operand that is itself a concatenation placed in place).
/// `Some(offsets)` in operand order.
fn concat_offsets(
    m: &Module,
    node: &Node,
    pos: usize,
    at: &Liveness,
    align: u64,
    groups: &[Group],
    group_of: &HashMap<ValueId, usize>,
) -> Option<Vec<u64>> {
    if node.op != "Concat" || node.outputs.len() != 1 {
        return None;
    }
    let r = node.outputs[0];
    let shape = m.static_shape(r).ok()?;
    let rank = shape.len() as i64;
    let axis = node.attr("axis").and_then(Attr::as_int).unwrap_or(0);
    let axis = if axis < 0 { axis + rank } else { axis };
    if !(0..rank).contains(&axis) || shape[..axis as usize].iter().any(|&d| d != 1) {
        return None;
    }
    let host = &groups[*group_of.get(&r)?];
    if host.members.first() != Some(&(r, 0)) || host.size != at.size.get(&r)?.0 {
        return None;
    }
    let mut offsets = vec![];
    let mut seen = HashSet::new();
    let mut end = 0u64;
    let mut last_read = 0;
    for x in &node.inputs {
        let x = (*x)?;
        let g = *group_of.get(&x)?;
        let part = &groups[g];
        let bytes = at.size.get(&x)?.0;
        let whole = part.members.first() == Some(&(x, 0)) && part.size == bytes;
        let settled = part
            .members
            .iter()
            .all(|(v, _)| at.def.get(v).is_some_and(|&d| d <= pos));
        if !seen.insert(g)
            || std::ptr::eq(part, host)
            || !whole
            || !settled
            || !end.is_multiple_of(align)
        {
            return None;
        }
        offsets.push(end);
        end += bytes;
        // Every value in the part's bytes: the operand's in-place chain
        // and the parts of an operand that is itself a concatenation.
        for (v, _) in &part.members {
            last_read = last_read.max(*at.last.get(v)?);
        }
    }
    // The result's in-place successors write over every part.
    let overwritten = host
        .members
        .iter()
        .any(|(v, _)| at.def.get(v).is_some_and(|&d| d > pos && d <= last_read));
    (end == host.size && !overwritten).then_some(offsets)
}

/// Places a Concat's operands inside its result where [`concat_offsets`]
/// allows: their groups join the result's at their offsets. Returns the
/// (operand, result) pairs placed.
fn concat_parts(
    m: &Module,
    node: &Node,
    pos: usize,
    at: &Liveness,
    align: u64,
    groups: &mut [Group],
    group_of: &mut HashMap<ValueId, usize>,
) -> Vec<(ValueId, ValueId)> {
    let Some(offsets) = concat_offsets(m, node, pos, at, align, groups, group_of) else {
        return vec![];
    };
    let r = node.outputs[0];
    let host = group_of[&r];
    let mut placed = vec![];
    for (x, off) in node.inputs.iter().flatten().zip(offsets) {
        merge_into(groups, group_of, group_of[x], host, off);
        placed.push((*x, r));
    }
    placed
}

/// The element offset of each result of a Slice (constant starts, ends,
/// axes and steps) or Split inside its operand, where it is one
/// contiguous block of it; `None` for other nodes, non-static shapes and
/// non-constant bounds.
fn slice_blocks(m: &Module, node: &Node) -> Option<Vec<Option<u64>>> {
    use kiln_ir::ops::geometry::{contiguous_block, slice_range};
    let x = node.input(0)?;
    let shape: Vec<u64> = m.static_shape(x).ok()?.iter().map(|&d| d as u64).collect();
    let r = shape.len();
    let norm = |a: i64| {
        let a = if a < 0 { a + r as i64 } else { a };
        usize::try_from(a).ok().filter(|&a| a < r)
    };
    match node.op.as_str() {
        "Slice" if node.outputs.len() == 1 => {
            let ints = |i: usize| node.input(i).map(|v| m.constant(v)?.to_i64_vec());
            let starts = ints(1)??;
            let ends = ints(2)??;
            let k = starts.len();
            let axes = ints(3).unwrap_or_else(|| Some((0..k as i64).collect()))?;
            let steps = ints(4).unwrap_or_else(|| Some(vec![1; k]))?;
            if ends.len() != k || axes.len() != k || steps.len() != k || steps.contains(&0) {
                return None;
            }
            let (mut first, mut len, mut step) = (vec![0u64; r], shape.clone(), vec![1i64; r]);
            for j in 0..k {
                let a = norm(axes[j])?;
                let (b, n) = slice_range(starts[j], ends[j], steps[j], shape[a]);
                (first[a], len[a], step[a]) = (u64::try_from(b).ok()?, n, steps[j]);
            }
            let out: Vec<u64> = m
                .static_shape(node.outputs[0])
                .ok()?
                .iter()
                .map(|&d| d as u64)
                .collect();
            (out == len).then(|| vec![contiguous_block(&shape, &first, &len, &step)])
        }
        "Split" => {
            let a = norm(node.attr("axis").and_then(Attr::as_int).unwrap_or(0))?;
            let mut at = 0u64;
            let mut blocks = vec![];
            for &o in &node.outputs {
                let s = m.static_shape(o).ok()?;
                let n = *s.get(a)? as u64;
                let (mut first, mut len) = (vec![0u64; r], shape.clone());
                (first[a], len[a]) = (at, n);
                blocks.push(contiguous_block(&shape, &first, &len, &vec![1; r]));
                at += n;
            }
            (at == shape[a]).then_some(blocks)
        }
        _ => None,
    }
}

/// Places the results of a Slice or Split inside its operand where step 6
/// of the module comment allows: their groups join the operand's at their
/// byte offsets. Returns the (result, operand) pairs placed.
fn slice_parts(
    m: &Module,
    node: &Node,
    pos: usize,
    at: &Liveness,
    align: u64,
    groups: &mut [Group],
    group_of: &mut HashMap<ValueId, usize>,
) -> Vec<(ValueId, ValueId)> {
    let Some(blocks) = slice_blocks(m, node) else {
        return vec![];
    };
    let Some(x) = node.input(0) else {
        return vec![];
    };
    let (Some(&host), Some(&(bytes, elems))) = (group_of.get(&x), at.size.get(&x)) else {
        return vec![];
    };
    // Whole bytes per element (no packed 4-bit types).
    let esize = if elems > 0 && bytes.is_multiple_of(elems) {
        bytes / elems
    } else {
        0
    };
    let dies_here = groups[host]
        .members
        .iter()
        .all(|(v, _)| at.last.get(v).is_some_and(|&l| l <= pos));
    if esize == 0 || at.last.get(&x) != Some(&pos) || !dies_here {
        return vec![];
    }
    let x_at = groups[host]
        .members
        .iter()
        .find(|(v, _)| *v == x)
        .map(|&(_, o)| o);
    let Some(x_at) = x_at else {
        return vec![];
    };
    let mut placed = vec![];
    for (&r, block) in node.outputs.iter().zip(blocks) {
        let (Some(e), Some(&g), Some(&(r_bytes, _))) = (block, group_of.get(&r), at.size.get(&r))
        else {
            continue;
        };
        let Some(off) = e.checked_mul(esize).and_then(|o| o.checked_add(x_at)) else {
            continue;
        };
        let part = &groups[g];
        let whole = part.members.first() == Some(&(r, 0)) && part.size == r_bytes;
        if g == host || !whole || r_bytes == 0 || !off.is_multiple_of(align) {
            continue;
        }
        merge_into(groups, group_of, g, host, off);
        placed.push((r, x));
    }
    placed
}

/// [`concat_parts`] or [`slice_parts`]: a node's placements, as (part,
/// whole) pairs.
type Placer = fn(
    &Module,
    &Node,
    usize,
    &Liveness,
    u64,
    &mut [Group],
    &mut HashMap<ValueId, usize>,
) -> Vec<(ValueId, ValueId)>;

/// Moves group `g`'s members into group `host` at byte offset `off`
/// (`g` is left empty), the host living as long as either did.
fn merge_into(
    groups: &mut [Group],
    group_of: &mut HashMap<ValueId, usize>,
    g: usize,
    host: usize,
    off: u64,
) {
    let members = std::mem::take(&mut groups[g].members);
    let live = groups[g].live;
    groups[g].size = 0;
    for &(v, _) in &members {
        group_of.insert(v, host);
    }
    let h = &mut groups[host];
    h.members.extend(members.iter().map(|&(v, o)| (v, o + off)));
    h.live = (h.live.0.min(live.0), h.live.1.max(live.1));
}

/// What [`concat_offsets`] and [`slice_parts`] read of the plan so far.
struct Liveness<'a> {
    def: &'a HashMap<ValueId, usize>,
    last: &'a HashMap<ValueId, usize>,
    size: &'a HashMap<ValueId, (u64, u64)>,
}

// -------------------------------------------------------------- machinery

fn align_up(n: u64, align: u64) -> Option<u64> {
    n.checked_add(align - 1).map(|x| x / align * align)
}

/// Byte size and element count of a value, with symbols bound by `dims`.
fn value_size(m: &Module, v: ValueId, dims: &HashMap<String, u64>) -> Result<(u64, u64), String> {
    let name = m.name(v);
    let ty = m.ty(v);
    let t = match ty {
        Type::Tensor(t) => t,
        other => {
            return Err(format!(
                "value %{name} has type {}: only tensors have a static byte size",
                print_type(other)
            ))
        }
    };
    let shape = t.shape.as_ref().ok_or_else(|| {
        format!(
            "value %{name} has unknown rank ({}): its byte size is unknown",
            print_type(ty)
        )
    })?;
    let mut elems: u64 = 1;
    for d in shape {
        let n = match d {
            Dim::Known(n) => *n,
            Dim::Sym(e) => {
                let got = e.eval(&|s| dims.get(s).and_then(|&x| i64::try_from(x).ok()));
                match got.and_then(|x| u64::try_from(x).ok()) {
                    Some(n) => n,
                    None => {
                        let unbound: Vec<&str> =
                            e.symbols().filter(|s| !dims.contains_key(*s)).collect();
                        return Err(if unbound.is_empty() {
                            format!(
                                "value %{name}: dim {e} of {} is negative or overflows",
                                print_type(ty)
                            )
                        } else {
                            format!(
                                "value %{name}: dim {e} of {} needs a size for {}",
                                print_type(ty),
                                unbound.join(", ")
                            )
                        });
                    }
                }
            }
            Dim::Unknown => {
                return Err(format!(
                    "value %{name} has an unknown dim ({}): its byte size is unknown",
                    print_type(ty)
                ))
            }
        };
        elems = elems.checked_mul(n).ok_or_else(|| {
            format!(
                "value %{name}: element count of {} overflows",
                print_type(ty)
            )
        })?;
    }
    let bytes = t.elem.storage_bytes(elems).ok_or_else(|| {
        format!(
            "value %{name} has type {}: no fixed byte size",
            print_type(ty)
        )
    })?;
    Ok((bytes, elems))
}

/// Every value a region reads: node operands (nested regions included) and
/// the region's outputs.
fn region_uses(r: &Region, f: &mut dyn FnMut(ValueId)) {
    for n in &r.nodes {
        for v in n.inputs.iter().flatten() {
            f(*v);
        }
        for (_, sub) in n.regions() {
            region_uses(sub, f);
        }
    }
    for &v in &r.outputs {
        f(v);
    }
}

/// The execution order: the region's order, except that a node reading no
/// other node's result (only graph inputs and constants: weights made by
/// `ConstantOfShape`, `Shape` of an input) runs right before its first
/// consumer instead of where it stands. Moving such a node later shortens
/// its results' lives and lengthens nobody else's. Nodes with no consumer
/// in the region stay put.
fn schedule(body: &Region) -> Vec<usize> {
    let mut producer: HashMap<ValueId, usize> = HashMap::new();
    for (i, n) in body.nodes.iter().enumerate() {
        for &o in &n.outputs {
            producer.insert(o, i);
        }
    }
    let reads = |n: &Node| {
        let mut v: Vec<ValueId> = n.inputs.iter().flatten().copied().collect();
        for (_, sub) in n.regions() {
            region_uses(sub, &mut |x| v.push(x));
        }
        v
    };
    // First consumer of each node.
    let mut first_user: Vec<Option<usize>> = vec![None; body.nodes.len()];
    let mut is_source = vec![false; body.nodes.len()];
    for (j, n) in body.nodes.iter().enumerate() {
        let r = reads(n);
        is_source[j] = r.iter().all(|v| !producer.contains_key(v));
        for v in r {
            if let Some(&i) = producer.get(&v) {
                if i < j && first_user[i].is_none() {
                    first_user[i] = Some(j);
                }
            }
        }
    }
    let mut deferred: HashMap<usize, Vec<usize>> = HashMap::new();
    for i in 0..body.nodes.len() {
        if let (true, Some(j)) = (is_source[i], first_user[i]) {
            deferred.entry(j).or_default().push(i);
        }
    }
    let mut order = Vec::with_capacity(body.nodes.len());
    for j in 0..body.nodes.len() {
        if let Some(before) = deferred.get(&j) {
            order.extend(before);
        }
        if !(is_source[j] && first_user[j].is_some()) {
            order.push(j);
        }
    }
    order
}

/// Buffers that share one placement: an in-place chain (or a single
/// value), with the parts of a concatenation placed inside it; each member
/// at its byte offset within the group.
struct Group {
    members: Vec<(ValueId, u64)>,
    size: u64,
    live: (usize, usize),
}

/// Bind the symbols of `dims` in every value type and infer the module
/// again, so that dims the importer could not know (`?` after a Slice or
/// Reshape of a computed shape) become concrete. Shape arithmetic (`Shape`,
/// `Size`, and small integer nodes whose operands are all known) is
/// evaluated on the way, on the copy only: inference reads operand values
/// only from constants. `None` when every result is static already; when
/// inference fails, the types as far as they got (sizes still unknown then
/// fail by name).
fn specialize(m: &Module, dims: &HashMap<String, u64>) -> Option<Module> {
    let is_static = |v: ValueId| {
        m.ty(v)
            .as_tensor()
            .is_some_and(|t| t.static_shape().is_some())
    };
    let mut all_static = true;
    m.body
        .walk(&mut |n| all_static &= n.outputs.iter().all(|&v| is_static(v)));
    if all_static {
        return None;
    }
    let mut s = m.clone();
    let bind = |d: &Dim| match d {
        Dim::Sym(e) => e
            .eval(&|x| dims.get(x).and_then(|&n| i64::try_from(n).ok()))
            .and_then(|n| u64::try_from(n).ok())
            .map_or_else(|| d.clone(), Dim::Known),
        _ => d.clone(),
    };
    for i in 0..s.num_values() {
        let v = ValueId(i as u32);
        if let Type::Tensor(t) = s.ty(v) {
            if let Some(shape) = &t.shape {
                let mut t = t.clone();
                t.shape = Some(shape.iter().map(bind).collect());
                s.set_ty(v, Type::Tensor(t));
            }
        }
    }
    for _round in 0..16 {
        let before = s.clone();
        if kiln_ir::ops::infer_module(&mut s).is_err() {
            return Some(before);
        }
        if fold_shape_values(&mut s) == 0 {
            break;
        }
    }
    Some(s)
}

/// Shape arithmetic results hold at most this many elements.
const MAX_SHAPE_VALUES: u64 = 64;

/// Evaluate the top-level nodes that compute small integer (or bool) tensors from
/// shapes and constants, and record their results as constant data (the
/// nodes stay: value ids and node positions do not move). Returns how many
/// nodes were evaluated.
fn fold_shape_values(s: &mut Module) -> usize {
    let mut folded = 0;
    for i in 0..s.body.nodes.len() {
        let node = &s.body.nodes[i];
        let small_int = |v: &ValueId| {
            s.ty(*v).as_tensor().is_some_and(|t| {
                (t.elem.is_int() || t.elem == kiln_ir::ElemType::Bool)
                    && t.num_elements().is_some_and(|n| n <= MAX_SHAPE_VALUES)
            })
        };
        if node.outputs.is_empty()
            || node
                .outputs
                .iter()
                .any(|o| s.constant(*o).is_some() || !small_int(o))
            || node.regions().next().is_some()
            || kiln_ir::ops::traits::is_random(s, node)
        {
            continue;
        }
        let data = if kiln_ir::ops::traits(&node.op).shape_only {
            shape_node_value(s, node)
        } else if node
            .inputs
            .iter()
            .flatten()
            .all(|v| s.constant(*v).is_some())
        {
            eval_node(s, node)
        } else {
            None
        };
        if let Some(data) = data {
            let outs = node.outputs.clone();
            for (o, d) in outs.into_iter().zip(data) {
                s.set_constant(o, Some(std::sync::Arc::new(d)));
            }
            folded += 1;
        }
    }
    folded
}

/// `Shape`/`Size` of a value whose shape is static.
fn shape_node_value(s: &Module, node: &Node) -> Option<Vec<kiln_ir::TensorData>> {
    let shape = s.ty(node.input(0)?).as_tensor()?.static_shape()?;
    let vals: Vec<i64> = if node.op == "Size" {
        vec![i64::try_from(shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?).ok()?]
    } else {
        let r = shape.len() as i64;
        let clamp = |v: i64| {
            if v < 0 {
                v.saturating_add(r).max(0)
            } else {
                v.min(r)
            }
        };
        let int = |k: &str, d: i64| match node.attr(k) {
            Some(Attr::Int(v)) => *v,
            _ => d,
        };
        let (a, b) = (
            clamp(int("start", 0)) as usize,
            clamp(int("end", r)) as usize,
        );
        shape
            .get(a..b.max(a))?
            .iter()
            .map(|&d| i64::try_from(d).ok())
            .collect::<Option<_>>()?
    };
    let t = kiln_interp::tensor::Tensor::from_i64(
        if node.op == "Size" {
            vec![]
        } else {
            vec![vals.len()]
        },
        vals,
    )
    .ok()?;
    Some(vec![t.to_data()])
}

/// Run one node whose operands are all constants on the interpreter.
fn eval_node(s: &Module, node: &Node) -> Option<Vec<kiln_ir::TensorData>> {
    let mut tiny = Module::new("fold");
    let mut n = node.clone();
    for (k, v) in n.inputs.iter_mut().enumerate() {
        if let Some(x) = v {
            let c = tiny.add_constant_unique(&format!("in{k}"), s.constant(*x)?.clone());
            tiny.body.constants.push(c);
            *x = c;
        }
    }
    for (k, o) in n.outputs.iter_mut().enumerate() {
        *o = tiny.add_value(&format!("out{k}"), s.ty(*o).clone()).ok()?;
    }
    tiny.body.outputs = n.outputs.clone();
    tiny.body.nodes.push(n);
    let outs = kiln_interp::Interpreter::new(&tiny)
        .run(&HashMap::new())
        .ok()?;
    outs.iter()
        .map(|v| v.as_tensor().map(|t| t.to_data()))
        .collect()
}

/// Plan the arena of `m`'s top-level region; `dims` gives symbolic dims
/// their sizes. When some result's shape is not static, the plan is made
/// on a copy of `m` with the symbols bound and types inferred again (value
/// ids are the same).
pub fn plan(m: &Module, dims: &HashMap<String, u64>) -> Result<MemoryPlan, String> {
    plan_with(m, dims, &PlanOptions::default())
}

/// [`plan`] with a target's options.
pub fn plan_with(
    m: &Module,
    dims: &HashMap<String, u64>,
    opts: &PlanOptions,
) -> Result<MemoryPlan, String> {
    let align = opts.align;
    if !align.is_power_of_two() {
        return Err(format!(
            "memory plan: alignment {align} is not a power of two"
        ));
    }
    let specialized = specialize(m, dims);
    let m = specialized.as_ref().unwrap_or(m);
    let body = &m.body;
    let schedule = schedule(body);
    let outputs: HashSet<ValueId> = body.outputs.iter().copied().collect();

    // Intermediates in definition order, with their defining position.
    let mut order: Vec<ValueId> = vec![];
    let mut def: HashMap<ValueId, usize> = HashMap::new();
    for (pos, &ni) in schedule.iter().enumerate() {
        for &r in &body.nodes[ni].outputs {
            if !outputs.contains(&r) && !def.contains_key(&r) {
                def.insert(r, pos);
                order.push(r);
            }
        }
    }

    // Last uses.
    let mut last: HashMap<ValueId, usize> = def.clone();
    for (pos, &ni) in schedule.iter().enumerate() {
        let node = &body.nodes[ni];
        let mut used = |v: ValueId| {
            if let Some(l) = last.get_mut(&v) {
                *l = (*l).max(pos);
            }
        };
        for v in node.inputs.iter().flatten() {
            used(*v);
        }
        for (_, sub) in node.regions() {
            region_uses(sub, &mut used);
        }
    }

    // Sizes.
    let mut size: HashMap<ValueId, (u64, u64)> = HashMap::new();
    for &v in &order {
        if opts.keep_out.is_some_and(|out| out(v)) {
            continue;
        }
        match value_size(m, v, dims) {
            Ok(s) => {
                size.insert(v, s);
            }
            Err(_) if opts.skip_unsized => {}
            Err(e) => return Err(e),
        }
    }
    // Unsized values (when skipped) and values the backend keeps out are
    // not intermediates of the arena.
    order.retain(|v| size.contains_key(v));
    def.retain(|v, _| size.contains_key(v));

    // Groups: one per value, merged along in-place handovers.
    let mut groups: Vec<Group> = vec![];
    let mut group_of: HashMap<ValueId, usize> = HashMap::new();
    let mut in_place_of: HashMap<ValueId, ValueId> = HashMap::new();
    let mut donated: HashSet<ValueId> = HashSet::new();
    for (pos, &ni) in schedule.iter().enumerate() {
        let node = &body.nodes[ni];
        let donors = match opts.in_place {
            Some(may) if !may(ni) => vec![],
            _ => donor_positions(node),
        };
        for &r in &node.outputs {
            if !def.contains_key(&r) || group_of.contains_key(&r) {
                continue;
            }
            let taken = donors.iter().filter_map(|&i| node.input(i)).find(|o| {
                group_of.contains_key(o)
                    && last.get(o) == Some(&pos)
                    && !donated.contains(o)
                    && size.get(o) == size.get(&r)
            });
            match taken {
                Some(o) => {
                    let g = group_of[&o];
                    donated.insert(o);
                    in_place_of.insert(r, o);
                    group_of.insert(r, g);
                    groups[g].members.push((r, 0));
                    groups[g].live.1 = last[&r];
                }
                None => {
                    group_of.insert(r, groups.len());
                    groups.push(Group {
                        members: vec![(r, 0)],
                        size: size[&r].0,
                        live: (pos, last[&r]),
                    });
                }
            }
        }
    }
    // Results of nodes that were skipped above cannot exist (every
    // intermediate is some node's result), but keep the invariant explicit.
    for &v in &order {
        if let std::collections::hash_map::Entry::Vacant(e) = group_of.entry(v) {
            e.insert(groups.len());
            groups.push(Group {
                members: vec![(v, 0)],
                size: size[&v].0,
                live: (def[&v], last[&v]),
            });
        }
    }

    let mut part_of: HashMap<ValueId, ValueId> = HashMap::new();
    if opts.concat_in_place || opts.slice_in_place {
        let at = Liveness {
            def: &def,
            last: &last,
            size: &size,
        };
        // Concatenations first: a slice that a Concat would also take
        // (YOLO's C2f blocks concatenate both halves of a channel split
        // and what was computed from them) is better written straight
        // into the Concat's result than left in its operand for the
        // Concat to copy.
        let passes: [(bool, Placer); 2] = [
            (opts.concat_in_place, concat_parts),
            (opts.slice_in_place, slice_parts),
        ];
        for (on, place) in passes {
            for (pos, &ni) in schedule.iter().enumerate().filter(|_| on) {
                let placed = place(
                    m,
                    &body.nodes[ni],
                    pos,
                    &at,
                    align,
                    &mut groups,
                    &mut group_of,
                );
                for (part, whole) in placed {
                    part_of.insert(part, whole);
                }
            }
        }
    }
    let member_offset: HashMap<ValueId, u64> = groups
        .iter()
        .flat_map(|g| g.members.iter().copied())
        .collect();

    let offsets = assign_offsets(&groups, align)?;

    let mut arena_bytes: u64 = 0;
    for (g, &off) in groups
        .iter()
        .zip(&offsets)
        .filter(|(g, _)| !g.members.is_empty())
    {
        let end = align_up(g.size, align)
            .and_then(|s| off.checked_add(s))
            .ok_or("memory plan: arena size overflows")?;
        arena_bytes = arena_bytes.max(end);
    }
    let mut naive_bytes: u64 = 0;
    for &v in &order {
        naive_bytes = align_up(size[&v].0, align)
            .and_then(|s| naive_bytes.checked_add(s))
            .ok_or("memory plan: naive size overflows")?;
    }

    let buffers = order
        .iter()
        .map(|&v| Buffer {
            value: v,
            offset: offsets[group_of[&v]] + member_offset[&v],
            size: size[&v].0,
            live: (def[&v], last[&v]),
            in_place_of: in_place_of.get(&v).copied(),
            part_of: part_of.get(&v).copied(),
        })
        .collect();
    Ok(MemoryPlan {
        schedule,
        buffers,
        arena_bytes,
        naive_bytes,
        align,
    })
}

fn overlaps(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

/// Greedy by size, best fit: offsets for every group, in group order.
fn assign_offsets(groups: &[Group], align: u64) -> Result<Vec<u64>, String> {
    let mut by_size: Vec<usize> = (0..groups.len()).collect();
    by_size.sort_by(|&a, &b| {
        let (ga, gb) = (&groups[a], &groups[b]);
        gb.size
            .cmp(&ga.size)
            .then(ga.live.0.cmp(&gb.live.0))
            .then(ga.members.first().cmp(&gb.members.first()))
    });
    let mut offsets = vec![0u64; groups.len()];
    // (offset, footprint, live) of the groups placed so far.
    let mut placed: Vec<(u64, u64, (usize, usize))> = vec![];
    for gi in by_size {
        let g = &groups[gi];
        let fp = align_up(g.size, align).ok_or("memory plan: buffer size overflows")?;
        if fp == 0 || g.members.is_empty() {
            continue; // empty tensors take no bytes; offset 0
        }
        let mut live: Vec<(u64, u64)> = placed
            .iter()
            .filter(|p| overlaps(p.2, g.live))
            .map(|p| (p.0, p.0 + p.1))
            .collect();
        live.sort_unstable();
        let mut best: Option<(u64, u64)> = None; // (gap, offset)
        let mut prev_end = 0u64;
        for (start, end) in live {
            if start >= prev_end {
                let gap = start - prev_end;
                if gap >= fp && best.is_none_or(|(b, _)| gap < b) {
                    best = Some((gap, prev_end));
                }
            }
            prev_end = prev_end.max(end);
        }
        let off = best.map_or(prev_end, |(_, o)| o);
        off.checked_add(fp)
            .ok_or("memory plan: arena size overflows")?;
        offsets[gi] = off;
        placed.push((off, fp, g.live));
    }
    Ok(offsets)
}

/// Check a plan on its own terms: every offset aligned, every buffer inside
/// the arena, and no two buffers live at the same time share a byte, except
/// an in-place pair at the node where one hands over to the other.
pub fn check(plan: &MemoryPlan) -> Result<(), String> {
    let by_value: HashMap<ValueId, &Buffer> = plan.buffers.iter().map(|b| (b.value, b)).collect();
    if by_value.len() != plan.buffers.len() {
        return Err("memory plan: a value has two buffers".into());
    }
    let id = |v: ValueId| format!("value #{}", v.0);
    for b in &plan.buffers {
        if b.offset % plan.align != 0 {
            return Err(format!(
                "{}: offset {} is not {ALIGN}-byte aligned",
                id(b.value),
                b.offset
            ));
        }
        match b.offset.checked_add(b.size) {
            Some(end) if end <= plan.arena_bytes => {}
            _ => {
                return Err(format!(
                    "{}: bytes {}..+{} leave the {}-byte arena",
                    id(b.value),
                    b.offset,
                    b.size,
                    plan.arena_bytes
                ))
            }
        }
        if b.live.0 > b.live.1 {
            return Err(format!("{}: live range {:?} is empty", id(b.value), b.live));
        }
        if let Some(o) = b.in_place_of {
            let ob = by_value.get(&o).ok_or_else(|| {
                format!(
                    "{}: in place of {}, which has no buffer",
                    id(b.value),
                    id(o)
                )
            })?;
            if ob.offset != b.offset || ob.size != b.size || ob.live.1 != b.live.0 {
                return Err(format!(
                    "{}: in place of {}, but the buffers or the handover do not match",
                    id(b.value),
                    id(o)
                ));
            }
        }
    }
    let handover = |a: &Buffer, b: &Buffer| b.in_place_of == Some(a.value) && a.live.1 == b.live.0;
    // Whether `b` lies inside `a` as a part of it, or of a part of it.
    let inside = |a: &Buffer, b: &Buffer| {
        let mut at = b.part_of;
        while let Some(w) = at {
            if w == a.value {
                return a.offset <= b.offset && b.offset + b.size <= a.offset + a.size;
            }
            at = by_value.get(&w).and_then(|w| w.part_of);
        }
        false
    };
    for (i, a) in plan.buffers.iter().enumerate() {
        for b in &plan.buffers[i + 1..] {
            if a.size == 0 || b.size == 0 || !overlaps(a.live, b.live) {
                continue;
            }
            let bytes_overlap = a.offset < b.offset + b.size && b.offset < a.offset + a.size;
            if bytes_overlap && !handover(a, b) && !handover(b, a) && !inside(a, b) && !inside(b, a)
            {
                return Err(format!(
                    "{} (bytes {}..{}, live {:?}) and {} (bytes {}..{}, live {:?}) are live together and share bytes",
                    id(a.value),
                    a.offset,
                    a.offset + a.size,
                    a.live,
                    id(b.value),
                    b.offset,
                    b.offset + b.size,
                    b.live
                ));
            }
        }
    }
    Ok(())
}

/// The plan as a table (value, offset, size, live range, in-place note),
/// then `arena_bytes` and `naive_bytes`.
pub fn render(m: &Module, plan: &MemoryPlan) -> String {
    let name = |v: ValueId| {
        if v.index() < m.num_values() {
            format!("%{}", m.name(v))
        } else {
            format!("#{}", v.0)
        }
    };
    let rows: Vec<[String; 5]> = plan
        .buffers
        .iter()
        .map(|b| {
            [
                name(b.value),
                b.offset.to_string(),
                b.size.to_string(),
                format!("{}..{}", b.live.0, b.live.1),
                match (b.in_place_of, b.part_of) {
                    (Some(o), _) => format!("in place of {}", name(o)),
                    (None, Some(w)) => format!("part of {}", name(w)),
                    (None, None) => String::new(),
                },
            ]
        })
        .collect();
    let head = ["value", "offset", "size", "live", "note"];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |c: &[String; 5]| {
        let s = format!(
            "{:<w0$}  {:>w1$}  {:>w2$}  {:<w3$}  {}",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        );
        format!("{}\n", s.trim_end())
    };
    let mut out = line(&head.map(String::from));
    for r in &rows {
        out.push_str(&line(r));
    }
    out.push_str(&format!("arena_bytes: {}\n", plan.arena_bytes));
    out.push_str(&format!("naive_bytes: {}\n", plan.naive_bytes));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::{ElemType, TensorType};

    fn f32v(m: &mut Module, name: &str, shape: &[u64]) -> ValueId {
        m.add_value(name, Type::Tensor(TensorType::known(ElemType::F32, shape)))
            .unwrap()
    }

    /// `kiln.Fusion` of kind `elementwise` may write over an operand; other
    /// kinds may not. (The op is not registered yet, so the module is built
    /// by hand and not verified: planning does not need it to be.)
    #[test]
    fn elementwise_fusion_is_in_place() {
        for (kind, expect) in [("elementwise", true), ("reduction", false)] {
            let mut m = Module::new("f");
            let x = f32v(&mut m, "x", &[16]);
            let a = f32v(&mut m, "a", &[16]);
            let b = f32v(&mut m, "b", &[16]);
            let y = f32v(&mut m, "y", &[16]);
            m.body.inputs.push(x);
            m.body.nodes.push(Node::new("Relu", vec![Some(x)], vec![a]));
            let mut f = Node::new("kiln.Fusion", vec![Some(x), Some(a)], vec![b]);
            f.attrs.insert("kind".into(), Attr::String(kind.into()));
            m.body.nodes.push(f);
            m.body.nodes.push(Node::new("Neg", vec![Some(b)], vec![y]));
            m.body.outputs.push(y);
            let p = plan(&m, &HashMap::new()).unwrap();
            check(&p).unwrap();
            assert_eq!(p.buffers[1].in_place_of.is_some(), expect, "{kind}");
        }
    }

    /// Random draws are not shape arithmetic: Bernoulli, like the
    /// `Random*` ops and Multinomial, is never evaluated on the copy (it
    /// used to be: the list here missed it).
    #[test]
    fn random_nodes_are_not_evaluated_for_shapes() {
        let mut m = kiln_ir::parse_module(
            r#"module @r opset(ai.onnx = 22) {
  const %p: f32[4] = dense[0.5, 0.5, 0.5, 0.5]
  %r = Bernoulli(%p) {dtype = 7} : i64[4]
  %u = RandomUniformLike(%p) {dtype = 7} : i64[4]
  %n = Neg(%r) : i64[4]
  return %n, %u
}"#,
        )
        .unwrap();
        assert_eq!(fold_shape_values(&mut m), 0);
        let r = m.body.nodes[0].outputs[0];
        assert!(m.constant(r).is_none());
    }

    /// Which operands a result may take over comes from the op traits:
    /// operand 0 of a unary pointwise op, any operand of a broadcasting
    /// one, none for the rest.
    #[test]
    fn donors_follow_the_op_traits() {
        let n = |op: &str, k: usize| {
            Node::new(
                op,
                (0..k).map(|i| Some(ValueId(i as u32))).collect(),
                vec![],
            )
        };
        assert_eq!(donor_positions(&n("Shrink", 1)), [0]);
        assert_eq!(donor_positions(&n("Clip", 3)), [0]);
        assert_eq!(donor_positions(&n("BitShift", 2)), [0, 1]);
        assert_eq!(donor_positions(&n("Where", 3)), [0, 1, 2]);
        assert_eq!(donor_positions(&n("ai.onnx.ml.Binarizer", 1)), [0]);
        assert!(donor_positions(&n("Softmax", 1)).is_empty());
        assert!(donor_positions(&n("BatchNormalization", 5)).is_empty());
    }

    #[test]
    fn check_rejects_clobbering() {
        let b = |v, offset, live| Buffer {
            value: ValueId(v),
            offset,
            size: 100,
            live,
            in_place_of: None,
            part_of: None,
        };
        let ok = MemoryPlan {
            schedule: vec![0, 1, 2],
            buffers: vec![b(0, 0, (0, 1)), b(1, 128, (1, 2))],
            arena_bytes: 256,
            naive_bytes: 256,
            align: ALIGN,
        };
        check(&ok).unwrap();
        let clash = MemoryPlan {
            buffers: vec![b(0, 0, (0, 1)), b(1, 64, (1, 2))],
            ..ok.clone()
        };
        assert!(check(&clash).is_err());
        let unaligned = MemoryPlan {
            buffers: vec![b(0, 0, (0, 1)), b(1, 130, (1, 2))],
            arena_bytes: 300,
            ..ok.clone()
        };
        assert!(check(&unaligned).is_err());
        let mut handover = MemoryPlan {
            buffers: vec![b(0, 0, (0, 1)), b(1, 0, (1, 2))],
            ..ok.clone()
        };
        assert!(check(&handover).is_err());
        handover.buffers[1].in_place_of = Some(ValueId(0));
        check(&handover).unwrap();
        // A part lives inside its whole while both are live; only there.
        let mut whole = b(1, 0, (1, 2));
        whole.size = 200;
        let mut part = b(0, 64, (0, 2));
        part.part_of = Some(ValueId(1));
        let parts = MemoryPlan {
            buffers: vec![part.clone(), whole.clone()],
            ..ok.clone()
        };
        check(&parts).unwrap();
        part.offset = 128;
        let spilling = MemoryPlan {
            buffers: vec![part, whole],
            ..ok.clone()
        };
        assert!(check(&spilling).is_err());
    }
}
