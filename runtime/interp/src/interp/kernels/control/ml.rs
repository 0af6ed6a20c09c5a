//! `ai.onnx.ml` ops: `ArrayFeatureExtractor`, `Binarizer`, `LabelEncoder`
//! and `TreeEnsemble`.

use std::collections::HashMap;

use kiln_ir::ElemType;

use super::common::{from_f64, out_elem};
use crate::interp::kernels::ctx::{bail, tensor, Ctx, KResult, KernelFn};
use crate::tensor::{Data, Tensor};
use crate::value::Value;

pub fn lookup(op: &str) -> Option<KernelFn> {
    Some(match op {
        "ai.onnx.ml.ArrayFeatureExtractor" => array_feature_extractor,
        "ai.onnx.ml.Binarizer" => binarizer,
        "ai.onnx.ml.LabelEncoder" => label_encoder,
        "ai.onnx.ml.TreeEnsemble" => tree_ensemble,
        _ => return None,
    })
}

fn array_feature_extractor(_: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let idx = tensor(inputs, 1)?.to_i64();
    let Some(&last) = x.shape.last() else {
        bail!("X must not be a scalar")
    };
    let picks = idx
        .iter()
        .map(|&i| {
            if i < 0 || i as usize >= last {
                bail!("index {i} is out of range for {last} features")
            } else {
                Ok(i as usize)
            }
        })
        .collect::<KResult<Vec<_>>>()?;
    let rows = x.len() / last.max(1);
    let mut gather = Vec::with_capacity(rows * picks.len());
    for r in 0..rows {
        gather.extend(picks.iter().map(|&p| r * last + p));
    }
    let shape = if x.rank() == 1 {
        vec![1, picks.len()]
    } else {
        let mut s = x.shape.clone();
        *s.last_mut().unwrap_or(&mut 0) = picks.len();
        s
    };
    Ok(vec![Value::tensor(Tensor::new(
        shape,
        x.data.gather(&gather),
    )?)])
}

fn binarizer(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let th = ctx.attr_float("threshold", 0.0) as f64;
    let v: Vec<f64> = x
        .to_f64()
        .iter()
        .map(|&a| if a > th { 1.0 } else { 0.0 })
        .collect();
    Ok(vec![Value::tensor(from_f64(
        x.elem(),
        x.shape.clone(),
        &v,
    )?)])
}

/// A lookup key: integers exactly, floats by their f64 bits (NaN made
/// canonical, -0 as +0), strings as themselves.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    I(i64),
    F(u64),
    S(String),
}

fn float_key(f: f64) -> Key {
    if f.is_nan() {
        Key::F(f64::NAN.to_bits())
    } else {
        Key::F((f + 0.0).to_bits())
    }
}

fn keys_of(d: &Data) -> Vec<Key> {
    match d {
        Data::Str(v) => v.iter().cloned().map(Key::S).collect(),
        d if d.elem().is_int() || d.elem() == ElemType::Bool => {
            d.to_i64().into_iter().map(Key::I).collect()
        }
        d => d.to_f64().into_iter().map(float_key).collect(),
    }
}

#[derive(Clone)]
enum Val {
    N(f64),
    I(i64),
    S(String),
}

fn vals_of(d: &Data) -> Vec<Val> {
    match d {
        Data::Str(v) => v.iter().cloned().map(Val::S).collect(),
        d if d.elem().is_int() => d.to_i64().into_iter().map(Val::I).collect(),
        d => d.to_f64().into_iter().map(Val::N).collect(),
    }
}

fn label_encoder(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let keys: Vec<Key> = if let Some(t) = ctx.attr_tensor("keys_tensor")? {
        keys_of(&t.data)
    } else if let Some(v) = ctx.attr_strings("keys_strings") {
        v.iter().cloned().map(Key::S).collect()
    } else if let Some(v) = ctx.attr_ints("keys_int64s") {
        v.iter().map(|&i| Key::I(i)).collect()
    } else if let Some(v) = ctx.attr_floats("keys_floats") {
        v.iter().map(|&f| float_key(f as f64)).collect()
    } else {
        bail!("no keys_* attribute")
    };
    let elem = out_elem(ctx, 0, x.elem());
    let (vals, default): (Vec<Val>, Val) = if let Some(t) = ctx.attr_tensor("values_tensor")? {
        let d = match ctx.attr_tensor("default_tensor")? {
            Some(d) if !d.is_empty() => vals_of(&d.data).swap_remove(0),
            _ => match t.elem() {
                ElemType::String => Val::S("_Unused".into()),
                e if e.is_int() => Val::I(-1),
                _ => Val::N(-0.0),
            },
        };
        (vals_of(&t.data), d)
    } else if let Some(v) = ctx.attr_strings("values_strings") {
        let d = ctx
            .attr_str("default_string")
            .unwrap_or("_Unused")
            .to_string();
        (v.iter().cloned().map(Val::S).collect(), Val::S(d))
    } else if let Some(v) = ctx.attr_ints("values_int64s") {
        (
            v.iter().map(|&i| Val::I(i)).collect(),
            Val::I(ctx.attr_int("default_int64", -1)),
        )
    } else if let Some(v) = ctx.attr_floats("values_floats") {
        (
            v.iter().map(|&f| Val::N(f as f64)).collect(),
            Val::N(ctx.attr_float("default_float", -0.0) as f64),
        )
    } else {
        bail!("no values_* attribute")
    };
    if keys.len() != vals.len() {
        bail!("{} keys but {} values", keys.len(), vals.len());
    }
    let map: HashMap<Key, Val> = keys.into_iter().zip(vals).collect();
    let out: Vec<Val> = keys_of(&x.data)
        .into_iter()
        .map(|k| map.get(&k).unwrap_or(&default).clone())
        .collect();
    let data = match elem {
        ElemType::String => Data::Str(
            out.into_iter()
                .map(|v| match v {
                    Val::S(s) => Ok(s),
                    _ => bail!("a non-string value for a string result"),
                })
                .collect::<KResult<_>>()?,
        ),
        e if e.is_int() => Data::from_i64(
            e,
            &out.iter()
                .map(|v| match v {
                    Val::I(i) => Ok(*i),
                    Val::N(f) => Ok(*f as i64),
                    Val::S(_) => bail!("a string value for an integer result"),
                })
                .collect::<KResult<Vec<_>>>()?,
        ),
        e => Data::from_f64(
            e,
            &out.iter()
                .map(|v| match v {
                    Val::I(i) => Ok(*i as f64),
                    Val::N(f) => Ok(*f),
                    Val::S(_) => bail!("a string value for a float result"),
                })
                .collect::<KResult<Vec<_>>>()?,
        ),
    };
    Ok(vec![Value::tensor(Tensor::new(x.shape.clone(), data)?)])
}

enum TreeNode {
    Leaf {
        weight: f64,
        target: usize,
    },
    Split {
        mode: u8,
        value: f64,
        set: Vec<f64>,
        feature: usize,
        missing_true: bool,
        t: Box<TreeNode>,
        f: Box<TreeNode>,
    },
}

impl TreeNode {
    fn predict(&self, row: &[f64]) -> (f64, usize) {
        let mut n = self;
        loop {
            match n {
                TreeNode::Leaf { weight, target } => return (*weight, *target),
                TreeNode::Split {
                    mode,
                    value,
                    set,
                    feature,
                    missing_true,
                    t,
                    f,
                } => {
                    let x = row[*feature];
                    let hit = match mode {
                        0 => x <= *value,
                        1 => x < *value,
                        2 => x >= *value,
                        3 => x > *value,
                        4 => x == *value,
                        5 => x != *value,
                        _ => set.contains(&x),
                    } || (*missing_true && x.is_nan());
                    n = if hit { t } else { f };
                }
            }
        }
    }
}

/// The node and leaf attributes of a `TreeEnsemble`.
struct Forest {
    featureids: Vec<i64>,
    truenodes: Vec<i64>,
    falsenodes: Vec<i64>,
    trueleafs: Vec<i64>,
    falseleafs: Vec<i64>,
    targetids: Vec<i64>,
    splits: Vec<f64>,
    weights: Vec<f64>,
    modes: Vec<u8>,
    missing: Vec<i64>,
    n_targets: usize,
    feats: usize,
}

impl Forest {
    /// Build the tree at node (or leaf) `i` as the reference does:
    /// depth-first, true branch first, each MEMBER node taking the next
    /// NaN-terminated set of `members`.
    fn build(
        &self,
        i: i64,
        leaf: bool,
        depth: usize,
        members: &mut dyn Iterator<Item = f64>,
    ) -> KResult<TreeNode> {
        if depth > self.modes.len() + 1 {
            bail!("the tree has a cycle");
        }
        if leaf {
            let li = usize::try_from(i)
                .ok()
                .filter(|&l| l < self.weights.len())
                .ok_or(format!("leaf {i} is out of range"))?;
            let target = self.targetids[li];
            if target < 0 || target as usize >= self.n_targets {
                bail!(
                    "leaf target {target} is out of range for {} targets",
                    self.n_targets
                );
            }
            return Ok(TreeNode::Leaf {
                weight: self.weights[li],
                target: target as usize,
            });
        }
        let ni = usize::try_from(i)
            .ok()
            .filter(|&n| n < self.modes.len())
            .ok_or(format!("node {i} is out of range"))?;
        let mode = self.modes[ni];
        if mode > 6 {
            bail!("unknown node mode {mode}");
        }
        let mut set = Vec::new();
        if mode == 6 {
            for m in &mut *members {
                if m.is_nan() {
                    break;
                }
                set.push(m);
            }
        }
        let feature = self.featureids[ni];
        if feature < 0 || feature as usize >= self.feats {
            bail!(
                "feature {feature} is out of range for {} features",
                self.feats
            );
        }
        let t = self.build(
            self.truenodes[ni],
            self.trueleafs[ni] != 0,
            depth + 1,
            members,
        )?;
        let f = self.build(
            self.falsenodes[ni],
            self.falseleafs[ni] != 0,
            depth + 1,
            members,
        )?;
        Ok(TreeNode::Split {
            mode,
            value: self.splits[ni],
            set,
            feature: feature as usize,
            missing_true: self.missing.get(ni).is_some_and(|&m| m != 0),
            t: Box::new(t),
            f: Box::new(f),
        })
    }
}

fn tree_ensemble(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let (rows, feats) = match x.shape[..] {
        [n, f] => (n, f),
        [f] => (1, f),
        _ => bail!("X must be [N, F], got {:?}", x.shape),
    };
    let ints = |name: &str| {
        ctx.attr_ints(name)
            .map(<[i64]>::to_vec)
            .ok_or_else(|| format!("attribute `{name}` is required"))
    };
    let tens = |name: &str| -> KResult<Option<Vec<f64>>> {
        Ok(ctx.attr_tensor(name)?.map(|t| t.to_f64()))
    };
    let featureids = ints("nodes_featureids")?;
    let truenodes = ints("nodes_truenodeids")?;
    let falsenodes = ints("nodes_falsenodeids")?;
    let trueleafs = ints("nodes_trueleafs")?;
    let falseleafs = ints("nodes_falseleafs")?;
    let targetids = ints("leaf_targetids")?;
    let roots = ints("tree_roots")?;
    let splits = tens("nodes_splits")?.ok_or("attribute `nodes_splits` is required")?;
    let weights = tens("leaf_weights")?.ok_or("attribute `leaf_weights` is required")?;
    let modes: Vec<u8> = match ctx.attr_tensor("nodes_modes")? {
        Some(t) => t.to_i64().into_iter().map(|m| m as u8).collect(),
        None => bail!("attribute `nodes_modes` is required"),
    };
    let missing: Vec<i64> = ctx
        .attr_ints("nodes_missing_value_tracks_true")
        .map(<[i64]>::to_vec)
        .unwrap_or_default();
    let members = tens("membership_values")?.unwrap_or_default();
    let n_targets = ctx.attr_int("n_targets", 1).max(0) as usize;
    let agg = ctx.attr_int("aggregate_function", 1);
    let post = ctx.attr_int("post_transform", 0);
    let nn = modes.len();
    if [
        featureids.len(),
        truenodes.len(),
        falsenodes.len(),
        trueleafs.len(),
        falseleafs.len(),
        splits.len(),
    ]
    .iter()
    .any(|&l| l != nn)
    {
        bail!("the nodes_* attributes disagree in length");
    }
    if targetids.len() != weights.len() {
        bail!("leaf_targetids and leaf_weights disagree in length");
    }
    let forest = Forest {
        featureids,
        truenodes,
        falsenodes,
        trueleafs,
        falseleafs,
        targetids,
        splits,
        weights,
        modes,
        missing,
        n_targets,
        feats,
    };
    let mut member_iter = members.into_iter();
    let mut trees = Vec::with_capacity(roots.len());
    for &root in &roots {
        let ri = usize::try_from(root)
            .ok()
            .filter(|&r| r < nn)
            .ok_or(format!("tree root {root} is out of range"))?;
        let f = &forest;
        let is_leaf =
            f.trueleafs[ri] != 0 && f.falseleafs[ri] != 0 && f.truenodes[ri] == f.falsenodes[ri];
        trees.push(f.build(root, is_leaf, 0, &mut member_iter)?);
    }
    let elem = x.elem();
    let (lowest, highest) = match elem {
        ElemType::F64 => (f64::MIN, f64::MAX),
        ElemType::F16 => (-65504.0, 65504.0),
        _ => (f32::MIN as f64, f32::MAX as f64),
    };
    let xv = x.to_f64();
    let mut out = vec![0.0; rows * n_targets];
    for r in 0..rows {
        let row = &xv[r * feats..(r + 1) * feats];
        let res = &mut out[r * n_targets..(r + 1) * n_targets];
        match agg {
            2 => res.fill(highest),
            3 => res.fill(lowest),
            0 | 1 => {}
            a => bail!("unknown aggregate_function {a}"),
        }
        for tree in &trees {
            let (w, t) = tree.predict(row);
            match agg {
                0 => res[t] += w / trees.len() as f64,
                1 => res[t] += w,
                2 => res[t] = res[t].min(w),
                _ => res[t] = res[t].max(w),
            }
        }
        match post {
            0 => {}
            1 | 3 => {
                let zero = post == 3;
                let m = res
                    .iter()
                    .copied()
                    .filter(|v| !(zero && *v == 0.0))
                    .fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = res
                    .iter()
                    .filter(|v| !(zero && **v == 0.0))
                    .map(|v| (v - m).exp())
                    .sum();
                for v in res.iter_mut() {
                    if !(zero && *v == 0.0) {
                        *v = (*v - m).exp() / sum;
                    }
                }
            }
            2 => res.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
            p => bail!("post_transform {p} is not supported"),
        }
    }
    Ok(vec![Value::tensor(from_f64(
        elem,
        vec![rows, n_targets],
        &out,
    )?)])
}
