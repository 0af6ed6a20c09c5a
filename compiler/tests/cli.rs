//! The `kiln` binary as users meet it: exit codes, output formats, files,
//! and error text on stderr.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln")
}

fn tiny_cnn() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/models/tiny_cnn")
        .display()
        .to_string()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn dump_text_then_reparse_reprints_identically() {
    let out = kiln(&["dump", &tiny_cnn()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("module @tiny_cnn opset(ai.onnx = 17) {"));
    assert!(text.contains("= Conv(%image, %conv1.w, %conv1.b)"));
    let kir = tmp("tiny.kir");
    let wrote = kiln(&["dump", &tiny_cnn(), "-o", kir.to_str().unwrap_or_default()]);
    assert!(wrote.status.success() && wrote.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&kir).unwrap_or_default(), text);
    let again = kiln(&["dump", kir.to_str().unwrap_or_default()]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(stdout(&again), text);
}

#[test]
fn dump_no_elide_keeps_every_value_and_still_round_trips() {
    let full = stdout(&kiln(&["dump", &tiny_cnn(), "--no-elide"]));
    assert!(!full.contains("elided"));
    let kir = tmp("full.kir");
    std::fs::write(&kir, &full).expect("write");
    assert_eq!(
        stdout(&kiln(&[
            "dump",
            kir.to_str().unwrap_or_default(),
            "--no-elide"
        ])),
        full
    );
}

#[test]
fn dump_json_is_machine_readable() {
    let out = kiln(&["dump", &tiny_cnn(), "--format", "json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(v["name"], "tiny_cnn");
    assert_eq!(v["opsets"]["ai.onnx"], 17);
    let nodes = v["body"]["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 9);
    assert_eq!(nodes[0]["op"], "Conv");
    assert_eq!(nodes[0]["attrs"]["pads"], serde_json::json!([1, 1, 1, 1]));
    assert_eq!(
        nodes[0]["outputs"][0]["type"]["shape"],
        serde_json::json!(["N", 8, 28, 28])
    );
    assert_eq!(v["body"]["inputs"][0]["type"]["elem"], "f32");
}

#[test]
fn dump_dot_is_a_digraph_with_every_op() {
    let out = kiln(&["dump", &tiny_cnn(), "--format", "dot"]);
    assert!(out.status.success());
    let dot = stdout(&out);
    assert!(dot.starts_with("digraph \"tiny_cnn\" {") && dot.trim_end().ends_with('}'));
    for op in [
        "Conv",
        "Relu",
        "MaxPool",
        "GlobalAveragePool",
        "Flatten",
        "Gemm",
        "Softmax",
    ] {
        assert!(dot.contains(&format!("label=\"{op}\\n")), "{op} missing");
    }
    assert!(dot.contains("->"));
}

#[test]
fn text_typo_reports_line_col_and_caret() {
    let kir = tmp("typo.kir");
    std::fs::write(&kir, "module @m opset(ai.onnx = 17) {\n  input %x: f32[2]\n  %y = Relu(%x : f32[2]\n  return %y\n}\n")
        .expect("write");
    let out = kiln(&["dump", kir.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("typo.kir:3:16"), "{err}");
    assert!(err.contains("%y = Relu(%x : f32[2]"), "{err}");
    assert!(err.contains("expected `,` or `)`, found `:`"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_inputs_fail_cleanly() {
    let missing = kiln(&["dump", "/nonexistent/model.onnx"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).starts_with("error: /nonexistent/model.onnx: "));

    let junk = tmp("junk.onnx");
    std::fs::write(&junk, b"\x0a\xff\xff\xff\xff\x0f").expect("write");
    let out = kiln(&["dump", junk.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a valid ONNX protobuf"),
        "{}",
        stderr(&out)
    );

    let unknown = kiln(&["dump", "Cargo.toml"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("unknown model format"));
}

#[test]
fn help_describes_every_subcommand() {
    let out = kiln(&["--help"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("dump"));
    let dump = kiln(&["dump", "--help"]);
    assert!(stdout(&dump).contains("--format"));
}

#[test]
fn conformance_prints_one_line_per_test_and_the_closing_count() {
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/onnx-backend-node");
    if !suite.is_dir() {
        return;
    }
    let json = tmp("conf.json");
    let out = kiln(&[
        "conformance",
        suite.join("test_constant").to_str().unwrap_or_default(),
        suite.join("test_relu").to_str().unwrap_or_default(),
        "--json",
        json.to_str().unwrap_or_default(),
    ]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0], "PASS test_constant");
    assert!(lines[1].starts_with("PASS test_relu") || lines[1].starts_with("FAIL test_relu"));
    let last = lines[2];
    let nums: Vec<&str> = last.split(", ").collect();
    assert!(
        nums.len() == 3
            && nums[0].ends_with(" passed")
            && nums[1].ends_with(" failed")
            && nums[2].ends_with(" skipped"),
        "{last}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap_or_default()).expect("json");
    assert_eq!(v["backend"], "interp");
    assert_eq!(v["tests"][0]["test"], "test_constant");
    assert_eq!(v["tests"][0]["status"], "pass");
}

#[test]
fn run_writes_outputs_and_summarizes_them() {
    let dir = tmp("run-out");
    let input = format!("image={}/test_data_set_0/input_0.pb", tiny_cnn());
    let out = kiln(&[
        "run",
        &tiny_cnn(),
        "--input",
        &input,
        "--output-dir",
        dir.to_str().unwrap_or_default(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("probs: f32[1, 10] min="), "{text}");
    assert!(dir.join("probs.pb").is_file());
    // The written output equals the expected one (the harness's rule).
    let m = kiln_compiler::load_model(Path::new(&tiny_cnn())).expect("model");
    let ty = m.ty(m.body.outputs[0]);
    let got = kiln_compiler::testdata::read_value(&dir.join("probs.pb"), ty).expect("read back");
    let want = kiln_compiler::testdata::read_value(
        &Path::new(&tiny_cnn()).join("test_data_set_0/output_0.pb"),
        ty,
    )
    .expect("expected");
    kiln_compiler::conformance::compare(
        &got,
        &want,
        kiln_compiler::conformance::Tolerance {
            rtol: 1e-4,
            atol: 1e-6,
            quantized: false,
        },
    )
    .expect("matches");
}

#[test]
fn run_names_missing_and_unknown_inputs() {
    let out = kiln(&["run", &tiny_cnn()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("missing inputs: image (f32[N,1,28,28])"),
        "{}",
        stderr(&out)
    );
    let out = kiln(&["run", &tiny_cnn(), "--input", "pixels=x.pb"]);
    assert!(
        stderr(&out).contains("the model has no input `pixels`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn dump_o2_stats_is_one_json_line_with_the_documented_keys() {
    let out = kiln(&["dump", &tiny_cnn(), "-O2", "--stats"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    for key in [
        "nodes_before",
        "nodes_after",
        "kernels",
        "fused_ops",
        "arena_bytes",
        "naive_bytes",
        "constants_bytes",
    ] {
        assert!(v[key].is_u64(), "{key} missing in {text}");
    }
    assert!(v["arena_bytes"].as_u64() <= v["naive_bytes"].as_u64());
}

#[test]
fn dump_passes_can_be_watched_printed_and_timed() {
    // A module every cleanup pass has work on.
    let kir = tmp("passes.kir");
    std::fs::write(
        &kir,
        "module @m opset(ai.onnx = 17) {\n  input %x: f32[2]\n  const %one: f32[] = dense[1.0]\n  %a = Mul(%x, %one) : f32[2]\n  %b = Relu(%a) : f32[2]\n  %c = Relu(%a) : f32[2]\n  %d = Add(%b, %c) : f32[2]\n  %dead = Neg(%x) : f32[2]\n  return %d\n}\n",
    )
    .expect("write");
    let k = kir.to_str().unwrap_or_default();
    let all = stdout(&kiln(&["dump", k, "-O1", "--print-after-all"]));
    // fold-qdq, qdq-lookup, fold-weight-dq, constant-fold,
    // sequence-split, einsum, expand-composites, then simplify.
    assert!(all.contains("# after 8: simplify\n"), "{all}");
    assert!(all.contains(": cse\n") && all.contains(": dce\n"), "{all}");
    let some = stdout(&kiln(&["dump", k, "-O1", "--print-after", "dce"]));
    assert!(
        some.starts_with("# after ") && some.contains(": dce\n") && !some.contains(": cse\n"),
        "{some}"
    );
    let dir = tmp("dumps");
    let out = kiln(&[
        "dump",
        k,
        "-O1",
        "--dump-dir",
        dir.to_str().unwrap_or_default(),
        "--time-passes",
        "--verify",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files[0], "0000.input.kir");
    assert!(
        files.iter().any(|f| f.ends_with(".after.simplify.kir")),
        "{files:?}"
    );
    let table = stderr(&out);
    assert!(
        table.starts_with("pass ") && table.contains("\ntotal "),
        "{table}"
    );
    let unknown = kiln(&["dump", k, "--print-after", "nope"]);
    assert!(stderr(&unknown).contains("unknown pass `nope`"));
}

#[test]
fn dump_memory_plan_lists_buffers_as_comments() {
    let out = kiln(&["dump", &tiny_cnn(), "-O2", "--memory-plan", "--dim", "N=2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("\n# value "), "{text}");
    assert!(text.contains("\n# arena_bytes: "), "{text}");
}

#[test]
fn check_reports_a_clean_pipeline() {
    let out = kiln(&["check", &tiny_cnn()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("ok: "));
}

#[test]
fn dump_explain_fusion_says_why_neighbours_stay_apart() {
    let out = kiln(&["dump", &tiny_cnn(), "--explain-fusion"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    // MaxPool is neither elementwise, a reduction nor a matmul/conv: it
    // separates the Relu before it from the Conv after it.
    assert!(
        text.contains("(Relu) -> %p1 (MaxPool): consumer is not fusible"),
        "{text}"
    );
    assert!(
        text.lines().all(|l| l.contains(" -> ") && l.contains(": ")),
        "{text}"
    );
}

#[test]
fn bench_json_is_one_line_with_the_documented_keys() {
    let out = kiln(&["bench", &tiny_cnn(), "--runs", "3", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["backend"], "cpu");
    assert_eq!(v["threads"], 1);
    assert_eq!(v["runs"], 3);
    for key in ["median_ms", "min_ms", "p90_ms", "compile_ms", "peak_rss_mb"] {
        assert!(v[key].as_f64().is_some_and(|x| x >= 0.0), "{key} in {text}");
    }
    assert!(v["model"].as_str().is_some_and(|m| m.contains("tiny_cnn")));
    assert!(v["min_ms"].as_f64() <= v["median_ms"].as_f64());
    assert!(v["median_ms"].as_f64() <= v["p90_ms"].as_f64());
}

#[test]
fn profile_lists_every_kernel_with_its_share() {
    let out = kiln(&["profile", &tiny_cnn(), "--runs", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.contains("share") && first.contains("GFLOP/s"),
        "{text}"
    );
    assert!(text.contains("%r1: "), "{text}");
    assert!(
        text.lines()
            .last()
            .unwrap_or_default()
            .contains("total ms per run"),
        "{text}"
    );
}

#[test]
fn backend_report_says_how_each_node_runs() {
    let out = kiln(&["dump", &tiny_cnn(), "--backend-report"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| l.starts_with("native  %") || l.starts_with("interp  %")),
        "{text}"
    );
    assert!(
        text.lines().last().unwrap_or_default().starts_with("# "),
        "{text}"
    );
}

#[test]
fn run_on_the_cpu_backend_matches_the_interpreter() {
    let input = format!("image={}/test_data_set_0/input_0.pb", tiny_cnn());
    let cpu = kiln(&["run", &tiny_cnn(), "--input", &input]);
    let interp = kiln(&["run", &tiny_cnn(), "--input", &input, "--backend", "interp"]);
    assert!(cpu.status.success(), "{}", stderr(&cpu));
    assert!(interp.status.success(), "{}", stderr(&interp));
    // The summaries (shape, min/max/mean to 4 digits) agree.
    assert_eq!(stdout(&cpu), stdout(&interp));
}

/// The memory contract of the architecture issue: a compiled shared model
/// holds its weights once (packed copies replace the originals; import
/// and folding never hold two copies at once) and its intermediates in
/// the arena, so peak RSS stays within `constants_bytes` (from `dump
/// --stats`) + the arena + 40 MB for the binary, the JIT and allocator
/// slack.
#[test]
fn shared_models_peak_memory_is_weights_once_plus_the_arena() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/models");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("skipping: no shared models at {}", dir.display());
        return;
    };
    let mut models: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    models.sort();
    for m in &models {
        let m = m.display().to_string();
        let stats = kiln(&["dump", &m, "-O2", "--stats"]);
        assert!(stats.status.success(), "{}", stderr(&stats));
        let stats: serde_json::Value = serde_json::from_str(stdout(&stats).trim()).expect("json");
        let bench = kiln(&["bench", &m, "--runs", "1", "--json"]);
        assert!(bench.status.success(), "{}", stderr(&bench));
        let bench: serde_json::Value = serde_json::from_str(stdout(&bench).trim()).expect("json");
        let mib = |x: f64| x / (1024.0 * 1024.0);
        let constants = mib(stats["constants_bytes"].as_f64().expect("constants_bytes"));
        let arena = bench["arena_mb"].as_f64().expect("arena_mb");
        let peak = bench["peak_rss_mb"].as_f64().expect("peak_rss_mb");
        assert!(
            peak <= constants + arena + 40.0,
            "{m}: peak RSS {peak:.1} MiB > constants {constants:.1} + arena {arena:.1} + 40"
        );
    }
}

#[test]
fn max_memory_and_max_nodes_bound_what_a_model_may_ask_for() {
    // tiny_cnn's first filter is 288 bytes.
    let out = kiln(&["dump", &tiny_cnn(), "--max-memory", "100"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("initializer \"conv1.w\"") && err.contains("288 bytes; the limit is 100"),
        "{err}"
    );
    let out = kiln(&["run", &tiny_cnn(), "--max-nodes", "2", "--input", "image=x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("more than 2 nodes"),
        "{}",
        stderr(&out)
    );
    let out = kiln(&["bench", &tiny_cnn(), "--max-memory", "64K", "--runs", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = kiln(&["dump", &tiny_cnn(), "--max-memory", "lots"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("use K, M, G or T"),
        "{}",
        stderr(&out)
    );
}

/// `kiln quantize` on the bundled CNN: a QDQ model, the table on stdout,
/// the JSON report with its contract keys; repeating with the printed
/// exclusion works; bad flags are errors.
#[test]
fn quantize_writes_a_qdq_model_a_table_and_a_report() {
    let out = tmp("tiny_int8.onnx");
    let report = tmp("tiny_int8.json");
    let o = kiln(&[
        "quantize",
        &tiny_cnn(),
        "-o",
        out.to_str().unwrap_or_default(),
        "--random",
        "4",
        "--method",
        "entropy",
        "--report",
        report.to_str().unwrap_or_default(),
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("output "), "{text}");
    assert!(text.contains("layer ") && text.contains("opset"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap_or_default()).expect("json");
    for key in [
        "outputs",
        "layers",
        "excluded",
        "size_before_bytes",
        "size_after_bytes",
        "latency_before_ms",
        "latency_after_ms",
    ] {
        assert!(json.get(key).is_some(), "{key}");
    }
    let dump = kiln(&["dump", out.to_str().unwrap_or_default()]);
    assert!(
        stdout(&dump).contains("QuantizeLinear"),
        "{}",
        stderr(&dump)
    );
    let bad = kiln(&[
        "quantize",
        &tiny_cnn(),
        "-o",
        "x.onnx",
        "--random",
        "2",
        "--tolerance",
        "cos=1",
    ]);
    assert!(
        !bad.status.success() && stderr(&bad).contains("unknown metric"),
        "{}",
        stderr(&bad)
    );
    let none = kiln(&["quantize", &tiny_cnn(), "-o", "x.onnx"]);
    assert!(
        stderr(&none).contains("--calibration DIR, --images DIR or --random N"),
        "{}",
        stderr(&none)
    );
}

/// `kiln prune` with a sweep: the table, the report's sweep, the plot.
#[test]
fn prune_sweeps_reports_and_plots() {
    let out = tmp("tiny_pruned.onnx");
    let report = tmp("tiny_pruned.json");
    let plot = tmp("tiny_pruned.svg");
    let o = kiln(&[
        "prune",
        &tiny_cnn(),
        "-o",
        out.to_str().unwrap_or_default(),
        "--random",
        "3",
        "--sweep",
        "0:0.6:0.3",
        "--tolerance",
        "max-abs=1e9",
        "--report",
        report.to_str().unwrap_or_default(),
        "--plot",
        plot.to_str().unwrap_or_default(),
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("sparsity "), "{}", stdout(&o));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap_or_default()).expect("json");
    assert_eq!(json["sweep"].as_array().map(Vec::len), Some(3));
    assert_eq!(json["sparsity"], 0.6);
    assert!(std::fs::read_to_string(&plot)
        .unwrap_or_default()
        .starts_with("<svg"));
    let bad = kiln(&[
        "prune",
        &tiny_cnn(),
        "-o",
        "x.onnx",
        "--random",
        "1",
        "--pattern",
        "4:2",
    ]);
    assert!(stderr(&bad).contains("expected N:M"), "{}", stderr(&bad));
    let sweep_alone = kiln(&[
        "prune",
        &tiny_cnn(),
        "-o",
        "x.onnx",
        "--random",
        "1",
        "--sweep",
        "0:0.5:0.1",
    ]);
    assert!(
        stderr(&sweep_alone).contains("needs --tolerance"),
        "{}",
        stderr(&sweep_alone)
    );
}

/// `kiln quantize --images`: a folder of PNGs calibrates the one-channel
/// bundled CNN (its 28×28 size from the model; luma).
#[test]
fn quantize_calibrates_on_an_image_folder() {
    let dir = tmp("images");
    std::fs::create_dir_all(&dir).expect("dir");
    for k in 0..3u8 {
        let img = image::RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 8) as u8, k * 80])
        });
        img.save(dir.join(format!("img{k}.png"))).expect("png");
    }
    let out = tmp("tiny_images.onnx");
    let o = kiln(&[
        "quantize",
        &tiny_cnn(),
        "-o",
        out.to_str().unwrap_or_default(),
        "--images",
        dir.to_str().unwrap_or_default(),
        "--mean",
        "0.5",
        "--std",
        "0.25",
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("opset"), "{}", stdout(&o));
    let bad = kiln(&[
        "quantize",
        &tiny_cnn(),
        "-o",
        out.to_str().unwrap_or_default(),
        "--images",
        dir.to_str().unwrap_or_default(),
        "--layout",
        "nhwc",
    ]);
    assert!(stderr(&bad).contains("--layout"), "{}", stderr(&bad));
}
