//! ONNX graphs to IR modules: scopes, initializers, subgraphs, functions.
//!
//! Names are resolved through a stack of scopes (one per graph being
//! imported, innermost last) so a subgraph's nodes can use values of the
//! graphs that enclose it. Every value gets a module-unique IR name, derived
//! from its ONNX name. Model-local functions are inlined at each call. Each
//! node goes through [`super::canon`] so older op versions land in the one
//! canonical form, and its result types are inferred as it is added.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use kiln_ir::{Attr, Attrs, ElemType, Module, Node, Region, TensorData, Type, ValueId};
use prost::bytes::Bytes;
use prost::Message;

use super::mapped::MappedModel;
use super::proto::{self, attribute_proto::AttributeType};
pub use super::tensor::placeholder_type;
use super::tensor::{self, DataSource, TensorError};
use super::{canon, contrib};

/// An import failure: where (node, op type, opset or initializer) and what.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportError {
    /// `node "conv1" (Conv, opset 11)`, `initializer "w"`, `model`, ...
    pub context: String,
    pub message: String,
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.context, self.message)
    }
}

impl std::error::Error for ImportError {}

impl ImportError {
    pub fn new(context: impl Into<String>, message: impl std::fmt::Display) -> ImportError {
        ImportError {
            context: context.into(),
            message: message.to_string(),
        }
    }
}

/// Import an `.onnx` file; external data is read from its folder.
pub fn import_model_file(path: &Path, limits: &kiln_ir::Limits) -> Result<Module, ImportError> {
    let cannot_read = |e: std::io::Error| {
        ImportError::new(format!("{}", path.display()), format!("cannot read: {e}"))
    };
    let mapped = MappedModel::open(path).map_err(cannot_read)?;
    let bytes = match &mapped {
        Some(m) => m.bytes(),
        None => Bytes::from(std::fs::read(path).map_err(cannot_read)?),
    };
    // Tensor bytes stay in the file (slices of `bytes`) until each is
    // copied into the IR.
    let model = proto::ModelProto::decode(bytes)
        .map_err(|e| ImportError::new("model", format!("not a valid ONNX protobuf: {e}")))?;
    let source = DataSource {
        dir: path.parent(),
        file: mapped.as_ref(),
        limits: *limits,
    };
    import_model(&model, source)
}

/// Import a serialized ModelProto. `dir` is where external data may live.
pub fn import_model_bytes(
    bytes: &[u8],
    dir: Option<&Path>,
    limits: &kiln_ir::Limits,
) -> Result<Module, ImportError> {
    let model = proto::ModelProto::decode(bytes)
        .map_err(|e| ImportError::new("model", format!("not a valid ONNX protobuf: {e}")))?;
    let source = DataSource {
        dir,
        file: None,
        limits: *limits,
    };
    import_model(&model, source)
}

/// Import a decoded ModelProto whose tensor bytes come from `source`.
pub fn import_model(
    model: &proto::ModelProto,
    source: DataSource<'_>,
) -> Result<Module, ImportError> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| ImportError::new("model", "has no graph"))?;
    let mut opsets = Vec::new();
    for o in &model.opset_import {
        let d = canon_domain(o.domain());
        if !opsets.iter().any(|(x, _): &(String, i64)| *x == d) {
            opsets.push((d, o.version()));
        }
    }
    if opsets.is_empty() {
        // IR version 1/2 models had no opset_import: opset 1 is implied.
        opsets.push(("ai.onnx".to_string(), 1));
    }
    let functions = model
        .functions
        .iter()
        .map(|f| ((canon_domain(f.domain()), f.name().to_string()), f))
        .collect();
    let mut imp = Importer {
        m: Module::new(graph.name()),
        opsets: opsets.iter().cloned().collect(),
        functions,
        root: source,
        scopes: Vec::new(),
        inline_depth: 0,
        nodes: 0,
        constant_bytes: 0,
        input_hints: None,
    };
    imp.m.opsets = opsets;
    let body = imp.import_graph(graph, true)?;
    imp.m.body = body;
    // A second, module-wide inference carries shape values through
    // Shape/Gather/Concat chains into the ops that consume them.
    kiln_ir::ops::infer_module_with(&mut imp.m, kiln_ir::ops::DeclaredTypes::Replace)
        .map_err(|e| ImportError::new("model", e))?;
    Ok(imp.m)
}

/// The canonical spelling of a domain: `ai.onnx` for the default one.
pub fn canon_domain(d: &str) -> String {
    if d.is_empty() || d == "ai.onnx" {
        "ai.onnx".to_string()
    } else {
        d.to_string()
    }
}

/// The IR op name of an ONNX (domain, op_type).
pub fn ir_op_name(domain: &str, op_type: &str) -> String {
    let d = canon_domain(domain);
    if d == "ai.onnx" {
        op_type.to_string()
    } else {
        format!("{d}.{op_type}")
    }
}

struct Scope {
    names: HashMap<String, ValueId>,
    /// Declared types (value_info and graph outputs) of values to come.
    declared: HashMap<String, Type>,
}

pub(crate) struct Importer<'a> {
    pub(crate) m: Module,
    opsets: HashMap<String, i64>,
    functions: HashMap<(String, String), &'a proto::FunctionProto>,
    root: DataSource<'a>,
    scopes: Vec<Scope>,
    inline_depth: usize,
    /// Nodes and constant bytes imported so far, against `root.limits`.
    nodes: u64,
    constant_bytes: u64,
    /// Types for the inputs of the next subgraph, for inputs the model
    /// leaves untyped (a Loop body's carried values take their types from
    /// the Loop's operands).
    input_hints: Option<Vec<Option<Type>>>,
}

impl Importer<'_> {
    /// Count a constant's bytes against the model's memory limit.
    fn count_constant(
        &mut self,
        ctx: impl Fn() -> String,
        data: &TensorData,
    ) -> Result<(), ImportError> {
        self.constant_bytes = self.constant_bytes.saturating_add(data.byte_size());
        self.root
            .limits
            .total(|| "the model's constants".to_string(), self.constant_bytes)
            .map_err(|e| ImportError::new(ctx(), e))
    }
}

/// Where a node is, for error messages.
pub(crate) fn node_context(n: &proto::NodeProto, opset: i64) -> String {
    let op = ir_op_name(n.domain(), n.op_type());
    if n.name().is_empty() {
        format!("node {op} (opset {opset})")
    } else {
        format!("node \"{}\" ({op}, opset {opset})", n.name())
    }
}

impl<'a> Importer<'a> {
    fn resolve(&self, name: &str) -> Option<ValueId> {
        self.scopes
            .iter()
            .rev()
            .find_map(|s| s.names.get(name).copied())
    }

    fn bind(&mut self, name: &str, id: ValueId) {
        if let Some(s) = self.scopes.last_mut() {
            s.names.insert(name.to_string(), id);
        }
    }

    fn declared_type(&self, name: &str) -> Option<Type> {
        self.scopes
            .last()
            .and_then(|s| s.declared.get(name).cloned())
    }

    fn import_graph(
        &mut self,
        g: &proto::GraphProto,
        is_main: bool,
    ) -> Result<Region, ImportError> {
        // Every graph and every inlined call opens a scope.
        let depth = self.scopes.len();
        self.root
            .limits
            .nesting(|| format!("graph \"{}\"", g.name()), depth)
            .map_err(|e| ImportError::new("model", e))?;
        let mut declared = HashMap::new();
        for vi in g.value_info.iter().chain(&g.output) {
            if let Some(t) = &vi.r#type {
                if let Ok(ty) = tensor::type_from_proto(t) {
                    declared.insert(vi.name().to_string(), ty);
                }
            }
        }
        self.scopes.push(Scope {
            names: HashMap::new(),
            declared,
        });
        let result = self.import_graph_body(g, is_main);
        self.scopes.pop();
        result
    }

    fn import_graph_body(
        &mut self,
        g: &proto::GraphProto,
        is_main: bool,
    ) -> Result<Region, ImportError> {
        let mut region = Region::default();
        let hints = self.input_hints.take().unwrap_or_default();
        for t in &g.initializer {
            let ctx = || format!("initializer \"{}\"", t.name());
            let data =
                tensor::shared_tensor(t, &self.root).map_err(|e| ImportError::new(ctx(), e))?;
            self.count_constant(ctx, &data)?;
            let id = self.m.add_constant_unique(t.name(), data);
            self.bind(t.name(), id);
            region.constants.push(id);
        }
        for s in &g.sparse_initializer {
            let name = s.values.as_ref().map(|v| v.name()).unwrap_or_default();
            let ctx = || format!("sparse initializer \"{name}\"");
            let data =
                tensor::sparse_to_dense(s, &self.root).map_err(|e| ImportError::new(ctx(), e))?;
            self.count_constant(ctx, &data)?;
            let id = self.m.add_constant_unique(name, Arc::new(data));
            self.bind(name, id);
            region.constants.push(id);
        }
        for (i, vi) in g.input.iter().enumerate() {
            // An input with an initializer of the same name: in the main
            // graph it is a constant with a default (IR < 4 listed every
            // initializer as an input); Kiln treats it as the constant.
            if self
                .scopes
                .last()
                .is_some_and(|s| s.names.contains_key(vi.name()))
            {
                continue;
            }
            let ctx = || format!("graph input \"{}\"", vi.name());
            let ty = match &vi.r#type {
                Some(t) => tensor::type_from_proto(t).map_err(|e| ImportError::new(ctx(), e))?,
                None if !is_main => hints
                    .get(i)
                    .cloned()
                    .flatten()
                    .unwrap_or_else(placeholder_type),
                None => return Err(ImportError::new(ctx(), "has no type")),
            };
            let id = self.m.add_value_unique(vi.name(), ty);
            self.bind(vi.name(), id);
            region.inputs.push(id);
        }
        for n in &g.node {
            self.import_node(n, &mut region)?;
        }
        for vi in &g.output {
            let id = self.resolve(vi.name()).ok_or_else(|| {
                ImportError::new(
                    format!("graph output \"{}\"", vi.name()),
                    "is not produced by any node, input or initializer",
                )
            })?;
            region.outputs.push(id);
        }
        Ok(region)
    }

    fn opset_of(&self, domain: &str) -> i64 {
        let d = canon_domain(domain);
        self.opsets.get(&d).copied().unwrap_or(1)
    }

    fn import_node(
        &mut self,
        n: &proto::NodeProto,
        region: &mut Region,
    ) -> Result<(), ImportError> {
        let opset = self.opset_of(n.domain());
        let ctx = || node_context(n, opset);
        let key = (canon_domain(n.domain()), n.op_type().to_string());
        if let Some(f) = self.functions.get(&key).copied() {
            return self.inline_function(n, f, region);
        }
        // Counted after inlining: nested function calls can multiply.
        self.nodes += 1;
        self.root
            .limits
            .node_count(|| "the model".to_string(), self.nodes)
            .map_err(|e| ImportError::new(ctx(), e))?;
        let mut inputs = Vec::with_capacity(n.input.len());
        for name in &n.input {
            if name.is_empty() {
                inputs.push(None);
            } else {
                let id = self.resolve(name).ok_or_else(|| {
                    ImportError::new(ctx(), format!("input `{name}` is not defined before use"))
                })?;
                inputs.push(Some(id));
            }
        }
        self.input_hints = self.body_input_hints(n, &inputs);
        let mut attrs = Attrs::new();
        for a in &n.attribute {
            let v = self
                .convert_attr(a)
                .map_err(|e| ImportError::new(ctx(), e))?;
            attrs.insert(a.name().to_string(), v);
        }
        let op = ir_op_name(n.domain(), n.op_type());
        // Constant nodes become region constants.
        if op == "Constant" {
            let data =
                canon::constant_node_value(&attrs).map_err(|e| ImportError::new(ctx(), e))?;
            self.count_constant(ctx, &data)?;
            let out = n.output.first().map(String::as_str).unwrap_or_default();
            let id = self.m.add_constant_unique(out, Arc::new(data));
            self.bind(out, id);
            region.constants.push(id);
            return Ok(());
        }
        // Trailing omitted outputs are dropped; inner ones get a value that
        // nothing reads.
        let n_out = n
            .output
            .iter()
            .rposition(|s| !s.is_empty())
            .map_or(0, |i| i + 1);
        if n_out == 0 {
            // Every ONNX op has a result; rewrites below may rely on one.
            return Err(ImportError::new(ctx(), "the node has no results"));
        }
        let mut outputs = Vec::with_capacity(n_out);
        for name in &n.output[..n_out] {
            let hint = if name.is_empty() {
                format!(
                    "{}_unused",
                    if n.name().is_empty() {
                        n.op_type()
                    } else {
                        n.name()
                    }
                )
            } else {
                name.clone()
            };
            let ty = self.declared_type(name).unwrap_or_else(placeholder_type);
            let id = self.m.add_value_unique(&hint, ty);
            outputs.push(id);
        }
        let mut node = Node::new(op, inputs, outputs.clone());
        node.name = n.name().to_string();
        node.attrs = attrs;
        let mut cx = canon::CanonCtx {
            m: &mut self.m,
            region,
            opset,
        };
        if contrib::EXPANDED.contains(&node.op.as_str()) {
            contrib::expand(&mut cx, node)
        } else {
            canon::add_canonical(&mut cx, node)
        }
        .map_err(|e| ImportError::new(ctx(), e))?;
        for (name, id) in n.output[..n_out].iter().zip(outputs) {
            if !name.is_empty() {
                self.bind(name, id);
            }
        }
        Ok(())
    }

    /// Loop and Scan bodies may leave their inputs untyped; their types
    /// follow from the node's operands.
    fn body_input_hints(
        &self,
        n: &proto::NodeProto,
        inputs: &[Option<ValueId>],
    ) -> Option<Vec<Option<Type>>> {
        let ty = |v: &Option<ValueId>| v.map(|v| self.m.ty(v).clone());
        match (canon_domain(n.domain()).as_str(), n.op_type()) {
            ("ai.onnx", "Loop") => {
                let mut h = vec![
                    Some(Type::tensor(ElemType::I64, vec![])),
                    Some(Type::tensor(ElemType::Bool, vec![])),
                ];
                h.extend(inputs.iter().skip(2).map(ty));
                Some(h)
            }
            ("ai.onnx", "Scan") => {
                let scan_inputs = n
                    .attribute
                    .iter()
                    .find(|a| a.name() == "num_scan_inputs")
                    .map_or(0, |a| a.i()) as usize;
                // Scan-8 has a leading sequence_lens operand.
                let ops = if self.opset_of(n.domain()) < 9 {
                    inputs.get(1..).unwrap_or(&[])
                } else {
                    inputs
                };
                let states = ops.len().saturating_sub(scan_inputs);
                Some(
                    ops.iter()
                        .enumerate()
                        .map(|(i, v)| if i < states { ty(v) } else { None })
                        .collect(),
                )
            }
            _ => None,
        }
    }

    fn convert_attr(&mut self, a: &proto::AttributeProto) -> Result<Attr, String> {
        let t = |e: TensorError| e.to_string();
        let string = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        // Some old exporters leave `type` unset: infer it from the payload.
        let kind = match a.r#type() {
            AttributeType::Undefined => guess_attr_type(a),
            k => k,
        };
        Ok(match kind {
            AttributeType::Int => Attr::Int(a.i()),
            AttributeType::Float => Attr::Float(a.f()),
            AttributeType::String => Attr::String(string(a.s())),
            AttributeType::Tensor => {
                let tp = a.t.as_ref().ok_or("tensor attribute has no tensor")?;
                Attr::Tensor(tensor::shared_tensor(tp, &self.root).map_err(t)?)
            }
            AttributeType::SparseTensor => {
                let sp = a
                    .sparse_tensor
                    .as_ref()
                    .ok_or("sparse tensor attribute is empty")?;
                Attr::Tensor(Arc::new(
                    tensor::sparse_to_dense(sp, &self.root).map_err(t)?,
                ))
            }
            AttributeType::Graph => {
                let g = a.g.as_ref().ok_or("graph attribute has no graph")?;
                Attr::Graph(self.import_graph(g, false).map_err(|e| e.to_string())?)
            }
            AttributeType::TypeProto => {
                let tp = a.tp.as_ref().ok_or("type attribute has no type")?;
                Attr::Type(tensor::type_from_proto(tp).map_err(t)?)
            }
            AttributeType::Ints => Attr::Ints(a.ints.clone()),
            AttributeType::Floats => Attr::Floats(a.floats.clone()),
            AttributeType::Strings => Attr::Strings(a.strings.iter().map(|s| string(s)).collect()),
            AttributeType::Tensors => Attr::Tensors(
                a.tensors
                    .iter()
                    .map(|tp| tensor::shared_tensor(tp, &self.root))
                    .collect::<Result<_, _>>()
                    .map_err(t)?,
            ),
            AttributeType::Graphs => {
                let mut rs = Vec::new();
                for g in &a.graphs {
                    rs.push(self.import_graph(g, false).map_err(|e| e.to_string())?);
                }
                Attr::Graphs(rs)
            }
            AttributeType::TypeProtos => Attr::Types(
                a.type_protos
                    .iter()
                    .map(tensor::type_from_proto)
                    .collect::<Result<_, _>>()
                    .map_err(t)?,
            ),
            AttributeType::SparseTensors => {
                return Err(format!(
                    "attribute `{}`: lists of sparse tensors are not supported",
                    a.name()
                ))
            }
            AttributeType::Undefined => {
                return Err(format!("attribute `{}` has no type and no value", a.name()))
            }
        })
    }

    /// Inline a call of a model-local function: bind its formal inputs to
    /// the actual operands, substitute attribute references, import its
    /// nodes in a fresh scope, and bind the call's outputs to its results.
    fn inline_function(
        &mut self,
        call: &proto::NodeProto,
        f: &'a proto::FunctionProto,
        region: &mut Region,
    ) -> Result<(), ImportError> {
        let call_opset = self.opset_of(call.domain());
        let ctx = || node_context(call, call_opset);
        // Every graph and every inlined call opens a scope.
        let depth = self.scopes.len();
        self.root
            .limits
            .nesting(|| format!("function `{}`", f.name()), depth)
            .map_err(|e| ImportError::new(ctx(), format!("{e} (a recursive function?)")))?;
        let mut names = HashMap::new();
        for (i, formal) in f.input.iter().enumerate() {
            if let Some(actual) = call.input.get(i).filter(|s| !s.is_empty()) {
                let id = self.resolve(actual).ok_or_else(|| {
                    ImportError::new(ctx(), format!("input `{actual}` is not defined before use"))
                })?;
                names.insert(formal.clone(), id);
            }
        }
        // Attribute bindings: the call's, then the function's defaults.
        let mut bound: HashMap<&str, &proto::AttributeProto> = HashMap::new();
        for a in &f.attribute_proto {
            bound.insert(a.name(), a);
        }
        for a in &call.attribute {
            bound.insert(a.name(), a);
        }
        // Function bodies see only their own values (and outer scopes for
        // captured names are not allowed by ONNX); a fresh scope over the
        // current ones keeps name lookups local first.
        self.scopes.push(Scope {
            names,
            declared: HashMap::new(),
        });
        // The function's opset imports apply inside its body.
        // (Only the entries it changes are saved: a model whose functions
        // call each other a million times must not copy the table as often.)
        let saved: Vec<(String, Option<i64>)> = f
            .opset_import
            .iter()
            .map(|o| {
                let d = canon_domain(o.domain());
                let before = self.opsets.insert(d.clone(), o.version());
                (d, before)
            })
            .collect();
        self.inline_depth += 1;
        let mut result = Ok(());
        for inner in &f.node {
            // A copy only of nodes whose attributes refer to the call's.
            let substituted;
            let node = if inner.attribute.iter().all(|a| a.ref_attr_name().is_empty()) {
                inner
            } else {
                let mut copy = inner.clone();
                let mut attrs = Vec::new();
                for a in copy.attribute.drain(..) {
                    if a.ref_attr_name().is_empty() {
                        attrs.push(a);
                    } else if let Some(b) = bound.get(a.ref_attr_name()) {
                        let mut b = (*b).clone();
                        b.name = a.name.clone();
                        attrs.push(b);
                    }
                }
                copy.attribute = attrs;
                substituted = copy;
                &substituted
            };
            if let Err(e) = self.import_node(node, region) {
                result = Err(e);
                break;
            }
        }
        self.inline_depth -= 1;
        for (d, before) in saved.into_iter().rev() {
            match before {
                Some(v) => self.opsets.insert(d, v),
                None => self.opsets.remove(&d),
            };
        }
        let outs: Vec<Option<ValueId>> = f.output.iter().map(|o| self.resolve(o)).collect();
        self.scopes.pop();
        result?;
        for (i, actual) in call.output.iter().enumerate() {
            if actual.is_empty() {
                continue;
            }
            let id = outs.get(i).copied().flatten().ok_or_else(|| {
                ImportError::new(
                    ctx(),
                    format!("function `{}` does not produce output {i}", f.name()),
                )
            })?;
            // Give the result the caller's name where that name is free.
            let _ = self.m.rename(id, actual);
            self.bind(actual, id);
        }
        Ok(())
    }
}

fn guess_attr_type(a: &proto::AttributeProto) -> AttributeType {
    if a.f.is_some() {
        AttributeType::Float
    } else if a.i.is_some() {
        AttributeType::Int
    } else if a.s.is_some() {
        AttributeType::String
    } else if a.t.is_some() {
        AttributeType::Tensor
    } else if a.g.is_some() {
        AttributeType::Graph
    } else if !a.floats.is_empty() {
        AttributeType::Floats
    } else if !a.ints.is_empty() {
        AttributeType::Ints
    } else if !a.strings.is_empty() {
        AttributeType::Strings
    } else if !a.tensors.is_empty() {
        AttributeType::Tensors
    } else if !a.graphs.is_empty() {
        AttributeType::Graphs
    } else {
        AttributeType::Undefined
    }
}

/// Data of a constant given as raw `TensorData` (used by tests).
pub fn constant_data(t: &proto::TensorProto) -> Result<TensorData, TensorError> {
    tensor::tensor_from_proto(t, &DataSource::default())
}
