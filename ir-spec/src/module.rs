//! The graph IR proper: a [`Module`] owns every value; [`Region`]s (the main
//! graph and the bodies of control-flow ops) list inputs, constants, nodes
//! in topological order, and outputs.
//!
//! Values live in one module-wide arena addressed by [`ValueId`], so a node
//! in a nested region can use a value of an enclosing region directly (ONNX
//! subgraphs capture outer values by name; here the capture is an ordinary
//! operand). Value names are unique across the whole module: they are the
//! SSA names of the text format.
//!
//! A node's attributes ([`Attr`]) are defined here too, since graph
//! attributes hold regions: the three types are one recursive structure.
//! What one asks of an attribute (its kind, its value as an int, ...) is
//! in `attr.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::tensor::TensorData;
use crate::types::Type;

/// Index of a value in its module's arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

impl ValueId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// What the module knows about a value.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueData {
    /// Unique name within the module (the `%name` of the text form).
    pub name: String,
    pub ty: Type,
    /// The data, when the value is a constant (listed in some region's
    /// `constants`). Shared, never copied.
    pub constant: Option<Arc<TensorData>>,
}

/// An attribute value. Graph-valued attributes (If's branches, Loop's and
/// Scan's bodies) hold nested [`Region`]s that may use values of the
/// enclosing regions.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Int(i64),
    Float(f32),
    String(String),
    Tensor(Arc<TensorData>),
    Graph(Region),
    Type(Type),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Strings(Vec<String>),
    Tensors(Vec<Arc<TensorData>>),
    Graphs(Vec<Region>),
    Types(Vec<Type>),
}

/// Attributes of a node, sorted by name so printing is canonical.
pub type Attrs = BTreeMap<String, Attr>;

/// One operation.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The canonical op name: the ONNX op type for the default domain
    /// (`Conv`), or `domain.Op` for others (`ai.onnx.ml.LabelEncoder`).
    pub op: String,
    /// The node's name in the source model (may be empty); used in errors.
    pub name: String,
    /// Operands; `None` is an omitted optional input.
    pub inputs: Vec<Option<ValueId>>,
    pub outputs: Vec<ValueId>,
    pub attrs: Attrs,
}

impl Node {
    pub fn new(op: impl Into<String>, inputs: Vec<Option<ValueId>>, outputs: Vec<ValueId>) -> Node {
        Node {
            op: op.into(),
            name: String::new(),
            inputs,
            outputs,
            attrs: Attrs::new(),
        }
    }

    pub fn attr(&self, name: &str) -> Option<&Attr> {
        self.attrs.get(name)
    }

    pub fn input(&self, i: usize) -> Option<ValueId> {
        self.inputs.get(i).copied().flatten()
    }

    /// Nested regions held in graph-valued attributes, in attribute order.
    pub fn regions(&self) -> impl Iterator<Item = (&str, &Region)> {
        self.attrs.iter().flat_map(|(k, a)| {
            let v: Vec<&Region> = match a {
                Attr::Graph(r) => vec![r],
                Attr::Graphs(rs) => rs.iter().collect(),
                _ => vec![],
            };
            v.into_iter().map(move |r| (k.as_str(), r))
        })
    }

    pub fn regions_mut(&mut self) -> impl Iterator<Item = &mut Region> {
        self.attrs.values_mut().flat_map(|a| {
            let v: Vec<&mut Region> = match a {
                Attr::Graph(r) => vec![r],
                Attr::Graphs(rs) => rs.iter_mut().collect(),
                _ => vec![],
            };
            v
        })
    }

    /// How the node is named in messages: `Conv "conv1"` or just `Conv`.
    pub fn describe(&self) -> String {
        if self.name.is_empty() {
            self.op.clone()
        } else {
            format!("{} \"{}\"", self.op, self.name)
        }
    }
}

/// A graph: the module's main body, or the body of If/Loop/Scan.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Region {
    pub inputs: Vec<ValueId>,
    /// Constants defined in this region (their data is on the value).
    pub constants: Vec<ValueId>,
    /// Nodes in a topological order: every operand is defined before use.
    pub nodes: Vec<Node>,
    pub outputs: Vec<ValueId>,
}

impl Region {
    /// Visit this region's nodes and those of every nested region, outer
    /// nodes before the regions they hold.
    pub fn walk<'a>(&'a self, f: &mut dyn FnMut(&'a Node)) {
        for n in &self.nodes {
            f(n);
            for (_, r) in n.regions() {
                r.walk(f);
            }
        }
    }

    /// Number of nodes including those of nested regions.
    pub fn node_count(&self) -> usize {
        let mut n = 0;
        self.walk(&mut |_| n += 1);
        n
    }
}

/// A whole model.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Module {
    /// The model's (graph's) name.
    pub name: String,
    /// Opset imports of the source model: (domain, version). The IR's ops
    /// are canonical whatever these say; they are kept for the record.
    pub opsets: Vec<(String, i64)>,
    pub body: Region,
    values: Vec<ValueData>,
    by_name: HashMap<String, ValueId>,
    next_suffix: NextSuffix,
}

/// For each name hint, the suffix [`Module::add_value_unique`] tries
/// next: without it, the n-th value named after one hint (an inlined
/// function's `x`, thousands of times over) scanned `x_1` ... `x_n`, and
/// import was quadratic. A cache, not part of what a module is: it takes
/// no part in equality.
#[derive(Clone, Debug, Default)]
struct NextSuffix(HashMap<String, usize>);

impl PartialEq for NextSuffix {
    fn eq(&self, _: &NextSuffix) -> bool {
        true
    }
}

/// Adding a value whose name is taken.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("value name `{0}` is already defined")]
pub struct DuplicateName(pub String);

impl Module {
    pub fn new(name: impl Into<String>) -> Module {
        Module {
            name: name.into(),
            ..Module::default()
        }
    }

    /// Add a value with exactly this name; fails if the name is taken.
    pub fn add_value(&mut self, name: &str, ty: Type) -> Result<ValueId, DuplicateName> {
        if self.by_name.contains_key(name) {
            return Err(DuplicateName(name.to_string()));
        }
        let id = ValueId(self.values.len() as u32);
        self.values.push(ValueData {
            name: name.to_string(),
            ty,
            constant: None,
        });
        self.by_name.insert(name.to_string(), id);
        Ok(id)
    }

    /// Add a value named `hint`, or `hint_1`, `hint_2`, ... if taken; an
    /// empty hint becomes `v`.
    pub fn add_value_unique(&mut self, hint: &str, ty: Type) -> ValueId {
        let base = if hint.is_empty() { "v" } else { hint };
        if !self.by_name.contains_key(base) {
            return self.add_value(base, ty).unwrap_or(ValueId(0));
        }
        let mut i = self.next_suffix.0.get(base).copied().unwrap_or(1);
        loop {
            let name = format!("{base}_{i}");
            if !self.by_name.contains_key(&name) {
                self.next_suffix.0.insert(base.to_string(), i + 1);
                return self.add_value(&name, ty).unwrap_or(ValueId(0));
            }
            i += 1;
        }
    }

    /// Add a constant value (not yet listed in any region).
    pub fn add_constant_unique(&mut self, hint: &str, data: Arc<TensorData>) -> ValueId {
        let ty = Type::Tensor(crate::types::TensorType::known(data.elem, &data.shape));
        let id = self.add_value_unique(hint, ty);
        self.values[id.index()].constant = Some(data);
        id
    }

    pub fn set_constant(&mut self, id: ValueId, data: Option<Arc<TensorData>>) {
        self.values[id.index()].constant = data;
    }

    pub fn value(&self, id: ValueId) -> &ValueData {
        &self.values[id.index()]
    }

    pub fn ty(&self, id: ValueId) -> &Type {
        &self.values[id.index()].ty
    }

    pub fn set_ty(&mut self, id: ValueId, ty: Type) {
        self.values[id.index()].ty = ty;
    }

    pub fn name(&self, id: ValueId) -> &str {
        &self.values[id.index()].name
    }

    pub fn constant(&self, id: ValueId) -> Option<&Arc<TensorData>> {
        self.values[id.index()].constant.as_ref()
    }

    /// A constant's data, to change in place (`Arc::get_mut` succeeds only
    /// when nothing else shares it).
    pub fn constant_mut(&mut self, id: ValueId) -> Option<&mut Arc<TensorData>> {
        self.values[id.index()].constant.as_mut()
    }

    pub fn lookup(&self, name: &str) -> Option<ValueId> {
        self.by_name.get(name).copied()
    }

    pub fn num_values(&self) -> usize {
        self.values.len()
    }

    /// Drop constant `v`'s data, keeping its element type and shape (the
    /// data is gone once nothing else shares it): for backends that took
    /// the values over, and passes that stopped using them.
    pub fn elide_constant(&mut self, v: ValueId) {
        let slot = &mut self.values[v.index()].constant;
        if let Some(d) = slot.as_ref().filter(|d| !d.is_elided()) {
            *slot = Some(Arc::new(TensorData::elided(d.elem, d.shape.clone())));
        }
    }

    /// Free the data of constants no region lists any more. Value ids are
    /// never reused, so a constant a pass removed (DCE, CSE merging equal
    /// constants, a folded BatchNormalization's old filter, a rule's
    /// constant whose rewrite was not applied) keeps its slot in the value
    /// table; its data, elided here, would otherwise live as long as the
    /// module. The pass manager runs this after every pass that changed
    /// the module.
    pub fn release_unlisted_constants(&mut self) {
        fn listed(r: &Region, out: &mut Vec<bool>) {
            for c in &r.constants {
                if let Some(x) = out.get_mut(c.index()) {
                    *x = true;
                }
            }
            for n in &r.nodes {
                for (_, sub) in n.regions() {
                    listed(sub, out);
                }
            }
        }
        let mut keep = vec![false; self.values.len()];
        listed(&self.body, &mut keep);
        for (i, keep) in keep.into_iter().enumerate() {
            if !keep {
                self.elide_constant(ValueId(i as u32));
            }
        }
    }

    /// Rename a value; fails if the new name is taken.
    pub fn rename(&mut self, id: ValueId, name: &str) -> Result<(), DuplicateName> {
        if self.by_name.get(name).is_some_and(|&v| v != id) {
            return Err(DuplicateName(name.to_string()));
        }
        let old = std::mem::replace(&mut self.values[id.index()].name, name.to_string());
        self.by_name.remove(&old);
        self.by_name.insert(name.to_string(), id);
        Ok(())
    }

    /// The shape of tensor value `v` when every dim is known (backends
    /// compile per shape); an error naming the value otherwise.
    pub fn static_shape(&self, v: ValueId) -> Result<Vec<usize>, String> {
        let t = self
            .ty(v)
            .as_tensor()
            .ok_or_else(|| format!("%{} is not a tensor", self.name(v)))?;
        let dims = t
            .shape
            .as_ref()
            .ok_or_else(|| format!("%{} has an unknown rank", self.name(v)))?;
        dims.iter()
            .map(|d| match d {
                crate::types::Dim::Known(k) => usize::try_from(*k).map_err(|e| e.to_string()),
                _ => Err(format!("%{} has a dynamic shape", self.name(v))),
            })
            .collect()
    }

    /// Total bytes of constant data reachable from the body.
    pub fn constants_bytes(&self) -> u64 {
        fn region_bytes(m: &Module, r: &Region) -> u64 {
            let mut total: u64 = r
                .constants
                .iter()
                .filter_map(|&c| m.constant(c))
                .map(|d| d.byte_size())
                .sum();
            for n in &r.nodes {
                for (_, sub) in n.regions() {
                    total += region_bytes(m, sub);
                }
            }
            total
        }
        region_bytes(self, &self.body)
    }
}
