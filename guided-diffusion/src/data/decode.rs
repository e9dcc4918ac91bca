//! Reading one image file into 8-bit pixels with the channel count of the model being
//! trained, as the reference's `Image.open(f); convert("RGB")` (and `convert("L")`,
//! `convert("LA")`, `convert("RGBA")` for 1, 2 and 4 channels, which the reference never uses:
//! it hard-codes RGB).
//!
//! Decoding uses the `image` crate (PNG, JPEG, GIF) under [`limits`](crate::limits): a side
//! over [`MAX_DECODED_SIDE`] or a decode needing more than [`MAX_DECODE_ALLOC`] bytes is
//! refused before the pixels are allocated (a PNG of a few hundred kilobytes can claim
//! gigabytes). Against PIL:
//! - PNG: identical pixels for 8-bit gray, gray+alpha, RGB, RGBA and palette files (alpha is
//!   dropped without compositing, as PIL's `convert("RGB")`).
//! - To gray (`L`): PIL's ITU-R 601-2 luma in 16-bit fixed point,
//!   `(19595 R + 38470 G + 7471 B + 0x8000) >> 16` (`L24` in Pillow's `Convert.c`); a gray file
//!   keeps its exact levels, and palette files go through their RGB colours as in PIL.
//! - 16-bit PNG: `image` scales to 8 bits (`v / 257`, rounded); PIL's path differs (it clips via
//!   mode `I`). Such files are rare in image data sets.
//! - JPEG: `image` uses zune-jpeg, PIL libjpeg(-turbo); IDCT and chroma upsampling differ by a
//!   few levels on some pixels. The reference's own pixels depend on the libjpeg build too.
//! - GIF: the first frame; transparent pixels may come out black where PIL shows the palette
//!   colour of the transparent index.
use std::path::Path;

use image::{ColorType, DynamicImage, ImageDecoder, ImageReader};

use super::resize::RawImage;
use crate::limits::{MAX_DECODED_PIXELS, MAX_DECODED_SIDE, MAX_DECODE_ALLOC};
use crate::{bail, Error, Result};

/// Decodes `path` to RGB (3 channels).
pub fn load_rgb(path: &Path) -> Result<RawImage> {
    load(path, 3)
}

/// Decodes `path` to `channels` channels (1 = L, 2 = LA, 3 = RGB, 4 = RGBA).
pub fn load(path: &Path, channels: usize) -> Result<RawImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode(&bytes, channels).map_err(|e| Error::msg(format!("{}: {e}", path.display())))
}

/// Decodes an in-memory PNG/JPEG/GIF to RGB.
pub fn decode_rgb(bytes: &[u8]) -> Result<RawImage> {
    decode(bytes, 3)
}

fn reader(bytes: &[u8]) -> Result<ImageReader<std::io::Cursor<&[u8]>>> {
    let mut r = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::msg(format!("cannot decode image: {e}")))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DECODED_SIDE);
    limits.max_image_height = Some(MAX_DECODED_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    r.limits(limits);
    Ok(r)
}

/// The colour type an image file declares, read from its header only (no pixels decoded).
pub fn color_type(bytes: &[u8]) -> Result<ColorType> {
    let d = reader(bytes)?
        .into_decoder()
        .map_err(|e| Error::msg(format!("cannot decode image: {e}")))?;
    Ok(d.color_type())
}

/// Channels of a colour type (gray 1, gray+alpha 2, RGB 3, RGBA 4).
pub fn channels_of(c: ColorType) -> usize {
    c.channel_count() as usize
}

/// Decodes an in-memory PNG/JPEG/GIF to `channels` channels with PIL's conversions.
pub fn decode(bytes: &[u8], channels: usize) -> Result<RawImage> {
    if !(1..=4).contains(&channels) {
        bail!("cannot decode to {channels} channels (1 = L, 2 = LA, 3 = RGB, 4 = RGBA)");
    }
    let over = |what: String| {
        Error::msg(format!(
            "image over the decoding limits ({what}; at most {MAX_DECODED_SIDE} pixels a side, \
             {MAX_DECODED_PIXELS} pixels and {} MiB): a decompression bomb or a picture far \
             larger than training needs",
            MAX_DECODE_ALLOC >> 20
        ))
    };
    let fail = |e: image::ImageError| match e {
        image::ImageError::Limits(l) => over(l.to_string()),
        e => Error::msg(format!("cannot decode image: {e}")),
    };
    let decoder = reader(bytes)?.into_decoder().map_err(fail)?;
    let (w, h) = decoder.dimensions();
    if w as u64 * h as u64 > MAX_DECODED_PIXELS {
        return Err(over(format!("{w}x{h}")));
    }
    let img = DynamicImage::from_decoder(decoder).map_err(fail)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let data = match (channels, img) {
        (1, DynamicImage::ImageLuma8(g)) => g.into_raw(),
        (1, DynamicImage::ImageLumaA8(g)) => g.into_raw().chunks_exact(2).map(|p| p[0]).collect(),
        (1, img) => img.to_rgb8().into_raw().chunks_exact(3).map(l24).collect(),
        (2, DynamicImage::ImageLumaA8(g)) => g.into_raw(),
        (2, DynamicImage::ImageLuma8(g)) => g.into_raw().iter().flat_map(|&v| [v, 255]).collect(),
        (2, img) => {
            img.to_rgba8().into_raw().chunks_exact(4).flat_map(|p| [l24(&p[..3]), p[3]]).collect()
        }
        (3, img) => img.to_rgb8().into_raw(),
        (_, img) => img.to_rgba8().into_raw(),
    };
    RawImage::new(w, h, channels, data)
}

/// PIL's RGB -> L: ITU-R 601-2 luma in 16-bit fixed point, rounded (`L24(rgb) >> 16`).
pub fn l24(rgb: &[u8]) -> u8 {
    ((rgb[0] as u32 * 19595 + rgb[1] as u32 * 38470 + rgb[2] as u32 * 7471 + 0x8000) >> 16) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luma_matches_pil() {
        // Values from Pillow: Image.new("RGB", (1, 1), c).convert("L").getpixel((0, 0)).
        assert_eq!(l24(&[255, 0, 0]), 76);
        assert_eq!(l24(&[0, 255, 0]), 150);
        assert_eq!(l24(&[0, 0, 255]), 29);
        assert_eq!(l24(&[10, 20, 30]), 18);
        for v in 0..=255u8 {
            assert_eq!(l24(&[v, v, v]), v);
        }
    }
}
