//! The registry: every op's schema, built once from the generated table
//! (`schemas.rs`), the hand-written opset 23-24 ops (`schemas_opset24.rs`)
//! and Kiln's own ops (`kiln.rs`), each linked to its
//! inference rule (`rules/`) and its traits (`traits.rs`), and looked up by
//! name. Also the [`InferCtx`] constructor and `infer`, which look the op
//! up here.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::kiln::KILN_SCHEMAS;
use super::rules::{fallback, rule_for};
use super::schema::{InferCtx, InferError, OpSchema};
use super::schemas::SCHEMAS;
use super::schemas_opset24::OPSET24_SCHEMAS;
use super::traits::{table_entry, OpTraits};
use crate::attr::Attrs;
use crate::types::Type;

struct Registry {
    schemas: Vec<OpSchema>,
    by_name: HashMap<&'static str, usize>,
}

fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(|| {
        let schemas: Vec<OpSchema> = SCHEMAS
            .iter()
            .chain(OPSET24_SCHEMAS)
            .chain(KILN_SCHEMAS)
            .map(|r| {
                let rule = rule_for(r.name);
                OpSchema {
                    name: r.name,
                    domain: r.domain,
                    since_version: r.since_version,
                    deprecated: r.deprecated,
                    min_inputs: r.min_inputs,
                    max_inputs: r.max_inputs,
                    min_outputs: r.min_outputs,
                    max_outputs: r.max_outputs,
                    input_names: r.input_names,
                    input_options: r.input_options,
                    output_names: r.output_names,
                    attrs: r.attrs,
                    infer: rule.unwrap_or(fallback),
                    has_rule: rule.is_some(),
                    traits: table_entry(r.name),
                    summary: r.summary,
                }
            })
            .collect();
        let by_name = schemas
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name, i))
            .collect();
        Registry { schemas, by_name }
    })
}

/// The schema of an op by canonical name.
pub fn lookup(op: &str) -> Option<&'static OpSchema> {
    let r = registry();
    r.by_name.get(op).map(|&i| &r.schemas[i])
}

/// The traits of an op by canonical name ([`OpTraits::NONE`] for an op the
/// registry does not know).
pub fn traits(op: &str) -> OpTraits {
    lookup(op).map_or(OpTraits::NONE, |s| s.traits)
}

/// Every op of the registry, sorted by name.
pub fn all() -> impl Iterator<Item = &'static OpSchema> {
    registry().schemas.iter()
}

impl<'a> InferCtx<'a> {
    /// Build a context without regions or declared types (tests, passes).
    pub fn new(op: &'a str, inputs: Vec<Option<&'a Type>>, attrs: &'a Attrs) -> InferCtx<'a> {
        let n = inputs.len();
        InferCtx {
            op,
            node: op.to_string(),
            inputs,
            consts: vec![None; n],
            values: vec![None; n],
            attrs,
            num_outputs: lookup(op).map(|s| s.min_outputs.max(1)).unwrap_or(1),
            declared: vec![],
            regions: vec![],
            value_reads: Default::default(),
        }
    }

    /// Run the registered rule.
    pub fn infer(&self) -> Result<Vec<Type>, InferError> {
        match lookup(self.op) {
            Some(s) => (s.infer)(self),
            None => Err(InferError::Invalid(format!("unknown op `{}`", self.op))),
        }
    }
}
