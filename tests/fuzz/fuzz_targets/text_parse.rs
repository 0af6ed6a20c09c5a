//! Text → the `.kir` parser, then the verifier and the printer: errors,
//! never panics; a module that parses and verifies prints to text that
//! parses again to the same module.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = kiln_ir::parse_module(src) else {
        return;
    };
    if kiln_ir::verify::verify(&m).is_err() {
        return;
    }
    let text = kiln_ir::print_module(&m, &Default::default());
    let again = kiln_ir::parse_module(&text).expect("printed text parses");
    assert_eq!(text, kiln_ir::print_module(&again, &Default::default()));
});
