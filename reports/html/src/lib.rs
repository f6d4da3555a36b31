//! `emh report`: run directories, judged CSVs, experiment directories and
//! direction files made into one self-contained HTML page (figures embedded,
//! no network) with every figure also as PNG and SVG under `OUT/figures/`.

mod figures;
mod inputs;
mod page;

use std::path::{Path, PathBuf};

use emh_charts::Figure;
use emh_metrics::{Agreement, Thresholds};
use serde::Deserialize;

/// An input could not be read, or the report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {reason}")]
    Input { path: PathBuf, reason: String },
    #[error(transparent)]
    Chart(#[from] emh_charts::ChartError),
    #[error("nothing to report: give run directories, experiment directories, judged CSVs or direction files")]
    Empty,
}

impl ReportError {
    pub(crate) fn input(path: &Path, reason: impl std::fmt::Display) -> Self {
        ReportError::Input {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

/// What `emh judge-agreement --json` writes.
#[derive(Debug, Clone, Deserialize)]
pub struct AgreementFile {
    pub judge_a: String,
    pub judge_b: String,
    pub samples: usize,
    pub agreement: Agreement,
}

impl AgreementFile {
    /// Reads an agreement file.
    pub fn read(path: &Path) -> Result<AgreementFile, ReportError> {
        let text = std::fs::read_to_string(path).map_err(|e| ReportError::input(path, e))?;
        serde_json::from_str(&text).map_err(|e| {
            ReportError::input(
                path,
                format!("not the JSON of `emh judge-agreement --json`: {e}"),
            )
        })
    }
}

/// How to build a report.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// The folder for `index.html` and `figures/`.
    pub out: PathBuf,
    pub thresholds: Thresholds,
    /// A judge-agreement file quoted beside the judged rates.
    pub agreement: Option<PathBuf>,
    /// Answers per run and question in the sample browser.
    pub per_question: usize,
}

/// A figure as written, with its words.
pub struct Drawn {
    pub stem: String,
    pub title: String,
    pub caption: String,
    pub figure: Figure,
}

/// What a report wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub html: PathBuf,
    pub figures: Vec<Figure>,
}

/// Reads `paths`, draws every figure and writes the page; `progress` hears
/// each step.
pub fn build(
    paths: &[PathBuf],
    o: &ReportOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Written, ReportError> {
    if paths.is_empty() {
        return Err(ReportError::Empty);
    }
    let agreement = o
        .agreement
        .as_deref()
        .map(AgreementFile::read)
        .transpose()?;
    progress("reading inputs");
    let inputs = inputs::read(paths, &o.thresholds)?;
    let dir = o.out.join("figures");
    std::fs::create_dir_all(&dir).map_err(|e| ReportError::input(&dir, e))?;
    let mut drawn = Vec::new();
    for p in figures::plan(&inputs, &o.thresholds) {
        progress(&format!("drawing {}", p.stem));
        let figure = emh_charts::save(&p.chart, &dir, &p.stem)?;
        drawn.push(Drawn {
            stem: p.stem,
            title: p.chart.title().to_string(),
            caption: p.caption,
            figure,
        });
    }
    progress("writing the page");
    let html = page::render(
        &inputs,
        &drawn,
        agreement.as_ref(),
        &o.thresholds,
        o.per_question,
    );
    let path = o.out.join("index.html");
    emh_atomic::write(&path, html.as_bytes()).map_err(|e| ReportError::input(&path, e))?;
    Ok(Written {
        html: path,
        figures: drawn.into_iter().map(|d| d.figure).collect(),
    })
}
