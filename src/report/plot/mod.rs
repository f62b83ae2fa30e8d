//! Figures from plain data: grids of line/scatter panels and of overlaid histograms, each written
//! as `stem.png` and `stem.svg`.
//!
//! The module knows nothing about training: callers hand it numbers ([`Curve`], [`Scatter`],
//! [`Histogram`]) and it lays them out with plotters, one drawing routine for both formats.
//!
//! Geometry and conventions:
//! - A figure is a grid of `columns` panels of `panel_size` pixels each, plus a title strip when
//!   the figure has a title. A grid with fewer panels than `columns` uses one column per panel.
//! - Axis ranges: an explicit `(lo, hi)` is used as given (swapped if reversed; ignored if not
//!   finite); otherwise the range is the extent of the finite curve and scatter values, padded by
//!   4% on each side. A histogram range that is not finite falls back to `[0, 1]`.
//!   A zero-width range `[v, v]` becomes `[v - h, v + h]` with `h = 0.05 |v|` (or `0.5` when
//!   `v = 0`), and a panel without data shows `[0, 1]`.
//! - Ticks are plotters' key points, all labelled with the same number of decimals.
//! - Non-finite values are dropped: a NaN or infinity breaks a curve into separate pieces, and
//!   curve segments are clipped to the visible rectangle, so data outside an explicit range never
//!   spills over the axes.
//! - Histograms: `bins` equal bins over `range`, the last bin closed on the right. Values outside
//!   the range or non-finite are not counted. With `density`, bar heights are
//!   `count / (n_in_range * bin_width)`, so each series integrates to 1 over the range.
//! - Legends are plotters' series labels, placed inside the plot area at whichever of 25 anchor
//!   positions (corners first) covers the least drawn data, on a semi-opaque white box.
//! - Colours index the Okabe–Ito palette ([`OKABE_ITO`]), which stays distinguishable under the
//!   common colour-vision deficiencies; indices wrap around.
//!
//! Text uses the embedded DejaVu Sans, so rendering needs no system fonts; SVG text stays text
//! (see `text` for how PNG glyphs are placed). The PNG is written by the `png` crate.

mod panels;
#[cfg(test)]
mod tests;
mod text;

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};
use text::{Metrics, Typeset};

/// Okabe–Ito colour-blind-safe palette, ordered so that the first colours contrast most on white:
/// blue, orange, bluish green, vermillion, reddish purple, sky blue, black, yellow.
pub const OKABE_ITO: [(u8, u8, u8); 8] = [
    (0, 114, 178),
    (230, 159, 0),
    (0, 158, 115),
    (213, 94, 0),
    (204, 121, 167),
    (86, 180, 233),
    (0, 0, 0),
    (240, 228, 66),
];

/// Palette index of black (e.g. for reference lines and decision boundaries).
pub const PALETTE_BLACK: usize = 6;

/// Panel size used by [`save_histograms`] and by `Figure::default()`.
pub const DEFAULT_PANEL_SIZE: (u32, u32) = (560, 420);

/// Smallest panel that still leaves room for the axes, labels and title.
const MIN_PANEL_SIZE: (u32, u32) = (200, 160);
/// Largest image side accepted; keeps the in-memory bitmap bounded.
const MAX_IMAGE_SIDE: u32 = 16_384;

/// How a curve is stroked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LineStyle {
    /// Index into [`OKABE_ITO`] (wraps around).
    pub colour: usize,
    /// Dashed instead of solid.
    pub dashed: bool,
}

impl LineStyle {
    /// A solid line in palette colour `colour`.
    pub fn solid(colour: usize) -> Self {
        LineStyle {
            colour,
            dashed: false,
        }
    }

    /// A dashed line in palette colour `colour`.
    pub fn dashed(colour: usize) -> Self {
        LineStyle {
            colour,
            dashed: true,
        }
    }
}

/// Scatter marker shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Marker {
    /// Filled, semi-transparent disc.
    #[default]
    Circle,
    /// Diagonal cross.
    Cross,
    /// Filled triangle.
    Triangle,
}

/// A polyline through `(xs[i], ys[i])`. An empty label keeps it out of the legend.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Curve {
    pub label: String,
    pub xs: Vec<f32>,
    pub ys: Vec<f32>,
    pub style: LineStyle,
}

impl Curve {
    /// A curve from its parts.
    pub fn new(label: impl Into<String>, xs: Vec<f32>, ys: Vec<f32>, style: LineStyle) -> Self {
        Curve {
            label: label.into(),
            xs,
            ys,
            style,
        }
    }
}

/// A set of points drawn with one marker. An empty label keeps it out of the legend.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scatter {
    pub label: String,
    pub points: Vec<(f32, f32)>,
    /// Index into [`OKABE_ITO`] (wraps around).
    pub colour: usize,
    pub marker: Marker,
}

/// One set of axes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Fixed x range; `None` fits the curves and scatters.
    pub x_range: Option<(f32, f32)>,
    /// Fixed y range; `None` fits the curves and scatters.
    pub y_range: Option<(f32, f32)>,
    pub curves: Vec<Curve>,
    pub scatters: Vec<Scatter>,
    /// Extra lines (e.g. a decision boundary) drawn over everything else. They do not influence
    /// automatic ranges, so they may extend far beyond the data: they are clipped to the view.
    pub lines: Vec<Curve>,
    /// Draw a legend of the labelled curves, scatters and lines.
    pub legend: bool,
}

/// A grid of panels, filled row by row.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub title: Option<String>,
    pub panels: Vec<Panel>,
    /// Panels per row (at least 1).
    pub columns: usize,
    /// Width and height of each panel in pixels.
    pub panel_size: (u32, u32),
}

impl Default for Figure {
    fn default() -> Self {
        Figure {
            title: None,
            panels: Vec::new(),
            columns: 1,
            panel_size: DEFAULT_PANEL_SIZE,
        }
    }
}

/// Values of one histogram series.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Histogram {
    pub label: String,
    pub values: Vec<f32>,
    /// Index into [`OKABE_ITO`] (wraps around).
    pub colour: usize,
}

/// One set of axes holding overlaid histograms with shared bins.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistPanel {
    pub title: String,
    pub x_label: String,
    /// Number of equal-width bins over `range` (at least 1).
    pub bins: usize,
    pub range: (f32, f32),
    /// Series drawn as semi-transparent bars with a solid step outline.
    pub series: Vec<Histogram>,
    /// Normalise each series to unit area instead of showing counts.
    pub density: bool,
}

/// The decision boundary of a two-class linear classifier in a 2-D plane, as a line segment.
///
/// `w0` and `w1` are the weight rows of classes 0 and 1 restricted to the two plotted input
/// coordinates, `w_c = (w_c[0], w_c[1])`; all other inputs are taken as 0 and there is no bias.
/// The model predicts class 1 where `(w1 - w0) · (x, y) > 0`, so the boundary is the line
/// `(w1 - w0) · (x, y) = 0` through the origin. The segment spans `x_range`; a vertical
/// boundary (`w1 - w0` has no y component) is the segment `x = 0`, `y ∈ x_range`, and exists only
/// when `x_range` contains 0. Panels clip [`Panel::lines`] to their view, so the segment may
/// extend past the plotted y range.
///
/// If a plotted axis is a rescaled model input (Figure 1 feeds the model `5 x_a` but plots
/// `x_a`), multiply that weight component by the scale first.
///
/// Returns `None` when the weights do not define a line (`w1 = w0`, or a non-finite entry) or
/// `x_range` is not a finite interval. The curve has an empty label and a solid black style;
/// set both as needed.
pub fn linear_boundary_2d(w0: (f32, f32), w1: (f32, f32), x_range: (f32, f32)) -> Option<Curve> {
    let a = f64::from(w1.0) - f64::from(w0.0);
    let b = f64::from(w1.1) - f64::from(w0.1);
    let (lo, hi) = (f64::from(x_range.0), f64::from(x_range.1));
    if !(a.is_finite() && b.is_finite() && lo.is_finite() && hi.is_finite()) {
        return None;
    }
    let scale = a.abs().max(b.abs());
    if scale == 0.0 {
        return None;
    }
    let style = LineStyle::solid(PALETTE_BLACK);
    // Relative threshold: a y component below f32 resolution of the direction means vertical.
    if b.abs() <= scale * f64::from(f32::EPSILON) {
        if lo.min(hi) > 0.0 || lo.max(hi) < 0.0 {
            return None;
        }
        return Some(Curve::new(
            "",
            vec![0.0, 0.0],
            vec![x_range.0, x_range.1],
            style,
        ));
    }
    let slope = -a / b;
    let ys = [lo, hi].map(|x| (slope * x) as f32);
    if ys.iter().any(|y| !y.is_finite()) {
        return None;
    }
    Some(Curve::new(
        "",
        vec![x_range.0, x_range.1],
        ys.to_vec(),
        style,
    ))
}

/// Draws `fig` and writes `path_stem.png` and `path_stem.svg` (the suffix is appended, so a stem
/// such as `fig1.seed0` keeps its dot), creating parent directories. Returns both paths.
pub fn save(fig: &Figure, path_stem: &Path) -> Result<Vec<PathBuf>> {
    let grid = Grid::new(
        fig.title.as_deref(),
        Panels::Xy(&fig.panels),
        fig.columns,
        fig.panel_size,
    )?;
    for panel in &fig.panels {
        for curve in panel.curves.iter().chain(&panel.lines) {
            if curve.xs.len() != curve.ys.len() {
                return Err(Error::Data(format!(
                    "curve `{}` in panel `{}` has {} x values but {} y values",
                    curve.label,
                    panel.title,
                    curve.xs.len(),
                    curve.ys.len()
                )));
            }
        }
    }
    write_outputs(&grid, path_stem)
}

/// Draws a grid of histogram panels of [`DEFAULT_PANEL_SIZE`] and writes `path_stem.png` and
/// `path_stem.svg`, creating parent directories. Returns both paths.
pub fn save_histograms(
    title: Option<&str>,
    panels: &[HistPanel],
    columns: usize,
    path_stem: &Path,
) -> Result<Vec<PathBuf>> {
    let grid = Grid::new(title, Panels::Hist(panels), columns, DEFAULT_PANEL_SIZE)?;
    if let Some(panel) = panels.iter().find(|p| p.bins == 0) {
        let message = format!("histogram panel `{}` needs at least one bin", panel.title);
        return Err(Error::arg("bins", message));
    }
    write_outputs(&grid, path_stem)
}

/// The RGB triple of palette entry `index` (wrapping around).
pub fn palette_colour(index: usize) -> (u8, u8, u8) {
    OKABE_ITO[index % OKABE_ITO.len()]
}

fn rgb(index: usize) -> RGBColor {
    let (r, g, b) = palette_colour(index);
    RGBColor(r, g, b)
}

/// Height of the figure title strip, when there is a title.
const TITLE_STRIP: u32 = 50;
const FIGURE_TITLE_PX: f64 = 21.0;

/// The panels of a figure, of either kind.
#[derive(Clone, Copy)]
enum Panels<'a> {
    Xy(&'a [Panel]),
    Hist(&'a [HistPanel]),
}

/// A checked figure layout: optional title strip over a `rows x columns` grid of panels.
struct Grid<'a> {
    title: Option<&'a str>,
    panels: Panels<'a>,
    count: usize,
    rows: usize,
    columns: usize,
    /// Image size, at most `MAX_IMAGE_SIDE` each way.
    size: (u32, u32),
}

impl<'a> Grid<'a> {
    fn new(
        title: Option<&'a str>,
        panels: Panels<'a>,
        columns: usize,
        (w, h): (u32, u32),
    ) -> Result<Self> {
        let count = match panels {
            Panels::Xy(p) => p.len(),
            Panels::Hist(p) => p.len(),
        };
        if count == 0 {
            return Err(Error::arg("panels", "a figure needs at least one panel"));
        }
        if columns == 0 {
            return Err(Error::arg("columns", "must be at least 1"));
        }
        let (min_w, min_h) = MIN_PANEL_SIZE;
        if w < min_w || h < min_h {
            let message = format!("{w}x{h} is smaller than the minimum {min_w}x{min_h}");
            return Err(Error::arg("panel_size", message));
        }
        let title = title.filter(|t| !t.trim().is_empty());
        let columns = columns.min(count);
        let rows = count.div_ceil(columns);
        let width = columns as u64 * u64::from(w);
        let height = rows as u64 * u64::from(h) + u64::from(title.map_or(0, |_| TITLE_STRIP));
        if width.max(height) > u64::from(MAX_IMAGE_SIDE) {
            return Err(Error::arg(
                "panel_size",
                format!(
                    "a {rows}x{columns} grid of {w}x{h} panels is {width}x{height} pixels, above \
                     the {MAX_IMAGE_SIDE} pixel limit"
                ),
            ));
        }
        let size = (width as u32, height as u32);
        Ok(Grid {
            title,
            panels,
            count,
            rows,
            columns,
            size,
        })
    }
}

fn draw_scene<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    grid: &Grid<'_>,
    m: &Metrics,
) -> DrawResult<(), DB> {
    root.fill(&WHITE)?;
    let body = match grid.title {
        Some(title) => {
            let (strip, body) = root.split_vertically(TITLE_STRIP);
            let (w, h) = strip.dim_in_pixel();
            let style = text::style(FIGURE_TITLE_PX).pos(Pos::new(HPos::Center, VPos::Center));
            strip.draw_text(title, &style, ((w / 2) as i32, (h / 2) as i32))?;
            body
        }
        None => root.clone(),
    };
    let cells = body.split_evenly((grid.rows, grid.columns));
    for (index, cell) in cells.iter().take(grid.count).enumerate() {
        match grid.panels {
            Panels::Xy(p) => panels::draw_xy_panel(cell, m, &p[index])?,
            Panels::Hist(p) => panels::draw_hist_panel(cell, m, &p[index])?,
        }
    }
    root.present()
}

fn write_outputs(grid: &Grid<'_>, path_stem: &Path) -> Result<Vec<PathBuf>> {
    if path_stem.file_name().is_none() {
        return Err(Error::arg(
            "path_stem",
            format!("`{}` does not end in a file name", path_stem.display()),
        ));
    }
    if let Some(parent) = path_stem.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let m = text::metrics()?;
    let png_path = with_suffix(path_stem, "png");
    let svg_path = with_suffix(path_stem, "svg");
    let (w, h) = grid.size;

    let mut pixels = vec![0u8; 3 * w as usize * h as usize];
    {
        let backend = Typeset::new(BitMapBackend::with_buffer(&mut pixels, (w, h)), true)?;
        draw_scene(&backend.into_drawing_area(), grid, m).map_err(|e| draw_error(&png_path, e))?;
    }
    write_png(&png_path, &pixels, (w, h)).map_err(|e| Error::io(&png_path, e))?;

    let mut svg = String::new();
    {
        let backend = Typeset::new(SVGBackend::with_string(&mut svg, (w, h)), false)?;
        draw_scene(&backend.into_drawing_area(), grid, m).map_err(|e| draw_error(&svg_path, e))?;
    }
    std::fs::write(&svg_path, svg).map_err(|e| Error::io(&svg_path, e))?;
    Ok(vec![png_path, svg_path])
}

/// 8-bit RGB PNG of `rgb`.
fn write_png(path: &Path, rgb: &[u8], (w, h): (u32, u32)) -> std::io::Result<()> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut encoder = png::Encoder::new(file, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // The crate defaults to its fast mode (4-5x larger files); flat-coloured plots compress
    // best unfiltered.
    encoder.set_compression(png::Compression::Default);
    encoder.set_filter(png::FilterType::NoFilter);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(())
}

fn draw_error<E: std::error::Error + Send + Sync>(
    path: &Path,
    e: DrawingAreaErrorKind<E>,
) -> Error {
    Error::Data(format!("{}: cannot draw figure: {e}", path.display()))
}

/// `stem` + "." + `ext`, keeping any dots already in the file name.
fn with_suffix(stem: &Path, ext: &str) -> PathBuf {
    let mut name = stem.as_os_str().to_owned();
    name.push(".");
    name.push(ext);
    PathBuf::from(name)
}
