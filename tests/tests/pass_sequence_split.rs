//! Pass `sequence-split`, specified by example: every
//! `tests/passes/sequence-split/*.kir` is parsed, verified, run through the pass, verified again, checked on the
//! interpreter against the unoptimized module (seeded random inputs), and
//! snapshotted as `<input> --- after sequence-split --- <output>`.

mod pass_clean_util;

#[test]
fn cases() {
    for path in pass_clean_util::cases("sequence-split") {
        let text = pass_clean_util::run_case("sequence-split", &path);
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("case")
            .to_string();
        insta::assert_snapshot!(name, text);
    }
}
