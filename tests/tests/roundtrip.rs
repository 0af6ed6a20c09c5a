//! Import and text round trip over every ONNX model the tests can reach:
//! the 1,288 node tests and the shared real models. Each must import and
//! verify, and print -> parse -> print must give identical text (with
//! large constants elided, and for the node suite also with all data).

use kiln_ir::text::{parse_module, print_module, PrintOptions};
use kiln_tests::{node_tests, shared_models};

fn round_trip(path: &std::path::Path, opts: &PrintOptions) -> Result<usize, String> {
    let m = kiln_compiler::load_model(path).map_err(|e| e.to_string())?;
    let text = print_module(&m, opts);
    let back =
        parse_module(&text).map_err(|e| format!("reparse: {}", e.render("printed.kir", &text)))?;
    kiln_ir::verify::verify(&back).map_err(|e| format!("reparsed module does not verify: {e}"))?;
    let again = print_module(&back, opts);
    if again != text {
        let line = text
            .lines()
            .zip(again.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(format!(
            "text differs at line {}:\n  first:  {}\n  second: {}",
            line + 1,
            text.lines().nth(line).unwrap_or(""),
            again.lines().nth(line).unwrap_or("")
        ));
    }
    Ok(m.body.node_count())
}

fn check_all(paths: &[std::path::PathBuf], opts: &PrintOptions) {
    let mut failures = Vec::new();
    for p in paths {
        if let Err(e) = round_trip(p, opts) {
            failures.push(format!("{}: {e}", p.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        paths.len(),
        failures.join("\n")
    );
}

#[test]
fn node_suite_imports_and_round_trips_elided() {
    let tests = node_tests();
    assert_eq!(
        tests.len(),
        1288,
        "the ONNX 1.17.0 node suite has 1,288 tests"
    );
    check_all(&tests, &PrintOptions::default());
}

#[test]
fn node_suite_round_trips_with_all_data() {
    check_all(
        &node_tests(),
        &PrintOptions {
            elide_threshold: None,
        },
    );
}

#[test]
fn shared_models_import_and_round_trip() {
    let models = shared_models();
    if models.is_empty() {
        eprintln!("../shared/models is absent: nothing to check");
        return;
    }
    assert_eq!(models.len(), 4);
    check_all(&models, &PrintOptions::default());
}
