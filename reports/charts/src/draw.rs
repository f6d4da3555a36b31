//! Drawing each kind of chart on any plotters backend.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::{Bars, Chart, ChartError, Heatmap, Interval, Lines, Scatter, Stroke, FONT};

type Area<DB> = DrawingArea<DB, Shift>;

/// Tableau 10: distinguishable colours, also in grey print.
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

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Refuses data a figure cannot show honestly: ragged series, non-finite values.
pub(crate) fn check(chart: &Chart) -> Result<(), ChartError> {
    let fail = |reason: String| ChartError::Data {
        title: chart.title().to_string(),
        reason,
    };
    let finite = |i: &Interval| i.value.is_finite() && i.low.is_finite() && i.high.is_finite();
    match chart {
        Chart::Bars(b) => {
            for s in &b.series {
                if s.values.len() != b.categories.len() {
                    return Err(fail(format!(
                        "series `{}` has {} values for {} categories",
                        s.name,
                        s.values.len(),
                        b.categories.len()
                    )));
                }
                if s.values.iter().flatten().any(|i| !finite(i)) {
                    return Err(fail(format!("series `{}` has a non-finite value", s.name)));
                }
            }
        }
        Chart::Scatter(s) => {
            if s.series
                .iter()
                .flat_map(|p| &p.points)
                .any(|(x, y)| !x.is_finite() || !y.is_finite())
            {
                return Err(fail("a point is not finite".into()));
            }
        }
        Chart::Lines(l) => {
            if l.lines
                .iter()
                .flat_map(|l| &l.points)
                .any(|(x, i)| !x.is_finite() || !finite(i))
            {
                return Err(fail("a point is not finite".into()));
            }
        }
        Chart::Heatmap(h) => {
            if h.cells.iter().any(|r| r.len() != h.cells[0].len()) {
                return Err(fail("rows of different lengths".into()));
            }
            if h.range.0.partial_cmp(&h.range.1) != Some(std::cmp::Ordering::Less) {
                return Err(fail(format!("empty range {:?}", h.range)));
            }
        }
    }
    Ok(())
}

/// Draws `chart` on `root` and writes it out.
pub(crate) fn draw<DB: DrawingBackend>(root: Area<DB>, chart: &Chart) -> Result<(), String> {
    root.fill(&WHITE).map_err(text)?;
    match chart {
        Chart::Bars(c) => bars(&root, c)?,
        Chart::Scatter(c) => scatter(&root, c)?,
        Chart::Lines(c) => lines(&root, c)?,
        Chart::Heatmap(c) => heatmap(&root, c)?,
    }
    root.present().map_err(text)
}

/// `s` cut to `max` characters, with an ellipsis when cut.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// A range around `lo..hi` with some air, never empty.
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 1.0, lo + 1.0)
    };
    let pad = (hi - lo) * 0.08;
    (lo - pad, hi + pad)
}

fn error_bar(
    x: f64,
    i: &Interval,
    half_width: f64,
    style: ShapeStyle,
) -> Vec<PathElement<(f64, f64)>> {
    vec![
        PathElement::new(vec![(x, i.low), (x, i.high)], style),
        PathElement::new(
            vec![(x - half_width, i.low), (x + half_width, i.low)],
            style,
        ),
        PathElement::new(
            vec![(x - half_width, i.high), (x + half_width, i.high)],
            style,
        ),
    ]
}

fn bars<DB: DrawingBackend>(root: &Area<DB>, c: &Bars) -> Result<(), String> {
    let n = c.categories.len().max(1);
    let m = c.series.len().max(1);
    let all = c.series.iter().flat_map(|s| s.values.iter().flatten());
    let lo = all.clone().map(|i| i.low.min(i.value)).fold(0.0, f64::min);
    let hi = all.map(|i| i.high.max(i.value)).fold(0.0, f64::max);
    let (_, top) = padded(lo, if hi > 0.0 { hi } else { 1.0 });
    let bottom = if lo < 0.0 { padded(lo, top).0 } else { 0.0 };
    // Category names fit their slot: about 7 pixels a character at size 12.
    let slot = (crate::SIZE.0 as usize - 90) / n;
    let names: Vec<String> = c
        .categories
        .iter()
        .map(|s| shorten(s, (slot / 7).max(4)))
        .collect();
    let mut chart = ChartBuilder::on(root)
        .caption(&c.title, (FONT, 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n as f64, bottom..top)
        .map_err(text)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.12))
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(&c.y_label)
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(text)?;
    let under = names.iter().enumerate().map(|(i, name)| {
        let (x, y) = chart.backend_coord(&(i as f64 + 0.5, bottom));
        ((x, y + 8), name.clone())
    });
    labels(root, under.collect(), Pos::new(HPos::Center, VPos::Top))?;
    let width = 0.8 / m as f64;
    for (j, s) in c.series.iter().enumerate() {
        let col = colour(j);
        let x0 = |i: usize| i as f64 + 0.1 + j as f64 * width;
        chart
            .draw_series(s.values.iter().enumerate().filter_map(|(i, v)| {
                v.map(|v| {
                    Rectangle::new(
                        [(x0(i), 0.0), (x0(i) + width * 0.92, v.value)],
                        col.filled(),
                    )
                })
            }))
            .map_err(text)?
            .label(&s.name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], col.filled()));
        for (i, v) in s.values.iter().enumerate() {
            if let Some(v) = v {
                let x = x0(i) + width * 0.46;
                chart
                    .draw_series(error_bar(x, v, width * 0.2, BLACK.stroke_width(1)))
                    .map_err(text)?;
            }
        }
    }
    legend(&mut chart)
}

/// Tick labels placed by hand at pixel positions: plotters' own ticks on a
/// float axis cannot be told to sit on category or cell centres.
fn labels<DB: DrawingBackend>(
    root: &Area<DB>,
    at: Vec<((i32, i32), String)>,
    pos: Pos,
) -> Result<(), String> {
    let style = TextStyle::from((FONT, 12).into_font()).pos(pos);
    for (xy, s) in at {
        root.draw(&Text::new(s, xy, style.clone())).map_err(text)?;
    }
    Ok(())
}

fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, impl CoordTranslate>,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font((FONT, 12))
        .draw()
        .map_err(text)
}

fn scatter<DB: DrawingBackend>(root: &Area<DB>, c: &Scatter) -> Result<(), String> {
    let mut chart = ChartBuilder::on(root)
        .caption(&c.title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(c.x_range.0..c.x_range.1, c.y_range.0..c.y_range.1)
        .map_err(text)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.12))
        .x_desc(&c.x_label)
        .y_desc(&c.y_label)
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(text)?;
    if let Some(r) = &c.region {
        chart
            .draw_series([Rectangle::new(
                [(r.x.0, r.y.0), (r.x.1, r.y.1)],
                RGBColor(214, 39, 40).mix(0.12).filled(),
            )])
            .map_err(text)?;
        chart
            .draw_series([Text::new(
                r.label.clone(),
                (
                    r.x.0 + (c.x_range.1 - c.x_range.0) * 0.01,
                    r.y.1 - (c.y_range.1 - c.y_range.0) * 0.02,
                ),
                (FONT, 13).into_font().color(&RGBColor(160, 20, 20)),
            )])
            .map_err(text)?;
    }
    for (j, s) in c.series.iter().enumerate() {
        let col = colour(j);
        chart
            .draw_series(
                s.points
                    .iter()
                    .map(|&p| Circle::new(p, 3, col.mix(0.55).filled())),
            )
            .map_err(text)?
            .label(format!("{} ({} answers)", s.name, s.points.len()))
            .legend(move |(x, y)| Circle::new((x + 6, y), 4, col.filled()));
    }
    legend(&mut chart)
}

fn lines<DB: DrawingBackend>(root: &Area<DB>, c: &Lines) -> Result<(), String> {
    let points = || c.lines.iter().flat_map(|l| &l.points);
    let xs = points().map(|(x, _)| *x);
    let (x_lo, x_hi) = padded(
        xs.clone().fold(f64::INFINITY, f64::min),
        xs.fold(f64::NEG_INFINITY, f64::max),
    );
    let lows = points()
        .map(|(_, i)| i.low.min(i.value))
        .chain(c.levels.iter().map(|l| l.1));
    let highs = points()
        .map(|(_, i)| i.high.max(i.value))
        .chain(c.levels.iter().map(|l| l.1));
    let (y_lo, y_hi) = padded(
        lows.fold(f64::INFINITY, f64::min),
        highs.fold(f64::NEG_INFINITY, f64::max),
    );
    let (x_lo, x_hi) = if x_lo.is_finite() {
        (x_lo, x_hi)
    } else {
        (0.0, 1.0)
    };
    let (y_lo, y_hi) = if y_lo.is_finite() {
        (y_lo, y_hi)
    } else {
        (0.0, 1.0)
    };
    let mut chart = ChartBuilder::on(root)
        .caption(&c.title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
        .map_err(text)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.12))
        .x_desc(&c.x_label)
        .y_desc(&c.y_label)
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(text)?;
    let bar = (x_hi - x_lo) * 0.006;
    for (j, l) in c.lines.iter().enumerate() {
        let col = colour(j);
        let style = col.stroke_width(2);
        let xy: Vec<(f64, f64)> = l.points.iter().map(|(x, i)| (*x, i.value)).collect();
        let drawn = match l.stroke {
            Stroke::Solid => chart.draw_series(LineSeries::new(xy.clone(), style)),
            Stroke::Dashed => chart.draw_series(DashedLineSeries::new(xy.clone(), 8, 5, style)),
        };
        drawn
            .map_err(text)?
            .label(&l.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2)));
        chart
            .draw_series(xy.iter().map(|&p| Circle::new(p, 3, col.filled())))
            .map_err(text)?;
        for (x, i) in &l.points {
            chart
                .draw_series(error_bar(*x, i, bar, col.stroke_width(1)))
                .map_err(text)?;
        }
    }
    for (name, y) in &c.levels {
        let grey = RGBColor(90, 90, 90);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x_lo, *y), (x_hi, *y)],
                3,
                4,
                grey.stroke_width(1),
            ))
            .map_err(text)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], grey.stroke_width(1))
            });
    }
    legend(&mut chart)
}

/// Blue (low) through near-white to red (high), for `t` in 0..=1.
fn diverging(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let (a, b, s) = if t < 0.5 {
        ((59.0, 76.0, 192.0), (242.0, 242.0, 242.0), t * 2.0)
    } else {
        ((242.0, 242.0, 242.0), (180.0, 4.0, 38.0), (t - 0.5) * 2.0)
    };
    let mix = |x: f64, y: f64| (x + (y - x) * s).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

fn heatmap<DB: DrawingBackend>(root: &Area<DB>, c: &Heatmap) -> Result<(), String> {
    let rows = c.cells.len();
    let cols = c.cells.first().map_or(0, Vec::len);
    let (main, bar) = root.split_horizontally(crate::SIZE.0 - 110);
    // At most about 16 labels an axis, on cell centres.
    let ticks = |n: usize| -> Vec<f64> {
        let step = n.div_ceil(16).max(1);
        (0..n).step_by(step).map(|i| i as f64 + 0.5).collect()
    };
    let mut chart = ChartBuilder::on(&main)
        .caption(&c.title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..cols.max(1) as f64, 0f64..rows.max(1) as f64)
        .map_err(text)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.12))
        .disable_mesh()
        .x_labels(0)
        .y_labels(0)
        .x_desc(&c.x_label)
        .y_desc(&c.y_label)
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(text)?;
    let under = ticks(cols).into_iter().map(|x| {
        let (px, py) = chart.backend_coord(&(x, 0.0));
        ((px, py + 6), format!("{}", x.floor()))
    });
    labels(&main, under.collect(), Pos::new(HPos::Center, VPos::Top))?;
    let left = ticks(rows).into_iter().map(|y| {
        let (px, py) = chart.backend_coord(&(0.0, y));
        ((px - 6, py), format!("{}", y.floor()))
    });
    labels(&main, left.collect(), Pos::new(HPos::Right, VPos::Center))?;
    let (lo, hi) = c.range;
    chart
        .draw_series(c.cells.iter().enumerate().flat_map(|(r, row)| {
            row.iter().enumerate().map(move |(col, v)| {
                let fill = match v {
                    Some(v) => diverging((v - lo) / (hi - lo)),
                    None => RGBColor(200, 200, 200),
                };
                Rectangle::new(
                    [(col as f64, r as f64), (col as f64 + 1.0, r as f64 + 1.0)],
                    fill.filled(),
                )
            })
        }))
        .map_err(text)?;
    // The colour scale, low at the bottom.
    let mut scale = ChartBuilder::on(&bar)
        .margin_top(50)
        .margin_bottom(52)
        .margin_right(50)
        .y_label_area_size(0)
        .right_y_label_area_size(44)
        .build_cartesian_2d(0f64..1f64, lo..hi)
        .map_err(text)?;
    scale
        .configure_mesh()
        .light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.12))
        .disable_mesh()
        .disable_x_axis()
        .y_labels(5)
        .label_style((FONT, 12))
        .draw()
        .map_err(text)?;
    let steps = 64;
    scale
        .draw_series((0..steps).map(|k| {
            let a = lo + (hi - lo) * k as f64 / steps as f64;
            let b = lo + (hi - lo) * (k + 1) as f64 / steps as f64;
            Rectangle::new(
                [(0.0, a), (1.0, b)],
                diverging(k as f64 / (steps - 1) as f64).filled(),
            )
        }))
        .map_err(text)?;
    Ok(())
}
