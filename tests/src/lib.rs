//! Shared helpers for Kiln integration tests (paths to the shared suite and models).
