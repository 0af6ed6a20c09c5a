//! `kiln conformance`: run ONNX backend-test folders on a backend and
//! compare with their expected outputs; the closing line
//! `N passed, N failed, N skipped` is a contract tools read.

use std::path::PathBuf;

use crate::common::{Backend, Failure, TargetCpuArg};

#[derive(clap::Args)]
pub struct ConformanceArgs {
    /// Test folders (model.onnx + test_data_set_*/), or folders of them
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Which backend executes the models
    #[arg(long, value_enum, default_value = "interp")]
    pub backend: Backend,
    /// Optimization level: 0 runs the imported module, 1 the cleaned-up
    /// one (folding, simplification, CSE, DCE), 2 adds fusion (default: 0
    /// on the interpreter, 2 on cpu)
    #[arg(short = 'O', value_name = "LEVEL", value_parser = clap::value_parser!(u8).range(0..=2))]
    pub opt_level: Option<u8>,
    /// Threads the cpu backend's kernels use
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub threads: usize,
    /// Relative tolerance
    #[arg(long, default_value_t = 1e-3)]
    pub rtol: f64,
    /// Absolute tolerance
    #[arg(long, default_value_t = 1e-7)]
    pub atol: f64,
    /// Judge outputs as quantized models are judged: mean absolute error at
    /// most 1e-3 of each output's range and argmax agreement on at least
    /// 99 % of the rows of its last axis, instead of element by element
    /// (integer kernels may differ from the reference by a few
    /// quantization steps through a deep network)
    #[arg(long)]
    pub quantized: bool,
    /// Write per-test results as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// A file listing tests (one name per line, `#` comments) that must
    /// pass: any of them not passing fails the run (exit status 1)
    #[arg(long, value_name = "FILE")]
    pub expect: Option<PathBuf>,
    /// Write the names of the passing tests to FILE (to refresh --expect)
    #[arg(long, value_name = "FILE")]
    pub write_passing: Option<PathBuf>,
}

pub fn conformance(args: &ConformanceArgs) -> Result<(), Failure> {
    use kiln_compiler::conformance::{
        collect_tests, report_line, results_json, run_test_on, Outcome, Tolerance,
    };
    let opt_level = args.opt_level.unwrap_or(match args.backend {
        Backend::Interp => 0,
        Backend::Cpu | Backend::Gpu => 2,
    });
    let mut target = args
        .backend
        .target(opt_level, args.threads, TargetCpuArg::Native);
    if let kiln_compiler::Target::Interp(o) = &mut target {
        // A pass that leaves the module invalid is a failure to see.
        o.verify_each = true;
    }
    use std::io::IsTerminal;
    let tests = collect_tests(&args.paths)?;
    let tol = Tolerance {
        rtol: args.rtol,
        atol: args.atol,
        quantized: args.quantized,
    };
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(tests.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    if args.quantized {
        use kiln_compiler::conformance::{QUANT_ARGMAX_AGREEMENT, QUANT_MEAN_ERROR};
        println!(
            "# criterion: quantized (mean |error| <= {QUANT_MEAN_ERROR:.0e} of each output's range, argmax agreement >= {:.0} %)",
            100.0 * QUANT_ARGMAX_AGREEMENT
        );
    }
    // Kernel panics are caught per test and reported as failures; keep the
    // default hook from printing them over the report.
    std::panic::set_hook(Box::new(|_| {}));
    let mut results = Vec::with_capacity(tests.len());
    for t in &tests {
        bar.set_message(
            t.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_string(),
        );
        let r = run_test_on(t, tol, &target);
        bar.suspend(|| println!("{}", report_line(&r)));
        bar.inc(1);
        results.push(r);
    }
    bar.finish_and_clear();
    let _ = std::panic::take_hook();
    let count = |f: fn(&Outcome) -> bool| results.iter().filter(|r| f(&r.outcome)).count();
    let (passed, failed, skipped) = (
        count(|o| matches!(o, Outcome::Pass)),
        count(|o| matches!(o, Outcome::Fail(_))),
        count(|o| matches!(o, Outcome::Skip(_))),
    );
    if let Some(p) = &args.json {
        let j = results_json(&results, args.backend.name(), opt_level);
        std::fs::write(p, format!("{j:#}\n")).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let Some(p) = &args.write_passing {
        let names: String = results
            .iter()
            .filter(|r| r.outcome == Outcome::Pass)
            .map(|r| format!("{}\n", r.name))
            .collect();
        std::fs::write(p, names).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let mut regressions = Vec::new();
    if let Some(p) = &args.expect {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        for name in text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
        {
            match results.iter().find(|r| r.name == name) {
                Some(r) if r.outcome == Outcome::Pass => {}
                Some(r) => regressions.push(report_line(r)),
                None => regressions.push(format!("{name}: expected to pass but was not run")),
            }
        }
        for r in &regressions {
            eprintln!("regression: {r}");
        }
    }
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    if !regressions.is_empty() {
        return Err(Failure(format!(
            "error: {} expected tests did not pass",
            regressions.len()
        )));
    }
    if args.expect.is_none() && failed > 0 {
        return Err(Failure(String::new()));
    }
    Ok(())
}
