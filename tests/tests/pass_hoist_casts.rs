//! Pass `hoist-casts`, specified by example: every `tests/passes/hoist-casts/*.kir` is
//! parsed, verified, run through the pass, verified again, checked on the
//! interpreter against the unoptimized module (seeded random inputs), and
//! snapshotted as `<input> --- after hoist-casts --- <output>`.

mod pass_clean_util;

#[test]
fn cases() {
    for path in pass_clean_util::cases("hoist-casts") {
        let text = pass_clean_util::run_case("hoist-casts", &path);
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("case")
            .to_string();
        insta::assert_snapshot!(name, text);
    }
}
