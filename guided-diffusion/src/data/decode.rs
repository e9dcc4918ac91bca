//! Reading one image file into 8-bit RGB, as the reference's `Image.open(f); convert("RGB")`.
//!
//! Decoding uses the `image` crate (PNG, JPEG, GIF). Against PIL:
//! - PNG: identical pixels for 8-bit gray, gray+alpha, RGB, RGBA and palette files (alpha is
//!   dropped without compositing, as PIL's `convert("RGB")`).
//! - 16-bit PNG: `image` scales to 8 bits (`v / 257`, rounded); PIL's path differs (it clips via
//!   mode `I`). Such files are rare in image data sets.
//! - JPEG: `image` uses zune-jpeg, PIL libjpeg(-turbo); IDCT and chroma upsampling differ by a
//!   few levels on some pixels. The reference's own pixels depend on the libjpeg build too.
//! - GIF: the first frame; transparent pixels may come out black where PIL shows the palette
//!   colour of the transparent index.
use std::path::Path;

use super::resize::RawImage;
use crate::{Error, Result};

/// Decodes `path` to RGB (3 channels).
pub fn load_rgb(path: &Path) -> Result<RawImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_rgb(&bytes)
        .map_err(|e| Error::msg(format!("{}: cannot decode image: {e}", path.display())))
}

/// Decodes an in-memory PNG/JPEG/GIF to RGB.
pub fn decode_rgb(bytes: &[u8]) -> std::result::Result<RawImage, image::ImageError> {
    let img = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(image::ImageError::IoError)?
        .decode()?;
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    Ok(RawImage { width: w as usize, height: h as usize, channels: 3, data: rgb.into_raw() })
}
