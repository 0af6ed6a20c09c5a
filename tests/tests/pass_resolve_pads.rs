//! Pass `resolve-pads`, specified by example: every `tests/passes/resolve-pads/*.kir` is
//! parsed, verified, run through the pass, verified again, checked on the
//! interpreter against the unoptimized module (seeded random inputs), and
//! snapshotted as `<input> --- after resolve-pads --- <output>`.

mod pass_clean_util;

#[test]
fn cases() {
    for path in pass_clean_util::cases("resolve-pads") {
        let text = pass_clean_util::run_case("resolve-pads", &path);
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("case")
            .to_string();
        insta::assert_snapshot!(name, text);
    }
}
