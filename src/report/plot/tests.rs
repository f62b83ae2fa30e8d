use ab_glyph::{Font, ScaleFont};

use super::panels::*;
use super::*;

fn out_dir() -> PathBuf {
    std::env::temp_dir().join("memaware-plot-tests")
}

/// Deterministic noise in [-0.5, 0.5) for test data (the module itself has no randomness).
fn noise(i: usize) -> f32 {
    let s = (i as f32 * 12.9898).sin() * 43_758.547;
    s - s.floor() - 0.5
}

fn read_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let file = std::fs::File::open(path).expect("PNG written by the test");
    let mut reader = png::Decoder::new(file).read_info().expect("PNG header");
    let mut rgb = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut rgb).expect("PNG data");
    assert_eq!(
        (frame.color_type, frame.bit_depth),
        (png::ColorType::Rgb, png::BitDepth::Eight)
    );
    rgb.truncate(frame.buffer_size());
    (frame.width, frame.height, rgb)
}

fn count_near(rgb: &[u8], target: (u8, u8, u8)) -> usize {
    let near = |a: u8, b: u8| (i32::from(a) - i32::from(b)).abs() <= 10;
    let pixels = rgb.chunks_exact(3);
    pixels
        .filter(|p| near(p[0], target.0) && near(p[1], target.1) && near(p[2], target.2))
        .count()
}

/// Figure 1 of the paper in miniature: accuracies over epochs, and points in the (x_y, x_a)
/// plane with a linear decision boundary that extends past the view.
fn demo_figure() -> Figure {
    let epochs: Vec<f32> = (0..1000).map(|e| e as f32).collect();
    let curve = |label: &str, rise: f32, style| {
        let ys = epochs.iter().enumerate();
        let ys = ys.map(|(i, &t)| 1.0 / (1.0 + (-(t - rise) / 40.0).exp()) + 0.02 * noise(i));
        Curve::new(label, epochs.clone(), ys.collect(), style)
    };
    let points = |sign: f32, range: std::ops::Range<usize>| {
        range
            .map(|i| {
                (
                    sign * (1.0 + 0.3 * noise(i)),
                    sign * (1.0 + 0.3 * noise(i + 7)),
                )
            })
            .collect()
    };
    let mut boundary = linear_boundary_2d((0.1, -0.8), (0.9, 0.4), (-2.0, 2.0)).unwrap();
    boundary.label = "decision boundary".into();
    let scatter = |label: &str, points, colour, marker| Scatter {
        label: label.into(),
        points,
        colour,
        marker,
    };
    Figure {
        title: Some("Figure 1 demo: ERM vs MAT".into()),
        panels: vec![
            Panel {
                title: "group accuracy, sigma_eps = 0.5".into(),
                x_label: "epoch".into(),
                y_label: "accuracy".into(),
                y_range: Some((0.0, 1.02)),
                curves: vec![
                    curve("majority train", 5.0, LineStyle::solid(0)),
                    curve("minority test", 300.0, LineStyle::dashed(3)),
                ],
                legend: true,
                ..Panel::default()
            },
            Panel {
                title: "training points".into(),
                x_range: Some((-2.0, 2.0)),
                y_range: Some((-2.0, 2.0)),
                scatters: vec![
                    scatter("majority", points(1.0, 0..500), 0, Marker::Circle),
                    scatter("minority", points(-1.0, 500..550), 3, Marker::Cross),
                    scatter("other", points(-0.5, 600..620), 2, Marker::Triangle),
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

#[test]
fn figure_writes_valid_png_and_svg_deterministically() {
    let paths = save(&demo_figure(), &out_dir().join("figure1")).unwrap();
    assert_eq!(
        paths,
        [out_dir().join("figure1.png"), out_dir().join("figure1.svg")]
    );
    let (w, h, rgb) = read_png(&paths[0]);
    assert_eq!(
        (w, h),
        (2 * DEFAULT_PANEL_SIZE.0, DEFAULT_PANEL_SIZE.1 + TITLE_STRIP)
    );
    // Mostly white background, but clearly something drawn, in the palette colours used.
    let white = count_near(&rgb, (255, 255, 255)) as f64 / f64::from(w * h);
    assert!(white > 0.5 && white < 0.97, "white fraction {white}");
    assert!(count_near(&rgb, OKABE_ITO[0]) > 500, "blue curves/markers");
    assert!(
        count_near(&rgb, OKABE_ITO[3]) > 200,
        "vermillion curves/markers"
    );
    let svg = std::fs::read_to_string(&paths[1]).unwrap();
    assert!(svg.starts_with("<svg"));
    for text in [
        "Figure 1 demo: ERM vs MAT",
        "sigma_eps = 0.5",
        "minority test",
        "decision boundary",
        "\nepoch\n",
        "\n1000\n",
    ] {
        assert!(svg.contains(text), "{text} missing from the SVG");
    }
    let again = save(&demo_figure(), &out_dir().join("figure1-again")).unwrap();
    assert_eq!(
        std::fs::read(&paths[0]).unwrap(),
        std::fs::read(&again[0]).unwrap()
    );
    assert_eq!(svg, std::fs::read_to_string(&again[1]).unwrap());
}

#[test]
fn histogram_panels_write_valid_png_and_svg() {
    let scores = |centre: f32, spread: f32, n: usize| -> Vec<f32> {
        (0..n).map(|i| centre + spread * noise(i + n)).collect()
    };
    let panels: Vec<HistPanel> = (0..2)
        .map(|k| HistPanel {
            title: format!("memorization scores, {}", ["ERM", "MAT"][k]),
            x_label: "memorization score".into(),
            bins: 30,
            range: (-0.2, 1.0),
            series: vec![
                Histogram {
                    label: "majority groups".into(),
                    values: scores(0.05, 0.1, 3000),
                    colour: 0,
                },
                Histogram {
                    label: "minority groups".into(),
                    values: scores(0.6 - 0.35 * k as f32, 0.4, 300),
                    colour: 3,
                },
            ],
            density: k == 1,
        })
        .collect();
    let stem = out_dir().join("nested/dir/figure2");
    let paths = save_histograms(Some("Figure 2 demo"), &panels, 2, &stem).unwrap();
    let (w, _, rgb) = read_png(&paths[0]);
    assert_eq!(w, 2 * DEFAULT_PANEL_SIZE.0);
    // Step outlines are drawn in the full palette colours.
    assert!(count_near(&rgb, OKABE_ITO[0]) > 200 && count_near(&rgb, OKABE_ITO[3]) > 200);
    let svg = std::fs::read_to_string(&paths[1]).unwrap();
    for text in [
        "Figure 2 demo",
        "memorization scores, MAT",
        "density",
        "count",
        "minority groups",
    ] {
        assert!(svg.contains(text), "{text} missing from the SVG");
    }
}

#[test]
fn empty_and_non_finite_data_render_without_panicking() {
    let (nan, inf) = (f32::NAN, f32::INFINITY);
    let curve = |xs: Vec<f32>, ys: Vec<f32>| Curve::new("c", xs, ys, LineStyle::dashed(4));
    let panel = |title: &str, curves: Vec<Curve>| Panel {
        title: title.into(),
        x_label: "x label".into(),
        y_label: "y label".into(),
        curves,
        legend: true,
        ..Panel::default()
    };
    let scatter = Scatter {
        points: vec![(nan, inf), (2.0, 3.0)],
        ..Scatter::default()
    };
    let panels = vec![
        panel("nothing at all", vec![]),
        Panel {
            scatters: vec![scatter],
            lines: vec![curve(vec![-1e30, 1e30], vec![-1e30, 1e30])],
            ..panel(
                "NaN and gaps",
                vec![curve(vec![nan, 1.0, nan, 4.0], vec![3.0; 4])],
            )
        },
        Panel {
            x_range: Some((nan, 1.0)),
            y_range: Some((2.0, 2.0)),
            ..panel(
                "bad ranges",
                vec![curve(vec![0.0, inf, 1.0], vec![2.0, 2.0, -inf])],
            )
        },
        Panel {
            x_range: Some((1.0, -1.0)),
            ..panel("reversed, one point", vec![curve(vec![0.0], vec![0.0])])
        },
        panel("huge", vec![curve(vec![0.0, 1.0], vec![-3e38, 3e38])]),
        panel("tiny", vec![curve(vec![1e-30, 2e-30], vec![1e-30; 2])]),
        panel(
            "a title far too long for a panel of the smallest size",
            vec![curve(vec![-1e5, 1e5], vec![12345.678, 12345.679])],
        ),
    ];
    let fig = Figure {
        title: Some("edge cases".into()),
        panels,
        columns: 3,
        panel_size: MIN_PANEL_SIZE,
    };
    read_png(&save(&fig, &out_dir().join("edge-cases")).unwrap()[0]);

    let hist = |bins, range, values: Vec<f32>| HistPanel {
        bins,
        range,
        series: vec![Histogram {
            label: "bad".into(),
            values,
            colour: 1,
        }],
        density: true,
        ..HistPanel::default()
    };
    let hist = [
        hist(5, (0.0, 1.0), vec![]),
        hist(4, (1.0, 1.0), vec![nan, inf, -inf, 7.0]),
        hist(3, (nan, inf), vec![0.5, 0.5]),
    ];
    let paths = save_histograms(None, &hist, 5, &out_dir().join("edge-hist")).unwrap();
    // Five columns requested, three panels: one row of three.
    let (w, h, _) = read_png(&paths[0]);
    assert_eq!((w, h), (3 * DEFAULT_PANEL_SIZE.0, DEFAULT_PANEL_SIZE.1));
}

#[test]
fn invalid_figures_are_errors() {
    let stem = out_dir().join("invalid");
    let invalid = |edit: &dyn Fn(&mut Figure)| {
        let mut fig = demo_figure();
        edit(&mut fig);
        match save(&fig, &stem) {
            Err(Error::InvalidArgument { name, .. }) => name,
            other => panic!("expected an invalid argument, got {other:?}"),
        }
    };
    assert_eq!(invalid(&|f| f.panels.clear()), "panels");
    assert_eq!(invalid(&|f| f.columns = 0), "columns");
    assert_eq!(invalid(&|f| f.panel_size = (50, 50)), "panel_size");
    assert_eq!(
        invalid(&|f| f.panel_size = (MAX_IMAGE_SIDE, 400)),
        "panel_size"
    );
    let mut fig = demo_figure();
    fig.panels[0].curves[1].ys.truncate(999);
    let err = save(&fig, &stem).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("minority test") && message.contains("1000 x values but 999"),
        "{err}"
    );
    let bad_bins = [HistPanel::default()];
    assert!(matches!(
        save_histograms(None, &bad_bins, 1, &stem),
        Err(Error::InvalidArgument { name: "bins", .. })
    ));
    assert!(matches!(
        save(&demo_figure(), Path::new("")),
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
    match save(&demo_figure(), &blocker.join("figure")).unwrap_err() {
        Error::Io { path, .. } => assert_eq!(path, blocker),
        other => panic!("expected Error::Io, got {other}"),
    }
    let dotted = with_suffix(Path::new("out/fig1.seed0"), "png");
    assert_eq!(dotted, PathBuf::from("out/fig1.seed0.png"));
}

#[test]
fn boundary_points_are_on_the_decision_line() {
    let (w0, w1) = ((0.3f32, -1.2f32), (-0.5f32, 0.7f32));
    let line = linear_boundary_2d(w0, w1, (-3.0, 2.0)).unwrap();
    assert_eq!(line.xs, vec![-3.0, 2.0]);
    for (&x, &y) in line.xs.iter().zip(&line.ys) {
        assert!(
            ((w1.0 - w0.0) * x + (w1.1 - w0.1) * y).abs() < 1e-5,
            "({x}, {y})"
        );
    }
    assert!(linear_boundary_2d((1.0, 2.0), (1.0, 2.0), (-1.0, 1.0)).is_none());
    assert!(linear_boundary_2d((f32::NAN, 0.0), (1.0, 2.0), (-1.0, 1.0)).is_none());
    assert!(linear_boundary_2d((0.0, 0.0), (1.0, 2.0), (f32::NEG_INFINITY, 1.0)).is_none());
    let vertical = linear_boundary_2d((0.0, 1.0), (2.0, 1.0), (-1.5, 1.5)).unwrap();
    assert_eq!(
        (vertical.xs, vertical.ys),
        (vec![0.0, 0.0], vec![-1.5, 1.5])
    );
    assert!(linear_boundary_2d((0.0, 1.0), (2.0, 1.0), (0.5, 1.5)).is_none());
}

#[test]
fn clipping_keeps_segments_inside_the_view() {
    let view = ((0.0, 1.0), (0.0, 1.0));
    let (a, b, start_moved, end_moved) = clip_segment((-1.0, 0.5), (2.0, 0.5), view).unwrap();
    assert_eq!(
        (a, b, start_moved, end_moved),
        ((0.0, 0.5), (1.0, 0.5), true, true)
    );
    assert!(clip_segment((-1.0, 2.0), (2.0, 2.0), view).is_none());
    assert!(clip_segment((-1.0, 0.5), (0.5, 3.0), view).is_none());
    let inside = clip_segment((0.2, 0.2), (0.4, 0.6), view).unwrap();
    assert_eq!((inside.2, inside.3), (false, false));
    // A NaN splits the curve, and leaving the view and coming back makes a new piece.
    let xs = [0.1, 0.2, f32::NAN, 0.4, 0.5, 0.6, 0.7];
    let ys = [0.1, 0.2, 0.3, 0.4, 5.0, 0.6, 0.7];
    let pieces = visible_pieces(&xs, &ys, view);
    assert_eq!(
        pieces.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![2, 2, 3]
    );
    assert!(pieces.iter().flatten().all(|&p| in_view(p, view)));
}

#[test]
fn histogram_bins_and_ranges() {
    let values: Vec<f32> = (0..1000)
        .map(|i| (i as f32 / 999.0).powi(2))
        .chain([f32::NAN, 2.0])
        .collect();
    let area: f64 = bin_heights(&values, 7, (0.0, 1.0), true)
        .iter()
        .map(|h| h / 7.0)
        .sum();
    assert!((area - 1.0).abs() < 1e-12, "area {area}");
    // NaN and out-of-range values are not counted; the right edge belongs to the last bin.
    assert_eq!(
        bin_heights(&values, 7, (0.0, 1.0), false)
            .iter()
            .sum::<f64>(),
        1000.0
    );
    assert_eq!(
        bin_heights(&[1.0], 4, (0.0, 1.0), false),
        vec![0.0, 0.0, 0.0, 1.0]
    );

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
        ((12345.677, 12345.680), 10),
        ((-0.000146, 0.000479), 6),
        ((123456.70, 123456.73), 12),
    ] {
        let ticks = Ticks::new(range, TICK_COUNT);
        let labels = ticks.labels();
        let mut unique = labels.clone();
        unique.dedup();
        assert!(
            labels.len() >= 2 && unique == labels,
            "{range:?}: {labels:?}"
        );
        for (tick, label) in ticks.values.iter().zip(&labels) {
            let value: f64 = label.parse().unwrap();
            assert!(
                (value - tick).abs() <= 1e-3 * ticks.step,
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

/// Renders `text` at `px` pixels per em with its anchor at `at`; returns the RGB buffer.
fn render_text(
    size: (usize, usize),
    text: &str,
    px: f64,
    at: (i32, i32),
    vertical: bool,
) -> Vec<u8> {
    let mut rgb = vec![255u8; 3 * size.0 * size.1];
    {
        let bitmap = BitMapBackend::with_buffer(&mut rgb, (size.0 as u32, size.1 as u32));
        let root = Typeset::new(bitmap, true).unwrap().into_drawing_area();
        let mut style = text::style(px).pos(Pos::new(HPos::Left, VPos::Top));
        if vertical {
            style = style.transform(FontTransform::Rotate270);
        }
        root.draw_text(text, &style, at).unwrap();
    }
    rgb
}

/// Columns (or, transposed, rows) of an RGB buffer that hold ink, grouped into runs.
fn ink_runs(rgb: &[u8], width: usize, transpose: bool) -> Vec<(usize, usize)> {
    let height = rgb.len() / (3 * width);
    let (outer, inner) = if transpose {
        (height, width)
    } else {
        (width, height)
    };
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for o in 0..outer {
        let inked = (0..inner).any(|n| {
            let (x, y) = if transpose { (n, o) } else { (o, n) };
            rgb[3 * (y * width + x)] < 160
        });
        match runs.last_mut() {
            Some(run) if inked && run.1 + 1 == o => run.1 = o,
            _ if inked => runs.push((o, o)),
            _ => {}
        }
    }
    runs
}

#[test]
fn glyphs_are_placed_by_their_side_bearings() {
    let m = text::metrics().unwrap();
    let (w, px, origin) = (200usize, 40.0, (10, 10));
    let rgb = render_text((w, 80), "HTH", px, origin, false);
    // T's ink starts left of its pen while H's starts well right of it: placing ink boxes at
    // the pen (as plotters 0.3 does) would move each run by several pixels.
    let font = m
        .font
        .as_scaled(m.font.pt_to_px_scale(px as f32 * 0.75).unwrap());
    let mut pen = origin.0 as f32;
    let mut expected = Vec::new();
    for c in "HTH".chars() {
        let id = font.glyph_id(c);
        expected.push(pen + font.h_side_bearing(id));
        pen += font.h_advance(id);
    }
    let bearing = |c| font.h_side_bearing(font.glyph_id(c));
    assert!(bearing('H') - bearing('T') > 2.0);
    let runs = ink_runs(&rgb, w, false);
    assert_eq!(runs.len(), 3, "{runs:?}");
    for (run, want) in runs.iter().zip(&expected) {
        assert!(
            (run.0 as f32 - want).abs() <= 1.0,
            "{runs:?} vs {expected:?}"
        );
    }
    // The cap height sits on the anchor line and the baseline one cap height below.
    let rows = ink_runs(&rgb, w, true);
    assert_eq!(rows.len(), 1);
    assert!((rows[0].0 as i32 - origin.1).abs() <= 1, "{rows:?}");
    assert!((rows[0].1 as f64 - (f64::from(origin.1) + m.cap_height * px)).abs() <= 1.5);
    assert!((m.width("HTH", px) - f64::from(pen) + f64::from(origin.0)).abs() < 1e-3);
}

#[test]
fn vertical_text_reads_bottom_to_top() {
    let (w, h) = (60usize, 200usize);
    let rgb = render_text((w, h), "L I", 30.0, (10, 190), true);
    let rows = ink_runs(&rgb, w, true);
    assert_eq!(rows.len(), 2, "{rows:?}");
    // "L" comes first, so it is the lower run, and its foot points right (the baseline side is
    // screen right): the L occupies more rows than the I's single stem.
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
