//! Resource limits: how much a model may ask for. Every size that comes
//! from a model (one tensor's bytes, all constants together, the nodes
//! after functions are inlined, nesting, the iterations a loop runs, a
//! run-time allocation) is checked against a [`Limits`] before the memory
//! is taken or the work is done. Exceeding one is an error naming what
//! asked and the limit, never an abort and never a hang.
//!
//! The defaults are far above what real models need (the largest single
//! tensors of public LLM exports are about 2 GiB in f32) and far below
//! what would take a machine down; `kiln --max-memory` and `--max-nodes`
//! change them.

/// The limits one import, compile or run works within.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of any one tensor: a constant, a folded result, a value made
    /// at run time.
    pub tensor_bytes: u64,
    /// Bytes of a model's constants together, of the cpu backend's arena,
    /// and of the values one interpreter run holds at once.
    pub memory_bytes: u64,
    /// Nodes of a model after its functions are inlined (nested regions
    /// included).
    pub nodes: u64,
    /// Nesting of subgraphs and function calls.
    pub depth: usize,
    /// Iterations one `Loop` or `Scan` may run (counted as they run:
    /// exporters write `while` loops as the maximum trip count and a
    /// condition).
    pub loop_iterations: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            tensor_bytes: 4 << 30,
            memory_bytes: 32 << 30,
            nodes: 1 << 18,
            depth: 64,
            loop_iterations: 1 << 20,
        }
    }
}

/// A limit a model exceeded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} {asks}; the limit is {allowed} ({hint})")]
pub struct LimitError {
    /// What asked: `ConstantOfShape result of shape [1048576, 1048576]`.
    pub what: String,
    /// `needs 4398046511104 bytes`, `runs more than 1048576 iterations`.
    pub asks: String,
    pub allowed: u64,
    /// How to raise it.
    pub hint: &'static str,
}

impl Limits {
    /// The byte size of a tensor of `elem` and `shape` (sub-byte types
    /// packed; strings, whose size is their data's, at least a byte per
    /// element), checked against [`Limits::tensor_bytes`] and
    /// [`Limits::memory_bytes`]; overflow counts as too large.
    pub fn tensor(
        &self,
        what: impl FnOnce() -> String,
        elem: crate::ElemType,
        shape: &[u64],
    ) -> Result<u64, LimitError> {
        let bytes = crate::tensor::shape_numel(shape)
            .and_then(|n| elem.storage_bytes(n).or(Some(n)))
            .unwrap_or(u64::MAX);
        self.bytes(what, bytes)
    }

    /// `bytes` for one tensor, checked like [`Limits::tensor`].
    pub fn bytes(&self, what: impl FnOnce() -> String, bytes: u64) -> Result<u64, LimitError> {
        let allowed = self.tensor_bytes.min(self.memory_bytes);
        if bytes > allowed {
            return Err(LimitError {
                what: what(),
                asks: describe_bytes(bytes),
                allowed,
                hint: "bytes per tensor; raise it with --max-memory",
            });
        }
        Ok(bytes)
    }

    /// A running total of bytes (all constants, one run's allocations)
    /// against [`Limits::memory_bytes`].
    pub fn total(&self, what: impl FnOnce() -> String, bytes: u64) -> Result<(), LimitError> {
        if bytes > self.memory_bytes {
            return Err(LimitError {
                what: what(),
                asks: describe_bytes(bytes),
                allowed: self.memory_bytes,
                hint: "bytes in all; raise it with --max-memory",
            });
        }
        Ok(())
    }

    /// A node count against [`Limits::nodes`].
    pub fn node_count(&self, what: impl FnOnce() -> String, n: u64) -> Result<(), LimitError> {
        if n > self.nodes {
            return Err(LimitError {
                what: what(),
                asks: format!("has more than {} nodes", self.nodes),
                allowed: self.nodes,
                hint: "nodes after inlining functions; raise it with --max-nodes",
            });
        }
        Ok(())
    }

    /// A nesting depth against [`Limits::depth`].
    pub fn nesting(&self, what: impl FnOnce() -> String, depth: usize) -> Result<(), LimitError> {
        if depth > self.depth {
            return Err(LimitError {
                what: what(),
                asks: format!("nests {depth} deep"),
                allowed: self.depth as u64,
                hint: "levels of subgraphs and function calls",
            });
        }
        Ok(())
    }

    /// The iterations a loop has run so far against
    /// [`Limits::loop_iterations`].
    pub fn iterations(&self, what: impl FnOnce() -> String, done: u64) -> Result<(), LimitError> {
        if done > self.loop_iterations {
            return Err(LimitError {
                what: what(),
                asks: format!("runs more than {} iterations", self.loop_iterations),
                allowed: self.loop_iterations,
                hint: "iterations of one loop",
            });
        }
        Ok(())
    }
}

fn describe_bytes(n: u64) -> String {
    if n == u64::MAX {
        "needs more bytes than 64 bits count".to_string()
    } else {
        format!("needs {n} bytes")
    }
}

/// Parses a byte size as the command line takes it: `512M`, `8G`, `1.5G`,
/// `4096` (bytes), with K/M/G/T as powers of 1024 (an optional trailing
/// `B` or `iB` is accepted).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("`{s}`: unknown unit `{c}` (use K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a size (examples: 512M, 8G, 4096)"))?;
    let bytes = v * (1u64 << shift) as f64;
    if !(bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ElemType;

    #[test]
    fn sizes_parse_as_the_command_line_writes_them() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("8G"), Ok(8 << 30));
        assert_eq!(parse_bytes("1.5GiB"), Ok(3 << 29));
        assert!(parse_bytes("8X").is_err());
        assert!(parse_bytes("-1G").is_err());
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn a_tensor_past_the_limit_names_itself() {
        let l = Limits::default();
        let e = l
            .tensor(
                || "ConstantOfShape result".into(),
                ElemType::F32,
                &[1 << 20, 1 << 20],
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "ConstantOfShape result needs 4398046511104 bytes; the limit is 4294967296 (bytes per tensor; raise it with --max-memory)"
        );
        let overflow = l
            .tensor(|| "x".into(), ElemType::F64, &[u64::MAX, 2])
            .unwrap_err();
        assert!(overflow.to_string().contains("64 bits"), "{overflow}");
        assert_eq!(l.tensor(|| "x".into(), ElemType::F32, &[2, 3]), Ok(24));
    }
}
