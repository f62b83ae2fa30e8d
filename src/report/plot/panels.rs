//! One panel: ranges, axes from plotters' mesh, data clipped to the view, and plotters' legend at
//! the spot where it hides the least.

use plotters::chart::SeriesAnno;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters_backend::BackendCoord;

use super::text::{style, Metrics};
use super::{rgb, Curve, HistPanel, LineStyle, Marker, Panel};

// Font sizes in pixels per em as they appear in the image.
pub(super) const PANEL_TITLE_PX: f64 = 18.0;
const AXIS_LABEL_PX: f64 = 16.0;
const TICK_PX: f64 = 15.0;
const LEGEND_PX: f64 = 15.0;

pub(super) const TICK_COUNT: usize = 6;
const TICK_MARK_PX: i32 = 5;
const MARGIN: i32 = 8;
const LABEL_GAP: i32 = 8;
const LINE_WIDTH: u32 = 2;
const DASH_PX: u32 = 9;
const DASH_GAP_PX: u32 = 5;
const MARKER_PX: u32 = 4;
const LEGEND_MARGIN: i32 = 8;
const LEGEND_SWATCH: i32 = 30;
const LEGEND_INSET: i32 = 8;

const AXIS_COLOUR: RGBColor = RGBColor(70, 70, 70);
const GRID_COLOUR: RGBColor = RGBColor(228, 228, 228);
const LEGEND_BORDER: RGBColor = RGBColor(190, 190, 190);

pub(super) type Range2 = (f64, f64);
type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

// ---------------------------------------------------------------------------------------------
// Ranges and ticks.

/// Running min/max of finite values.
#[derive(Default, Clone, Copy)]
pub(super) struct Extent(Option<Range2>);

impl Extent {
    pub fn add(&mut self, v: f64) {
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
pub(super) fn resolve_range(explicit: Option<(f32, f32)>, data: Extent) -> Range2 {
    let explicit = explicit
        .map(|(a, b)| (f64::from(a), f64::from(b)))
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .map(|(a, b)| (a.min(b), a.max(b)));
    match (explicit, data.0) {
        (Some((lo, hi)), _) | (None, Some((lo, hi))) if is_degenerate(lo, hi) => widen(lo),
        (Some(range), _) => range,
        (None, Some((lo, hi))) => (lo - 0.04 * (hi - lo), hi + 0.04 * (hi - lo)),
        (None, None) => (0.0, 1.0),
    }
}

/// The ticks of one axis: plotters' key points (at most `count`), labelled with the fewest
/// decimals (up to 10) that show every tick exactly, in scientific notation when the values are
/// very large (>= 1e5) or all very small (< 1e-3). (plotters' own labels vary their decimals from
/// tick to tick and print "200.0".)
pub(super) struct Ticks {
    pub count: usize,
    pub values: Vec<f64>,
    decimals: usize,
    scientific: bool,
    pub step: f64,
}

impl Ticks {
    pub fn new(range: Range2, count: usize) -> Self {
        let values = RangedCoordf64::from(range.0..range.1).key_points(count);
        let step = match values.as_slice() {
            [a, b, ..] => (b - a).abs(),
            _ => range.1 - range.0,
        };
        let mut ticks = Ticks {
            count,
            values,
            decimals: 0,
            scientific: !(1e-3..1e5).contains(&range.0.abs().max(range.1.abs())),
            step,
        };
        let exact = |t: &Ticks| {
            t.values.iter().all(|&v| {
                let shown: f64 = t.format(v).parse().unwrap_or(f64::NAN);
                (shown - v).abs() <= 1e-3 * step
            })
        };
        while ticks.decimals < 10 && !exact(&ticks) {
            ticks.decimals += 1;
        }
        ticks
    }

    pub fn format(&self, v: f64) -> String {
        // Avoid "-0.0" for a tick that is zero up to rounding.
        let v = if v.abs() <= 1e-9 * self.step { 0.0 } else { v };
        match (self.scientific, v == 0.0) {
            (true, true) => "0".to_owned(),
            (true, false) => format!("{v:.*e}", self.decimals),
            (false, _) => format!("{v:.*}", self.decimals),
        }
    }

    pub fn labels(&self) -> Vec<String> {
        self.values.iter().map(|&v| self.format(v)).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Axes.

/// Title, mesh, ticks and axis labels for a panel; returns the chart to draw data on.
///
/// Label areas are sized from the actual tick labels, and the number of ticks shrinks (down to
/// 2) until the labels fit along the axis without touching.
fn build_axes<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    m: &Metrics,
    [title, x_label, y_label]: [&str; 3],
    xr: Range2,
    yr: Range2,
) -> DrawResult<Chart<'a, DB>, DB> {
    let (w, h) = area.dim_in_pixel();
    let (w, h) = (w as i32, h as i32);
    let (title, x_label, y_label) = (title.trim(), x_label.trim(), y_label.trim());
    let tick_line = m.line_height(TICK_PX);
    let label_line = |label: &str| {
        if label.is_empty() {
            0
        } else {
            LABEL_GAP + m.line_height(AXIS_LABEL_PX)
        }
    };
    // A title wider than the panel is shrunk, down to 11 px.
    let room = f64::from(w - 2 * MARGIN);
    let title_px = (PANEL_TITLE_PX * room / m.width(title, PANEL_TITLE_PX).max(room)).max(11.0);
    let margin_top = if title.is_empty() {
        MARGIN + tick_line / 2
    } else {
        MARGIN + m.line_height(title_px) + 10
    };
    // plotters puts tick labels two tick lengths from the axis.
    let x_area = 2 * TICK_MARK_PX + tick_line + label_line(x_label);
    let plot_h = h - margin_top - MARGIN / 2 - x_area;
    let y_ticks = (2..=TICK_COUNT)
        .rev()
        .map(|n| Ticks::new(yr, n))
        .find(|t| t.values.len() as i32 * (tick_line + 10) <= plot_h)
        .unwrap_or_else(|| Ticks::new(yr, 2));
    let widest = y_ticks
        .labels()
        .iter()
        .map(|l| m.width(l, TICK_PX))
        .fold(0.0, f64::max);
    // However wide the labels, the plot keeps at least 40% of the panel width.
    let y_area = (2 * TICK_MARK_PX + widest.ceil() as i32 + label_line(y_label)).min(2 * w / 5);
    let (x_ticks, margin_right) = (2..=TICK_COUNT)
        .rev()
        .find_map(|n| {
            let ticks = Ticks::new(xr, n);
            let widths: Vec<f64> = ticks.labels().iter().map(|l| m.width(l, TICK_PX)).collect();
            // The last label is centred on the plot's right edge: leave room for its half.
            let right = (widths.last().copied().unwrap_or(0.0) / 2.0).ceil() as i32 + MARGIN;
            let plot_w = f64::from(w - MARGIN - y_area - right);
            let fits = widths.iter().map(|w| w + 14.0).sum::<f64>() <= plot_w || n == 2;
            fits.then(|| (ticks, right.clamp(MARGIN + 4, (w / 8).max(MARGIN + 4))))
        })
        .unwrap_or_else(|| (Ticks::new(xr, 2), MARGIN));

    let mut chart = ChartBuilder::on(area)
        .margin_top(margin_top)
        .margin_right(margin_right)
        .margin_left(MARGIN)
        .margin_bottom(MARGIN / 2)
        .x_label_area_size(x_area)
        .y_label_area_size(y_area)
        .build_cartesian_2d(xr.0..xr.1, yr.0..yr.1)?;
    let format_x = |v: &f64| x_ticks.format(*v);
    let format_y = |v: &f64| y_ticks.format(*v);
    chart
        .configure_mesh()
        .x_labels(x_ticks.count)
        .y_labels(y_ticks.count)
        .x_label_formatter(&format_x)
        .y_label_formatter(&format_y)
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(style(TICK_PX))
        .axis_desc_style(style(AXIS_LABEL_PX))
        .bold_line_style(GRID_COLOUR.stroke_width(1))
        .max_light_lines(0)
        .axis_style(AXIS_COLOUR.stroke_width(1))
        .set_all_tick_mark_size(TICK_MARK_PX)
        .draw()?;

    if !title.is_empty() {
        // Centred over the plot, moved inwards if that would cross the panel's edge.
        let columns = chart.plotting_area().get_pixel_range().0;
        let centre = (columns.start + columns.end - 1) / 2 - area.get_base_pixel().0;
        let half = (m.width(title, title_px) / 2.0).ceil() as i32;
        let x = centre.min(w - MARGIN - half).max(MARGIN + half);
        let title_style = style(title_px).pos(Pos::new(HPos::Center, VPos::Top));
        area.draw_text(title, &title_style, (x, MARGIN))?;
    }
    Ok(chart)
}

/// The top and right sides of the frame; the mesh draws the left and bottom axes just outside
/// the plot.
fn draw_frame<DB: DrawingBackend>(chart: &Chart<'_, DB>) -> DrawResult<(), DB> {
    let plot = chart.plotting_area().strip_coord_spec();
    let (w, h) = plot.dim_in_pixel();
    let (w, h) = (w as i32, h as i32);
    let corners = vec![(-1, 0), (w - 1, 0), (w - 1, h)];
    plot.draw(&PathElement::new(corners, AXIS_COLOUR.stroke_width(1)))
}

// ---------------------------------------------------------------------------------------------
// Data.

/// Liang–Barsky clipping of segment `p`–`q` to the view rectangle. plotters clamps points that
/// fall outside the chart onto its border, which bends lines, so curves are clipped first.
/// Returns the visible part and whether each end was moved.
pub(super) fn clip_segment(
    p: Range2,
    q: Range2,
    (xr, yr): (Range2, Range2),
) -> Option<(Range2, Range2, bool, bool)> {
    let (dx, dy) = (q.0 - p.0, q.1 - p.1);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (den, num) in [
        (-dx, p.0 - xr.0),
        (dx, xr.1 - p.0),
        (-dy, p.1 - yr.0),
        (dy, yr.1 - p.1),
    ] {
        if den == 0.0 {
            if num < 0.0 {
                return None;
            }
        } else if den < 0.0 {
            t0 = t0.max(num / den);
        } else {
            t1 = t1.min(num / den);
        }
    }
    let at = |t: f64| (p.0 + t * dx, p.1 + t * dy);
    (t0 <= t1).then(|| (at(t0), at(t1), t0 > 0.0, t1 < 1.0))
}

/// The visible pieces of a curve: split at non-finite points and clipped to the view.
pub(super) fn visible_pieces(xs: &[f32], ys: &[f32], view: (Range2, Range2)) -> Vec<Vec<Range2>> {
    let mut pieces: Vec<Vec<Range2>> = Vec::new();
    let mut open = false;
    let mut previous: Option<Range2> = None;
    for (&x, &y) in xs.iter().zip(ys) {
        let point = (f64::from(x), f64::from(y));
        if !(point.0.is_finite() && point.1.is_finite()) {
            (previous, open) = (None, false);
            continue;
        }
        if let Some(p) = previous {
            open = match clip_segment(p, point, view) {
                Some((a, b, start_moved, end_moved)) => {
                    match pieces.last_mut() {
                        Some(piece) if open && !start_moved => piece.push(b),
                        _ => pieces.push(vec![a, b]),
                    }
                    !end_moved
                }
                None => false,
            };
        }
        previous = Some(point);
    }
    pieces
}

pub(super) fn in_view(p: Range2, (xr, yr): (Range2, Range2)) -> bool {
    p.0 >= xr.0 && p.0 <= xr.1 && p.1 >= yr.0 && p.1 <= yr.1
}

/// Sample points (plot-area pixels, at most 4 apart) of everything drawn, for the legend to avoid.
#[derive(Default)]
struct Ink(Vec<BackendCoord>);

impl Ink {
    fn segment(&mut self, a: BackendCoord, b: BackendCoord) {
        let steps = (f64::from(b.0 - a.0).hypot(f64::from(b.1 - a.1)) / 4.0)
            .ceil()
            .max(1.0);
        for s in 0..=steps as i32 {
            let t = f64::from(s) / steps;
            let lerp = |u: i32, v: i32| u + (t * f64::from(v - u)).round() as i32;
            self.0.push((lerp(a.0, b.0), lerp(a.1, b.1)));
        }
    }

    fn rect(&mut self, a: BackendCoord, b: BackendCoord) {
        for y in (a.1.min(b.1)..=a.1.max(b.1)).step_by(4) {
            for x in (a.0.min(b.0)..=a.0.max(b.0)).step_by(4) {
                self.0.push((x, y));
            }
        }
    }
}

/// Pixel position relative to the plot area's top-left corner.
fn to_plot_pixel<DB: DrawingBackend>(chart: &Chart<'_, DB>, p: Range2) -> BackendCoord {
    let (bx, by) = chart.plotting_area().get_base_pixel();
    let (x, y) = chart.backend_coord(&p);
    (x - bx, y - by)
}

fn line_shape(style: LineStyle) -> ShapeStyle {
    rgb(style.colour).stroke_width(LINE_WIDTH)
}

/// Marker styles; discs get a translucent fill under a solid edge so that dense clouds stay
/// readable.
fn disc_fill(colour: usize) -> ShapeStyle {
    rgb(colour).mix(0.4).filled()
}
fn disc_edge(colour: usize) -> ShapeStyle {
    rgb(colour).mix(0.9).stroke_width(1)
}
fn cross_style(colour: usize) -> ShapeStyle {
    rgb(colour).mix(0.85).stroke_width(2)
}
fn triangle_style(colour: usize) -> ShapeStyle {
    rgb(colour).mix(0.65).filled()
}

/// What a legend entry shows left of its label.
#[derive(Clone, Copy)]
enum Swatch {
    Line(LineStyle),
    Marker(usize, Marker),
    Patch(usize),
}

/// The labelled entries of a panel, in drawing order, and where the drawn data lies.
#[derive(Default)]
struct Legend {
    labels: Vec<String>,
    ink: Ink,
}

impl Legend {
    /// Registers a series with plotters' legend, if it has a label. plotters hands the swatch
    /// the left end of its row; `lift` moves it up (see `swatch_lift`).
    fn add<'a, DB: DrawingBackend + 'a>(
        &mut self,
        series: &mut SeriesAnno<'a, DB>,
        label: &str,
        swatch: Swatch,
        lift: i32,
    ) {
        if label.trim().is_empty() {
            return;
        }
        self.labels.push(label.to_owned());
        let series = series.label(label);
        let row = move |(x, y): BackendCoord| [(x, y - lift), (x + LEGEND_SWATCH, y - lift)];
        let centre = move |p| {
            let [a, b] = row(p);
            EmptyElement::at(((a.0 + b.0) / 2, a.1))
        };
        match swatch {
            Swatch::Line(style) if style.dashed => series.legend(move |p| {
                DashedPathElement::new(row(p), DASH_PX, DASH_GAP_PX, line_shape(style))
            }),
            Swatch::Line(style) => {
                series.legend(move |p| PathElement::new(row(p), line_shape(style)))
            }
            Swatch::Marker(colour, Marker::Circle) => series.legend(move |p| {
                centre(p)
                    + Circle::new((0, 0), MARKER_PX, disc_fill(colour))
                    + Circle::new((0, 0), MARKER_PX, disc_edge(colour))
            }),
            Swatch::Marker(colour, Marker::Cross) => series
                .legend(move |p| centre(p) + Cross::new((0, 0), MARKER_PX, cross_style(colour))),
            Swatch::Marker(colour, Marker::Triangle) => series.legend(move |p| {
                centre(p) + TriangleMarker::new((0, 0), MARKER_PX + 1, triangle_style(colour))
            }),
            Swatch::Patch(colour) => series.legend(move |p| {
                let corners = [(3, -6), (LEGEND_SWATCH - 3, 6)];
                EmptyElement::at(row(p)[0])
                    + Rectangle::new(corners, rgb(colour).mix(0.28).filled())
                    + Rectangle::new(corners, rgb(colour).stroke_width(LINE_WIDTH))
            }),
        };
    }

    /// Draws plotters' legend at the anchor, on a 5 x 5 grid over the plot, whose box covers the
    /// fewest ink samples; corners, then anchors nearer the edges, win ties.
    fn draw<'a, DB: DrawingBackend + 'a>(&self, chart: &mut Chart<'a, DB>) -> DrawResult<(), DB> {
        if self.labels.is_empty() {
            return Ok(());
        }
        let font = style(LEGEND_PX);
        let mut text = MultiLineText::<_, &str>::new((0, 0), &font);
        for label in &self.labels {
            text.push_line(label.as_str());
        }
        // The box plotters will draw: its own text measure plus swatch column and margins. Its
        // measure scales the font by ascender-to-descender rather than em, so the box runs ~6%
        // wider than the labels as drawn.
        let (w, h) = text.estimate_dimension().unwrap_or((0, 0));
        let (box_w, box_h) = (w + LEGEND_SWATCH + 3 * LEGEND_MARGIN, h + 2 * LEGEND_MARGIN);
        let (pw, ph) = chart.plotting_area().dim_in_pixel();
        let free = |size: u32, used: i32| f64::from((size as i32 - used - 2 * LEGEND_INSET).max(0));
        let (free_w, free_h) = (free(pw, box_w), free(ph, box_h));
        let x_fractions = [1.0, 0.0, 0.5, 0.75, 0.25];
        let y_fractions = [0.0, 1.0, 0.5, 0.25, 0.75];
        let mut candidates: Vec<(usize, usize)> =
            (0..5).flat_map(|i| (0..5).map(move |j| (i, j))).collect();
        candidates.sort_by_key(|&(i, j)| (i.max(j), i + j, j));
        let covered = |&(x, y): &BackendCoord| {
            let inside = |p: &&BackendCoord| {
                (x - 2..=x + box_w + 2).contains(&p.0) && (y - 2..=y + box_h + 2).contains(&p.1)
            };
            self.ink.0.iter().filter(inside).count()
        };
        let (x, y) = candidates
            .into_iter()
            .map(|(i, j)| {
                let x = LEGEND_INSET + (x_fractions[i] * free_w).round() as i32;
                (x, LEGEND_INSET + (y_fractions[j] * free_h).round() as i32)
            })
            .min_by_key(covered)
            .unwrap_or((LEGEND_INSET, LEGEND_INSET));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::Coordinate(x, y))
            .margin(LEGEND_MARGIN)
            .legend_area_size(LEGEND_SWATCH + LEGEND_MARGIN)
            .label_font(font.clone())
            .background_style(WHITE.mix(0.88))
            .border_style(LEGEND_BORDER)
            .draw()
    }
}

/// How far a legend swatch moves up to sit on the middle of its label's capitals: plotters
/// centres it on the em box, which the cap height only partly fills.
fn swatch_lift(m: &Metrics) -> i32 {
    ((1.0 - m.cap_height) * LEGEND_PX / 2.0).round() as i32
}

fn draw_curve<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    legend: &mut Legend,
    curve: &Curve,
    view: (Range2, Range2),
    lift: i32,
) -> DrawResult<(), DB> {
    let pieces = visible_pieces(&curve.xs, &curve.ys, view);
    for pair in pieces.iter().flat_map(|p| p.windows(2)) {
        legend
            .ink
            .segment(to_plot_pixel(chart, pair[0]), to_plot_pixel(chart, pair[1]));
    }
    let (style, shape) = (curve.style, line_shape(curve.style));
    let pieces = pieces.into_iter();
    let series = if style.dashed {
        chart.draw_series(pieces.map(|p| DashedPathElement::new(p, DASH_PX, DASH_GAP_PX, shape)))?
    } else {
        chart.draw_series(pieces.map(|p| PathElement::new(p, shape)))?
    };
    legend.add(series, &curve.label, Swatch::Line(style), lift);
    Ok(())
}

pub(super) fn draw_xy_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    m: &Metrics,
    panel: &Panel,
) -> DrawResult<(), DB> {
    let (mut x_extent, mut y_extent) = (Extent::default(), Extent::default());
    let curve_points = panel.curves.iter().flat_map(|c| c.xs.iter().zip(&c.ys));
    let scatter_points = panel
        .scatters
        .iter()
        .flat_map(|s| s.points.iter().map(|(x, y)| (x, y)));
    for (&x, &y) in curve_points.chain(scatter_points) {
        if x.is_finite() && y.is_finite() {
            x_extent.add(f64::from(x));
            y_extent.add(f64::from(y));
        }
    }
    let view = (
        resolve_range(panel.x_range, x_extent),
        resolve_range(panel.y_range, y_extent),
    );
    let titles = [panel.title.as_str(), &panel.x_label, &panel.y_label];
    let mut chart = build_axes(area, m, titles, view.0, view.1)?;
    let mut legend = Legend::default();
    let lift = swatch_lift(m);
    for curve in &panel.curves {
        draw_curve(&mut chart, &mut legend, curve, view, lift)?;
    }
    for scatter in &panel.scatters {
        let points: Vec<Range2> = scatter
            .points
            .iter()
            .map(|&(x, y)| (f64::from(x), f64::from(y)))
            .filter(|&p| in_view(p, view))
            .collect();
        let r = MARKER_PX as i32;
        for &p in &points {
            let (x, y) = to_plot_pixel(&chart, p);
            legend.ink.rect((x - r, y - r), (x + r, y + r));
        }
        let (colour, kind) = (scatter.colour, scatter.marker);
        let points = points.into_iter();
        let series = match kind {
            Marker::Circle => {
                chart.draw_series(
                    points
                        .clone()
                        .map(|p| Circle::new(p, MARKER_PX, disc_fill(colour))),
                )?;
                chart.draw_series(points.map(|p| Circle::new(p, MARKER_PX, disc_edge(colour))))?
            }
            Marker::Cross => {
                chart.draw_series(points.map(|p| Cross::new(p, MARKER_PX, cross_style(colour))))?
            }
            Marker::Triangle => chart.draw_series(
                points.map(|p| TriangleMarker::new(p, MARKER_PX + 1, triangle_style(colour))),
            )?,
        };
        legend.add(series, &scatter.label, Swatch::Marker(colour, kind), lift);
    }
    for line in &panel.lines {
        draw_curve(&mut chart, &mut legend, line, view, lift)?;
    }
    draw_frame(&chart)?;
    if panel.legend {
        legend.draw(&mut chart)?;
    }
    Ok(())
}

/// Bin heights of one series: counts, or densities integrating to 1 over the range.
pub(super) fn bin_heights(
    values: &[f32],
    bins: usize,
    (lo, hi): Range2,
    density: bool,
) -> Vec<f64> {
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0usize; bins];
    for v in values.iter().map(|&v| f64::from(v)) {
        if v.is_finite() && v >= lo && v <= hi {
            // The last bin is closed on the right, so `hi` itself is counted.
            counts[(((v - lo) / width) as usize).min(bins - 1)] += 1;
        }
    }
    let inside = counts.iter().sum::<usize>().max(1) as f64;
    let scale = if density { 1.0 / (inside * width) } else { 1.0 };
    counts.into_iter().map(|c| c as f64 * scale).collect()
}

pub(super) fn draw_hist_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    m: &Metrics,
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
    let mut chart = build_axes(area, m, [&panel.title, &panel.x_label, y_label], xr, yr)?;
    let mut legend = Legend::default();
    let width = (xr.1 - xr.0) / bins as f64;
    let edge = |i: usize| xr.0 + width * i as f64;
    for (series, heights) in panel.series.iter().zip(&heights) {
        let colour = rgb(series.colour);
        let filled: Vec<(usize, f64)> = heights
            .iter()
            .copied()
            .enumerate()
            .filter(|&(_, h)| h > 0.0)
            .collect();
        for &(i, h) in &filled {
            legend.ink.rect(
                to_plot_pixel(&chart, (edge(i), 0.0)),
                to_plot_pixel(&chart, (edge(i + 1), h)),
            );
        }
        let bars = filled.iter().map(|&(i, h)| {
            Rectangle::new(
                [(edge(i), 0.0), (edge(i + 1), h)],
                colour.mix(0.28).filled(),
            )
        });
        let anno = chart.draw_series(bars)?;
        legend.add(
            anno,
            &series.label,
            Swatch::Patch(series.colour),
            swatch_lift(m),
        );
        // Step outline around each run of non-empty bins: keeps each series readable where the
        // translucent bars overlap, without tracing the x axis under empty bins.
        let runs = filled.chunk_by(|a, b| a.0 + 1 == b.0).map(|run| {
            let steps = run
                .iter()
                .flat_map(|&(i, h)| [(edge(i), h), (edge(i + 1), h)]);
            let (first, last) = (run[0].0, run[run.len() - 1].0);
            let mut points = vec![(edge(first), 0.0)];
            points.extend(steps.chain([(edge(last + 1), 0.0)]));
            points
        });
        let outline = colour.stroke_width(LINE_WIDTH);
        chart.draw_series(runs.map(|run| PathElement::new(run, outline)))?;
    }
    draw_frame(&chart)?;
    legend.draw(&mut chart)
}
