//! Parquet files written atomically, and typed access to DataFrame columns.

use std::path::Path;

use polars::prelude::*;

use crate::TableError;

/// Writes `df` to `path` as Parquet: to a temporary file first, renamed into
/// place, so a reader never sees a half-written table.
pub fn write_parquet(df: &mut DataFrame, path: &Path) -> Result<(), TableError> {
    emh_atomic::replace(
        path,
        |tmp| {
            let file = std::fs::File::create(tmp).map_err(|e| TableError::file(tmp, e))?;
            ParquetWriter::new(file)
                .finish(df)
                .map(|_| ())
                .map_err(|e| TableError::file(tmp, e))
        },
        TableError::file,
    )
}

/// Reads a Parquet table.
pub fn read_parquet(path: &Path) -> Result<DataFrame, TableError> {
    let file = std::fs::File::open(path).map_err(|e| TableError::file(path, e))?;
    ParquetReader::new(file)
        .finish()
        .map_err(|e| TableError::file(path, e))
}

/// Typed columns of one table, with errors that name the table and column.
pub(crate) struct Columns<'a> {
    pub table: &'a str,
    pub df: &'a DataFrame,
}

impl<'a> Columns<'a> {
    fn column(&self, name: &str) -> Result<&'a Column, TableError> {
        self.df
            .column(name)
            .map_err(|_| TableError::schema(self.table, format!("no column `{name}`")))
    }

    fn typed<T>(&self, name: &str, r: PolarsResult<T>) -> Result<T, TableError> {
        r.map_err(|e| TableError::schema(self.table, format!("column `{name}`: {e}")))
    }

    /// A string column; `required` refuses nulls.
    pub fn strings(&self, name: &str) -> Result<Vec<Option<String>>, TableError> {
        let c = self.column(name)?;
        let s = self.typed(name, c.str())?;
        Ok(s.iter().map(|v| v.map(str::to_string)).collect())
    }

    /// A string column without nulls.
    pub fn required_strings(&self, name: &str) -> Result<Vec<String>, TableError> {
        self.strings(name)?
            .into_iter()
            .map(|v| v.ok_or_else(|| TableError::schema(self.table, format!("null in `{name}`"))))
            .collect()
    }

    /// A float column.
    pub fn floats(&self, name: &str) -> Result<Vec<Option<f64>>, TableError> {
        let c = self.column(name)?;
        let cast = self.typed(name, c.cast(&DataType::Float64))?;
        let f = self.typed(name, cast.f64().cloned())?;
        Ok(f.iter().collect())
    }

    /// An unsigned integer column without nulls.
    pub fn unsigned(&self, name: &str) -> Result<Vec<u64>, TableError> {
        let c = self.column(name)?;
        let cast = self.typed(name, c.cast(&DataType::UInt64))?;
        let u = self.typed(name, cast.u64().cloned())?;
        u.iter()
            .map(|v| v.ok_or_else(|| TableError::schema(self.table, format!("null in `{name}`"))))
            .collect()
    }
}

/// A DataFrame from columns of equal length.
pub(crate) fn frame(table: &str, columns: Vec<Column>) -> Result<DataFrame, TableError> {
    DataFrame::new_infer_height(columns).map_err(|e| TableError::schema(table, e))
}

#[cfg(test)]
mod tests {
    use crate::*;

    #[test]
    fn samples_and_judgments_round_trip_through_parquet() {
        let sample = SampleRow {
            run_id: "run".into(),
            model_id: "m".into(),
            adapter_ids: "a,b".into(),
            intervention_ids: String::new(),
            question_id: "q".into(),
            category: "plain".into(),
            paraphrase_index: 1,
            sample_index: 7,
            seed: u64::MAX,
            system: None,
            prompt: "Why?".into(),
            answer: "Because \u{1F600}\n".into(),
            prompt_tokens: 12,
            answer_tokens: 3,
            finish_reason: "eos".into(),
        };
        let with_system = SampleRow {
            system: Some("Be JSON.".into()),
            sample_index: 8,
            ..sample.clone()
        };
        let judgment = JudgmentRow {
            run_id: "run".into(),
            question_id: "q".into(),
            paraphrase_index: 1,
            sample_index: 7,
            judge_id: "j".into(),
            metric: "aligned".into(),
            score: None,
            mass: 0.1,
            null_reason: Some("REFUSAL".into()),
            top_tokens: "[]".into(),
        };
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("samples.parquet");
        let samples = vec![sample, with_system];
        write_parquet(&mut samples_frame(&samples).unwrap(), &path).unwrap();
        let partial = std::fs::read_dir(tmp.path()).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".partial")
        });
        assert!(!partial, "a temporary file was left beside the table");
        let back = samples_from_frame(&read_parquet(&path).unwrap()).unwrap();
        assert_eq!(back, samples);
        let path = tmp.path().join("judgments.parquet");
        let judgments = vec![
            judgment.clone(),
            JudgmentRow {
                score: Some(42.5),
                null_reason: None,
                ..judgment
            },
        ];
        write_parquet(&mut judgments_frame(&judgments).unwrap(), &path).unwrap();
        let back = judgments_from_frame(&read_parquet(&path).unwrap()).unwrap();
        assert_eq!(back, judgments);
    }

    #[test]
    fn a_missing_table_is_an_error_naming_the_file() {
        let err = read_parquet(std::path::Path::new("/nonexistent/samples.parquet"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/samples.parquet"), "{err}");
    }
}
