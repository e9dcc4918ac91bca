//! Line charts as PNG (plotters on an RGB buffer, encoded by the `image` crate; the DejaVu Sans
//! font is compiled in so a chart looks the same on every machine, with no font lookup).
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// One line: a name for the legend and its `(x, y)` points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart of a figure: a title, the y-axis label and its lines (sharing the x-axis).
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Fixed y-axis range (e.g. 0..1 for fractions); fitted to the data when `None`.
    pub y_range: Option<(f64, f64)>,
    /// Draw the legend (lower right) in this panel.
    pub legend: bool,
}

fn register_font() -> Result<()> {
    static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *ONCE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the compiled-in font could not be read"))
    }
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { 0.08 * (hi - lo) } else { 0.5 * lo.abs().max(1e-3) };
    (lo - pad, hi + pad)
}

/// Draws `panels` in a grid of `cols` columns, each `panel_size` pixels, and writes the PNG to
/// `path` (through a temporary file renamed into place).
pub fn write_panels(
    path: &Path,
    panels: &[Panel],
    x_label: &str,
    cols: usize,
    panel_size: (u32, u32),
) -> Result<()> {
    register_font()?;
    let cols = cols.max(1);
    let rows = panels.len().div_ceil(cols).max(1);
    let (w, h) = (panel_size.0 * cols as u32, panel_size.1 * rows as u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
        for (area, panel) in root.split_evenly((rows, cols)).iter().zip(panels) {
            draw_panel(area, panel, x_label).map_err(|e| anyhow!("plot {:?}: {e}", panel.title))?;
        }
        root.present().map_err(|e| anyhow!("plot: {e}"))?;
    }
    let mut bytes = Vec::new();
    image::write_buffer_with_format(
        &mut std::io::Cursor::new(&mut bytes),
        &buf,
        w,
        h,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .context("encoding the plot")?;
    guided_diffusion::checkpoint::write_atomic(path, &bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
    x_label: &str,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let xs = panel.series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = panel.series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (x0, x1) = range(xs);
    let (y0, y1) = panel.y_range.unwrap_or_else(|| range(ys));
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(&panel.y_label)
        .label_style(("sans-serif", 13))
        .draw()?;
    for (i, s) in panel.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let marker = i;
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))?
            .label(&s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(s.points.iter().map(move |&p| -> DynElement<DB, (f64, f64)> {
            if marker % 2 == 0 {
                Circle::new(p, 4, color.filled()).into_dyn()
            } else {
                TriangleMarker::new(p, 5, color.filled()).into_dyn()
            }
        }))?;
    }
    if !panel.legend {
        return Ok(());
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

/// Writes uint8 NHWC images (1 or 3 channels) as a PNG grid with a caption under every image
/// (e.g. the asked class's name). Small images are enlarged (nearest neighbour) to at least
/// 64 pixels so the captions fit. Written to a temporary file and renamed into place.
pub fn write_captioned_grid(
    path: &Path,
    images: &candle_core::Tensor,
    captions: &[String],
    cols: usize,
) -> Result<()> {
    register_font()?;
    let (n, h, w, c) = images.dims4()?;
    if c != 1 && c != 3 {
        anyhow::bail!("{}: can only draw 1- or 3-channel images, got {c}", path.display());
    }
    if n == 0 || captions.len() != n {
        anyhow::bail!("{}: {} captions for {n} images", path.display(), captions.len());
    }
    let scale = 64usize.div_ceil(w.min(h)).max(1);
    let (cw, ch) = (w * scale, h * scale);
    let (gap, strip) = (4usize, 16usize);
    let cols = cols.clamp(1, n);
    let rows = n.div_ceil(cols);
    let (gw, gh) = (cols * (cw + gap) + gap, rows * (ch + strip + gap) + gap);
    let data: Vec<u8> = images.flatten_all()?.to_vec1()?;
    let mut buf = vec![255u8; gw * gh * 3];
    for i in 0..n {
        let (x0, y0) = (gap + (i % cols) * (cw + gap), gap + (i / cols) * (ch + strip + gap));
        for y in 0..ch {
            for x in 0..cw {
                let src = ((i * h + y / scale) * w + x / scale) * c;
                let dst = ((y0 + y) * gw + x0 + x) * 3;
                for k in 0..3 {
                    buf[dst + k] = data[src + if c == 1 { 0 } else { k }];
                }
            }
        }
    }
    {
        let root = BitMapBackend::with_buffer(&mut buf, (gw as u32, gh as u32)).into_drawing_area();
        let style = TextStyle::from(("sans-serif", 11).into_font()).color(&BLACK);
        for (i, cap) in captions.iter().enumerate() {
            let (x0, y0) =
                (gap + (i % cols) * (cw + gap), gap + (i / cols) * (ch + strip + gap) + ch + 2);
            // Cut to the cell's width (about 5.5 px per character at this size).
            let max_chars = (cw * 2 / 11).max(3);
            let text: String = if cap.chars().count() > max_chars {
                cap.chars().take(max_chars - 1).chain(['…']).collect()
            } else {
                cap.clone()
            };
            root.draw_text(&text, &style, (x0 as i32, y0 as i32))
                .map_err(|e| anyhow!("grid caption: {e}"))?;
        }
        root.present().map_err(|e| anyhow!("grid: {e}"))?;
    }
    let mut bytes = Vec::new();
    image::write_buffer_with_format(
        &mut std::io::Cursor::new(&mut bytes),
        &buf,
        gw as u32,
        gh as u32,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .context("encoding the grid")?;
    guided_diffusion::checkpoint::write_atomic(path, &bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
