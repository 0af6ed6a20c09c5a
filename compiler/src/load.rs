//! Reading a model from disk, whatever its format: `.onnx` through the
//! importer, `.kir` through the text parser; both end verified.

use std::path::Path;

use kiln_ir::Module;

use crate::onnx::ImportError;

/// Why a model could not be loaded. `Display` is the one-paragraph message
/// the command line prints; a parse error includes the offending line and
/// a caret.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("{path}: {err}")]
    Import { path: String, err: ImportError },
    #[error("{rendered}")]
    Parse {
        rendered: String,
        err: kiln_ir::text::ParseError,
    },
    #[error("{path}: the model is invalid: {err}")]
    Verify {
        path: String,
        err: Box<kiln_ir::verify::VerifyError>,
    },
    #[error("{0}: unknown model format (expected a .onnx or .kir file)")]
    Format(String),
}

/// Which format a path holds, from its extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    Onnx,
    Text,
}

pub fn format_of(path: &Path) -> Option<ModelFormat> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("onnx") => Some(ModelFormat::Onnx),
        Some("kir") => Some(ModelFormat::Text),
        _ => None,
    }
}

/// Load and verify a model; a directory is taken to hold `model.onnx`
/// (the layout of ONNX backend tests and `../shared/models`).
pub fn load_model(path: &Path) -> Result<Module, LoadError> {
    load_model_with(path, &kiln_ir::Limits::default())
}

/// [`load_model`] within `limits` (tensor sizes, constant bytes, node
/// count and nesting).
pub fn load_model_with(path: &Path, limits: &kiln_ir::Limits) -> Result<Module, LoadError> {
    let path = if path.is_dir() {
        path.join("model.onnx")
    } else {
        path.to_path_buf()
    };
    let shown = path.display().to_string();
    let m = match format_of(&path) {
        Some(ModelFormat::Onnx) => {
            if let Err(err) = std::fs::metadata(&path) {
                return Err(LoadError::Io { path: shown, err });
            }
            // From the file, so the raw bytes are freed once decoded.
            crate::onnx::import_model_file(&path, limits).map_err(|err| LoadError::Import {
                path: shown.clone(),
                err,
            })?
        }
        Some(ModelFormat::Text) => {
            let src = std::fs::read_to_string(&path).map_err(|err| LoadError::Io {
                path: shown.clone(),
                err,
            })?;
            parse_text(&src, &shown)?
        }
        None => return Err(LoadError::Format(shown)),
    };
    kiln_ir::verify::verify(&m).map_err(|err| LoadError::Verify {
        path: shown,
        err: Box::new(err),
    })?;
    Ok(m)
}

/// Parse text IR, rendering any error against the source.
pub fn parse_text(src: &str, filename: &str) -> Result<Module, LoadError> {
    kiln_ir::text::parse_module(src).map_err(|err| LoadError::Parse {
        rendered: err.render(filename, src),
        err,
    })
}

/// Import and verify a serialized ONNX model held in memory; `name` is
/// how the model is called in errors.
pub fn load_onnx_bytes(bytes: &[u8], name: &str) -> Result<Module, LoadError> {
    let m = crate::onnx::import_model_bytes(bytes, None, &kiln_ir::Limits::default()).map_err(
        |err| LoadError::Import {
            path: name.to_string(),
            err,
        },
    )?;
    kiln_ir::verify::verify(&m).map_err(|err| LoadError::Verify {
        path: name.to_string(),
        err: Box::new(err),
    })?;
    Ok(m)
}
