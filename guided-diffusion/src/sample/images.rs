//! From model space to pictures: the reference's uint8 conversion and a PNG grid.
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::{bail, Error, Result};

/// `((x + 1) * 127.5).clamp(0, 255).to(uint8)` — truncating, as the reference — and NCHW to
/// NHWC.
pub fn to_uint8_nhwc(x: &Tensor) -> Result<Tensor> {
    let y = ((x.to_dtype(DType::F32)? + 1.0)? * 127.5)?.clamp(0f32, 255f32)?;
    Ok(y.to_dtype(DType::U8)?.permute((0, 2, 3, 1))?.contiguous()?)
}

/// uint8 NHWC to the model's NCHW floats in [-1, 1] (`x / 127.5 - 1`).
pub fn from_uint8_nhwc(x: &Tensor) -> Result<Tensor> {
    let y = x.to_dtype(DType::F32)?.permute((0, 3, 1, 2))?.contiguous()?;
    Ok(((y / 127.5)? - 1.0)?)
}

/// Writes uint8 NHWC images (1 or 3 channels) as one PNG grid, `cols` per row, 2-pixel gaps.
/// Written to a temporary file and renamed into place.
pub fn write_grid(path: &Path, images: &Tensor, cols: usize) -> Result<()> {
    let (n, h, w, c) = images.dims4()?;
    if c != 1 && c != 3 {
        bail!("{}: can only draw 1- or 3-channel images, got {c}", path.display());
    }
    if n == 0 {
        bail!("{}: no images to draw", path.display());
    }
    let cols = cols.clamp(1, n);
    let rows = n.div_ceil(cols);
    let gap = 2;
    let (gw, gh) = (cols * (w + gap) + gap, rows * (h + gap) + gap);
    let data: Vec<u8> = images.flatten_all()?.to_vec1()?;
    let mut grid = image::RgbImage::from_pixel(gw as u32, gh as u32, image::Rgb([255, 255, 255]));
    for i in 0..n {
        let (r, q) = (i / cols, i % cols);
        let (x0, y0) = (gap + q * (w + gap), gap + r * (h + gap));
        for y in 0..h {
            for x in 0..w {
                let base = ((i * h + y) * w + x) * c;
                let px = if c == 1 {
                    [data[base]; 3]
                } else {
                    [data[base], data[base + 1], data[base + 2]]
                };
                grid.put_pixel((x0 + x) as u32, (y0 + y) as u32, image::Rgb(px));
            }
        }
    }
    let mut bytes = Vec::new();
    grid.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| Error::msg(format!("{}: cannot encode PNG: {e}", path.display())))?;
    crate::checkpoint::write_atomic(path, &bytes)
}
