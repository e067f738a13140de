//! Figures: `figures/<name>.png` and `.svg` (plotters), line plots with error bars and grouped
//! bar charts.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::backend::{BitMapBackend, SVGBackend};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::group::{
    apply_filter, check_metric, check_param, extras_canon, extras_label, format_num, ordered_levels, short_key, varying_within, Level,
    Stats,
};
use super::text::CrispText;
use super::{PlotKind, PlotSpec, ReportError, RunRow, RunStatus};

/// Figure size in pixels (PNG and SVG).
const SIZE: (u32, u32) = (1000, 650);
/// The family every text is drawn in; the found font is registered under it.
const FAMILY: &str = "sans-serif";
const TITLE_PX: u32 = 30;
const AXIS_DESC_PX: u32 = 26;
const TICK_PX: u32 = 22;
const LEGEND_PX: u32 = 22;

/// Matplotlib's default ("tab10") colours.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Where fonts are looked for when `RUNNER_FONT` is not set.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// A font found and registered with plotters.
struct LoadedFont {
    path: PathBuf,
    font: ab_glyph::FontRef<'static>,
}

/// The TrueType font figures are drawn with, registered with plotters on first use: the file
/// named by `$RUNNER_FONT`, else the first of the usual system locations (DejaVu Sans,
/// Liberation Sans, Noto Sans, FreeSans, Arial). `None` (with a warning naming `RUNNER_FONT`)
/// when none is usable; figures are then skipped.
pub fn font_path() -> Option<&'static Path> {
    loaded_font().map(|f| f.path.as_path())
}

fn loaded_font() -> Option<&'static LoadedFont> {
    static FONT: OnceLock<Option<LoadedFont>> = OnceLock::new();
    FONT.get_or_init(|| {
        let env = std::env::var_os("RUNNER_FONT").filter(|v| !v.is_empty()).map(PathBuf::from);
        find_font(env.as_deref(), FONT_CANDIDATES)
    })
    .as_ref()
}

/// Loads `env` (the `RUNNER_FONT` value), else the first usable candidate; warns about a
/// bad `env` and when nothing is found.
fn find_font(env: Option<&Path>, candidates: &[&str]) -> Option<LoadedFont> {
    if let Some(p) = env {
        match load(p) {
            Ok(f) => return Some(f),
            Err(e) => tracing::warn!("RUNNER_FONT={}: {e}; looking in the usual places instead", p.display()),
        }
    }
    for c in candidates {
        let p = Path::new(c);
        if p.is_file() {
            if let Ok(f) = load(p) {
                return Some(f);
            }
        }
    }
    tracing::warn!(
        "no TrueType font found for figures (looked in {}); set RUNNER_FONT to a .ttf file. \
         Figures are skipped; tables are still written",
        candidates.join(", ")
    );
    None
}

fn load(path: &Path) -> Result<LoadedFont, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let font = ab_glyph::FontRef::try_from_slice(&bytes).map_err(|_| "not a TrueType/OpenType font".to_string())?;
    drop(font);
    // plotters keeps fonts for the life of the process; this happens once.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    let font = ab_glyph::FontRef::try_from_slice(bytes).map_err(|e| e.to_string())?;
    plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).map_err(|_| "not a TrueType/OpenType font".to_string())?;
    Ok(LoadedFont { path: path.to_path_buf(), font })
}

/// Default file stem: `harmful_score_vs_ratio_by_method`.
pub(crate) fn default_name(p: &PlotSpec) -> String {
    let mut s = format!("{}_vs_{}", short_key(&p.y), short_key(&p.x));
    for k in &p.series {
        s.push_str("_by_");
        s.push_str(short_key(k));
    }
    s
}

/// One point: x coordinate (value, or category index) and the replicate statistics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pt {
    pub x: f64,
    pub stats: Stats,
}

#[derive(Debug, Clone)]
pub(crate) struct SeriesData {
    pub label: String,
    pub points: Vec<Pt>,
}

/// A figure, aggregated and ready to draw.
#[derive(Debug, Clone)]
pub(crate) struct PlotData {
    pub kind: PlotKind,
    pub title: Option<String>,
    pub x_label: String,
    pub y_label: String,
    /// Category names when x is categorical (always for bars); x is then the index.
    pub categories: Option<Vec<String>>,
    /// Distinct numeric x values (numeric axis only).
    pub x_values: Vec<f64>,
    pub series: Vec<SeriesData>,
    /// Whether to draw a legend (there is a series key, or several series).
    pub legend: bool,
}

pub(crate) fn build(name: &str, all: &[RunRow], spec: &PlotSpec) -> Result<PlotData, ReportError> {
    let what = format!("plot `{name}`");
    check_param(&what, "x", &spec.x, all)?;
    for s in &spec.series {
        check_param(&what, "series", s, all)?;
    }
    check_metric(&what, "y", &spec.y, all)?;
    let runs: Vec<&RunRow> = apply_filter(&what, all, &spec.filter)?.into_iter().filter(|r| r.params.contains_key(&spec.x)).collect();

    let mut group_keys = vec![spec.x.as_str()];
    group_keys.extend(spec.series.iter().map(String::as_str));
    let extras = varying_within(&runs, &group_keys);
    let series_level = |r: &RunRow| if spec.series.is_empty() { Level::absent() } else { Level::joint(r, &spec.series) };

    let mut ids: Vec<(String, String, String)> = Vec::new(); // (level canon, extras canon, label)
    for level in ordered_levels(runs.iter().map(|r| series_level(r))) {
        for r in runs.iter().filter(|r| series_level(r).canon == level.canon) {
            let ec = extras_canon(r, &extras);
            if !ids.iter().any(|(c, e, _)| *c == level.canon && *e == ec) {
                let el = extras_label(r, &extras);
                // Numbers alone say little in a legend: `ratio=0.1`, but `booster`.
                let base = match spec.series.as_slice() {
                    [] => String::new(),
                    [k] if level.num.is_some() || level.canon.starts_with("b:") => format!("{}={}", short_key(k), level.label),
                    _ => level.display(&spec.labels),
                };
                let label = match (base.is_empty(), el.is_empty()) {
                    (_, true) => base,
                    (true, false) => el,
                    (false, false) => format!("{base} ({el})"),
                };
                ids.push((level.canon.clone(), ec, label));
            }
        }
    }

    let x_levels = ordered_levels(runs.iter().map(|r| Level::param(r, &spec.x)));
    let numeric = spec.kind == PlotKind::Line && !x_levels.is_empty() && x_levels.iter().all(|l| l.num.is_some());
    let coord = |i: usize, l: &Level| if numeric { l.num.unwrap() } else { i as f64 };
    let mut series = Vec::new();
    for (sc, ec, label) in &ids {
        let mut points = Vec::new();
        for (i, xl) in x_levels.iter().enumerate() {
            let values: Vec<f64> = runs
                .iter()
                .filter(|r| r.status == RunStatus::Done)
                .filter(|r| series_level(r).canon == *sc && extras_canon(r, &extras) == *ec)
                .filter(|r| Level::param(r, &spec.x).canon == xl.canon)
                .filter_map(|r| r.metrics.get(&spec.y).copied())
                .filter(|v| v.is_finite())
                .collect();
            if let Some(stats) = Stats::of(&values) {
                points.push(Pt { x: coord(i, xl), stats });
            }
        }
        series.push(SeriesData { label: label.clone(), points });
    }
    let legend = !spec.series.is_empty() || series.len() > 1;
    Ok(PlotData {
        kind: spec.kind,
        title: spec.title.clone(),
        x_label: spec.x_label.clone().unwrap_or_else(|| spec.x.clone()),
        y_label: spec.y_label.clone().unwrap_or_else(|| spec.y.clone()),
        categories: (!numeric).then(|| x_levels.iter().map(|l| l.label.clone()).collect()),
        x_values: if numeric { x_levels.iter().filter_map(|l| l.num).collect() } else { vec![] },
        series,
        legend,
    })
}

/// Aggregates and draws one figure; returns the PNG and SVG paths, or nothing (with a
/// warning) when no font is available.
pub(crate) fn write_plot(dir: &Path, name: &str, rows: &[RunRow], spec: &PlotSpec) -> Result<Vec<PathBuf>, ReportError> {
    let data = build(name, rows, spec)?;
    let Some(font) = loaded_font() else {
        tracing::warn!("figure `{name}` skipped: no font (set RUNNER_FONT to a .ttf file)");
        return Ok(vec![]);
    };
    std::fs::create_dir_all(dir).map_err(|e| ReportError::io(dir, e))?;

    let png = dir.join(format!("{name}.png"));
    let tmp = dir.join(format!(".{name}.{}.tmp.png", std::process::id()));
    let backend = CrispText { inner: BitMapBackend::new(&tmp, SIZE), font: &font.font };
    let drawn = draw(backend.into_drawing_area(), &data);
    if let Err(msg) = drawn {
        let _ = std::fs::remove_file(&tmp);
        return Err(ReportError::Plot { path: png, msg });
    }
    std::fs::rename(&tmp, &png).map_err(|e| ReportError::io(&png, e))?;

    let svg = dir.join(format!("{name}.svg"));
    let mut text = String::new();
    draw(SVGBackend::with_string(&mut text, SIZE).into_drawing_area(), &data)
        .map_err(|msg| ReportError::Plot { path: svg.clone(), msg })?;
    crate::util::write_atomic(&svg, text.as_bytes()).map_err(|e| ReportError::io(&svg, e))?;
    Ok(vec![png, svg])
}

/// Tick positions at 1, 2 or 5 times a power of ten covering `[lo, hi]`, about `target` of
/// them; returns the ticks and the step.
fn nice_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, f64) {
    let span = (hi - lo).max(1e-12);
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    let ticks = (first..=last).map(|k| k as f64 * step).collect();
    (ticks, step)
}

/// Widens `[lo, hi]` to the next tick outside either end when that tick is near (within half
/// a step), so the axis ends on a labelled value.
fn snap_to_ticks(lo: f64, hi: f64) -> (f64, f64) {
    let (_, step) = nice_ticks(lo, hi, 7);
    let top = (hi / step).ceil() * step;
    let bottom = (lo / step).floor() * step;
    let eps = step * 1e-9;
    (if lo - bottom < 0.5 * step - eps { bottom } else { lo }, if top - hi < 0.5 * step - eps { top } else { hi })
}

/// Digits after the point that tick labels at `step` need.
fn step_decimals(step: f64) -> usize {
    if step >= 1.0 {
        0
    } else {
        (-step.log10() - 1e-9).ceil().max(0.0) as usize
    }
}

/// Legend corners in order of preference.
const CORNERS: [SeriesLabelPosition; 4] =
    [SeriesLabelPosition::UpperRight, SeriesLabelPosition::UpperLeft, SeriesLabelPosition::LowerRight, SeriesLabelPosition::LowerLeft];

/// How many of `pts` (in unit plot coordinates, y up) fall in a `w` x `h` box at `corner`.
fn corner_hits(pts: &[(f64, f64)], corner: usize, w: f64, h: f64) -> usize {
    let (right, upper) = (matches!(corner, 0 | 2), corner < 2);
    pts.iter()
        .filter(|(x, y)| {
            let in_x = if right { *x >= 1.0 - w } else { *x <= w };
            let in_y = if upper { *y >= 1.0 - h } else { *y <= h };
            in_x && in_y
        })
        .count()
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, d: &PlotData) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let bar = d.kind == PlotKind::Bar;
    let visible: Vec<(usize, &SeriesData)> = d.series.iter().enumerate().filter(|(_, s)| !s.points.is_empty()).collect();

    // Y extent over means and error bars; bars start at zero.
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for (_, s) in &visible {
        for p in &s.points {
            let e = p.stats.std.unwrap_or(0.0);
            lo = lo.min(p.stats.mean - e);
            hi = hi.max(p.stats.mean + e);
        }
    }
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if bar {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    if hi - lo < 1e-12 {
        let pad = if lo.abs() > 1e-12 { lo.abs() * 0.1 } else { 1.0 };
        (lo, hi) = (lo - pad, hi + pad);
    }
    let pad = (hi - lo) * 0.06;
    let y0 = if bar && lo >= 0.0 { 0.0 } else { lo - pad };
    let mut y1 = if bar && hi <= 0.0 { 0.0 } else { hi + pad };
    let (y0, y1_snapped) = snap_to_ticks(y0, y1);
    y1 = y1_snapped;

    // X extent.
    let (x0, x1, x_ticks): (f64, f64, Vec<f64>) = match &d.categories {
        Some(c) => (-0.5, c.len().max(1) as f64 - 0.5, (0..c.len()).map(|i| i as f64).collect()),
        None => {
            let (mut a, mut b) = (d.x_values[0], d.x_values[d.x_values.len() - 1]);
            let ticks = if d.x_values.len() <= 12 { d.x_values.clone() } else { nice_ticks(a, b, 8).0 };
            let span = if b > a { b - a } else { a.abs().max(1.0) };
            (a, b) = (a - span * 0.04, b + span * 0.04);
            (a, b, ticks)
        }
    };

    // Legend: pick the emptiest corner; if every corner holds data, make head room for it.
    let legend_pos = if d.legend && !visible.is_empty() {
        let plot_w = (SIZE.0 - 130) as f64;
        let plot_h = (SIZE.1 - 110 - if d.title.is_some() { 45 } else { 0 }) as f64;
        let chars = visible.iter().map(|(_, s)| s.label.chars().count()).max().unwrap_or(0);
        let w = (chars as f64 * LEGEND_PX as f64 * 0.6 + 90.0) / plot_w;
        let h = (visible.len() as f64 * LEGEND_PX as f64 * 1.25 + 30.0) / plot_h;
        let unit = |x: f64, y: f64, y0: f64, y1: f64| ((x - x0) / (x1 - x0), (y - y0) / (y1 - y0));
        let sample = |y0: f64, y1: f64| {
            let mut pts = Vec::new();
            for (_, s) in &visible {
                for (k, p) in s.points.iter().enumerate() {
                    let e = p.stats.std.unwrap_or(0.0);
                    let m = p.stats.mean;
                    if bar {
                        // The whole bar, from the base to the top of its error bar.
                        for t in 0..=10 {
                            let y = y0.max(0.0) + (m + e - y0.max(0.0)) * t as f64 / 10.0;
                            for dx in [-0.4, 0.0, 0.4] {
                                pts.push(unit(p.x + dx, y, y0, y1));
                            }
                        }
                    } else {
                        for y in [m - e, m, m + e] {
                            pts.push(unit(p.x, y, y0, y1));
                        }
                        if let Some(q) = s.points.get(k + 1) {
                            for t in 1..20 {
                                let f = t as f64 / 20.0;
                                let x = p.x + (q.x - p.x) * f;
                                let y = m + (q.stats.mean - m) * f;
                                pts.push(unit(x, y, y0, y1));
                            }
                        }
                    }
                }
            }
            pts
        };
        let pts = sample(y0, y1);
        let best = (0..4).min_by_key(|&c| corner_hits(&pts, c, w, h)).unwrap();
        if corner_hits(&pts, best, w, h) == 0 || h >= 0.6 {
            Some(CORNERS[best].clone())
        } else {
            // Raise the top so the legend fits above the data.
            y1 = snap_to_ticks(y0, y1 + (y1 - y0) * h / (1.0 - h)).1;
            let pts = sample(y0, y1);
            let best = (0..2).min_by_key(|&c| corner_hits(&pts, c, w, h)).unwrap();
            Some(CORNERS[best].clone())
        }
    } else {
        None
    };

    let (y_ticks, y_step) = nice_ticks(y0, y1, 7);
    let y_dec = step_decimals(y_step);
    let x_fmt = |v: &f64| -> String {
        match &d.categories {
            Some(c) => c.get(v.round().max(0.0) as usize).cloned().unwrap_or_default(),
            None => format_num((v * 1e9).round() / 1e9),
        }
    };
    let y_fmt = |v: &f64| format!("{v:.y_dec$}");

    let mut builder = ChartBuilder::on(&root);
    builder.margin(18).margin_right(32).x_label_area_size(80).y_label_area_size(105);
    if let Some(t) = &d.title {
        builder.caption(t, (FAMILY, TITLE_PX));
    }
    let mut chart = builder
        .build_cartesian_2d(TickAxis { lo: x0, hi: x1, ticks: x_ticks }, TickAxis { lo: y0, hi: y1, ticks: y_ticks })
        .map_err(|e| e.to_string())?;
    let grid = RGBColor(222, 222, 222);
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(d.x_label.as_str())
        .y_desc(d.y_label.as_str())
        .axis_desc_style((FAMILY, AXIS_DESC_PX))
        .label_style((FAMILY, TICK_PX))
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .bold_line_style(grid.stroke_width(1))
        .light_line_style(TRANSPARENT)
        .axis_style(BLACK.stroke_width(2))
        .set_all_tick_mark_size(6);
    if bar {
        mesh.disable_x_mesh();
    }
    mesh.draw().map_err(|e| e.to_string())?;
    if visible.is_empty() {
        use plotters::style::text_anchor::{HPos, Pos, VPos};
        let style =
            TextStyle::from((FAMILY, AXIS_DESC_PX).into_font()).color(&RGBColor(110, 110, 110)).pos(Pos::new(HPos::Center, VPos::Center));
        let at = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
        chart.draw_series(std::iter::once(Text::new("no finished runs", at, style))).map_err(|e| e.to_string())?;
    }

    let nseries = visible.len().max(1);
    // Lines: spread the series a little sideways so error bars at one x do not hide each other.
    let any_err = visible.iter().any(|(_, s)| s.points.iter().any(|p| p.stats.std.is_some()));
    let dodge = if !bar && nseries > 1 && any_err { (x1 - x0) * 0.006 } else { 0.0 };
    for (slot, (i, s)) in visible.iter().enumerate() {
        let color = PALETTE[*i % PALETTE.len()];
        let shape = *i;
        if bar {
            let width = 0.8 / nseries as f64;
            let gap = width * 0.08;
            let base = 0f64.clamp(y0, y1);
            let x_of = |p: &Pt| p.x - 0.4 + width * slot as f64;
            let anno = chart
                .draw_series(
                    s.points.iter().map(|p| Rectangle::new([(x_of(p) + gap, base), (x_of(p) + width - gap, p.stats.mean)], color.filled())),
                )
                .map_err(|e| e.to_string())?;
            if d.legend {
                anno.label(s.label.as_str()).legend(move |(x, y)| Rectangle::new([(x + 4, y - 9), (x + 30, y + 9)], color.filled()));
            }
            let bar_px = (SIZE.0 as f64 - 150.0) / (x1 - x0) * (width - 2.0 * gap);
            let cap = (bar_px * 0.25).clamp(3.0, 9.0) as i32;
            for p in &s.points {
                if let Some(e) = p.stats.std {
                    let xc = x_of(p) + width / 2.0;
                    error_bar(&mut chart, xc, p.stats.mean, e, BLACK, cap)?;
                }
            }
        } else {
            let off = dodge * (slot as f64 - (nseries as f64 - 1.0) / 2.0);
            let shifted: Vec<Pt> = s.points.iter().map(|p| Pt { x: p.x + off, ..*p }).collect();
            let s = SeriesData { label: s.label.clone(), points: shifted };
            let style = color.stroke_width(3);
            let anno =
                chart.draw_series(LineSeries::new(s.points.iter().map(|p| (p.x, p.stats.mean)), style)).map_err(|e| e.to_string())?;
            let (pts, fill, edge) = marker(shape, 7, color);
            let mut outline = pts.clone();
            outline.push(pts[0]);
            if d.legend {
                let shift = |v: &[(i32, i32)]| v.iter().map(|&(a, b)| (a + 18, b)).collect::<Vec<_>>();
                let (lp, lo) = (shift(&pts), shift(&outline));
                anno.label(s.label.as_str()).legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (36, 0)], color.stroke_width(3))
                        + Polygon::new(lp.clone(), fill)
                        + PathElement::new(lo.clone(), edge)
                });
            }
            for p in &s.points {
                if let Some(e) = p.stats.std {
                    error_bar(&mut chart, p.x, p.stats.mean, e, color, 8)?;
                }
            }
            chart
                .draw_series(s.points.iter().map(|p| {
                    EmptyElement::at((p.x, p.stats.mean)) + Polygon::new(pts.clone(), fill) + PathElement::new(outline.clone(), edge)
                }))
                .map_err(|e| e.to_string())?;
        }
    }

    if let Some(pos) = legend_pos {
        chart
            .configure_series_labels()
            .position(pos)
            .margin(14)
            .legend_area_size(46)
            .label_font((FAMILY, LEGEND_PX))
            .background_style(WHITE.mix(0.92))
            .border_style(RGBColor(150, 150, 150))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

/// A vertical error bar from `m - e` to `m + e` with caps `cap` pixels wide each side.
fn error_bar<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<TickAxis, TickAxis>>,
    x: f64,
    m: f64,
    e: f64,
    color: RGBColor,
    cap: i32,
) -> Result<(), String> {
    let style = color.stroke_width(2);
    let caps = [m - e, m + e].map(|y| EmptyElement::at((x, y)) + PathElement::new(vec![(-cap, 0), (cap, 0)], style));
    chart.draw_series(std::iter::once(PathElement::new(vec![(x, m - e), (x, m + e)], style))).map_err(|e| e.to_string())?;
    chart.draw_series(caps).map_err(|e| e.to_string())?;
    Ok(())
}

/// A linear f64 axis whose ticks (and grid lines) are exactly the given values.
struct TickAxis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Ranged for TickAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let t = (v - self.lo) / (self.hi - self.lo);
        limit.0 + ((limit.1 - limit.0) as f64 * t).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            vec![]
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// Marker `shape` (cycling circle, triangle, square, diamond, cross, ring) of radius `r`
/// around the origin, as a polygon with its fill and outline styles; filled ones get a white
/// edge so they stand out on lines.
fn marker(shape: usize, r: i32, color: RGBColor) -> (Vec<(i32, i32)>, ShapeStyle, ShapeStyle) {
    let rf = r as f64;
    let round = |pts: Vec<(f64, f64)>| -> Vec<(i32, i32)> { pts.into_iter().map(|(x, y)| (x.round() as i32, y.round() as i32)).collect() };
    let circle = |rad: f64| {
        round(
            (0..24)
                .map(|k| {
                    let a = k as f64 * std::f64::consts::TAU / 24.0;
                    (rad * a.cos(), rad * a.sin())
                })
                .collect(),
        )
    };
    let edge = WHITE.stroke_width(1);
    match shape % 6 {
        0 => (circle(rf), color.filled(), edge),
        1 => {
            let s = rf * 1.25;
            (round(vec![(0.0, -s), (s * 0.95, s * 0.7), (-s * 0.95, s * 0.7)]), color.filled(), edge)
        }
        2 => {
            let s = rf * 0.88;
            (round(vec![(-s, -s), (s, -s), (s, s), (-s, s)]), color.filled(), edge)
        }
        3 => {
            let s = rf * 1.25;
            (round(vec![(0.0, -s), (s, 0.0), (0.0, s), (-s, 0.0)]), color.filled(), edge)
        }
        4 => {
            // An "x": a plus sign turned by 45 degrees.
            let (a, w) = (rf * 1.2, rf * 0.38);
            let plus = [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)];
            let c = std::f64::consts::FRAC_1_SQRT_2;
            (round(plus.iter().map(|&(x, y)| (c * (x - y), c * (x + y))).collect()), color.filled(), edge)
        }
        _ => (circle(rf - 1.0), WHITE.filled(), color.stroke_width(3)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// Harmful score vs harmful ratio p for four methods, two seeds with some spread.
    pub(crate) fn example_rows() -> Vec<RunRow> {
        let methods = [("sft", 1.0), ("vaccine", 0.75), ("repnoise", 0.6), ("booster", 0.3)];
        let ps = [0.0, 0.05, 0.1, 0.15, 0.2];
        let mut rows = Vec::new();
        for (mi, (m, slope)) in methods.iter().enumerate() {
            for (pi, p) in ps.iter().enumerate() {
                for seed in [42u64, 43] {
                    let base = 8.0 + 2.0 * mi as f64 * 0.3 + slope * 320.0 * p * (1.0 - 1.2 * p);
                    let jitter = ((mi * 7 + pi * 3) % 5) as f64 * 0.6 + 0.5;
                    let hs = if seed == 42 { base - jitter } else { base + jitter };
                    let acc = 93.0 - 2.0 * p * 10.0 * (mi as f64 * 0.2) + if seed == 42 { -0.4 } else { 0.4 };
                    rows.push(RunRow {
                        run_id: format!("r{:03}", rows.len()),
                        status: RunStatus::Done,
                        error: None,
                        seed: Some(seed),
                        params: [("stage.align.method".to_string(), json!(m)), ("stage.attack.mix.1.ratio".to_string(), json!(p))].into(),
                        metrics: [("eval.harmful_score".to_string(), hs), ("eval.accuracy".to_string(), acc)].into(),
                    });
                }
            }
        }
        rows
    }

    fn spec(kind: PlotKind) -> PlotSpec {
        PlotSpec {
            name: None,
            kind,
            x: "stage.attack.mix.1.ratio".into(),
            y: "eval.harmful_score".into(),
            series: vec!["stage.align.method".into()],
            labels: Default::default(),
            title: None,
            x_label: None,
            y_label: None,
            filter: Default::default(),
        }
    }

    #[test]
    fn line_aggregates_over_seeds() {
        let d = build("f", &example_rows(), &spec(PlotKind::Line)).unwrap();
        let labels: Vec<&str> = d.series.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["sft", "vaccine", "repnoise", "booster"]);
        assert!(d.categories.is_none());
        assert_eq!(d.x_values, [0.0, 0.05, 0.1, 0.15, 0.2]);
        let p = d.series[0].points[0];
        assert_eq!(p.x, 0.0);
        assert_eq!(p.stats.n, 2);
        assert!((p.stats.mean - 8.0).abs() < 1e-9);
        assert!((p.stats.std.unwrap() - 0.5 * 2f64.sqrt()).abs() < 1e-9);
        let b = build("f", &example_rows(), &spec(PlotKind::Bar)).unwrap();
        assert_eq!(b.categories.as_deref().unwrap(), ["0", "0.05", "0.1", "0.15", "0.2"]);
        assert_eq!(b.series[3].points[4].x, 4.0);
        assert_eq!(default_name(&spec(PlotKind::Line)), "harmful_score_vs_ratio_by_method");
    }

    #[test]
    fn unknown_plot_key_is_named() {
        let mut s = spec(PlotKind::Line);
        s.series = vec!["stage.align.mthod".into()];
        let e = build("f", &example_rows(), &s).unwrap_err().to_string();
        assert!(e.contains("plot `f`: series key `stage.align.mthod`"), "{e}");
        assert!(e.contains("did you mean `stage.align.method`"), "{e}");
    }

    #[test]
    fn line_and_bar_plots_write_png_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let mut rows = example_rows();
        // A partial sweep: one failed run, one point missing entirely.
        rows[3].status = RunStatus::Failed;
        rows[3].metrics.clear();
        rows.retain(|r| r.run_id != "r010" && r.run_id != "r011");
        for kind in [PlotKind::Line, PlotKind::Bar] {
            let name = format!("{kind:?}").to_lowercase();
            let written = write_plot(dir.path(), &name, &rows, &spec(kind)).unwrap();
            if font_path().is_none() {
                assert!(written.is_empty());
                continue;
            }
            assert_eq!(written.len(), 2);
            let png = std::fs::read(dir.path().join(format!("{name}.png"))).unwrap();
            assert!(png.len() > 10_000 && png.starts_with(b"\x89PNG"), "{}", png.len());
            let svg = std::fs::read_to_string(dir.path().join(format!("{name}.svg"))).unwrap();
            assert!(svg.starts_with("<svg") && svg.len() > 2_000);
            for text in ["stage.attack.mix.1.ratio", "eval.harmful_score", "booster", "vaccine", "0.15"] {
                assert!(svg.contains(&format!(">{text}<")) || svg.contains(text), "{text} not in svg");
            }
            assert!(svg.contains("<text"), "svg has no text");
        }
        // No temporary files left behind.
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    }

    #[test]
    fn degenerate_plots_still_draw() {
        let dir = tempfile::tempdir().unwrap();
        let mut rows = example_rows();
        for r in &mut rows {
            r.status = RunStatus::Failed;
            r.metrics.clear();
        }
        // Everything failed, but one run elsewhere has the metric.
        let mut ok = example_rows().remove(0);
        ok.params.insert("stage.align.method".into(), json!("other"));
        ok.params.insert("stage.attack.mix.1.ratio".into(), json!(0.5));
        let mut s = spec(PlotKind::Line);
        s.filter.insert("stage.align.method".into(), json!("sft"));
        rows.push(ok.clone());
        let d = build("f", &rows, &s).unwrap();
        assert!(d.series.iter().all(|s| s.points.is_empty()));
        // A filter that matches nothing, a categorical line plot, a single point.
        s.filter.insert("stage.align.method".into(), json!("nope"));
        let mut cat = spec(PlotKind::Line);
        cat.x = "stage.align.method".into();
        cat.series = Vec::new();
        let mut single = spec(PlotKind::Bar);
        single.filter.insert("stage.align.method".into(), json!("other"));
        for (i, sp) in [s, cat, single].iter().enumerate() {
            for kind in [PlotKind::Line, PlotKind::Bar] {
                let sp = PlotSpec { kind, ..sp.clone() };
                let name = format!("d{i}_{kind:?}");
                write_plot(dir.path(), &name, &rows, &sp).unwrap();
            }
        }
        let mut all = example_rows();
        all.push(ok);
        let mut cat = spec(PlotKind::Line);
        cat.x = "stage.align.method".into();
        cat.series = vec!["stage.attack.mix.1.ratio".into()];
        let d = build("f", &all, &cat).unwrap();
        assert_eq!(d.categories.as_deref().unwrap(), ["sft", "vaccine", "repnoise", "booster", "other"]);
        assert_eq!(d.series[0].label, "ratio=0");
        write_plot(dir.path(), "cat", &all, &cat).unwrap();
    }

    #[test]
    fn font_lookup_prefers_env_and_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let bogus = dir.path().join("not_a_font.ttf");
        std::fs::write(&bogus, b"hello").unwrap();
        assert!(find_font(Some(&bogus), &[]).is_none());
        assert!(find_font(Some(&dir.path().join("missing.ttf")), &[]).is_none());
        if let Some(real) = font_path() {
            let real = real.to_str().unwrap();
            let f = find_font(Some(&bogus), &["/nonexistent/font.ttf", real]).unwrap();
            assert_eq!(f.path, Path::new(real));
            let f = find_font(Some(Path::new(real)), &[]).unwrap();
            assert_eq!(f.path, Path::new(real));
        }
    }

    #[test]
    fn nice_ticks_are_round() {
        let (t, s) = nice_ticks(0.0, 97.0, 7);
        assert_eq!(s, 20.0);
        assert_eq!(t, [0.0, 20.0, 40.0, 60.0, 80.0]);
        let (t, s) = nice_ticks(0.013, 0.21, 7);
        assert_eq!(s, 0.05);
        assert_eq!(t.len(), 4);
        assert_eq!(step_decimals(0.05), 2);
        assert_eq!(step_decimals(0.2), 1);
        assert_eq!(step_decimals(5.0), 0);
    }
}
