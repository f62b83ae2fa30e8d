//! Text: one embedded font and one layout for both output formats.
//!
//! plotters 0.3.7 rasterises ab_glyph text with each glyph's ink box at the pen position, dropping
//! the left side bearing, so bitmap text comes out unevenly spaced ("M AT"). [`Typeset`] wraps a
//! backend and takes over its text: on bitmaps it lays out each glyph with ab_glyph
//! (`h_advance`, `kern`; the outline carries the side bearing) and blends the coverage itself; on
//! SVG it keeps text elements. Both measure text with the same ab_glyph metrics and anchor it the
//! same way, so the two files share one layout.
//!
//! Sizes follow plotters-svg, which writes `font-size: s / 1.24` for a style of size `s`; [`style`]
//! takes the em size in pixels. Vertical anchors: `Top` puts the cap height on the anchor,
//! `Center` the middle of the cap height, `Bottom` the descender line.

use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontFamily, FontStyle, FontTransform};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind,
};

use crate::error::{Error, Result};

/// DejaVu Sans (`assets/DejaVuSans.ttf`, Bitstream Vera licence in `assets/LICENSE-DejaVu.txt`).
static DEJAVU_SANS: &[u8] = include_bytes!("../../../assets/DejaVuSans.ttf");

/// plotters-svg divides a style's size by this to get the CSS font size (pixels per em).
const SIZE_PER_EM: f64 = 1.24;
/// plotters-svg puts the baseline of top-anchored text 0.76 em below the anchor.
const SVG_TOP_BASELINE_EM: f64 = 0.76;

pub(super) const TEXT_COLOUR: RGBColor = RGBColor(25, 25, 25);

/// The font as ab_glyph reads it, with the vertical metrics the anchors use (in em).
pub(super) struct Metrics {
    pub font: FontRef<'static>,
    units_per_em: f64,
    pub cap_height: f64,
    pub descender: f64,
}

/// Parses the embedded font (once) and registers it with plotters, whose legend measures its
/// labels through the registered font.
pub(super) fn metrics() -> Result<&'static Metrics> {
    static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();
    METRICS
        .get_or_init(|| {
            let font = FontRef::try_from_slice(DEJAVU_SANS).ok()?;
            register_font(
                FontFamily::SansSerif.as_str(),
                FontStyle::Normal,
                DEJAVU_SANS,
            )
            .ok()?;
            let units_per_em = f64::from(font.units_per_em()?);
            // ab_glyph's unscaled outline bounds are y-flipped: `min.y` is the top of the ink.
            let cap = font.outline(font.glyph_id('H'))?.bounds.min.y;
            Some(Metrics {
                cap_height: f64::from(cap) / units_per_em,
                descender: -f64::from(font.descent_unscaled()) / units_per_em,
                units_per_em,
                font,
            })
        })
        .as_ref()
        .ok_or_else(|| Error::Data("the embedded DejaVu Sans font could not be parsed".into()))
}

impl Metrics {
    /// ab_glyph's pixel scale covers ascender to descender; this one makes one em `px` pixels.
    fn scale(&self, px: f64) -> PxScale {
        PxScale::from((px * f64::from(self.font.height_unscaled()) / self.units_per_em) as f32)
    }

    /// Width of `text` at `px` pixels per em: advances plus kerning.
    pub fn width(&self, text: &str, px: f64) -> f64 {
        let font = self.font.as_scaled(self.scale(px));
        let mut width = 0.0f32;
        let mut previous = None;
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(p) = previous {
                width += font.kern(p, id);
            }
            width += font.h_advance(id);
            previous = Some(id);
        }
        f64::from(width)
    }

    /// Height of one line from cap height to descender, in whole pixels.
    pub fn line_height(&self, px: f64) -> i32 {
        ((self.cap_height + self.descender) * px).ceil() as i32
    }

    /// Baseline offset below the anchor along the text's "down" direction.
    fn baseline(&self, v: VPos, px: f64) -> f64 {
        match v {
            VPos::Top => self.cap_height * px,
            VPos::Center => 0.5 * self.cap_height * px,
            VPos::Bottom => -self.descender * px,
        }
    }
}

/// A text style whose em is `px` pixels in both formats.
pub(super) fn style(px: f64) -> TextStyle<'static> {
    ("sans-serif", px * SIZE_PER_EM)
        .into_font()
        .color(&TEXT_COLOUR)
}

/// A backend whose text is laid out here (see the module docs); everything else passes through.
pub(super) struct Typeset<B> {
    inner: B,
    /// Rasterise glyphs here (bitmaps) instead of handing text to the backend (SVG).
    glyphs: bool,
    metrics: &'static Metrics,
}

impl<B: DrawingBackend> Typeset<B> {
    pub fn new(inner: B, glyphs: bool) -> Result<Self> {
        Ok(Typeset {
            inner,
            glyphs,
            metrics: metrics()?,
        })
    }
}

type BackendResult<E> = std::result::Result<(), DrawingErrorKind<E>>;

impl<B: DrawingBackend> DrawingBackend for Typeset<B> {
    type ErrorType = B::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }
    fn ensure_prepared(&mut self) -> BackendResult<B::ErrorType> {
        self.inner.ensure_prepared()
    }
    fn present(&mut self) -> BackendResult<B::ErrorType> {
        self.inner.present()
    }
    fn draw_pixel(&mut self, p: BackendCoord, c: BackendColor) -> BackendResult<B::ErrorType> {
        self.inner.draw_pixel(p, c)
    }
    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> BackendResult<B::ErrorType> {
        self.inner.draw_line(from, to, style)
    }
    fn draw_rect<S: BackendStyle>(
        &mut self,
        corner: BackendCoord,
        opposite: BackendCoord,
        style: &S,
        fill: bool,
    ) -> BackendResult<B::ErrorType> {
        self.inner.draw_rect(corner, opposite, style, fill)
    }
    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> BackendResult<B::ErrorType> {
        self.inner.draw_path(path, style)
    }
    fn draw_circle<S: BackendStyle>(
        &mut self,
        centre: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> BackendResult<B::ErrorType> {
        self.inner.draw_circle(centre, radius, style, fill)
    }
    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vertices: I,
        style: &S,
    ) -> BackendResult<B::ErrorType> {
        self.inner.fill_polygon(vertices, style)
    }

    fn estimate_text_size<T: BackendTextStyle>(
        &self,
        text: &str,
        style: &T,
    ) -> std::result::Result<(u32, u32), DrawingErrorKind<B::ErrorType>> {
        let px = style.size() / SIZE_PER_EM;
        Ok((self.metrics.width(text, px).ceil() as u32, px.ceil() as u32))
    }

    fn draw_text<T: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &T,
        at: BackendCoord,
    ) -> BackendResult<B::ErrorType> {
        let colour = style.color();
        if text.trim().is_empty() || colour.alpha == 0.0 {
            return Ok(());
        }
        let m = self.metrics;
        let px = style.size() / SIZE_PER_EM;
        let anchor = style.anchor();
        let baseline = m.baseline(anchor.v_pos, px);
        // Unit vectors of the text's reading and "down" directions on screen.
        let (along, down) = match style.transform() {
            FontTransform::Rotate90 => ((0, 1), (-1, 0)),
            FontTransform::Rotate180 => ((-1, 0), (0, -1)),
            FontTransform::Rotate270 => ((0, -1), (1, 0)),
            _ => ((1, 0), (0, 1)),
        };
        let to_screen = |a: f64, d: f64| -> BackendCoord {
            let (a, d) = (a.round() as i32, d.round() as i32);
            (
                at.0 + a * along.0 + d * down.0,
                at.1 + a * along.1 + d * down.1,
            )
        };
        if !self.glyphs {
            // The viewer lays the text out; only move its top-anchored baseline to ours.
            let shifted = to_screen(0.0, baseline - SVG_TOP_BASELINE_EM * px);
            let (r, g, b) = colour.rgb;
            let top = FontDesc::new(style.family(), style.size(), style.style())
                .color(&RGBAColor(r, g, b, colour.alpha))
                .transform(style.transform())
                .pos(Pos::new(anchor.h_pos, VPos::Top));
            return self.inner.draw_text(text, &top, shifted);
        }
        let start = match anchor.h_pos {
            HPos::Left => 0.0,
            HPos::Center => -0.5 * m.width(text, px),
            HPos::Right => -m.width(text, px),
        };
        let scale = m.scale(px);
        let font = m.font.as_scaled(scale);
        // Whole-pixel baseline keeps horizontal strokes crisp; pen positions stay fractional.
        let baseline = baseline.round() as f32;
        let mut pen = start as f32;
        let mut previous = None;
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(p) = previous {
                pen += font.kern(p, id);
            }
            let glyph = id.with_scale_and_position(scale, point(pen, baseline));
            if let Some(outline) = font.outline_glyph(glyph) {
                let corner = outline.px_bounds().min;
                let mut result = Ok(());
                outline.draw(|x, y, coverage| {
                    if result.is_ok() && coverage > 0.0 {
                        let p = to_screen(
                            f64::from(corner.x) + f64::from(x),
                            f64::from(corner.y) + f64::from(y),
                        );
                        let alpha = colour.alpha * f64::from(coverage.min(1.0));
                        result = self.inner.draw_pixel(p, BackendColor { alpha, ..colour });
                    }
                });
                result?;
            }
            pen += font.h_advance(id);
            previous = Some(id);
        }
        Ok(())
    }
}
