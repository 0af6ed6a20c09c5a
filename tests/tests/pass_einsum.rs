//! Pass `einsum`, specified by example: every `tests/passes/einsum/*.kir`
//! is parsed, verified, run through the pass, verified again, checked on
//! the interpreter against the unoptimized module (seeded random inputs),
//! and snapshotted as `<input> --- after einsum --- <output>`.

mod pass_clean_util;

#[test]
fn cases() {
    for (name, text) in pass_clean_util::snapshots("einsum") {
        insta::assert_snapshot!(name, text);
    }
}
