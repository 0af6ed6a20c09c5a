//! Unit tests of the registry and the inference rules.

use super::*;
