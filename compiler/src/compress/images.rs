//! Image folders as input sets for an image model: each JPEG or PNG
//! becomes one set, decoded (the `image` crate), resized to the model's
//! size (bilinear), scaled to [0, 1], normalized per channel by
//! `(x - mean) / std`, and laid out NCHW or NHWC with a batch of 1. A
//! model with one input channel gets luma (grey), with the first mean
//! and std.

use std::path::{Path, PathBuf};

use kiln_interp::{Tensor, Value};
use kiln_ir::{Dim, Module};

use crate::compress::data::Inputs;

/// Where the channels go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Nchw,
    Nhwc,
}

/// How images become tensors.
#[derive(Clone, Debug)]
pub struct ImageOptions {
    /// Height and width; None: the model input's static size.
    pub size: Option<(usize, usize)>,
    /// Per-channel (R, G, B) mean and standard deviation of pixels in
    /// [0, 1].
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub layout: Layout,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            size: None,
            mean: [0.0; 3],
            std: [1.0; 3],
            layout: Layout::Nchw,
        }
    }
}

/// One input set per image in `dir` (sorted by name).
pub fn image_sets(m: &Module, dir: &Path, o: &ImageOptions) -> Result<Vec<Inputs>, String> {
    let [input] = m.body.inputs[..] else {
        return Err(format!(
            "--images needs a model with one input (an image); this one has {}",
            m.body.inputs.len()
        ));
    };
    let name = m.name(input).to_string();
    let shape = m
        .ty(input)
        .as_tensor()
        .and_then(|t| t.shape.clone())
        .ok_or_else(|| format!("input %{name} has no known rank"))?;
    if shape.len() != 4 {
        return Err(format!(
            "input %{name} has rank {}; --images makes rank-4 tensors",
            shape.len()
        ));
    }
    let known = |d: &Dim| match d {
        Dim::Known(n) => Some(*n as usize),
        _ => None,
    };
    let (c_axis, h_axis, w_axis) = match o.layout {
        Layout::Nchw => (1, 2, 3),
        Layout::Nhwc => (3, 1, 2),
    };
    let channels = match known(&shape[c_axis]) {
        None | Some(3) => 3,
        Some(1) => 1,
        Some(c) => {
            return Err(format!(
                "input %{name} has {c} channels at axis {c_axis}; images give 3 (RGB) or 1 (grey): is --layout right?"
            ))
        }
    };
    let (h, w) = match o.size {
        Some(s) => s,
        None => match (known(&shape[h_axis]), known(&shape[w_axis])) {
            (Some(h), Some(w)) => (h, w),
            _ => {
                return Err(format!(
                    "input %{name} has no static height and width: give --size H,W"
                ))
            }
        },
    };
    if h == 0 || w == 0 || h > 16384 || w > 16384 {
        return Err(format!("--size {h},{w} is out of range (1 to 16384)"));
    }
    if o.std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
        return Err("--std values must be finite and non-zero".into());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ["jpg", "jpeg", "png"].contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no .jpg, .jpeg or .png files", dir.display()));
    }
    files
        .iter()
        .map(|f| {
            let img = image::open(f).map_err(|e| format!("{}: {e}", f.display()))?;
            let img = image::imageops::resize(
                &img.to_rgb8(),
                w as u32,
                h as u32,
                image::imageops::FilterType::Triangle,
            );
            let grey =
                (channels == 1).then(|| image::DynamicImage::ImageRgb8(img.clone()).to_luma8());
            let mut data = vec![0f32; channels * h * w];
            for (x, y, px) in img.enumerate_pixels() {
                let (x, y) = (x as usize, y as usize);
                for c in 0..channels {
                    let byte = match &grey {
                        Some(g) => g.get_pixel(x as u32, y as u32)[0],
                        None => px[c],
                    };
                    let v = (byte as f32 / 255.0 - o.mean[c]) / o.std[c];
                    let at = match o.layout {
                        Layout::Nchw => (c * h + y) * w + x,
                        Layout::Nhwc => (y * w + x) * channels + c,
                    };
                    data[at] = v;
                }
            }
            let dims = match o.layout {
                Layout::Nchw => vec![1, channels, h, w],
                Layout::Nhwc => vec![1, h, w, channels],
            };
            let t = Tensor::from_f32(dims, data).map_err(|e| e.to_string())?;
            Ok(Inputs::from([(name.clone(), Value::tensor(t))]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(dims: &str) -> Module {
        let src = format!(
            "module @m opset(ai.onnx = 17) {{\n  input %x: f32[{dims}]\n  %y = Relu(%x) : f32[{dims}]\n  return %y\n}}\n"
        );
        crate::load::parse_text(&src, "m.kir").unwrap()
    }

    #[test]
    fn images_become_normalized_tensors_in_either_layout() {
        let dir = std::env::temp_dir().join(format!("kiln-images-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A 2×2 red image and a 4×4 blue one (resized to 2×2).
        image::RgbImage::from_pixel(2, 2, image::Rgb([255, 0, 0]))
            .save(dir.join("a.png"))
            .unwrap();
        image::RgbImage::from_pixel(4, 4, image::Rgb([0, 0, 255]))
            .save(dir.join("b.png"))
            .unwrap();
        std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
        let o = ImageOptions {
            mean: [0.5; 3],
            std: [0.5; 3],
            ..Default::default()
        };
        let sets = image_sets(&model("1,3,2,2"), &dir, &o).unwrap();
        assert_eq!(sets.len(), 2);
        let t = sets[0]["x"].as_tensor().unwrap();
        assert_eq!(t.shape, vec![1, 3, 2, 2]);
        // Red: channel 0 is (1 - 0.5) / 0.5 = 1, the others -1.
        assert_eq!(
            t.to_f64(),
            [1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0]
        );
        let nhwc = ImageOptions {
            layout: Layout::Nhwc,
            ..o.clone()
        };
        let sets = image_sets(&model("1,2,2,3"), &dir, &nhwc).unwrap();
        let t = sets[1]["x"].as_tensor().unwrap();
        assert_eq!(t.shape, vec![1, 2, 2, 3]);
        assert_eq!(&t.to_f64()[..3], &[-1.0, -1.0, 1.0]);
        // Wrong layout for the model, and a size the model does not fix.
        assert!(image_sets(&model("1,3,2,2"), &dir, &nhwc)
            .unwrap_err()
            .contains("--layout"));
        assert!(image_sets(&model("1,3,H,W"), &dir, &o)
            .unwrap_err()
            .contains("--size"));
        let sized = ImageOptions {
            size: Some((3, 5)),
            ..o
        };
        let sets = image_sets(&model("1,3,H,W"), &dir, &sized).unwrap();
        assert_eq!(sets[0]["x"].as_tensor().unwrap().shape, vec![1, 3, 3, 5]);
        // One channel: luma of red is 54/255 (BT.601-ish weights).
        let grey = image_sets(&model("1,1,2,2"), &dir, &ImageOptions::default()).unwrap();
        let v = grey[0]["x"].as_tensor().unwrap().to_f64();
        assert!((v[0] - 54.0 / 255.0).abs() < 0.01, "{v:?}");
        // A broken file is an error naming it.
        std::fs::write(dir.join("c.jpg"), "garbage").unwrap();
        assert!(image_sets(&model("1,3,2,2"), &dir, &sized)
            .unwrap_err()
            .contains("c.jpg"));
    }
}
