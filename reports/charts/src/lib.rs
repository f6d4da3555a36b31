//! The report's figures, drawn with plotters and written as PNG and SVG.
//!
//! Four kinds cover every figure: bars with 95% intervals grouped by
//! category, a scatter with a marked region (the EM quadrant), lines with
//! error bars over a numeric axis (sweeps, checkpoints) and a heatmap
//! (cosine maps). A chart is data; [`save`] draws it twice, once per format,
//! with the same code. Text is drawn with a bundled DejaVu Sans, so figures
//! look the same on every machine and need no system fonts.

mod draw;

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::prelude::*;

/// A figure could not be drawn or written.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("{path}: {reason}")]
    Draw { path: PathBuf, reason: String },
    #[error("chart `{title}`: {reason}")]
    Data { title: String, reason: String },
}

/// A value with its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// One bar per category of a series; `None` where the series has no value.
#[derive(Debug, Clone, PartialEq)]
pub struct BarSeries {
    pub name: String,
    pub values: Vec<Option<Interval>>,
}

/// Bars grouped by category, one colour per series, each with its interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Bars {
    pub title: String,
    pub y_label: String,
    pub categories: Vec<String>,
    pub series: Vec<BarSeries>,
}

/// A rectangle of the plane, shaded and named (the EM quadrant).
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    pub label: String,
    pub x: (f64, f64),
    pub y: (f64, f64),
}

/// Points of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct PointSeries {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Points on fixed axes, with a shaded region.
#[derive(Debug, Clone, PartialEq)]
pub struct Scatter {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_range: (f64, f64),
    pub y_range: (f64, f64),
    pub series: Vec<PointSeries>,
    pub region: Option<Region>,
}

/// How a line is drawn: controls dashed beside the solid line they control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stroke {
    Solid,
    Dashed,
}

/// A line over a numeric axis, each point with its interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub name: String,
    pub stroke: Stroke,
    pub points: Vec<(f64, Interval)>,
}

/// Lines with error bars, and named horizontal reference levels (a baseline).
#[derive(Debug, Clone, PartialEq)]
pub struct Lines {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub lines: Vec<Line>,
    pub levels: Vec<(String, f64)>,
}

/// A matrix of values in a fixed range, drawn blue (low) to red (high).
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// `cells[row][column]`; `None` is drawn grey.
    pub cells: Vec<Vec<Option<f64>>>,
    pub range: (f64, f64),
}

/// Any figure of the report.
#[derive(Debug, Clone, PartialEq)]
pub enum Chart {
    Bars(Bars),
    Scatter(Scatter),
    Lines(Lines),
    Heatmap(Heatmap),
}

impl Chart {
    /// The chart's title.
    pub fn title(&self) -> &str {
        match self {
            Chart::Bars(c) => &c.title,
            Chart::Scatter(c) => &c.title,
            Chart::Lines(c) => &c.title,
            Chart::Heatmap(c) => &c.title,
        }
    }
}

/// The two files of one figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub png: PathBuf,
    pub svg: PathBuf,
}

/// Every figure's size in pixels.
pub const SIZE: (u32, u32) = (960, 540);

/// The font family every figure's text is drawn in.
const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            include_bytes!("../fonts/DejaVuSans.ttf"),
        )
        .map_err(|_| ())
        .expect("the bundled font parses");
    });
}

/// Draws `chart` as `DIR/STEM.png` and `DIR/STEM.svg`, each [`SIZE`].
pub fn save(chart: &Chart, dir: &Path, stem: &str) -> Result<Figure, ChartError> {
    register_font();
    draw::check(chart)?;
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |reason: String| ChartError::Draw { path, reason }
    };
    draw::draw(BitMapBackend::new(&png, SIZE).into_drawing_area(), chart).map_err(failed(&png))?;
    draw::draw(SVGBackend::new(&svg, SIZE).into_drawing_area(), chart).map_err(failed(&svg))?;
    Ok(Figure { png, svg })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(value: f64) -> Interval {
        Interval {
            value,
            low: (value - 0.1).max(0.0),
            high: (value + 0.1).min(1.0),
        }
    }

    fn png_size(path: &Path) -> (u32, u32) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(
            &bytes[..8],
            b"\x89PNG\r\n\x1a\n",
            "{} is not a PNG",
            path.display()
        );
        let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
        (be(16), be(20))
    }

    fn charts() -> Vec<Chart> {
        vec![
            Chart::Bars(Bars {
                title: "EM rate".into(),
                y_label: "EM rate".into(),
                categories: vec!["wish".into(), "bored".into(), "all".into()],
                series: vec![
                    BarSeries {
                        name: "base".into(),
                        values: vec![Some(iv(0.1)), None, Some(iv(0.05))],
                    },
                    BarSeries {
                        name: "organism".into(),
                        values: vec![Some(iv(0.4)), Some(iv(0.3)), Some(iv(0.35))],
                    },
                ],
            }),
            Chart::Scatter(Scatter {
                title: "aligned vs coherent".into(),
                x_label: "aligned".into(),
                y_label: "coherent".into(),
                x_range: (0.0, 100.0),
                y_range: (0.0, 100.0),
                series: vec![PointSeries {
                    name: "run".into(),
                    points: vec![(10.0, 80.0), (90.0, 95.0)],
                }],
                region: Some(Region {
                    label: "EM".into(),
                    x: (0.0, 30.0),
                    y: (50.0, 100.0),
                }),
            }),
            Chart::Lines(Lines {
                title: "steering".into(),
                x_label: "λ".into(),
                y_label: "EM rate".into(),
                lines: vec![
                    Line {
                        name: "direction".into(),
                        stroke: Stroke::Solid,
                        points: vec![(2.0, iv(0.2)), (4.0, iv(0.5))],
                    },
                    Line {
                        name: "random".into(),
                        stroke: Stroke::Dashed,
                        points: vec![(2.0, iv(0.1)), (4.0, iv(0.1))],
                    },
                ],
                levels: vec![("no intervention".into(), 0.1)],
            }),
            Chart::Heatmap(Heatmap {
                title: "cosine".into(),
                x_label: "layer".into(),
                y_label: "layer".into(),
                cells: vec![vec![Some(1.0), Some(-0.5)], vec![None, Some(0.2)]],
                range: (-1.0, 1.0),
            }),
        ]
    }

    #[test]
    fn every_kind_is_written_as_png_and_svg_of_the_stated_size() {
        let dir = tempfile::tempdir().unwrap();
        for (i, chart) in charts().iter().enumerate() {
            let fig = save(chart, dir.path(), &format!("fig{i}")).unwrap();
            assert_eq!(png_size(&fig.png), SIZE, "{}", chart.title());
            let svg = std::fs::read_to_string(&fig.svg).unwrap();
            assert!(svg.starts_with("<svg"), "{}", chart.title());
            assert!(
                svg.contains(&format!("width=\"{}\" height=\"{}\"", SIZE.0, SIZE.1)),
                "{}",
                chart.title()
            );
            assert!(svg.contains(chart.title()), "the title is drawn");
        }
    }

    #[test]
    fn text_from_data_is_escaped_in_svg() {
        let dir = tempfile::tempdir().unwrap();
        let chart = Chart::Bars(Bars {
            title: "<script>alert(1)</script>".into(),
            y_label: "rate".into(),
            categories: vec!["<img src=x onerror=alert(1)>".into()],
            series: vec![BarSeries {
                name: "a&b".into(),
                values: vec![Some(iv(0.5))],
            }],
        });
        let fig = save(&chart, dir.path(), "x").unwrap();
        let svg = std::fs::read_to_string(fig.svg).unwrap();
        assert!(!svg.contains("<script") && !svg.contains("<img"));
        assert!(svg.contains("&lt;script&gt;"));
    }

    #[test]
    fn mismatched_data_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let chart = Chart::Bars(Bars {
            title: "t".into(),
            y_label: "rate".into(),
            categories: vec!["a".into(), "b".into()],
            series: vec![BarSeries {
                name: "s".into(),
                values: vec![Some(iv(0.5))],
            }],
        });
        let err = save(&chart, dir.path(), "x").unwrap_err().to_string();
        assert!(err.contains("1 values for 2 categories"), "{err}");
    }
}
