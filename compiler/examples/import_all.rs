fn main() {
    let mut ok = 0;
    let mut bad = 0;
    for arg in std::env::args().skip(1) {
        let p = std::path::Path::new(&arg).join("model.onnx");
        match kiln_compiler::onnx::import_model_file(&p, &Default::default()) {
            Ok(m) => {
                ok += 1;
                let _ = m;
            }
            Err(e) => {
                bad += 1;
                println!("{arg}: {e}");
            }
        }
    }
    println!("{ok} ok, {bad} failed");
}
