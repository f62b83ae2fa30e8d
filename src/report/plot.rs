//! Figures from plain data: grids of line/scatter panels and of overlaid histograms, each written
//! as `stem.png` and `stem.svg`.
//!
//! The module knows nothing about training: callers hand it numbers ([`Curve`], [`Scatter`],
//! [`Histogram`]) and it lays them out.
//!
//! Geometry and conventions:
//! - A figure is a grid of `columns` panels of `panel_size` pixels each, plus a title strip when
//!   the figure has a title. A grid with fewer panels than `columns` uses one column per panel.
//! - Axis ranges: an explicit `(lo, hi)` is used as given (swapped if reversed; ignored if not
//!   finite); otherwise the range is the extent of the finite curve and scatter values, padded by
//!   4% on each side. A histogram range that is not finite falls back to `[0, 1]`.
//!   A zero-width range `[v, v]` becomes `[v - h, v + h]` with `h = 0.05 |v|` (or `0.5` when
//!   `v = 0`), and a panel without data shows `[0, 1]`.
//! - Non-finite values are dropped: a NaN or infinity breaks a curve into separate pieces, and
//!   curve segments are clipped to the visible rectangle (Liang–Barsky), so data outside an
//!   explicit range never spills over the axes.
//! - Histograms: `bins` equal bins over `range`, the last bin closed on the right. Values outside
//!   the range or non-finite are not counted. With `density`, bar heights are
//!   `count / (n_in_range * bin_width)`, so each series integrates to 1 over the range.
//! - Legends go inside the plot area at whichever of 25 anchor positions (corners first)
//!   covers the fewest drawn pixels, on a semi-opaque white box.
//! - Colours index the Okabe–Ito palette ([`OKABE_ITO`]), which stays distinguishable under the
//!   common colour-vision deficiencies; indices wrap around.
//!
//! Text uses the embedded DejaVu Sans (`assets/DejaVuSans.ttf`, Bitstream Vera licence in
//! `assets/LICENSE-DejaVu.txt`), so rendering needs no system fonts. SVG text stays text; in PNGs
//! every glyph is placed from the font's own metrics (see the "Text" section). Both formats
//! share one layout, computed from those metrics. The PNG is encoded here (zlib from `flate2`)
//! so that every write error surfaces as [`Error::Io`] with its path.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontDesc, FontFamily, FontStyle, FontTransform};

use crate::error::{Error, Result};

/// DejaVu Sans, registered with plotters as "sans-serif" on first use.
static DEJAVU_SANS: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

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

// Font sizes in pixels per em as they appear in the image.
const FIGURE_TITLE_PX: f64 = 21.0;
const PANEL_TITLE_PX: f64 = 18.0;
const AXIS_LABEL_PX: f64 = 16.0;
const TICK_PX: f64 = 15.0;
const LEGEND_PX: f64 = 15.0;

const TICK_COUNT: usize = 6;
const TICK_MARK_PX: i32 = 5;
const LINE_WIDTH: u32 = 2;
const DASH_PX: u32 = 9;
const DASH_GAP_PX: u32 = 5;
const MARKER_PX: u32 = 4;

const TEXT_COLOUR: RGBColor = RGBColor(25, 25, 25);
const AXIS_COLOUR: RGBColor = RGBColor(70, 70, 70);
const GRID_COLOUR: RGBColor = RGBColor(228, 228, 228);
const LEGEND_BORDER: RGBColor = RGBColor(190, 190, 190);

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
    validate_grid(fig.panels.len(), fig.columns, fig.panel_size)?;
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
    let grid = Grid::new(
        fig.title.as_deref(),
        fig.panels.len(),
        fig.columns,
        fig.panel_size,
    )?;
    write_outputs(&FigureScene { fig, grid }, path_stem)
}

/// Draws a grid of histogram panels of [`DEFAULT_PANEL_SIZE`] and writes `path_stem.png` and
/// `path_stem.svg`, creating parent directories. Returns both paths.
pub fn save_histograms(
    title: Option<&str>,
    panels: &[HistPanel],
    columns: usize,
    path_stem: &Path,
) -> Result<Vec<PathBuf>> {
    validate_grid(panels.len(), columns, DEFAULT_PANEL_SIZE)?;
    for panel in panels {
        if panel.bins == 0 {
            return Err(Error::arg(
                "bins",
                format!("histogram panel `{}` needs at least one bin", panel.title),
            ));
        }
    }
    let grid = Grid::new(title, panels.len(), columns, DEFAULT_PANEL_SIZE)?;
    write_outputs(&HistScene { panels, grid }, path_stem)
}

/// The RGB triple of palette entry `index` (wrapping around).
pub fn palette_colour(index: usize) -> (u8, u8, u8) {
    OKABE_ITO[index % OKABE_ITO.len()]
}

fn rgb(index: usize) -> RGBColor {
    let (r, g, b) = palette_colour(index);
    RGBColor(r, g, b)
}

fn validate_grid(panels: usize, columns: usize, panel_size: (u32, u32)) -> Result<()> {
    if panels == 0 {
        return Err(Error::arg("panels", "a figure needs at least one panel"));
    }
    if columns == 0 {
        return Err(Error::arg("columns", "must be at least 1"));
    }
    let (w, h) = panel_size;
    if w < MIN_PANEL_SIZE.0 || h < MIN_PANEL_SIZE.1 {
        return Err(Error::arg(
            "panel_size",
            format!(
                "{w}x{h} is smaller than the minimum {}x{}",
                MIN_PANEL_SIZE.0, MIN_PANEL_SIZE.1
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Output: one drawing routine, two backends.

type DrawResult<T, DB> =
    std::result::Result<T, DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Something that can draw itself on any plotters backend.
trait Scene {
    fn grid(&self) -> &Grid;
    fn draw_panel<DB: DrawingBackend>(
        &self,
        index: usize,
        area: &DrawingArea<DB, Shift>,
        text: &Typesetter,
    ) -> DrawResult<(), DB>;
}

struct FigureScene<'a> {
    fig: &'a Figure,
    grid: Grid,
}

impl Scene for FigureScene<'_> {
    fn grid(&self) -> &Grid {
        &self.grid
    }
    fn draw_panel<DB: DrawingBackend>(
        &self,
        index: usize,
        area: &DrawingArea<DB, Shift>,
        text: &Typesetter,
    ) -> DrawResult<(), DB> {
        draw_xy_panel(area, text, &self.fig.panels[index])
    }
}

struct HistScene<'a> {
    panels: &'a [HistPanel],
    grid: Grid,
}

impl Scene for HistScene<'_> {
    fn grid(&self) -> &Grid {
        &self.grid
    }
    fn draw_panel<DB: DrawingBackend>(
        &self,
        index: usize,
        area: &DrawingArea<DB, Shift>,
        text: &Typesetter,
    ) -> DrawResult<(), DB> {
        draw_hist_panel(area, text, &self.panels[index])
    }
}

/// Pixel layout of a figure: optional title strip over a `rows x columns` grid.
struct Grid {
    title: Option<String>,
    title_height: u32,
    panels: usize,
    rows: usize,
    columns: usize,
    panel_size: (u32, u32),
}

impl Grid {
    fn new(
        title: Option<&str>,
        panels: usize,
        columns: usize,
        panel_size: (u32, u32),
    ) -> Result<Self> {
        let columns = columns.min(panels);
        let rows = panels.div_ceil(columns);
        let title = title.filter(|t| !t.trim().is_empty()).map(str::to_owned);
        let title_height = if title.is_some() {
            (FIGURE_TITLE_PX * 2.4).round() as u32
        } else {
            0
        };
        let grid = Grid {
            title,
            title_height,
            panels,
            rows,
            columns,
            panel_size,
        };
        let (w, h) = grid.size_u64();
        if w > u64::from(MAX_IMAGE_SIDE) || h > u64::from(MAX_IMAGE_SIDE) {
            return Err(Error::arg(
                "panel_size",
                format!(
                    "a {}x{} grid of {}x{} panels is {w}x{h} pixels, above the {MAX_IMAGE_SIDE} pixel limit",
                    rows, columns, panel_size.0, panel_size.1
                ),
            ));
        }
        Ok(grid)
    }

    fn size_u64(&self) -> (u64, u64) {
        (
            self.columns as u64 * u64::from(self.panel_size.0),
            self.rows as u64 * u64::from(self.panel_size.1) + u64::from(self.title_height),
        )
    }

    /// Image size; fits in `u32` because `new` bounded it by `MAX_IMAGE_SIDE`.
    fn size(&self) -> (u32, u32) {
        let (w, h) = self.size_u64();
        (w as u32, h as u32)
    }
}

fn draw_scene<DB: DrawingBackend, S: Scene>(
    root: &DrawingArea<DB, Shift>,
    scene: &S,
    text: &Typesetter,
) -> DrawResult<(), DB> {
    let grid = scene.grid();
    root.fill(&WHITE)?;
    let body = match &grid.title {
        Some(title) => {
            let (strip, body) = root.split_vertically(grid.title_height);
            let (w, h) = strip.dim_in_pixel();
            let centre = ((w / 2) as i32, (h / 2) as i32);
            let anchor = Anchor::new(HPos::Center, VPos::Center);
            text.draw(&strip, title, FIGURE_TITLE_PX, centre, anchor, false)?;
            body
        }
        None => root.clone(),
    };
    let cells = body.split_evenly((grid.rows, grid.columns));
    for (index, cell) in cells.iter().take(grid.panels).enumerate() {
        scene.draw_panel(index, cell, text)?;
    }
    root.present()
}

fn write_outputs<S: Scene>(scene: &S, path_stem: &Path) -> Result<Vec<PathBuf>> {
    if path_stem.file_name().is_none() {
        return Err(Error::arg(
            "path_stem",
            format!("`{}` does not end in a file name", path_stem.display()),
        ));
    }
    if let Some(parent) = path_stem.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    ensure_font()?;
    let png_path = with_suffix(path_stem, "png");
    let svg_path = with_suffix(path_stem, "svg");
    let (w, h) = scene.grid().size();

    let mut pixels = vec![0u8; 3 * w as usize * h as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        let text = Typesetter::new(true);
        draw_scene(&root, scene, &text).map_err(|e| draw_error(&png_path, e))?;
    }
    let png = encode_png(&pixels, w, h).map_err(|e| Error::io(&png_path, e))?;
    std::fs::write(&png_path, png).map_err(|e| Error::io(&png_path, e))?;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        let text = Typesetter::new(false);
        draw_scene(&root, scene, &text).map_err(|e| draw_error(&svg_path, e))?;
    }
    std::fs::write(&svg_path, svg).map_err(|e| Error::io(&svg_path, e))?;
    Ok(vec![png_path, svg_path])
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

fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        register_font(
            FontFamily::SansSerif.as_str(),
            FontStyle::Normal,
            DEJAVU_SANS,
        )
        .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Data(
            "the embedded DejaVu Sans font could not be parsed".into(),
        ))
    }
}

/// Text style for plotters' own text path (SVG text elements). plotters-svg writes a font size
/// of `s / 1.24` for size `s`; undo that so the constants above are the em sizes in the image.
fn font(px_per_em: f64) -> TextStyle<'static> {
    FontDesc::new(FontFamily::SansSerif, px_per_em * 1.24, FontStyle::Normal).color(&TEXT_COLOUR)
}

// ---------------------------------------------------------------------------------------------
// Text.
//
// plotters 0.3.7 rasterises ab_glyph text with each glyph's ink box at the pen position, dropping
// the left side bearing, so bitmap text comes out unevenly spaced ("M AT"). For PNGs each glyph
// is therefore placed here from the font's own metrics (cmap, hmtx, glyf boxes, kern) and only
// rasterised by plotters, one glyph at a time. SVG text stays text, laid out by the viewer.
// Layout sizes come from the same metrics in both formats, so PNG and SVG share one layout.

/// Cap height and descender depth of DejaVu Sans, in em (1493/2048 and 483/2048).
const CAP_HEIGHT_EM: f64 = 0.729;
const DESCENDER_EM: f64 = 0.236;
/// plotters-svg puts the baseline of top-anchored text 0.76 em below the anchor.
const SVG_TOP_BASELINE_EM: f64 = 0.76;

/// Read-only view of the TrueType tables needed to place glyphs. All reads are bounds-checked;
/// a font that does not parse simply disables glyph placement.
struct FontMetrics {
    data: &'static [u8],
    units_per_em: f64,
    /// ab_glyph's scale unit: a size of `s` pixels maps `ascender - descender` units to `s`.
    height_units: f64,
    cmap_format4: usize,
    hmtx: usize,
    long_metrics: u16,
    loca: usize,
    loca_long: bool,
    glyf: usize,
    glyph_count: u16,
    /// Start of the pairs of a horizontal format-0 kern subtable, and their number.
    kern_pairs: Option<(usize, usize)>,
}

fn read_u16(data: &[u8], at: usize) -> Option<u16> {
    let bytes = data.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

fn read_i16(data: &[u8], at: usize) -> Option<i16> {
    read_u16(data, at).map(|v| v as i16)
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

impl FontMetrics {
    fn parse(data: &'static [u8]) -> Option<Self> {
        let table_count = usize::from(read_u16(data, 4)?);
        let table = |tag: &[u8; 4]| -> Option<usize> {
            (0..table_count).find_map(|i| {
                let record = 12 + 16 * i;
                (data.get(record..record + 4)? == tag)
                    .then(|| read_u32(data, record + 8).map(|o| o as usize))
                    .flatten()
            })
        };
        let head = table(b"head")?;
        let hhea = table(b"hhea")?;
        let maxp = table(b"maxp")?;
        let os2 = table(b"OS/2");
        let units_per_em = f64::from(read_u16(data, head + 18)?);
        let loca_long = read_i16(data, head + 50)? == 1;
        // ab_glyph (via ttf-parser) uses the OS/2 typographic metrics when USE_TYPO_METRICS is
        // set, the hhea metrics otherwise.
        let use_typo = os2
            .and_then(|o| read_u16(data, o + 62))
            .is_some_and(|selection| selection & (1 << 7) != 0);
        let (ascender, descender) = match (use_typo, os2) {
            (true, Some(o)) => (read_i16(data, o + 68)?, read_i16(data, o + 70)?),
            _ => (read_i16(data, hhea + 4)?, read_i16(data, hhea + 6)?),
        };
        let height_units = f64::from(ascender) - f64::from(descender);
        let cmap = table(b"cmap")?;
        let cmap_format4 = (0..usize::from(read_u16(data, cmap + 2)?)).find_map(|i| {
            let record = cmap + 4 + 8 * i;
            let platform = read_u16(data, record)?;
            let encoding = read_u16(data, record + 2)?;
            let sub = cmap + read_u32(data, record + 4)? as usize;
            let unicode = (platform == 3 && encoding == 1) || platform == 0;
            (unicode && read_u16(data, sub)? == 4).then_some(sub)
        })?;
        let kern_pairs = table(b"kern").and_then(|kern| {
            // Version 0 table: the first subtable, if horizontal and format 0.
            let sub = kern + 4;
            let coverage = read_u16(data, sub + 4)?;
            let horizontal_format0 =
                coverage & 0x1 != 0 && coverage & 0x4 == 0 && coverage >> 8 == 0;
            (read_u16(data, kern)? == 0 && read_u16(data, kern + 2)? > 0 && horizontal_format0)
                .then(|| Some((sub + 14, usize::from(read_u16(data, sub + 6)?))))
                .flatten()
        });
        let metrics = FontMetrics {
            data,
            units_per_em,
            height_units,
            cmap_format4,
            hmtx: table(b"hmtx")?,
            long_metrics: read_u16(data, hhea + 34)?,
            loca: table(b"loca")?,
            loca_long,
            glyf: table(b"glyf")?,
            glyph_count: read_u16(data, maxp + 4)?,
            kern_pairs,
        };
        let sane = metrics.units_per_em > 0.0
            && metrics.height_units > 0.0
            && metrics.long_metrics > 0
            && metrics
                .advance(metrics.glyph_id('M'))
                .is_some_and(|a| a > 0.0);
        sane.then_some(metrics)
    }

    /// Glyph index of `c` (0, the missing-glyph box, when the font lacks it).
    fn glyph_id(&self, c: char) -> u16 {
        self.lookup(c).unwrap_or(0)
    }

    fn lookup(&self, c: char) -> Option<u16> {
        let code = u16::try_from(u32::from(c)).ok()?;
        let (data, sub) = (self.data, self.cmap_format4);
        let seg_x2 = usize::from(read_u16(data, sub + 6)?);
        let ends = sub + 14;
        let starts = ends + seg_x2 + 2;
        let deltas = starts + seg_x2;
        let range_offsets = deltas + seg_x2;
        let segment =
            (0..seg_x2 / 2).find(|&s| read_u16(data, ends + 2 * s).is_some_and(|e| e >= code))?;
        let start = read_u16(data, starts + 2 * segment)?;
        if start > code {
            return None;
        }
        let delta = read_u16(data, deltas + 2 * segment)?;
        let range_offset_at = range_offsets + 2 * segment;
        let range_offset = usize::from(read_u16(data, range_offset_at)?);
        let glyph = if range_offset == 0 {
            code.wrapping_add(delta)
        } else {
            let at = range_offset_at + range_offset + 2 * usize::from(code - start);
            match read_u16(data, at)? {
                0 => 0,
                g => g.wrapping_add(delta),
            }
        };
        (glyph < self.glyph_count).then_some(glyph)
    }

    /// Advance width in font units.
    fn advance(&self, glyph: u16) -> Option<f64> {
        let index = glyph.min(self.long_metrics - 1);
        read_u16(self.data, self.hmtx + 4 * usize::from(index)).map(f64::from)
    }

    /// `(x_min, y_max)` of the glyph's box in font units; `None` for glyphs without outline.
    fn ink_corner(&self, glyph: u16) -> Option<(f64, f64)> {
        let offset = |g: usize| -> Option<usize> {
            if self.loca_long {
                read_u32(self.data, self.loca + 4 * g).map(|o| o as usize)
            } else {
                read_u16(self.data, self.loca + 2 * g).map(|o| 2 * usize::from(o))
            }
        };
        let (start, end) = (offset(usize::from(glyph))?, offset(usize::from(glyph) + 1)?);
        if end <= start {
            return None;
        }
        let at = self.glyf + start;
        Some((
            f64::from(read_i16(self.data, at + 2)?),
            f64::from(read_i16(self.data, at + 8)?),
        ))
    }

    /// Kerning between two glyphs in font units (0 without a kern pair).
    fn kerning(&self, left: u16, right: u16) -> f64 {
        let Some((pairs, count)) = self.kern_pairs else {
            return 0.0;
        };
        let key = (u32::from(left) << 16) | u32::from(right);
        let (mut lo, mut hi) = (0usize, count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let at = pairs + 6 * mid;
            let Some(pair) = read_u32(self.data, at) else {
                return 0.0;
            };
            match pair.cmp(&key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    return read_i16(self.data, at + 4).map_or(0.0, f64::from);
                }
            }
        }
        0.0
    }

    /// Width of `text` in em, as ab_glyph lays it out (advances plus kerning).
    fn width_em(&self, text: &str) -> f64 {
        let mut width = 0.0;
        let mut previous = None;
        for c in text.chars() {
            let glyph = self.glyph_id(c);
            if let Some(p) = previous {
                width += self.kerning(p, glyph);
            }
            width += self.advance(glyph).unwrap_or(0.0);
            previous = Some(glyph);
        }
        width / self.units_per_em
    }
}

fn embedded_metrics() -> Option<&'static FontMetrics> {
    static METRICS: OnceLock<Option<FontMetrics>> = OnceLock::new();
    METRICS
        .get_or_init(|| FontMetrics::parse(DEJAVU_SANS))
        .as_ref()
}

/// How text reaches the output: as text elements (SVG) or as glyphs placed here (PNG).
#[derive(Clone, Copy)]
struct Typesetter {
    metrics: Option<&'static FontMetrics>,
    place_glyphs: bool,
}

/// Where a text's anchor point sits on it.
#[derive(Clone, Copy)]
struct Anchor {
    h: HPos,
    /// `Top`: cap height line; `Center`: middle of the cap height; `Bottom`: descender line.
    v: VPos,
}

impl Anchor {
    const fn new(h: HPos, v: VPos) -> Self {
        Anchor { h, v }
    }
}

impl Typesetter {
    fn new(place_glyphs: bool) -> Self {
        let metrics = embedded_metrics();
        Typesetter {
            metrics,
            place_glyphs: place_glyphs && metrics.is_some(),
        }
    }

    /// Text width in pixels at `px` pixels per em.
    fn width<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        text: &str,
        px: f64,
    ) -> DrawResult<f64, DB> {
        match self.metrics {
            Some(m) => Ok(m.width_em(text) * px),
            None => Ok(f64::from(area.estimate_text_size(text, &font(px))?.0)),
        }
    }

    /// Height of one line from cap height to descender, in whole pixels.
    fn line_height(px: f64) -> u32 {
        ((CAP_HEIGHT_EM + DESCENDER_EM) * px).ceil() as u32
    }

    /// Draws `text` with its anchor at `at`; `vertical` turns it to read bottom to top, with
    /// "top" facing left.
    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        text: &str,
        px: f64,
        at: (i32, i32),
        anchor: Anchor,
        vertical: bool,
    ) -> DrawResult<(), DB> {
        if text.trim().is_empty() {
            return Ok(());
        }
        // Baseline offset from the anchor, along the text's "down" direction.
        let baseline = match anchor.v {
            VPos::Top => CAP_HEIGHT_EM * px,
            VPos::Center => 0.5 * CAP_HEIGHT_EM * px,
            VPos::Bottom => -DESCENDER_EM * px,
        };
        // Text-frame point to screen: "down" is screen +x for vertical text.
        let to_screen = |along: f64, down: f64| -> (i32, i32) {
            let (along, down) = (along.round() as i32, down.round() as i32);
            if vertical {
                (at.0 + down, at.1 - along)
            } else {
                (at.0 + along, at.1 + down)
            }
        };
        match (self.place_glyphs, self.metrics) {
            (true, Some(metrics)) => {
                let start = match anchor.h {
                    HPos::Left => 0.0,
                    HPos::Center => -0.5 * metrics.width_em(text) * px,
                    HPos::Right => -metrics.width_em(text) * px,
                };
                draw_glyphs(area, metrics, text, px, start, baseline, &to_screen)
            }
            _ => {
                let mut style = font(px).pos(Pos::new(anchor.h, VPos::Top));
                if vertical {
                    style = style.transform(FontTransform::Rotate270);
                }
                area.draw_text(
                    text,
                    &style,
                    to_screen(0.0, baseline - SVG_TOP_BASELINE_EM * px),
                )
            }
        }
    }
}

/// Draws `text` glyph by glyph, each placed from the font metrics (see the section comment).
fn draw_glyphs<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    metrics: &FontMetrics,
    text: &str,
    px: f64,
    start: f64,
    baseline: f64,
    to_screen: &dyn Fn(f64, f64) -> (i32, i32),
) -> DrawResult<(), DB> {
    // ab_glyph's pixel size covers ascender to descender; choose it so one em is `px`.
    let size = px * metrics.height_units / metrics.units_per_em;
    let unit = px / metrics.units_per_em;
    let glyph_font = FontDesc::new(FontFamily::SansSerif, size, FontStyle::Normal);
    let mut pen = start;
    let mut previous = None;
    let mut coverage: Vec<(i32, i32, f32)> = Vec::new();
    for c in text.chars() {
        let glyph = metrics.glyph_id(c);
        if let Some(p) = previous {
            pen += metrics.kerning(p, glyph) * unit;
        }
        if let Some((x_min, y_max)) = metrics.ink_corner(glyph) {
            coverage.clear();
            let mut utf8 = [0u8; 4];
            let drawn = glyph_font.draw(c.encode_utf8(&mut utf8), (0, 0), |x, y, a| {
                coverage.push((x, y, a));
                Ok::<(), ()>(())
            });
            // Err only if the font were not registered, which `ensure_font` rules out
            // before any drawing starts.
            if matches!(drawn, Ok(Ok(()))) {
                // plotters hands over the glyph's pixel box with its corner at a fixed
                // offset; put that corner where the outline box says it belongs.
                let x0 = coverage.iter().map(|p| p.0).min().unwrap_or(0);
                let y0 = coverage.iter().map(|p| p.1).min().unwrap_or(0);
                let left = pen.round() + (x_min * unit).floor();
                let top = baseline.round() + (-y_max * unit).floor();
                for &(x, y, a) in &coverage {
                    if a > 0.0 {
                        let point = to_screen(left + f64::from(x - x0), top + f64::from(y - y0));
                        area.draw_pixel(point, &TEXT_COLOUR.mix(f64::from(a.min(1.0))))?;
                    }
                }
            }
        }
        pen += metrics.advance(glyph).unwrap_or(0.0) * unit;
        previous = Some(glyph);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// PNG encoding (8-bit RGB, no interlace, filter type 0 on every row).

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
};

/// CRC-32 (ISO 3309, as PNG specifies) of the concatenation of `parts`.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for part in parts {
        for &byte in *part {
            c = CRC_TABLE[((c ^ u32::from(byte)) & 0xff) as usize] ^ (c >> 8);
        }
    }
    c ^ 0xffff_ffff
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    // Chunk lengths fit in u32: the image is bounded by MAX_IMAGE_SIDE.
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(&[kind, data]).to_be_bytes());
}

fn encode_png(rgb: &[u8], width: u32, height: u32) -> std::io::Result<Vec<u8>> {
    let row_bytes = 3 * width as usize;
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    for row in rgb.chunks_exact(row_bytes).take(height as usize) {
        zlib.write_all(&[0])?;
        zlib.write_all(row)?;
    }
    let idat = zlib.finish()?;
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // Bit depth 8, colour type 2 (RGB), deflate, adaptive filtering, no interlace.
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = Vec::with_capacity(idat.len() + 64);
    out.extend_from_slice(&PNG_SIGNATURE);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &idat);
    png_chunk(&mut out, b"IEND", &[]);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Ranges and ticks.

type Range2 = (f64, f64);

/// Running min/max of finite values.
#[derive(Default, Clone, Copy)]
struct Extent(Option<Range2>);

impl Extent {
    fn add(&mut self, v: f64) {
        if v.is_finite() {
            self.0 = Some(match self.0 {
                Some((lo, hi)) => (lo.min(v), hi.max(v)),
                None => (v, v),
            });
        }
    }
}

/// Widens `[v, v]` to a visible interval around `v`.
fn widen(v: f64) -> Range2 {
    let half = if v == 0.0 { 0.5 } else { 0.05 * v.abs() };
    (v - half, v + half)
}

/// Whether `hi - lo` is too small to draw ticks on, relative to the magnitude of the values.
fn is_degenerate(lo: f64, hi: f64) -> bool {
    hi - lo <= 1e-9 * lo.abs().max(hi.abs()).max(f64::MIN_POSITIVE)
}

/// Axis range from an optional explicit range and the data extent (see the module docs).
fn resolve_range(explicit: Option<(f32, f32)>, data: Extent) -> Range2 {
    if let Some((a, b)) = explicit {
        let (a, b) = (f64::from(a), f64::from(b));
        if a.is_finite() && b.is_finite() {
            let (lo, hi) = (a.min(b), a.max(b));
            return if is_degenerate(lo, hi) {
                widen(lo)
            } else {
                (lo, hi)
            };
        }
    }
    match data.0 {
        None => (0.0, 1.0),
        Some((lo, hi)) if is_degenerate(lo, hi) => widen(lo),
        Some((lo, hi)) => {
            let pad = 0.04 * (hi - lo);
            (lo - pad, hi + pad)
        }
    }
}

/// Tick positions and label formatting of one axis: plotters' "nice" key points (at most
/// `count`), labelled with the fewest decimals (up to 10) that show every tick exactly, in
/// scientific notation when the values are very large (>= 1e5) or all very small (< 1e-3).
struct TickFormat {
    range: Range2,
    count: usize,
    decimals: usize,
    scientific: bool,
    step: f64,
}

impl TickFormat {
    fn new(range: Range2, count: usize) -> Self {
        let ticks = RangedCoordf64::from(range.0..range.1).key_points(count);
        let step = match ticks.as_slice() {
            [a, b, ..] => (b - a).abs(),
            _ => range.1 - range.0,
        };
        let magnitude = range.0.abs().max(range.1.abs());
        let scientific = !(1e-3..1e5).contains(&magnitude);
        let shown = |t: f64, decimals: usize| -> f64 {
            let text = if scientific {
                format!("{t:.decimals$e}")
            } else {
                format!("{t:.decimals$}")
            };
            text.parse().unwrap_or(f64::NAN)
        };
        let decimals = (0..10)
            .find(|&d| {
                ticks
                    .iter()
                    .all(|&t| (shown(t, d) - t).abs() <= 1e-3 * step)
            })
            .unwrap_or(10);
        TickFormat {
            range,
            count,
            decimals,
            scientific,
            step,
        }
    }

    fn format(&self, v: f64) -> String {
        // Avoid "-0.0" for a tick that is zero up to rounding.
        let v = if v.abs() <= 1e-9 * self.step { 0.0 } else { v };
        let d = self.decimals;
        if self.scientific && v == 0.0 {
            "0".to_owned()
        } else if self.scientific {
            format!("{v:.d$e}")
        } else {
            format!("{v:.d$}")
        }
    }

    fn ticks(&self) -> Vec<f64> {
        RangedCoordf64::from(self.range.0..self.range.1).key_points(self.count)
    }

    fn labels(&self) -> Vec<String> {
        self.ticks().into_iter().map(|t| self.format(t)).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Geometry helpers.

/// Liang–Barsky clipping of segment `p`–`q` to the rectangle `xr x yr`. Returns the visible part
/// and whether each end was moved.
fn clip_segment(
    p: Range2,
    q: Range2,
    xr: Range2,
    yr: Range2,
) -> Option<(Range2, Range2, bool, bool)> {
    let (dx, dy) = (q.0 - p.0, q.1 - p.1);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (denominator, numerator) in [
        (-dx, p.0 - xr.0),
        (dx, xr.1 - p.0),
        (-dy, p.1 - yr.0),
        (dy, yr.1 - p.1),
    ] {
        if denominator == 0.0 {
            if numerator < 0.0 {
                return None;
            }
        } else {
            let t = numerator / denominator;
            if denominator < 0.0 {
                if t > t1 {
                    return None;
                }
                t0 = t0.max(t);
            } else {
                if t < t0 {
                    return None;
                }
                t1 = t1.min(t);
            }
        }
    }
    let at = |t: f64| (p.0 + t * dx, p.1 + t * dy);
    Some((at(t0), at(t1), t0 > 0.0, t1 < 1.0))
}

/// The visible pieces of a curve: split at non-finite points and clipped to the view.
fn visible_pieces(xs: &[f32], ys: &[f32], xr: Range2, yr: Range2) -> Vec<Vec<Range2>> {
    let mut pieces: Vec<Vec<Range2>> = Vec::new();
    let mut open = false;
    let mut previous: Option<Range2> = None;
    for (&x, &y) in xs.iter().zip(ys) {
        let point = (f64::from(x), f64::from(y));
        if !(point.0.is_finite() && point.1.is_finite()) {
            previous = None;
            open = false;
            continue;
        }
        if let Some(p) = previous {
            match clip_segment(p, point, xr, yr) {
                Some((a, b, start_moved, end_moved)) => {
                    match pieces.last_mut() {
                        Some(piece) if open && !start_moved => piece.push(b),
                        _ => pieces.push(vec![a, b]),
                    }
                    open = !end_moved;
                }
                None => open = false,
            }
        }
        previous = Some(point);
    }
    pieces
}

fn in_view(p: Range2, xr: Range2, yr: Range2) -> bool {
    p.0 >= xr.0 && p.0 <= xr.1 && p.1 >= yr.0 && p.1 <= yr.1
}

/// A coarse occupancy raster of a plot area, used to put the legend where it hides least.
struct Ink {
    width: i32,
    height: i32,
    cells: Vec<bool>,
}

const INK_CELL: i32 = 4;

impl Ink {
    fn new(width: i32, height: i32) -> Self {
        let width = width / INK_CELL + 1;
        let height = height / INK_CELL + 1;
        Ink {
            width,
            height,
            cells: vec![false; (width.max(0) * height.max(0)) as usize],
        }
    }

    fn mark(&mut self, (x, y): (i32, i32)) {
        let (cx, cy) = (x.div_euclid(INK_CELL), y.div_euclid(INK_CELL));
        if (0..self.width).contains(&cx) && (0..self.height).contains(&cy) {
            self.cells[(cy * self.width + cx) as usize] = true;
        }
    }

    fn mark_segment(&mut self, a: (i32, i32), b: (i32, i32)) {
        let length = f64::from(b.0 - a.0).hypot(f64::from(b.1 - a.1));
        let steps = (length / f64::from(INK_CELL)).ceil().max(1.0) as i32;
        for s in 0..=steps {
            let t = f64::from(s) / f64::from(steps);
            self.mark((
                a.0 + (t * f64::from(b.0 - a.0)).round() as i32,
                a.1 + (t * f64::from(b.1 - a.1)).round() as i32,
            ));
        }
    }

    fn mark_rect(&mut self, (x0, y0): (i32, i32), (x1, y1): (i32, i32)) {
        let (x0, x1) = (x0.min(x1), x0.max(x1));
        let (y0, y1) = (y0.min(y1), y0.max(y1));
        for y in (y0..=y1).step_by(INK_CELL as usize) {
            for x in (x0..=x1).step_by(INK_CELL as usize) {
                self.mark((x, y));
            }
        }
    }

    fn count(&self, (x0, y0): (i32, i32), (x1, y1): (i32, i32)) -> usize {
        let cx = (
            x0.div_euclid(INK_CELL).max(0),
            x1.div_euclid(INK_CELL).min(self.width - 1),
        );
        let cy = (
            y0.div_euclid(INK_CELL).max(0),
            y1.div_euclid(INK_CELL).min(self.height - 1),
        );
        let mut n = 0;
        for y in cy.0..=cy.1 {
            for x in cx.0..=cx.1 {
                n += usize::from(self.cells[(y * self.width + x) as usize]);
            }
        }
        n
    }
}

// ---------------------------------------------------------------------------------------------
// Panels.

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The texts around one set of axes.
struct AxisLabels<'a> {
    title: &'a str,
    x: &'a str,
    y: &'a str,
}

/// Title, grid, ticks, tick labels and axis labels for a panel; returns the chart to draw data on.
///
/// Label areas are sized from the actual tick labels, and the number of ticks shrinks (down to
/// 2) until the labels fit along the axis without touching, so nothing is clipped or overprinted.
fn build_axes<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    text: &Typesetter,
    labels: &AxisLabels<'_>,
    xr: Range2,
    yr: Range2,
) -> DrawResult<Chart<'a, DB>, DB> {
    const MARGIN: i32 = 8;
    const TICK_GAP: i32 = 4;
    const LABEL_GAP: i32 = 8;
    let (area_w, area_h) = area.dim_in_pixel();
    let (area_w, area_h) = (area_w as i32, area_h as i32);
    let tick_line = Typesetter::line_height(TICK_PX) as i32;
    let label_line = Typesetter::line_height(AXIS_LABEL_PX) as i32;
    let x_label = labels.x.trim();
    let y_label = labels.y.trim();
    let title = labels.title.trim();

    // Title strip, with the title shrunk (not below 11 px) when wider than the panel.
    let mut title_px = PANEL_TITLE_PX;
    let mut title_width = 0.0;
    let mut margin_top = MARGIN + tick_line / 2;
    if !title.is_empty() {
        let room = f64::from(area_w - 2 * MARGIN);
        title_width = text.width(area, title, title_px)?;
        if title_width > room {
            title_px = (PANEL_TITLE_PX * room / title_width).max(11.0);
            title_width = text.width(area, title, title_px)?;
        }
        margin_top = MARGIN + Typesetter::line_height(title_px) as i32 + 10;
    }
    let margin_bottom = MARGIN / 2;
    let x_area = TICK_MARK_PX
        + TICK_GAP
        + tick_line
        + if x_label.is_empty() {
            0
        } else {
            LABEL_GAP + label_line
        };

    let plot_h = area_h - margin_top - margin_bottom - x_area;
    let mut y_ticks = TickFormat::new(yr, 2);
    for count in (2..=TICK_COUNT).rev() {
        let candidate = TickFormat::new(yr, count);
        if candidate.ticks().len() as i32 * (tick_line + 10) <= plot_h {
            y_ticks = candidate;
            break;
        }
    }
    let mut widest_y_tick = 0.0f64;
    for label in y_ticks.labels() {
        widest_y_tick = widest_y_tick.max(text.width(area, &label, TICK_PX)?);
    }
    let y_area = TICK_MARK_PX
        + TICK_GAP
        + widest_y_tick.ceil() as i32
        + if y_label.is_empty() {
            0
        } else {
            LABEL_GAP + label_line
        };

    let mut x_ticks = TickFormat::new(xr, 2);
    let mut margin_right = MARGIN;
    for count in (2..=TICK_COUNT).rev() {
        let candidate = TickFormat::new(xr, count);
        let mut widths = Vec::new();
        for label in candidate.labels() {
            widths.push(text.width(area, &label, TICK_PX)?);
        }
        // The last label is centred on the plot's right edge: leave room for its half.
        let right = (widths.last().copied().unwrap_or(0.0) / 2.0).ceil() as i32 + MARGIN;
        let plot_w = f64::from(area_w - MARGIN - y_area - right);
        let needed: f64 = widths.iter().map(|w| w + 14.0).sum();
        if needed <= plot_w || count == 2 {
            x_ticks = candidate;
            margin_right = right.max(MARGIN + 4);
            break;
        }
    }

    // Only the horizontal space depends on the data (tick label widths); however wide the
    // labels, the plot keeps at least 40% of the panel width.
    let y_area = y_area.min(2 * area_w / 5);
    let margin_right = margin_right.min(area_w / 8);
    let chart = ChartBuilder::on(area)
        .margin_top(margin_top)
        .margin_right(margin_right)
        .margin_left(MARGIN)
        .margin_bottom(margin_bottom)
        .x_label_area_size(x_area)
        .y_label_area_size(y_area)
        .build_cartesian_2d(xr.0..xr.1, yr.0..yr.1)?;

    // Plot rectangle in `area` pixels (inclusive corners).
    let base = area.get_base_pixel();
    let (xs, ys) = chart.plotting_area().get_pixel_range();
    let (left, right) = (xs.start - base.0, xs.end - base.0 - 1);
    let (top, bottom) = (ys.start - base.1, ys.end - base.1 - 1);
    let grid = GRID_COLOUR.stroke_width(1);
    let axis = AXIS_COLOUR.stroke_width(1);
    for tick in x_ticks.ticks() {
        let x = chart.backend_coord(&(tick, yr.0)).0 - base.0;
        area.draw(&PathElement::new(vec![(x, top), (x, bottom)], grid))?;
        area.draw(&PathElement::new(
            vec![(x, bottom), (x, bottom + TICK_MARK_PX)],
            axis,
        ))?;
        let at = (x, bottom + TICK_MARK_PX + TICK_GAP);
        let anchor = Anchor::new(HPos::Center, VPos::Top);
        text.draw(area, &x_ticks.format(tick), TICK_PX, at, anchor, false)?;
    }
    for tick in y_ticks.ticks() {
        let y = chart.backend_coord(&(xr.0, tick)).1 - base.1;
        area.draw(&PathElement::new(vec![(left, y), (right, y)], grid))?;
        area.draw(&PathElement::new(
            vec![(left - TICK_MARK_PX, y), (left, y)],
            axis,
        ))?;
        let at = (left - TICK_MARK_PX - TICK_GAP, y);
        let anchor = Anchor::new(HPos::Right, VPos::Center);
        text.draw(area, &y_ticks.format(tick), TICK_PX, at, anchor, false)?;
    }
    let centre = ((left + right) / 2, (top + bottom) / 2);
    if !x_label.is_empty() {
        let at = (
            centre.0,
            bottom + TICK_MARK_PX + TICK_GAP + tick_line + LABEL_GAP,
        );
        let anchor = Anchor::new(HPos::Center, VPos::Top);
        text.draw(area, x_label, AXIS_LABEL_PX, at, anchor, false)?;
    }
    if !y_label.is_empty() {
        let anchor = Anchor::new(HPos::Center, VPos::Top);
        text.draw(
            area,
            y_label,
            AXIS_LABEL_PX,
            (MARGIN, centre.1),
            anchor,
            true,
        )?;
    }
    if !title.is_empty() {
        // Centred over the plot, moved inwards if that would cross the panel's edge.
        let half = (title_width / 2.0).ceil() as i32;
        let x = centre.0.min(area_w - MARGIN - half).max(MARGIN + half);
        let anchor = Anchor::new(HPos::Center, VPos::Top);
        text.draw(area, title, title_px, (x, MARGIN), anchor, false)?;
    }
    Ok(chart)
}

/// Thin frame around the plot area (plotters only draws the left and bottom axes).
fn draw_frame<DB: DrawingBackend>(chart: &Chart<'_, DB>) -> DrawResult<(), DB> {
    let plot = chart.plotting_area().strip_coord_spec();
    let (w, h) = plot.dim_in_pixel();
    plot.draw(&Rectangle::new(
        [(0, 0), (w as i32 - 1, h as i32 - 1)],
        AXIS_COLOUR.stroke_width(1),
    ))
}

/// Pixel position relative to the plot area's top-left corner.
fn to_plot_pixel<DB: DrawingBackend>(chart: &Chart<'_, DB>, p: Range2) -> (i32, i32) {
    let (bx, by) = chart.plotting_area().get_base_pixel();
    let (x, y) = chart.backend_coord(&p);
    (x - bx, y - by)
}

fn new_ink<DB: DrawingBackend>(chart: &Chart<'_, DB>) -> Ink {
    let (xs, ys) = chart.plotting_area().get_pixel_range();
    Ink::new((xs.end - xs.start).max(0), (ys.end - ys.start).max(0))
}

fn line_shape(style: LineStyle) -> ShapeStyle {
    rgb(style.colour).stroke_width(LINE_WIDTH)
}

fn draw_curve<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    curve: &Curve,
    xr: Range2,
    yr: Range2,
    ink: &mut Ink,
) -> DrawResult<(), DB> {
    for piece in visible_pieces(&curve.xs, &curve.ys, xr, yr) {
        for pair in piece.windows(2) {
            ink.mark_segment(to_plot_pixel(chart, pair[0]), to_plot_pixel(chart, pair[1]));
        }
        let shape = line_shape(curve.style);
        if curve.style.dashed {
            chart.draw_series(DashedLineSeries::new(piece, DASH_PX, DASH_GAP_PX, shape))?;
        } else {
            chart.draw_series(LineSeries::new(piece, shape))?;
        }
    }
    Ok(())
}

fn draw_scatter<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    scatter: &Scatter,
    xr: Range2,
    yr: Range2,
    ink: &mut Ink,
) -> DrawResult<(), DB> {
    let points: Vec<Range2> = scatter
        .points
        .iter()
        .map(|&(x, y)| (f64::from(x), f64::from(y)))
        .filter(|&p| in_view(p, xr, yr))
        .collect();
    for &p in &points {
        let (x, y) = to_plot_pixel(chart, p);
        let r = MARKER_PX as i32;
        ink.mark_rect((x - r, y - r), (x + r, y + r));
    }
    draw_markers(
        chart.plotting_area(),
        &points,
        scatter.colour,
        scatter.marker,
    )
}

/// Draws one marker per point; shared by scatters (data coordinates) and legends (pixels).
/// Discs get a translucent fill under a solid edge so that dense clouds stay readable.
fn draw_markers<DB: DrawingBackend, CT: CoordTranslate>(
    area: &DrawingArea<DB, CT>,
    points: &[CT::From],
    colour: usize,
    marker: Marker,
) -> DrawResult<(), DB>
where
    CT::From: Clone,
{
    let colour = rgb(colour);
    for p in points {
        match marker {
            Marker::Circle => {
                area.draw(&Circle::new(p.clone(), MARKER_PX, colour.mix(0.4).filled()))?;
                area.draw(&Circle::new(
                    p.clone(),
                    MARKER_PX,
                    colour.mix(0.9).stroke_width(1),
                ))?;
            }
            Marker::Cross => {
                area.draw(&Cross::new(
                    p.clone(),
                    MARKER_PX,
                    colour.mix(0.85).stroke_width(2),
                ))?;
            }
            Marker::Triangle => {
                area.draw(&TriangleMarker::new(
                    p.clone(),
                    MARKER_PX + 1,
                    colour.mix(0.65).filled(),
                ))?;
            }
        }
    }
    Ok(())
}

fn draw_xy_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    text: &Typesetter,
    panel: &Panel,
) -> DrawResult<(), DB> {
    let mut x_extent = Extent::default();
    let mut y_extent = Extent::default();
    for curve in &panel.curves {
        for (&x, &y) in curve.xs.iter().zip(&curve.ys) {
            if x.is_finite() && y.is_finite() {
                x_extent.add(f64::from(x));
                y_extent.add(f64::from(y));
            }
        }
    }
    for scatter in &panel.scatters {
        for &(x, y) in &scatter.points {
            if x.is_finite() && y.is_finite() {
                x_extent.add(f64::from(x));
                y_extent.add(f64::from(y));
            }
        }
    }
    let xr = resolve_range(panel.x_range, x_extent);
    let yr = resolve_range(panel.y_range, y_extent);
    let labels = AxisLabels {
        title: &panel.title,
        x: &panel.x_label,
        y: &panel.y_label,
    };
    let mut chart = build_axes(area, text, &labels, xr, yr)?;
    let mut ink = new_ink(&chart);
    for curve in &panel.curves {
        draw_curve(&mut chart, curve, xr, yr, &mut ink)?;
    }
    for scatter in &panel.scatters {
        draw_scatter(&mut chart, scatter, xr, yr, &mut ink)?;
    }
    for line in &panel.lines {
        draw_curve(&mut chart, line, xr, yr, &mut ink)?;
    }
    draw_frame(&chart)?;
    if panel.legend {
        let entries: Vec<LegendEntry<'_>> = panel
            .curves
            .iter()
            .map(|c| LegendEntry {
                label: &c.label,
                swatch: Swatch::Line(c.style),
            })
            .chain(panel.scatters.iter().map(|s| LegendEntry {
                label: &s.label,
                swatch: Swatch::Marker(s.colour, s.marker),
            }))
            .chain(panel.lines.iter().map(|c| LegendEntry {
                label: &c.label,
                swatch: Swatch::Line(c.style),
            }))
            .filter(|e| !e.label.trim().is_empty())
            .collect();
        draw_legend(
            &chart.plotting_area().strip_coord_spec(),
            text,
            &entries,
            &ink,
        )?;
    }
    Ok(())
}

/// Bin heights of one series: counts, or densities integrating to 1 over the range.
fn bin_heights(values: &[f32], bins: usize, range: Range2, density: bool) -> Vec<f64> {
    let (lo, hi) = range;
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0usize; bins];
    let mut inside = 0usize;
    for &v in values {
        let v = f64::from(v);
        if !(v.is_finite() && v >= lo && v <= hi) {
            continue;
        }
        // The last bin is closed on the right, so `hi` itself is counted.
        let bin = (((v - lo) / width) as usize).min(bins - 1);
        counts[bin] += 1;
        inside += 1;
    }
    counts
        .into_iter()
        .map(|c| {
            if density {
                if inside == 0 {
                    0.0
                } else {
                    c as f64 / (inside as f64 * width)
                }
            } else {
                c as f64
            }
        })
        .collect()
}

fn draw_hist_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    text: &Typesetter,
    panel: &HistPanel,
) -> DrawResult<(), DB> {
    let xr = resolve_range(Some(panel.range), Extent::default());
    let bins = panel.bins.max(1);
    let heights: Vec<Vec<f64>> = panel
        .series
        .iter()
        .map(|s| bin_heights(&s.values, bins, xr, panel.density))
        .collect();
    let top = heights.iter().flatten().copied().fold(0.0f64, f64::max);
    let yr = (0.0, if top > 0.0 { top * 1.08 } else { 1.0 });
    let y_label = if panel.density { "density" } else { "count" };
    let labels = AxisLabels {
        title: &panel.title,
        x: &panel.x_label,
        y: y_label,
    };
    let mut chart = build_axes(area, text, &labels, xr, yr)?;
    let mut ink = new_ink(&chart);
    let width = (xr.1 - xr.0) / bins as f64;
    let edge = |i: usize| xr.0 + width * i as f64;
    for (series, heights) in panel.series.iter().zip(&heights) {
        let colour = rgb(series.colour);
        chart.draw_series(heights.iter().enumerate().filter(|(_, &h)| h > 0.0).map(
            |(i, &h)| {
                Rectangle::new(
                    [(edge(i), 0.0), (edge(i + 1), h)],
                    colour.mix(0.28).filled(),
                )
            },
        ))?;
        for (i, &h) in heights.iter().enumerate().filter(|(_, &h)| h > 0.0) {
            ink.mark_rect(
                to_plot_pixel(&chart, (edge(i), 0.0)),
                to_plot_pixel(&chart, (edge(i + 1), h)),
            );
        }
        // Step outline around each run of non-empty bins: keeps each series readable where the
        // translucent bars overlap, without tracing the x axis under empty bins.
        let mut outline: Vec<Range2> = Vec::new();
        for (i, &h) in heights.iter().enumerate() {
            if h > 0.0 {
                if outline.is_empty() {
                    outline.push((edge(i), 0.0));
                }
                outline.push((edge(i), h));
                outline.push((edge(i + 1), h));
            }
            if !outline.is_empty() && (h == 0.0 || i + 1 == bins) {
                let end = if h > 0.0 { i + 1 } else { i };
                outline.push((edge(end), 0.0));
                let run = std::mem::take(&mut outline);
                chart.draw_series(LineSeries::new(run, colour.stroke_width(LINE_WIDTH)))?;
            }
        }
    }
    draw_frame(&chart)?;
    let entries: Vec<LegendEntry<'_>> = panel
        .series
        .iter()
        .filter(|s| !s.label.trim().is_empty())
        .map(|s| LegendEntry {
            label: &s.label,
            swatch: Swatch::Patch(s.colour),
        })
        .collect();
    draw_legend(
        &chart.plotting_area().strip_coord_spec(),
        text,
        &entries,
        &ink,
    )
}

// ---------------------------------------------------------------------------------------------
// Legend.

enum Swatch {
    Line(LineStyle),
    Marker(usize, Marker),
    Patch(usize),
}

struct LegendEntry<'a> {
    label: &'a str,
    swatch: Swatch,
}

const LEGEND_PAD: i32 = 8;
const LEGEND_SWATCH: i32 = 30;
const LEGEND_GAP: i32 = 8;
const LEGEND_INSET: i32 = 8;

/// Draws the legend box on `plot` (the plot area, pixel coordinates) at the anchor whose box
/// covers the fewest inked cells; corners, then anchors nearer the edges, win ties.
fn draw_legend<DB: DrawingBackend>(
    plot: &DrawingArea<DB, Shift>,
    text: &Typesetter,
    entries: &[LegendEntry<'_>],
    ink: &Ink,
) -> DrawResult<(), DB> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut text_width = 0i32;
    for entry in entries {
        text_width = text_width.max(text.width(plot, entry.label, LEGEND_PX)?.ceil() as i32);
    }
    let row = Typesetter::line_height(LEGEND_PX) as i32 + 8;
    let box_w = 2 * LEGEND_PAD + LEGEND_SWATCH + LEGEND_GAP + text_width;
    let box_h = 2 * LEGEND_PAD - 4 + row * entries.len() as i32;
    let (pw, ph) = plot.dim_in_pixel();
    let (pw, ph) = (pw as i32, ph as i32);
    // Anchors on a 5 x 5 grid over the free space; fractions ordered right/top first.
    let x_fractions = [1.0, 0.0, 0.5, 0.75, 0.25];
    let y_fractions = [0.0, 1.0, 0.5, 0.25, 0.75];
    let free_w = f64::from((pw - box_w - 2 * LEGEND_INSET).max(0));
    let free_h = f64::from((ph - box_h - 2 * LEGEND_INSET).max(0));
    let mut candidates: Vec<(usize, usize)> =
        (0..5).flat_map(|i| (0..5).map(move |j| (i, j))).collect();
    // Preference on ties: corners, then the other anchors from the edges inwards.
    candidates.sort_by_key(|&(i, j)| (i.max(j), i + j, j));
    let anchor = |(i, j): (usize, usize)| {
        (
            LEGEND_INSET + (x_fractions[i] * free_w).round() as i32,
            LEGEND_INSET + (y_fractions[j] * free_h).round() as i32,
        )
    };
    let (x0, y0) = candidates
        .into_iter()
        .map(anchor)
        .min_by_key(|&(x, y)| ink.count((x - 2, y - 2), (x + box_w + 2, y + box_h + 2)))
        .unwrap_or((LEGEND_INSET, LEGEND_INSET));
    let (x0, y0) = (x0.max(0), y0.max(0));

    plot.draw(&Rectangle::new(
        [(x0, y0), (x0 + box_w, y0 + box_h)],
        WHITE.mix(0.88).filled(),
    ))?;
    plot.draw(&Rectangle::new(
        [(x0, y0), (x0 + box_w, y0 + box_h)],
        LEGEND_BORDER.stroke_width(1),
    ))?;
    let label_anchor = Anchor::new(HPos::Left, VPos::Center);
    for (i, entry) in entries.iter().enumerate() {
        let cy = y0 + LEGEND_PAD - 2 + row * i as i32 + row / 2;
        let sx0 = x0 + LEGEND_PAD;
        let sx1 = sx0 + LEGEND_SWATCH;
        match entry.swatch {
            Swatch::Line(style) => {
                let shape = line_shape(style);
                if style.dashed {
                    plot.draw(&DashedPathElement::new(
                        vec![(sx0, cy), (sx1, cy)],
                        DASH_PX,
                        DASH_GAP_PX,
                        shape,
                    ))?;
                } else {
                    plot.draw(&PathElement::new(vec![(sx0, cy), (sx1, cy)], shape))?;
                }
            }
            Swatch::Marker(colour, marker) => {
                draw_markers(plot, &[((sx0 + sx1) / 2, cy)], colour, marker)?;
            }
            Swatch::Patch(colour) => {
                let colour = rgb(colour);
                let corners = [(sx0 + 3, cy - 6), (sx1 - 3, cy + 6)];
                plot.draw(&Rectangle::new(corners, colour.mix(0.28).filled()))?;
                plot.draw(&Rectangle::new(corners, colour.stroke_width(LINE_WIDTH)))?;
            }
        }
        text.draw(
            plot,
            entry.label,
            LEGEND_PX,
            (sx1 + LEGEND_GAP, cy),
            label_anchor,
            false,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn out_dir() -> PathBuf {
        std::env::temp_dir().join("memaware-plot-tests")
    }

    /// Small deterministic generator for test data (the module itself has no randomness).
    struct Jitter(u64);

    impl Jitter {
        fn uniform(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 24) as f32
        }
        /// Approximately standard normal (sum of 12 uniforms minus 6).
        fn normal(&mut self) -> f32 {
            (0..12).map(|_| self.uniform()).sum::<f32>() - 6.0
        }
    }

    struct Png {
        width: u32,
        height: u32,
        rgb: Vec<u8>,
    }

    /// Parses our own PNG output: checks signature, chunk CRCs and IHDR, inflates the pixels.
    fn read_png(path: &Path) -> Png {
        let bytes = std::fs::read(path).expect("PNG written by the test");
        assert_eq!(bytes[..8], PNG_SIGNATURE, "PNG signature");
        let mut offset = 8;
        let mut header = None;
        let mut idat = Vec::new();
        let mut saw_end = false;
        while offset < bytes.len() {
            let len = u32::from_be_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
            let kind = &bytes[offset + 4..offset + 8];
            let data = &bytes[offset + 8..offset + 8 + len];
            let crc = u32::from_be_bytes(
                bytes[offset + 8 + len..offset + 12 + len]
                    .try_into()
                    .unwrap(),
            );
            assert_eq!(crc, crc32(&[kind, data]), "chunk CRC");
            match kind {
                b"IHDR" => {
                    let w = u32::from_be_bytes(data[0..4].try_into().unwrap());
                    let h = u32::from_be_bytes(data[4..8].try_into().unwrap());
                    assert_eq!(&data[8..13], &[8, 2, 0, 0, 0]);
                    header = Some((w, h));
                }
                b"IDAT" => idat.extend_from_slice(data),
                b"IEND" => saw_end = true,
                other => panic!("unexpected chunk {other:?}"),
            }
            offset += 12 + len;
        }
        assert!(saw_end, "IEND chunk");
        let (width, height) = header.expect("IHDR chunk");
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(&idat[..])
            .read_to_end(&mut raw)
            .unwrap();
        let stride = 3 * width as usize + 1;
        assert_eq!(raw.len(), stride * height as usize);
        let mut rgb = Vec::with_capacity(raw.len());
        for row in raw.chunks_exact(stride) {
            assert_eq!(row[0], 0, "filter type");
            rgb.extend_from_slice(&row[1..]);
        }
        Png { width, height, rgb }
    }

    impl Png {
        fn pixels(&self) -> impl Iterator<Item = (u8, u8, u8)> + '_ {
            self.rgb.chunks_exact(3).map(|p| (p[0], p[1], p[2]))
        }
        fn count_near(&self, target: (u8, u8, u8), tolerance: i32) -> usize {
            self.pixels()
                .filter(|&(r, g, b)| {
                    (i32::from(r) - i32::from(target.0)).abs() <= tolerance
                        && (i32::from(g) - i32::from(target.1)).abs() <= tolerance
                        && (i32::from(b) - i32::from(target.2)).abs() <= tolerance
                })
                .count()
        }
        fn white_fraction(&self) -> f64 {
            self.count_near((255, 255, 255), 0) as f64 / (self.width * self.height) as f64
        }
    }

    fn accuracy_curve(epochs: usize, rise_at: f32, final_acc: f32, seed: u64) -> Vec<f32> {
        let mut jitter = Jitter(seed);
        (0..epochs)
            .map(|e| {
                let t = e as f32;
                let acc = final_acc / (1.0 + (-(t - rise_at) / 40.0).exp());
                (acc + 0.01 * jitter.normal()).clamp(0.0, 1.0)
            })
            .collect()
    }

    /// Figure 1 of the paper with made-up data: group accuracies over 1000 epochs, and the
    /// training points in the (x_y, x_a) plane with a linear decision boundary.
    fn figure_one() -> Figure {
        let epochs: Vec<f32> = (0..1000).map(|e| e as f32).collect();
        let curves = vec![
            Curve::new(
                "majority train",
                epochs.clone(),
                accuracy_curve(1000, 5.0, 1.0, 1),
                LineStyle::solid(0),
            ),
            Curve::new(
                "majority test",
                epochs.clone(),
                accuracy_curve(1000, 8.0, 0.98, 2),
                LineStyle::dashed(0),
            ),
            Curve::new(
                "minority train",
                epochs.clone(),
                accuracy_curve(1000, 300.0, 1.0, 3),
                LineStyle::solid(3),
            ),
            Curve::new(
                "minority test",
                epochs.clone(),
                accuracy_curve(1000, 350.0, 0.91, 4),
                LineStyle::dashed(3),
            ),
        ];
        let mut jitter = Jitter(99);
        let mut majority = Vec::new();
        let mut minority = Vec::new();
        for i in 0..1000 {
            let s = if i % 2 == 0 { 1.0 } else { -1.0 };
            let x_y = (jitter.normal() * 0.12 + 1.0) * s;
            let flip = i % 10 == 0;
            let x_a = (jitter.normal() * 0.12 + 1.0) * if flip { -s } else { s };
            if flip {
                minority.push((x_y, x_a));
            } else {
                majority.push((x_y, x_a));
            }
        }
        let mut boundary =
            linear_boundary_2d((0.1, -0.8), (0.9, 0.4), (-2.0, 2.0)).expect("non-degenerate");
        boundary.label = "decision boundary".into();
        Figure {
            title: Some("Figure 1 demo: ERM vs MAT".into()),
            panels: vec![
                Panel {
                    title: "group accuracy, sigma_eps = 0.5".into(),
                    x_label: "epoch".into(),
                    y_label: "accuracy".into(),
                    x_range: Some((0.0, 1000.0)),
                    y_range: Some((0.0, 1.02)),
                    curves,
                    legend: true,
                    ..Panel::default()
                },
                Panel {
                    title: "training points".into(),
                    x_label: "x_y".into(),
                    y_label: "x_a".into(),
                    x_range: Some((-2.0, 2.0)),
                    y_range: Some((-2.0, 2.0)),
                    scatters: vec![
                        Scatter {
                            label: "majority".into(),
                            points: majority,
                            colour: 0,
                            marker: Marker::Circle,
                        },
                        Scatter {
                            label: "minority".into(),
                            points: minority,
                            colour: 3,
                            marker: Marker::Cross,
                        },
                    ],
                    lines: vec![boundary],
                    legend: true,
                    ..Panel::default()
                },
            ],
            columns: 2,
            panel_size: DEFAULT_PANEL_SIZE,
        }
    }

    /// Figure 3 of the paper with made-up data: three regression panels.
    fn figure_three() -> Figure {
        let f = |x: f32| x.tanh() + 0.5 * (-5.0 * x).tanh();
        let grid: Vec<f32> = (0..1000).map(|i| -1.5 + 3.0 * i as f32 / 999.0).collect();
        let truth: Vec<f32> = grid.iter().map(|&x| f(x)).collect();
        let mut jitter = Jitter(7);
        let train: Vec<(f32, f32)> = (0..20)
            .map(|i| {
                let x = grid[i * 999 / 19];
                (x, f(x) + 0.08 * jitter.normal())
            })
            .collect();
        let panels = [
            ("good: sigma_eps = 1e-4", 0.0f32),
            ("bad: sigma_eps = 1e-3", 0.25),
            ("ugly: sigma_eps = 0", 0.1),
        ]
        .iter()
        .map(|&(title, wobble)| Panel {
            title: title.into(),
            x_label: "x".into(),
            y_label: "y".into(),
            curves: vec![
                Curve::new(
                    "true f",
                    grid.clone(),
                    truth.clone(),
                    LineStyle::dashed(PALETTE_BLACK),
                ),
                Curve::new(
                    "learned",
                    grid.clone(),
                    grid.iter()
                        .map(|&x| f(x) + wobble * (9.0 * x).sin())
                        .collect(),
                    LineStyle::solid(0),
                ),
            ],
            scatters: vec![Scatter {
                label: "training points".into(),
                points: train.clone(),
                colour: 3,
                marker: Marker::Circle,
            }],
            legend: true,
            ..Panel::default()
        })
        .collect();
        Figure {
            title: Some("Figure 3 demo".into()),
            panels,
            columns: 3,
            panel_size: (480, 380),
        }
    }

    #[test]
    fn two_panel_figure_writes_valid_png_and_svg() {
        let fig = figure_one();
        let paths = save(&fig, &out_dir().join("figure1")).unwrap();
        assert_eq!(paths.len(), 2);
        assert!(paths[0].to_string_lossy().ends_with("figure1.png"));
        assert!(paths[1].to_string_lossy().ends_with("figure1.svg"));
        let png = read_png(&paths[0]);
        let title_height = (FIGURE_TITLE_PX * 2.4).round() as u32;
        assert_eq!(
            (png.width, png.height),
            (
                2 * DEFAULT_PANEL_SIZE.0,
                DEFAULT_PANEL_SIZE.1 + title_height
            )
        );
        // Mostly white background, but clearly something drawn, in the palette colours used.
        let white = png.white_fraction();
        assert!(white > 0.5 && white < 0.97, "white fraction {white}");
        assert!(
            png.count_near(OKABE_ITO[0], 10) > 500,
            "blue curves/markers present"
        );
        assert!(
            png.count_near(OKABE_ITO[3], 10) > 300,
            "vermillion curves/markers present"
        );
        let svg = std::fs::read_to_string(&paths[1]).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("Figure 1 demo: ERM vs MAT"));
        assert!(svg.contains("group accuracy, sigma_eps = 0.5"));
        assert!(svg.contains("majority test") && svg.contains("decision boundary"));
    }

    #[test]
    fn three_panel_regression_figure_renders() {
        let paths = save(&figure_three(), &out_dir().join("figure3")).unwrap();
        let png = read_png(&paths[0]);
        assert_eq!(png.width, 3 * 480);
        let svg = std::fs::read_to_string(&paths[1]).unwrap();
        for title in [
            "Figure 3 demo",
            "good: sigma_eps = 1e-4",
            "bad: sigma_eps = 1e-3",
            "ugly: sigma_eps = 0",
        ] {
            assert!(svg.contains(title), "{title} missing from SVG");
        }
    }

    #[test]
    fn rendering_is_deterministic() {
        let fig = figure_three();
        let a = save(&fig, &out_dir().join("determinism-a")).unwrap();
        let b = save(&fig, &out_dir().join("determinism-b")).unwrap();
        assert_eq!(std::fs::read(&a[0]).unwrap(), std::fs::read(&b[0]).unwrap());
        assert_eq!(std::fs::read(&a[1]).unwrap(), std::fs::read(&b[1]).unwrap());
    }

    fn memorisation_histograms() -> Vec<HistPanel> {
        let mut jitter = Jitter(3);
        let mut scores = |centre: f32, spread: f32, n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| (centre + spread * jitter.normal()).clamp(-1.0, 1.0))
                .collect()
        };
        ["ERM", "MAT"]
            .iter()
            .enumerate()
            .map(|(k, method)| HistPanel {
                title: format!("memorization scores, {method}"),
                x_label: "memorization score".into(),
                bins: 30,
                range: (-0.2, 1.0),
                series: vec![
                    Histogram {
                        label: "majority groups".into(),
                        values: scores(0.05, 0.05, 3000),
                        colour: 0,
                    },
                    Histogram {
                        label: "minority groups".into(),
                        values: scores(0.6 - 0.35 * k as f32, 0.2, 300),
                        colour: 3,
                    },
                ],
                density: true,
            })
            .collect()
    }

    #[test]
    fn histogram_panels_write_valid_png_and_svg() {
        let panels = memorisation_histograms();
        let paths = save_histograms(
            Some("Figure 2 demo"),
            &panels,
            2,
            &out_dir().join("nested/dir/figure2"),
        )
        .unwrap();
        let png = read_png(&paths[0]);
        assert_eq!(png.width, 2 * DEFAULT_PANEL_SIZE.0);
        let white = png.white_fraction();
        assert!(white > 0.3 && white < 0.97, "white fraction {white}");
        // Step outlines are drawn in the full palette colours.
        assert!(png.count_near(OKABE_ITO[0], 10) > 200);
        assert!(png.count_near(OKABE_ITO[3], 10) > 200);
        let svg = std::fs::read_to_string(&paths[1]).unwrap();
        assert!(svg.contains("Figure 2 demo") && svg.contains("memorization scores, MAT"));
        assert!(svg.contains("density"));
    }

    #[test]
    fn empty_and_non_finite_data_render_without_panicking() {
        let nan = f32::NAN;
        let inf = f32::INFINITY;
        let mut panels = vec![
            Panel {
                title: "nothing at all".into(),
                legend: true,
                ..Panel::default()
            },
            Panel {
                title: "all NaN".into(),
                curves: vec![Curve::new(
                    "nan",
                    vec![nan, nan],
                    vec![nan, 1.0],
                    LineStyle::solid(1),
                )],
                scatters: vec![Scatter {
                    label: "nan".into(),
                    points: vec![(nan, inf)],
                    colour: 2,
                    marker: Marker::Triangle,
                }],
                legend: true,
                ..Panel::default()
            },
            Panel {
                title: "constant, with gaps".into(),
                curves: vec![Curve::new(
                    "flat",
                    vec![1.0, 2.0, nan, 4.0, 5.0],
                    vec![3.0; 5],
                    LineStyle::dashed(4),
                )],
                scatters: vec![Scatter {
                    label: "one".into(),
                    points: vec![(2.0, 3.0)],
                    colour: 5,
                    marker: Marker::Cross,
                }],
                lines: vec![Curve::new(
                    "",
                    vec![-1e30, 1e30],
                    vec![-1e30, 1e30],
                    LineStyle::solid(PALETTE_BLACK),
                )],
                legend: true,
                ..Panel::default()
            },
            Panel {
                title: "bad explicit ranges".into(),
                x_range: Some((nan, 1.0)),
                y_range: Some((2.0, 2.0)),
                curves: vec![Curve::new(
                    "",
                    vec![0.0, inf, 1.0],
                    vec![2.0, 2.0, -inf],
                    LineStyle::solid(0),
                )],
                ..Panel::default()
            },
            Panel {
                title: "reversed range, one point".into(),
                x_range: Some((1.0, -1.0)),
                curves: vec![Curve::new(
                    "single",
                    vec![0.0],
                    vec![0.0],
                    LineStyle::solid(0),
                )],
                legend: true,
                ..Panel::default()
            },
            Panel {
                title: "huge and tiny".into(),
                curves: vec![
                    Curve::new(
                        "huge",
                        vec![0.0, 1.0],
                        vec![-3e38, 3e38],
                        LineStyle::solid(0),
                    ),
                    Curve::new(
                        "tiny",
                        vec![1e-30, 2e-30],
                        vec![1e-30, 1e-30],
                        LineStyle::solid(1),
                    ),
                ],
                legend: true,
                ..Panel::default()
            },
        ];
        let wide_labels = |title: &str, ys: Vec<f32>| Panel {
            title: title.into(),
            x_label: "x label".into(),
            y_label: "y label".into(),
            curves: vec![Curve::new(
                "",
                vec![-123456.0, 98765.0],
                ys,
                LineStyle::solid(0),
            )],
            ..Panel::default()
        };
        panels.push(wide_labels("fine steps", vec![12345.678, 12345.679]));
        panels.push(wide_labels("small values", vec![-0.000123, 0.000456]));
        let fig = Figure {
            title: Some("edge cases".into()),
            panels,
            columns: 3,
            panel_size: MIN_PANEL_SIZE,
        };
        let paths = save(&fig, &out_dir().join("edge-cases")).unwrap();
        read_png(&paths[0]);

        let hist = vec![
            HistPanel {
                title: "empty".into(),
                bins: 5,
                range: (0.0, 1.0),
                ..HistPanel::default()
            },
            HistPanel {
                title: "NaN and out of range".into(),
                bins: 4,
                range: (1.0, 1.0),
                series: vec![Histogram {
                    label: "bad".into(),
                    values: vec![nan, inf, -inf, 7.0],
                    colour: 1,
                }],
                density: true,
                ..HistPanel::default()
            },
            HistPanel {
                title: "NaN range".into(),
                bins: 3,
                range: (nan, inf),
                series: vec![Histogram {
                    label: "".into(),
                    values: vec![0.5, 0.5],
                    colour: 2,
                }],
                ..HistPanel::default()
            },
        ];
        let paths = save_histograms(None, &hist, 5, &out_dir().join("edge-hist")).unwrap();
        let png = read_png(&paths[0]);
        // Five columns requested, three panels: one row of three.
        assert_eq!(
            (png.width, png.height),
            (3 * DEFAULT_PANEL_SIZE.0, DEFAULT_PANEL_SIZE.1)
        );
    }

    #[test]
    fn invalid_figures_are_errors() {
        let stem = out_dir().join("invalid");
        let no_panels = Figure::default();
        assert!(matches!(
            save(&no_panels, &stem),
            Err(Error::InvalidArgument { name: "panels", .. })
        ));
        let mut fig = figure_three();
        fig.columns = 0;
        assert!(matches!(
            save(&fig, &stem),
            Err(Error::InvalidArgument {
                name: "columns",
                ..
            })
        ));
        let mut fig = figure_three();
        fig.panel_size = (50, 50);
        assert!(matches!(
            save(&fig, &stem),
            Err(Error::InvalidArgument {
                name: "panel_size",
                ..
            })
        ));
        let mut fig = figure_three();
        fig.panel_size = (MAX_IMAGE_SIDE, 400);
        assert!(matches!(
            save(&fig, &stem),
            Err(Error::InvalidArgument {
                name: "panel_size",
                ..
            })
        ));
        let mut fig = figure_three();
        fig.panels[1].curves[0].ys.pop();
        let err = save(&fig, &stem).unwrap_err();
        assert!(
            matches!(&err, Error::Data(m) if m.contains("true f") && m.contains("1000 x values but 999")),
            "{err}"
        );
        let bad_bins = [HistPanel {
            bins: 0,
            range: (0.0, 1.0),
            ..HistPanel::default()
        }];
        assert!(matches!(
            save_histograms(None, &bad_bins, 1, &stem),
            Err(Error::InvalidArgument { name: "bins", .. })
        ));
        assert!(matches!(
            save(&figure_three(), Path::new("")),
            Err(Error::InvalidArgument {
                name: "path_stem",
                ..
            })
        ));
    }

    #[test]
    fn unwritable_destination_is_an_io_error_naming_the_path() {
        // A regular file where a parent directory should be.
        let blocker = out_dir().join("blocker-file");
        std::fs::create_dir_all(out_dir()).unwrap();
        std::fs::write(&blocker, b"not a directory").unwrap();
        let err = save(&figure_three(), &blocker.join("figure")).unwrap_err();
        match err {
            Error::Io { path, .. } => assert_eq!(path, blocker),
            other => panic!("expected Error::Io, got {other}"),
        }
    }

    #[test]
    fn suffix_keeps_dots_in_the_stem() {
        assert_eq!(
            with_suffix(Path::new("out/fig1.seed0"), "png"),
            PathBuf::from("out/fig1.seed0.png")
        );
    }

    #[test]
    fn boundary_points_are_on_the_decision_line() {
        let (w0, w1) = ((0.3f32, -1.2f32), (-0.5f32, 0.7f32));
        let line = linear_boundary_2d(w0, w1, (-3.0, 2.0)).unwrap();
        assert_eq!(line.xs, vec![-3.0, 2.0]);
        let (a, b) = (w1.0 - w0.0, w1.1 - w0.1);
        for (&x, &y) in line.xs.iter().zip(&line.ys) {
            assert!(
                (a * x + b * y).abs() < 1e-5,
                "({x}, {y}) is off the boundary"
            );
        }
        // Points on either side get different classes.
        let score = |x: f32, y: f32| a * x + b * y;
        let normal = (a, b);
        assert!(score(normal.0, normal.1) > 0.0 && score(-normal.0, -normal.1) < 0.0);
    }

    #[test]
    fn boundary_degenerate_and_vertical_cases() {
        assert!(linear_boundary_2d((1.0, 2.0), (1.0, 2.0), (-1.0, 1.0)).is_none());
        assert!(linear_boundary_2d((f32::NAN, 0.0), (1.0, 2.0), (-1.0, 1.0)).is_none());
        assert!(linear_boundary_2d((0.0, 0.0), (1.0, 2.0), (f32::NEG_INFINITY, 1.0)).is_none());
        let vertical = linear_boundary_2d((0.0, 1.0), (2.0, 1.0), (-1.5, 1.5)).unwrap();
        assert_eq!(vertical.xs, vec![0.0, 0.0]);
        assert_eq!(vertical.ys, vec![-1.5, 1.5]);
        assert!(linear_boundary_2d((0.0, 1.0), (2.0, 1.0), (0.5, 1.5)).is_none());
    }

    #[test]
    fn clipping_keeps_segments_inside_the_view() {
        let (xr, yr) = ((0.0, 1.0), (0.0, 1.0));
        let (a, b, start_moved, end_moved) = clip_segment((-1.0, 0.5), (2.0, 0.5), xr, yr).unwrap();
        assert_eq!((a, b), ((0.0, 0.5), (1.0, 0.5)));
        assert!(start_moved && end_moved);
        assert!(clip_segment((-1.0, 2.0), (2.0, 2.0), xr, yr).is_none());
        let (_, _, start_moved, end_moved) = clip_segment((0.2, 0.2), (0.4, 0.6), xr, yr).unwrap();
        assert!(!start_moved && !end_moved);
        // A NaN splits the curve, and leaving the view and coming back makes a new piece.
        let xs = [0.1, 0.2, f32::NAN, 0.4, 0.5, 0.6, 0.7];
        let ys = [0.1, 0.2, 0.3, 0.4, 5.0, 0.6, 0.7];
        let pieces = visible_pieces(&xs, &ys, xr, yr);
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces[0].len(), 2);
        for p in pieces.iter().flatten() {
            assert!(in_view(*p, xr, yr), "{p:?} outside the view");
        }
    }

    #[test]
    fn density_histogram_integrates_to_one() {
        let values: Vec<f32> = (0..1000)
            .map(|i| (i as f32 / 999.0).powi(2))
            .chain([f32::NAN, 2.0])
            .collect();
        let heights = bin_heights(&values, 7, (0.0, 1.0), true);
        let area: f64 = heights.iter().map(|h| h / 7.0).sum();
        assert!((area - 1.0).abs() < 1e-12, "area {area}");
        let counts = bin_heights(&values, 7, (0.0, 1.0), false);
        assert_eq!(
            counts.iter().sum::<f64>(),
            1000.0,
            "NaN and out-of-range values are not counted"
        );
        // The right edge belongs to the last bin.
        assert_eq!(
            bin_heights(&[1.0], 4, (0.0, 1.0), false),
            vec![0.0, 0.0, 0.0, 1.0]
        );
    }

    #[test]
    fn ranges_are_never_empty() {
        assert_eq!(resolve_range(None, Extent::default()), (0.0, 1.0));
        assert_eq!(
            resolve_range(Some((3.0, 3.0)), Extent::default()),
            (2.85, 3.15)
        );
        assert_eq!(
            resolve_range(Some((0.0, 0.0)), Extent::default()),
            (-0.5, 0.5)
        );
        assert_eq!(
            resolve_range(Some((2.0, -2.0)), Extent::default()),
            (-2.0, 2.0)
        );
        let mut extent = Extent::default();
        for v in [f64::NAN, 1.0, 3.0, f64::INFINITY] {
            extent.add(v);
        }
        let (lo, hi) = resolve_range(Some((f32::NAN, 1.0)), extent);
        assert!((lo - 0.92).abs() < 1e-12 && (hi - 3.08).abs() < 1e-12);
    }

    #[test]
    fn tick_labels_are_distinct_and_exact() {
        // (range, longest acceptable label)
        for (range, longest) in [
            ((0.0, 1.0), 3),
            ((0.0, 1000.0), 4),
            ((-1.5, 1.5), 4),
            ((0.0, 0.003), 6),
            ((2.85, 3.15), 4),
            ((0.0, 3e5), 5),
            ((-0.2, 1.0), 4),
            ((12345.677, 12345.680), 10),
            ((-0.000146, 0.000479), 6),
            ((123456.70, 123456.73), 12),
        ] {
            let format = TickFormat::new(range, TICK_COUNT);
            let ticks = format.ticks();
            let labels = format.labels();
            assert!(labels.len() >= 2, "{range:?}: {labels:?}");
            let mut unique = labels.clone();
            unique.dedup();
            assert_eq!(unique.len(), labels.len(), "{range:?}: {labels:?}");
            for (tick, label) in ticks.iter().zip(&labels) {
                let value: f64 = label.parse().unwrap();
                assert!(
                    (value - tick).abs() <= 1e-3 * format.step,
                    "{label} for {tick}"
                );
                assert!(
                    !label.starts_with('-') || value != 0.0,
                    "negative zero: {label}"
                );
                assert!(label.len() <= longest, "{range:?}: {labels:?}");
            }
        }
    }

    #[test]
    fn font_metrics_agree_with_the_rasteriser() {
        ensure_font().unwrap();
        let metrics = embedded_metrics().expect("embedded font parses");
        let (m, i) = (metrics.glyph_id('M'), metrics.glyph_id('i'));
        assert!(m != 0 && i != 0 && m != i);
        assert!(metrics.advance(m).unwrap() > metrics.advance(i).unwrap());
        assert_eq!(
            metrics.ink_corner(metrics.glyph_id(' ')),
            None,
            "space has no outline"
        );
        // Our widths must match ab_glyph's layout (advances plus kerning, truncated to pixels).
        for text in [
            "accuracy",
            "Figure 1 demo: ERM vs MAT",
            "AVATAR Ty",
            "x_y = -0.25",
        ] {
            for px in [11.0, 15.0, 21.0] {
                let size = px * metrics.height_units / metrics.units_per_em;
                let desc = FontDesc::new(FontFamily::SansSerif, size, FontStyle::Normal);
                let theirs = f64::from(desc.box_size(text).unwrap().0);
                let ours = metrics.width_em(text) * px;
                assert!(
                    (ours - theirs).abs() <= 1.0,
                    "{text:?} at {px}: {ours} vs {theirs}"
                );
            }
        }
    }

    /// Columns of a rendered RGB buffer that hold ink, grouped into runs `(first, last)`.
    fn ink_runs(rgb: &[u8], width: usize, transpose: bool) -> Vec<(usize, usize)> {
        let height = rgb.len() / (3 * width);
        let (outer, inner) = if transpose {
            (height, width)
        } else {
            (width, height)
        };
        let inked = |o: usize| {
            (0..inner).any(|n| {
                let (x, y) = if transpose { (n, o) } else { (o, n) };
                rgb[3 * (y * width + x)] < 160
            })
        };
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for o in 0..outer {
            if inked(o) {
                match runs.last_mut() {
                    Some(run) if run.1 + 1 == o => run.1 = o,
                    _ => runs.push((o, o)),
                }
            }
        }
        runs
    }

    #[test]
    fn glyphs_are_placed_by_their_side_bearings() {
        ensure_font().unwrap();
        let metrics = embedded_metrics().unwrap();
        let (w, h, px, origin) = (200usize, 80usize, 40.0, (10, 10));
        let mut rgb = vec![255u8; 3 * w * h];
        {
            let root =
                BitMapBackend::with_buffer(&mut rgb, (w as u32, h as u32)).into_drawing_area();
            let text = Typesetter::new(true);
            let anchor = Anchor::new(HPos::Left, VPos::Top);
            text.draw(&root, "HTH", px, origin, anchor, false).unwrap();
        }
        // T's box starts left of its pen while H's starts well right of it: placing glyph
        // boxes at the pen (as plotters does) would move each run by several pixels.
        let unit = px / metrics.units_per_em;
        let mut pen = f64::from(origin.0);
        let mut expected = Vec::new();
        for c in "HTH".chars() {
            let glyph = metrics.glyph_id(c);
            expected.push(pen.round() + (metrics.ink_corner(glyph).unwrap().0 * unit).floor());
            pen += metrics.advance(glyph).unwrap() * unit;
        }
        let runs = ink_runs(&rgb, w, false);
        assert_eq!(runs.len(), 3, "{runs:?}");
        for (run, want) in runs.iter().zip(&expected) {
            assert!(
                (run.0 as f64 - want).abs() <= 1.0,
                "{runs:?} vs {expected:?}"
            );
        }
        // The cap height sits on the anchor line.
        let rows = ink_runs(&rgb, w, true);
        assert_eq!(rows.len(), 1);
        assert!((rows[0].0 as i32 - origin.1).abs() <= 1, "{rows:?}");
        assert!((rows[0].1 as f64 - (f64::from(origin.1) + CAP_HEIGHT_EM * px)).abs() <= 1.5);
    }

    #[test]
    fn vertical_text_reads_bottom_to_top() {
        ensure_font().unwrap();
        let (w, h) = (60usize, 200usize);
        let mut rgb = vec![255u8; 3 * w * h];
        {
            let root =
                BitMapBackend::with_buffer(&mut rgb, (w as u32, h as u32)).into_drawing_area();
            let anchor = Anchor::new(HPos::Left, VPos::Top);
            Typesetter::new(true)
                .draw(&root, "L I", 30.0, (10, 190), anchor, true)
                .unwrap();
        }
        let rows = ink_runs(&rgb, w, true);
        assert_eq!(rows.len(), 2, "{rows:?}");
        // "L" comes first, so it is the lower run, and its foot points right (to the baseline
        // side is screen right): the L occupies more rows than the I's single stem.
        let (i_rows, l_rows) = (rows[0], rows[1]);
        assert!(l_rows.0 > i_rows.1);
        assert!(l_rows.1 - l_rows.0 > i_rows.1 - i_rows.0);
        let columns = ink_runs(&rgb, w, false);
        assert_eq!(columns.len(), 1);
        assert!(
            (columns[0].0 as i32 - 10).abs() <= 1,
            "cap line at the anchor: {columns:?}"
        );
    }

    #[test]
    fn crc_matches_the_standard_check_value() {
        // The CRC-32 check value from the PNG specification's reference algorithm.
        assert_eq!(crc32(&[b"123456789"]), 0xcbf4_3926);
    }
}
