//! Plots as SVG (`pathc plot`): heatmaps of per-head statistics and bar charts of path
//! contributions, drawn with plotters' SVG backend.
//!
//! Text is written as SVG `<text>` elements (plotters without its `ttf` feature lays text out with
//! a built-in estimate of glyph widths, so no system font is read): labels and values stay
//! searchable and exact. Layout is computed here in whole pixels, so the same input gives
//! byte-identical SVG.
//!
//! What a heatmap shows: every row and column labelled, a colour per cell on a [`ColourScale`]
//! (diverging blue–white–red for signed data, sequential white–blue for data from a minimum up),
//! a legend bar with the scale's minimum, middle and maximum, and, when the matrix has at most
//! [`MAX_ANNOTATED`] rows and columns, each cell's value as [`format_value`] writes it. Bigger
//! matrices show colours only (cells shrink to [`MIN_CELL`] pixels; labels stay on every row and
//! column): read their values from `pathc stats --format json`. A NaN is "no value": a grey cell
//! without text (a composition score whose right head is not after its left head).

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontTransform;
use thiserror::Error;

/// Matrices with at most this many rows and columns have each cell's value printed.
pub const MAX_ANNOTATED: usize = 24;
/// Cell size (pixels) of an annotated heatmap.
const CELL: i32 = 44;
/// The smallest cell of a large heatmap (pixels).
pub const MIN_CELL: i32 = 12;
/// A large heatmap's grid is at most about this wide before cells stop shrinking.
const LARGE_GRID: i32 = 960;
const MARGIN: i32 = 20;
const FONT: &str = "sans-serif";
const TITLE_SIZE: i32 = 16;
const LABEL_SIZE: i32 = 12;
const VALUE_SIZE: i32 = 11;
/// Missing cells (NaN).
const MISSING: RGBColor = RGBColor(0xe4, 0xe4, 0xe4);
const AXIS: RGBColor = RGBColor(0x33, 0x33, 0x33);
const GREY_TEXT: RGBColor = RGBColor(0x55, 0x55, 0x55);

#[derive(Debug, Error)]
pub enum PlotError {
    #[error("plot: {0}")]
    Shape(String),
    #[error("plot: drawing failed: {0}")]
    Draw(String),
    /// A value to plot is not finite: where it arose.
    #[error(transparent)]
    NonFinite(#[from] crate::linalg::NonFinite),
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    /// The statistic asked for is not defined for the model: `name: not defined: why`.
    #[error("{0}")]
    NotDefined(String),
}

fn draw_err<E: std::fmt::Display>(e: E) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// A cell's (and a legend tick's) value: two decimals.
pub fn format_value(v: f64) -> String {
    format!("{v:.2}")
}

/// A bar's value: four decimals.
pub fn format_bar_value(v: f64) -> String {
    format!("{v:.4}")
}

/// How values map to colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Palette {
    /// Blue (negative) – white (0) – red (positive); for signed data such as copying scores.
    Diverging,
    /// White (minimum) to dark blue (maximum); for data from a minimum up, such as composition
    /// scores.
    Sequential,
}

/// A palette over `[min, max]`; values outside are clamped to the ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColourScale {
    pub palette: Palette,
    pub min: f64,
    pub max: f64,
}

impl ColourScale {
    /// Diverging over `[-limit, limit]`, white at 0.
    pub fn diverging(limit: f64) -> ColourScale {
        let limit = if limit.is_finite() && limit > 0.0 { limit } else { 1.0 };
        ColourScale { palette: Palette::Diverging, min: -limit, max: limit }
    }

    /// Sequential over `[min, max]` (an empty or invalid range becomes `[min, min + 1]`).
    pub fn sequential(min: f64, max: f64) -> ColourScale {
        let min = if min.is_finite() { min } else { 0.0 };
        let max = if max.is_finite() && max > min { max } else { min + 1.0 };
        ColourScale { palette: Palette::Sequential, min, max }
    }

    /// The colour of `v` (NaN: the missing grey).
    pub fn colour(&self, v: f64) -> RGBColor {
        if v.is_nan() {
            return MISSING;
        }
        let t = ((v - self.min) / (self.max - self.min)).clamp(0.0, 1.0);
        match self.palette {
            // ColorBrewer RdBu ends, reversed: blue for negative, red for positive.
            Palette::Diverging => {
                if t < 0.5 {
                    mix((0x21, 0x66, 0xac), (0xff, 0xff, 0xff), t / 0.5)
                } else {
                    mix((0xff, 0xff, 0xff), (0xb2, 0x18, 0x2b), (t - 0.5) / 0.5)
                }
            }
            Palette::Sequential => mix((0xff, 0xff, 0xff), (0x08, 0x30, 0x6b), t),
        }
    }

    /// The legend's ticks: minimum, middle (0 for a diverging scale), maximum.
    fn ticks(&self) -> [f64; 3] {
        [self.min, (self.min + self.max) / 2.0, self.max]
    }
}

fn mix(a: (u8, u8, u8), b: (u8, u8, u8), t: f64) -> RGBColor {
    let f = |x: u8, y: u8| (f64::from(x) + (f64::from(y) - f64::from(x)) * t).round() as u8;
    RGBColor(f(a.0, b.0), f(a.1, b.1), f(a.2, b.2))
}

/// Black or white, whichever reads on `c`.
fn ink(c: RGBColor) -> RGBColor {
    let luma = 0.299 * f64::from(c.0) + 0.587 * f64::from(c.1) + 0.114 * f64::from(c.2);
    if luma < 140.0 {
        WHITE
    } else {
        BLACK
    }
}

/// The estimated width of `text` at `size` pixels (generous: sans-serif averages ~0.55 em a character).
fn text_width(text: &str, size: i32) -> i32 {
    (text.chars().count() as f64 * f64::from(size) * 0.6).ceil() as i32
}

fn style(size: i32, colour: &RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    // plotters writes `font-size` as its size / 1.24 (its em-to-pixel ratio): undo that, so the SVG
    // says `size` pixels.
    let font = (FONT, f64::from(size) * 1.24).into_font();
    TextStyle { font, color: colour.to_backend_color(), pos: Pos::new(h, v) }
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// Draws the title lines (the first bold) from `top`; returns the y below them.
fn draw_title(area: &Area<'_>, lines: &[&str], top: i32) -> Result<i32, PlotError> {
    let mut y = top;
    for (i, line) in lines.iter().enumerate() {
        let (size, colour) = if i == 0 { (TITLE_SIZE, BLACK) } else { (LABEL_SIZE, GREY_TEXT) };
        let mut s = style(size, &colour, HPos::Left, VPos::Top);
        if i == 0 {
            s.font = s.font.style(FontStyle::Bold);
        }
        area.draw_text(line, &s, (MARGIN, y)).map_err(draw_err)?;
        y += size + 6;
    }
    Ok(y)
}

fn title_lines(title: &str) -> Vec<&str> {
    title.lines().filter(|l| !l.trim().is_empty()).collect()
}

fn title_width(lines: &[&str]) -> i32 {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| text_width(l, if i == 0 { TITLE_SIZE } else { LABEL_SIZE }))
        .max()
        .unwrap_or(0)
}

/// A heatmap: `values[row][column]`, NaN for "no value".
pub struct Heatmap<'a> {
    /// The title; further lines (after `\n`) are a smaller subtitle.
    pub title: &'a str,
    pub row_labels: &'a [String],
    pub col_labels: &'a [String],
    /// What the rows are (written beside the row labels), e.g. "left head".
    pub row_axis: &'a str,
    /// What the columns are (written under the column labels).
    pub col_axis: &'a str,
    pub values: &'a [Vec<f64>],
    /// What the values are, written over the legend.
    pub value_label: &'a str,
    pub scale: ColourScale,
    /// What a grey (NaN) cell means, written under the legend when there is one.
    pub missing_label: &'a str,
}

/// The heatmap as an SVG document. Elements in document order: title lines, row labels, column
/// labels, axis names, cells, cell values row by row (when printed), legend.
pub fn heatmap(h: &Heatmap<'_>) -> Result<String, PlotError> {
    let (rows, cols) = (h.row_labels.len(), h.col_labels.len());
    if h.values.len() != rows || h.values.iter().any(|r| r.len() != cols) {
        return Err(PlotError::Shape(format!(
            "a heatmap with {rows} row and {cols} column labels needs {rows} rows of {cols} values"
        )));
    }
    if rows == 0 || cols == 0 {
        return Err(PlotError::Shape("a heatmap needs at least one row and one column".to_string()));
    }
    let annotated = rows <= MAX_ANNOTATED && cols <= MAX_ANNOTATED;
    let cell = if annotated { CELL } else { (LARGE_GRID / rows.max(cols) as i32).clamp(MIN_CELL, CELL) };
    let label_size = LABEL_SIZE.min(cell - 2);
    let value_size = VALUE_SIZE.min(cell / 4);
    let title = title_lines(h.title);
    let title_height =
        title.iter().enumerate().map(|(i, _)| if i == 0 { TITLE_SIZE + 6 } else { LABEL_SIZE + 6 }).sum::<i32>();

    let row_label_w = h.row_labels.iter().map(|l| text_width(l, label_size)).max().unwrap_or(0);
    let col_label_w = h.col_labels.iter().map(|l| text_width(l, label_size)).max().unwrap_or(0);
    let rotate_cols = col_label_w > cell - 4;
    let col_label_h = if rotate_cols { col_label_w + 8 } else { label_size + 8 };

    let grid_x = MARGIN + LABEL_SIZE + 8 + row_label_w + 6;
    let grid_y = MARGIN + title_height + 14;
    let grid_w = cell * cols as i32;
    let grid_h = cell * rows as i32;

    let ticks = h.scale.ticks().map(format_value);
    let legend_bar_h = grid_h.max(160);
    let legend_x = grid_x + grid_w + 28;
    let legend_bar_w = 18;
    let tick_w = ticks.iter().map(|t| text_width(t, LABEL_SIZE)).max().unwrap_or(0);
    let has_missing = h.values.iter().flatten().any(|v| v.is_nan());
    let legend_w = (legend_bar_w + 8 + tick_w).max(text_width(h.value_label, LABEL_SIZE)).max(if has_missing {
        22 + text_width(h.missing_label, LABEL_SIZE)
    } else {
        0
    });
    let legend_y = grid_y + LABEL_SIZE + 10;

    let width = (legend_x + legend_w + MARGIN).max(MARGIN * 2 + title_width(&title));
    let below_grid = grid_y + grid_h + col_label_h + LABEL_SIZE + 10;
    let below_legend = legend_y + legend_bar_h + if has_missing { 30 } else { 0 };
    let height = below_grid.max(below_legend) + MARGIN;

    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, (width as u32, height as u32)).into_drawing_area();
        area.fill(&WHITE).map_err(draw_err)?;
        draw_title(&area, &title, MARGIN)?;

        let label = style(label_size, &BLACK, HPos::Right, VPos::Center);
        for (r, text) in h.row_labels.iter().enumerate() {
            area.draw_text(text, &label, (grid_x - 6, grid_y + cell * r as i32 + cell / 2)).map_err(draw_err)?;
        }
        for (c, text) in h.col_labels.iter().enumerate() {
            let x = grid_x + cell * c as i32 + cell / 2;
            if rotate_cols {
                let s = style(label_size, &BLACK, HPos::Right, VPos::Center).transform(FontTransform::Rotate270);
                area.draw_text(text, &s, (x, grid_y + grid_h + 6)).map_err(draw_err)?;
            } else {
                let s = style(label_size, &BLACK, HPos::Center, VPos::Top);
                area.draw_text(text, &s, (x, grid_y + grid_h + 6)).map_err(draw_err)?;
            }
        }
        let axis = style(LABEL_SIZE, &GREY_TEXT, HPos::Center, VPos::Top);
        area.draw_text(h.col_axis, &axis, (grid_x + grid_w / 2, grid_y + grid_h + col_label_h + 4))
            .map_err(draw_err)?;
        let row_axis = style(LABEL_SIZE, &GREY_TEXT, HPos::Center, VPos::Top).transform(FontTransform::Rotate270);
        area.draw_text(h.row_axis, &row_axis, (MARGIN, grid_y + grid_h / 2)).map_err(draw_err)?;

        for (r, row) in h.values.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                let (x, y) = (grid_x + cell * c as i32, grid_y + cell * r as i32);
                area.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], h.scale.colour(v).filled()))
                    .map_err(draw_err)?;
            }
        }
        // Cell borders, one line per boundary.
        let grid_line = RGBColor(0xff, 0xff, 0xff).stroke_width(1);
        for c in 1..cols as i32 {
            let x = grid_x + cell * c;
            area.draw(&PathElement::new(vec![(x, grid_y), (x, grid_y + grid_h)], grid_line)).map_err(draw_err)?;
        }
        for r in 1..rows as i32 {
            let y = grid_y + cell * r;
            area.draw(&PathElement::new(vec![(grid_x, y), (grid_x + grid_w, y)], grid_line)).map_err(draw_err)?;
        }
        area.draw(&Rectangle::new([(grid_x, grid_y), (grid_x + grid_w, grid_y + grid_h)], AXIS.stroke_width(1)))
            .map_err(draw_err)?;

        if annotated {
            for (r, row) in h.values.iter().enumerate() {
                for (c, &v) in row.iter().enumerate() {
                    if v.is_nan() {
                        continue;
                    }
                    let s = style(value_size, &ink(h.scale.colour(v)), HPos::Center, VPos::Center);
                    let at = (grid_x + cell * c as i32 + cell / 2, grid_y + cell * r as i32 + cell / 2);
                    area.draw_text(&format_value(v), &s, at).map_err(draw_err)?;
                }
            }
        }

        // Legend: the value label (clear of the top tick label), a bar of 100 steps (maximum at the
        // top), three ticks.
        let s = style(LABEL_SIZE, &BLACK, HPos::Left, VPos::Bottom);
        area.draw_text(h.value_label, &s, (legend_x, legend_y - 12)).map_err(draw_err)?;
        const STEPS: i32 = 100;
        for i in 0..STEPS {
            let y0 = legend_y + legend_bar_h * i / STEPS;
            let y1 = legend_y + legend_bar_h * (i + 1) / STEPS;
            let t = 1.0 - (f64::from(i) + 0.5) / f64::from(STEPS);
            let v = h.scale.min + t * (h.scale.max - h.scale.min);
            area.draw(&Rectangle::new([(legend_x, y0), (legend_x + legend_bar_w, y1)], h.scale.colour(v).filled()))
                .map_err(draw_err)?;
        }
        area.draw(&Rectangle::new(
            [(legend_x, legend_y), (legend_x + legend_bar_w, legend_y + legend_bar_h)],
            AXIS.stroke_width(1),
        ))
        .map_err(draw_err)?;
        let tick_style = style(LABEL_SIZE, &BLACK, HPos::Left, VPos::Center);
        for (i, text) in ticks.iter().enumerate() {
            // Maximum at the top, minimum at the bottom.
            let y = legend_y + legend_bar_h - legend_bar_h * i as i32 / 2;
            let x = legend_x + legend_bar_w;
            area.draw(&PathElement::new(vec![(x, y), (x + 4, y)], AXIS.stroke_width(1))).map_err(draw_err)?;
            area.draw_text(text, &tick_style, (x + 8, y)).map_err(draw_err)?;
        }
        if has_missing {
            let y = legend_y + legend_bar_h + 14;
            area.draw(&Rectangle::new([(legend_x, y), (legend_x + 14, y + 14)], MISSING.filled())).map_err(draw_err)?;
            let s = style(LABEL_SIZE, &GREY_TEXT, HPos::Left, VPos::Center);
            area.draw_text(h.missing_label, &s, (legend_x + 22, y + 7)).map_err(draw_err)?;
        }
        area.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// A horizontal bar chart, bars top to bottom in the given order.
pub struct BarChart<'a> {
    /// The title; further lines (after `\n`) are a smaller subtitle.
    pub title: &'a str,
    pub labels: &'a [String],
    pub values: &'a [f64],
    /// Error bars: each value ± its error (a dataset's standard deviation), drawn as whiskers.
    pub errors: Option<&'a [f64]>,
    /// What the values are (the x axis's name).
    pub value_label: &'a str,
}

/// Ticks at 1, 2 or 5 × 10^k covering `[lo, hi]`, and the decimals their labels need.
fn nice_ticks(lo: f64, hi: f64) -> (Vec<f64>, usize) {
    let span = hi - lo;
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(10.0 * magnitude);
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    ((first..=last).map(|k| k as f64 * step).collect(), decimals)
}

/// The bar chart as an SVG document: bars right of zero for positive values and left for
/// negative ones (red and blue, as the diverging heatmaps), each row's label left of the plot and
/// its value ([`format_bar_value`]) right of it. Elements in document order: title lines, then
/// per row its label and its value, then the axis.
pub fn bar_chart(chart: &BarChart<'_>) -> Result<String, PlotError> {
    let n = chart.labels.len();
    if chart.values.len() != n {
        return Err(PlotError::Shape(format!(
            "a bar chart with {n} labels needs {n} values, not {}",
            chart.values.len()
        )));
    }
    if chart.values.iter().any(|v| !v.is_finite()) {
        return Err(PlotError::Shape("a bar chart's values must be finite".to_string()));
    }
    if let Some(errors) = chart.errors {
        if errors.len() != n || errors.iter().any(|e| !e.is_finite() || *e < 0.0) {
            return Err(PlotError::Shape(format!("a bar chart with {n} bars needs {n} finite errors ≥ 0")));
        }
    }
    let error = |i: usize| chart.errors.map_or(0.0, |e| e[i]);
    const ROW: i32 = 22;
    const BAR: i32 = 14;
    const PLOT_W: i32 = 480;
    let title = title_lines(chart.title);
    let title_height =
        title.iter().enumerate().map(|(i, _)| if i == 0 { TITLE_SIZE + 6 } else { LABEL_SIZE + 6 }).sum::<i32>();
    let value_texts: Vec<String> = (chart.values.iter().enumerate())
        .map(|(i, &v)| match chart.errors {
            Some(_) => format!("{} ± {}", format_bar_value(v), format_bar_value(error(i))),
            None => format_bar_value(v),
        })
        .collect();
    let label_w = chart.labels.iter().map(|l| text_width(l, LABEL_SIZE)).max().unwrap_or(0);
    let value_w = value_texts.iter().map(|t| text_width(t, LABEL_SIZE)).max().unwrap_or(0);

    let plot_x = MARGIN + label_w + 10;
    let plot_y = MARGIN + title_height + 14;
    let plot_h = ROW * n.max(1) as i32;
    let width = (plot_x + PLOT_W + 12 + value_w + MARGIN).max(MARGIN * 2 + title_width(&title));
    let height = plot_y + plot_h + 8 + LABEL_SIZE + 8 + LABEL_SIZE + 12 + MARGIN;

    let mut lo = (0..n).map(|i| chart.values[i] - error(i)).fold(0.0f64, f64::min);
    let mut hi = (0..n).map(|i| chart.values[i] + error(i)).fold(0.0f64, f64::max);
    if hi - lo <= 0.0 {
        (lo, hi) = (if lo < 0.0 { lo } else { 0.0 }, if hi > 0.0 { hi } else { 1.0 });
    }
    let pad = (hi - lo) * 0.04;
    let (lo, hi) = (if lo < 0.0 { lo - pad } else { lo }, if hi > 0.0 { hi + pad } else { hi });
    let x_of = |v: f64| plot_x + ((v - lo) / (hi - lo) * f64::from(PLOT_W)).round() as i32;
    let zero = x_of(0.0);
    let scale = ColourScale::diverging(1.0);

    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, (width as u32, height as u32)).into_drawing_area();
        area.fill(&WHITE).map_err(draw_err)?;
        draw_title(&area, &title, MARGIN)?;
        let label_style = style(LABEL_SIZE, &BLACK, HPos::Right, VPos::Center);
        let value_style = style(LABEL_SIZE, &BLACK, HPos::Right, VPos::Center);
        for (i, (label, &v)) in chart.labels.iter().zip(chart.values).enumerate() {
            let y = plot_y + ROW * i as i32;
            let mid = y + ROW / 2;
            let x = x_of(v);
            let colour = scale.colour(if v < 0.0 { -0.8 } else { 0.8 });
            let (x0, x1) = if x < zero { (x, zero) } else { (zero, x) };
            area.draw(&Rectangle::new([(x0, mid - BAR / 2), (x1.max(x0 + 1), mid + BAR / 2)], colour.filled()))
                .map_err(draw_err)?;
            if chart.errors.is_some() {
                let (a, b) = (x_of(v - error(i)), x_of(v + error(i)));
                let whisker = BLACK.stroke_width(1);
                area.draw(&PathElement::new(vec![(a, mid), (b, mid)], whisker)).map_err(draw_err)?;
                for x in [a, b] {
                    area.draw(&PathElement::new(vec![(x, mid - 4), (x, mid + 4)], whisker)).map_err(draw_err)?;
                }
            }
            area.draw_text(label, &label_style, (plot_x - 10, mid)).map_err(draw_err)?;
            area.draw_text(&value_texts[i], &value_style, (plot_x + PLOT_W + 12 + value_w, mid)).map_err(draw_err)?;
        }
        // Zero line, x axis with ticks, axis name.
        area.draw(&PathElement::new(vec![(zero, plot_y - 4), (zero, plot_y + plot_h + 4)], AXIS.stroke_width(1)))
            .map_err(draw_err)?;
        let axis_y = plot_y + plot_h + 8;
        area.draw(&PathElement::new(vec![(plot_x, axis_y), (plot_x + PLOT_W, axis_y)], AXIS.stroke_width(1)))
            .map_err(draw_err)?;
        let (ticks, decimals) = nice_ticks(lo, hi);
        let tick_style = style(LABEL_SIZE - 1, &GREY_TEXT, HPos::Center, VPos::Top);
        for t in ticks {
            let x = x_of(t);
            area.draw(&PathElement::new(vec![(x, axis_y), (x, axis_y + 4)], AXIS.stroke_width(1))).map_err(draw_err)?;
            // `+ 0.0` turns -0 into 0.
            area.draw_text(&format!("{:.*}", decimals, t + 0.0), &tick_style, (x, axis_y + 6)).map_err(draw_err)?;
        }
        let axis_name = style(LABEL_SIZE, &GREY_TEXT, HPos::Center, VPos::Top);
        area.draw_text(chart.value_label, &axis_name, (plot_x + PLOT_W / 2, axis_y + LABEL_SIZE + 10))
            .map_err(draw_err)?;
        area.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// What `pathc plot` draws from the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsPlot {
    CompQ,
    CompK,
    CompV,
    OvCopying,
    QkCopying,
}

/// Heads in order, `L0H0`, `L0H1`, …, from a `[layer][head]` array.
fn head_labels(per_layer: &[Vec<f64>]) -> Vec<(usize, usize, String)> {
    per_layer.iter().enumerate().flat_map(|(l, hs)| (0..hs.len()).map(move |h| (l, h, format!("L{l}H{h}")))).collect()
}

/// A heatmap of one statistic of `stats` (of model `model`), as `pathc plot --what` draws it:
///
/// - composition (`comp-q|k|v`): the (L·H) × (L·H) matrix of [`crate::stats::Stats::comp_q`]
///   etc., rows the left (earlier) head, columns the right (later) head, grey where the right head
///   is not in a later layer; sequential scale from 0 to the largest score;
/// - copying (`ov-copying`, `qk-copying`): layers × heads, diverging scale over [-1, 1] (the
///   scores' range), grey where a layer has fewer heads than the widest.
///
/// For a rotary model the plots of what depends on the offset (`qk-copying`, `comp-q`, `comp-k`)
/// say which offset in the title. A statistic the model does not define
/// ([`crate::stats::Stats::not_defined`]) is [`PlotError::NotDefined`].
pub fn stats_heatmap(model: &str, stats: &crate::stats::Stats, what: StatsPlot) -> Result<String, PlotError> {
    let field = match what {
        StatsPlot::CompQ => "comp_q",
        StatsPlot::CompK => "comp_k",
        StatsPlot::CompV => "comp_v",
        StatsPlot::OvCopying => "ov_copying",
        StatsPlot::QkCopying => "qk_copying",
    };
    if let Some(reason) = stats.not_defined.get(field) {
        return Err(PlotError::NotDefined(format!("{field}: not defined: {reason}")));
    }
    let rotary = match what {
        StatsPlot::CompQ | StatsPlot::CompK | StatsPlot::QkCopying => {
            stats.rotary_description().map(|line| format!("\n{line}")).unwrap_or_default()
        }
        StatsPlot::CompV | StatsPlot::OvCopying => String::new(),
    };
    let processing = crate::stats::processing_description(stats.weight_processing);
    let b = &stats.comp_baseline;
    let composition = match what {
        StatsPlot::CompQ => Some(("Q", &stats.comp_q, b.q, "W_Q·W_Kᵀ")),
        StatsPlot::CompK => Some(("K", &stats.comp_k, b.k, "W_K·W_Qᵀ")),
        StatsPlot::CompV => Some(("V", &stats.comp_v, b.v, "W_V·W_O")),
        StatsPlot::OvCopying | StatsPlot::QkCopying => None,
    };
    if let Some((mode, comp, baseline, reads)) = composition {
        let heads = head_labels(&stats.qk_frobenius);
        let labels: Vec<String> = heads.iter().map(|(_, _, name)| name.clone()).collect();
        let values: Vec<Vec<f64>> = heads
            .iter()
            .map(|&(l1, h1, _)| {
                heads.iter().map(|&(l2, h2, _)| if l1 < l2 { comp[l1][h1][l2][h2] } else { f64::NAN }).collect()
            })
            .collect();
        let max = values.iter().flatten().copied().filter(|v| v.is_finite()).fold(0.0f64, f64::max);
        let title = format!(
            "{model}: {mode}-composition scores (comp_{})\n{processing}\nTransformerLens all_composition_scores('{mode}'): ‖L·R‖_F / (‖L‖_F ‖R‖_F), L = W_V·W_O of the left head, R = {reads} of the right head; random baseline {:.4} ({} draws){rotary}",
            mode.to_lowercase(),
            baseline,
            b.samples
        );
        let value_label = format!("comp_{}", mode.to_lowercase());
        return heatmap(&Heatmap {
            title: &title,
            row_labels: &labels,
            col_labels: &labels,
            row_axis: "left head (L = its W_V·W_O)",
            col_axis: &format!("right head (R = its {reads})"),
            values: &values,
            value_label: &value_label,
            scale: ColourScale::sequential(0.0, max),
            missing_label: "right head not in a later layer",
        });
    }
    let (name, circuit, data) = match what {
        StatsPlot::QkCopying => ("qk_copying", "full QK circuit W_E·W_Q·W_Kᵀ·W_Eᵀ", &stats.qk_copying),
        _ => ("ov_copying", "full OV circuit W_E·W_V·W_O·W_U", &stats.ov_copying),
    };
    let width = data.iter().map(Vec::len).max().unwrap_or(0);
    let rows: Vec<String> = (0..data.len()).map(|l| format!("L{l}")).collect();
    let cols: Vec<String> = (0..width).map(|h| format!("H{h}")).collect();
    let values: Vec<Vec<f64>> =
        data.iter().map(|hs| (0..width).map(|h| hs.get(h).copied().unwrap_or(f64::NAN)).collect()).collect();
    let title = format!(
        "{model}: copying scores of the {circuit} ({name})\n{processing}\nΣ Re λ / Σ |λ| over its eigenvalues: 1 copies tokens, -1 suppresses them{rotary}"
    );
    heatmap(&Heatmap {
        title: &title,
        row_labels: &rows,
        col_labels: &cols,
        row_axis: "layer",
        col_axis: "head",
        values: &values,
        value_label: name,
        scale: ColourScale::diverging(1.0),
        missing_label: "no such head",
    })
}

/// The bar chart of `pathc plot --what paths`: the `top` paths with the largest contributions
/// (by absolute value, signed bars) to the logit of token `target` at `position`, largest first,
/// as `pathc paths --target T --top N` ranks them. `chosen` says how `target` was picked (for
/// the title), e.g. "given by --target". With a tokenizer (`strings`), the title gives the tokens'
/// strings and a fourth line the text and whether a BOS was prepended to it.
pub fn paths_chart(
    evaluation: &crate::eval::Evaluation,
    position: usize,
    target: usize,
    chosen: &str,
    top: usize,
    strings: Option<crate::text::Labels<'_>>,
) -> Result<String, PlotError> {
    // One target column of the unembedding, not every path's vocabulary row.
    let forward = &evaluation.forward;
    let targets = crate::eval::Targets { positions: vec![position], tokens: vec![target] };
    let rows =
        crate::emit::numbers::target_table(evaluation, &targets, None, Some(top), true, &crate::progress::Silent)?;
    let labels: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
    let values: Vec<f64> = rows.iter().map(|r| r.values[0]).collect();
    let layer_norm =
        forward.scale_final.is_some() || forward.scale_attn.iter().chain(&forward.scale_mlp).any(Option::is_some);
    let processing = if layer_norm {
        "LayerNorm scales frozen from the forward pass, LayerNorm weights folded into the weights (as pathc paths)"
    } else {
        "weights as given (the model has no LayerNorm)"
    };
    let expansion = &evaluation.expansion;
    let scope = match expansion.max_order {
        Some(k) => format!("paths through at most {k} heads"),
        None => "paths of every order".to_string(),
    };
    let token = |id: usize| strings.map_or_else(|| id.to_string(), |l| l.id(id));
    let mut title = format!(
        "{}: the {} largest paths into logit[{target}] at position {position} (token {})\ntarget token {} {chosen}; logit[{target}] = {:.4} in the forward pass; {scope}, ranked by |contribution|\n{processing}",
        expansion.model.name,
        rows.len(),
        token(forward.tokens[position]),
        token(target),
        forward.logits[(position, target)],
    );
    if let Some(text) = strings.and_then(|l| l.input.text.as_ref()) {
        title += &format!("\ntext {}", crate::text::quote(text));
        if let Some(prepend) = strings.and_then(|l| l.input.prepend_bos.as_ref()) {
            title += &format!(", prepend_bos: {prepend}");
        }
    }
    bar_chart(&BarChart {
        title: &title,
        labels: &labels,
        values: &values,
        errors: None,
        value_label: &format!("contribution to logit[{target}] at position {position}"),
    })
}

/// `pathc plot --what paths --dataset`: the `top` paths by |mean| contribution to the metric over
/// a dataset, each bar the mean with the standard deviation over the prompts as error bars.
pub fn dataset_paths_chart(
    model: &str,
    dataset: &std::path::Path,
    metric: &str,
    result: &crate::aggregate::DatasetPaths,
    top: usize,
) -> Result<String, PlotError> {
    let rows = crate::emit::dataset::ranked_paths(&result.rows, Some(crate::emit::dataset::Rank::Mean), Some(top));
    let labels: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
    let values: Vec<f64> = rows.iter().map(|r| r.contribution.mean).collect();
    let errors: Vec<f64> = rows.iter().map(|r| r.contribution.std).collect();
    let title = format!(
        "{model}: the {} largest mean path contributions over {} ({} prompts), ± std\nmetric: {metric}\nmean metric {:.4} ± {:.4}",
        rows.len(),
        dataset.display(),
        result.prompts,
        result.metric.mean,
        result.metric.std
    );
    bar_chart(&BarChart {
        title: &title,
        labels: &labels,
        values: &values,
        errors: Some(&errors),
        value_label: "mean contribution to the metric",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palettes_have_their_ends_and_middle() {
        let d = ColourScale::diverging(1.0);
        assert_eq!(d.colour(0.0), RGBColor(255, 255, 255));
        assert_eq!(d.colour(-1.0), RGBColor(0x21, 0x66, 0xac));
        assert_eq!(d.colour(5.0), RGBColor(0xb2, 0x18, 0x2b));
        let s = ColourScale::sequential(0.0, 0.5);
        assert_eq!(s.colour(0.0), RGBColor(255, 255, 255));
        assert_eq!(s.colour(0.5), RGBColor(0x08, 0x30, 0x6b));
        assert_eq!(s.colour(f64::NAN), MISSING);
    }

    #[test]
    fn ticks_are_round_numbers_inside_the_range() {
        // Span 0.6: steps of at least 0.12, so 0.2.
        let (ticks, decimals) = nice_ticks(-0.13, 0.47);
        assert_eq!(decimals, 1);
        assert_eq!(ticks.iter().map(|t| format!("{t:.1}")).collect::<Vec<_>>(), ["0.0", "0.2", "0.4"]);
        let (ticks, decimals) = nice_ticks(-0.07, 0.0);
        assert_eq!(decimals, 2);
        assert_eq!(ticks.iter().map(|t| format!("{t:.2}")).collect::<Vec<_>>(), ["-0.06", "-0.04", "-0.02", "0.00"]);
    }

    #[test]
    fn shapes_are_checked() {
        let labels = vec!["a".to_string()];
        let h = Heatmap {
            title: "t",
            row_labels: &labels,
            col_labels: &labels,
            row_axis: "",
            col_axis: "",
            values: &[vec![1.0, 2.0]],
            value_label: "",
            scale: ColourScale::diverging(1.0),
            missing_label: "",
        };
        assert!(matches!(heatmap(&h), Err(PlotError::Shape(_))));
        let b = BarChart { title: "t", labels: &labels, values: &[], errors: None, value_label: "" };
        assert!(matches!(bar_chart(&b), Err(PlotError::Shape(_))));
    }
}
