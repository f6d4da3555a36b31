//! The tables of a run as polars DataFrames: `samples`, `judgments` and
//! `metrics`, persisted as Parquet (written whole or not at all), and the
//! judged-CSV format of the reference research scripts.
//!
//! The schema of every table is documented on its row type and in the
//! README's table of run tables.

mod csv;
mod frame;
mod judgments;
mod metrics;
mod plain;
mod samples;

pub use crate::csv::{csv_field, read_reference_csv, write_reference_csv, ReferenceCsv};
pub use frame::{read_parquet, write_parquet};
pub use judgments::{judgments_frame, judgments_from_frame, JudgmentRow};
pub use metrics::metrics_frame;
pub use plain::{column_names, float_column, read_table, string_column, write_columns, Values};
pub use polars;
pub use samples::{samples_frame, samples_from_frame, SampleRow};

use std::path::PathBuf;

/// Errors reading or writing a table, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("table `{table}`: {reason}")]
    Schema { table: String, reason: String },
}

impl TableError {
    pub(crate) fn file(path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        TableError::File {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn schema(table: &str, reason: impl std::fmt::Display) -> Self {
        TableError::Schema {
            table: table.to_string(),
            reason: reason.to_string(),
        }
    }
}
