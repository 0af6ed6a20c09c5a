//! [`InterpError`]: how a run fails. Its own module because both the
//! interpreter and the kernels (whose errors wrap those of the regions
//! they run) name it.

/// A run-time failure, naming the node (op and source name) that failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{node}: {message}")]
pub struct InterpError {
    /// `Conv "conv1"`, or `graph input %x`, ...
    pub node: String,
    pub message: String,
}

impl InterpError {
    pub fn new(node: impl Into<String>, message: impl Into<String>) -> InterpError {
        InterpError {
            node: node.into(),
            message: message.into(),
        }
    }
}
