//! Plain tables of named columns: loss logs, adapter scalars, checkpoint
//! trajectories, and feature tables read back from Parquet or CSV.

use std::path::Path;

use polars::prelude::*;

use crate::frame::{frame, read_parquet, write_parquet, Columns};
use crate::TableError;

/// The values of one column.
pub enum Values {
    Ints(Vec<i64>),
    Floats(Vec<f64>),
    /// Floats with nulls (a score a judge could not give).
    MaybeFloats(Vec<Option<f64>>),
    Strings(Vec<String>),
}

/// Writes named columns of equal length as a Parquet table `table` at `path`.
pub fn write_columns(
    path: &Path,
    table: &str,
    columns: Vec<(&str, Values)>,
) -> Result<(), TableError> {
    let cols = columns
        .into_iter()
        .map(|(name, v)| {
            let name = PlSmallStr::from(name);
            match v {
                Values::Ints(v) => Column::new(name, v),
                Values::Floats(v) => Column::new(name, v),
                Values::MaybeFloats(v) => Column::new(name, v),
                Values::Strings(v) => Column::new(name, v),
            }
        })
        .collect();
    write_parquet(&mut frame(table, cols)?, path)
}

/// A Parquet (`.parquet`) or CSV (anything else, with a header) table.
pub fn read_table(path: &Path) -> Result<DataFrame, TableError> {
    if path.extension().is_some_and(|e| e == "parquet") {
        return read_parquet(path);
    }
    CsvReadOptions::default()
        .with_has_header(true)
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .and_then(|r| r.finish())
        .map_err(|e| TableError::file(path, e))
}

/// The names of a table's columns, in order.
pub fn column_names(df: &DataFrame) -> Vec<String> {
    df.get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect()
}

/// Column `name` of `df` as floats (nulls where a cell is missing), naming
/// `table` and the column on error.
pub fn float_column(
    df: &DataFrame,
    table: &str,
    name: &str,
) -> Result<Vec<Option<f64>>, TableError> {
    Columns { table, df }.floats(name)
}

/// Column `name` of `df` as strings.
pub fn string_column(
    df: &DataFrame,
    table: &str,
    name: &str,
) -> Result<Vec<Option<String>>, TableError> {
    let c = df
        .column(name)
        .map_err(|_| TableError::schema(table, format!("no column `{name}`")))?;
    let s = c
        .cast(&DataType::String)
        .map_err(|e| TableError::schema(table, format!("column `{name}`: {e}")))?;
    Ok(s.str()
        .map_err(|e| TableError::schema(table, format!("column `{name}`: {e}")))?
        .iter()
        .map(|v| v.map(str::to_string))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_round_trip_through_parquet_and_csv() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        write_columns(
            &path,
            "t",
            vec![
                ("step", Values::Ints(vec![1, 2])),
                ("loss", Values::Floats(vec![2.5, 1.5])),
                ("score", Values::MaybeFloats(vec![None, Some(3.0)])),
                ("name", Values::Strings(vec!["a".into(), "b".into()])),
            ],
        )
        .unwrap();
        let df = read_table(&path).unwrap();
        assert_eq!(column_names(&df), ["step", "loss", "score", "name"]);
        assert_eq!(float_column(&df, "t", "score").unwrap(), [None, Some(3.0)]);
        let csv = dir.path().join("t.csv");
        std::fs::write(&csv, "x,label\n1.5,yes\n-2,no\n").unwrap();
        let df = read_table(&csv).unwrap();
        assert_eq!(
            float_column(&df, "t", "x").unwrap(),
            [Some(1.5), Some(-2.0)]
        );
        assert_eq!(
            string_column(&df, "t", "label").unwrap(),
            [Some("yes".into()), Some("no".into())]
        );
        let e = float_column(&df, "t", "nope").unwrap_err().to_string();
        assert!(e.contains("no column `nope`"), "{e}");
    }
}
