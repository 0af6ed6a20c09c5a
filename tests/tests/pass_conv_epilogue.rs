//! Pass `conv-epilogue`, specified by example: every `tests/passes/conv-epilogue/*.kir` is
//! parsed, verified, run through the pass, verified again, checked on the
//! interpreter against the unoptimized module (seeded random inputs), and
//! snapshotted as `<input> --- after conv-epilogue --- <output>`.

mod pass_clean_util;

#[test]
fn cases() {
    for path in pass_clean_util::cases("conv-epilogue") {
        let text = pass_clean_util::run_case("conv-epilogue", &path);
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("case")
            .to_string();
        // What the pass folds depends on the host's conv strategy (the
        // implicit GEMM needs AVX2 and FMA): the snapshots are an AVX2
        // host's; elsewhere each case is still run and cross-checked on
        // the interpreter above.
        if avx2_fma() {
            insta::assert_snapshot!(name, text);
        }
    }
}

fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
