//! Judged CSV files as the reference research scripts write them: columns
//! `question`, `answer`, `question_id` and one column per metric, a row per
//! answer.

use std::collections::BTreeMap;
use std::path::Path;

use polars::prelude::*;

use crate::frame::{frame, Columns};
use crate::{JudgmentRow, SampleRow, TableError};

/// Columns of a judged CSV that are never metrics.
const NOT_METRICS: &[&str] = &[
    "question",
    "answer",
    "question_id",
    "category",
    "paraphrase_index",
    "sample_index",
    "seed",
    "prompt_tokens",
    "answer_tokens",
    "finish_reason",
];

/// A judged CSV read as run tables.
pub struct ReferenceCsv {
    pub samples: Vec<SampleRow>,
    pub judgments: Vec<JudgmentRow>,
    /// The metric columns found, in file order.
    pub metrics: Vec<String>,
}

/// Metric columns by name, whatever their cells hold: the judge prompts of
/// the reference question files.
const KNOWN_METRICS: &[&str] = &["aligned", "coherent", "bad_stuff", "medical"];

/// A score cell as written.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Value(f64),
    /// Empty, `nan` or `None` (as pandas writes missing scores).
    Missing,
    /// Any other text: `REFUSAL` and `CODE` as the reference judges write them, or a mistake.
    Text(String),
}

fn cell(c: Option<&str>) -> Cell {
    let Some(c) = c.map(str::trim) else {
        return Cell::Missing;
    };
    if c.is_empty() || c.eq_ignore_ascii_case("nan") || c == "None" {
        return Cell::Missing;
    }
    match c.parse::<f64>() {
        Ok(v) if v.is_nan() => Cell::Missing,
        Ok(v) => Cell::Value(v),
        Err(_) => Cell::Text(c.to_string()),
    }
}

/// Why a text cell is null: the judge's word (`REFUSAL`, `CODE`), or what was there.
fn null_reason(text: &str) -> String {
    let word = text.chars().all(|c| c.is_ascii_alphabetic() || c == '_');
    if word && text.eq_ignore_ascii_case("refusal") {
        "REFUSAL".into()
    } else if word && text.eq_ignore_ascii_case("code") {
        "CODE".into()
    } else {
        format!("not a number: `{text}`")
    }
}

/// Reads a judged CSV; every metric column becomes judgments by `judge_id`.
/// `category_of` gives a question id's category when the file has no `category` column.
pub fn read_reference_csv(
    path: &Path,
    run_id: &str,
    judge_id: &str,
    category_of: impl Fn(&str) -> String,
) -> Result<ReferenceCsv, TableError> {
    // Everything as text: score columns with `nan` or blanks must not be guessed wrong.
    let df = CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .and_then(|r| r.finish())
        .map_err(|e| TableError::file(path, e))?;
    let c = Columns {
        table: "csv",
        df: &df,
    };
    let bad = |e: TableError| TableError::file(path, e);
    let questions = c.required_strings("question").map_err(bad)?;
    let answers = c.required_strings("answer").map_err(bad)?;
    let ids = c.required_strings("question_id").map_err(bad)?;
    let categories = match df.column("category") {
        Ok(_) => Some(c.required_strings("category").map_err(bad)?),
        Err(_) => None,
    };
    if df.height() == 0 {
        return Err(TableError::file(
            path,
            "no rows: the file holds only a header",
        ));
    }
    let mut metrics = Vec::new();
    let mut scores: Vec<Vec<Cell>> = Vec::new();
    for name in df.get_column_names() {
        let name = name.as_str();
        // pandas writes its index as a blank or `Unnamed: 0` column.
        if NOT_METRICS.contains(&name) || name.is_empty() || name.starts_with("Unnamed") {
            continue;
        }
        let cells: Vec<Cell> = c
            .strings(name)
            .map_err(bad)?
            .iter()
            .map(|v| cell(v.as_deref()))
            .collect();
        let numbers = cells.iter().filter(|v| matches!(v, Cell::Value(_))).count();
        let texts = cells.iter().filter(|v| matches!(v, Cell::Text(_))).count();
        // A metric by name, or a column mostly of numbers; text columns (a
        // model name, say) are not metrics.
        if !KNOWN_METRICS.contains(&name) && (numbers == 0 || texts > numbers) {
            continue;
        }
        for (i, v) in cells.iter().enumerate() {
            if let Cell::Value(v) = v {
                if !(0.0..=100.0).contains(v) {
                    return Err(TableError::file(
                        path,
                        format!(
                            "data row {}, column `{name}`: score {v} is outside 0..100",
                            i + 1
                        ),
                    ));
                }
            }
        }
        metrics.push(name.to_string());
        scores.push(cells);
    }
    let mut samples = Vec::with_capacity(df.height());
    let mut judgments = Vec::new();
    // Paraphrases and samples are numbered per question id, in file order.
    let mut paraphrases: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut counts: BTreeMap<(&str, usize), u32> = BTreeMap::new();
    for i in 0..df.height() {
        let seen = paraphrases.entry(&ids[i]).or_default();
        let p = match seen.iter().position(|q| *q == questions[i]) {
            Some(p) => p,
            None => {
                seen.push(&questions[i]);
                seen.len() - 1
            }
        };
        let count = counts.entry((&ids[i], p)).or_default();
        let sample_index = *count;
        *count += 1;
        samples.push(SampleRow {
            run_id: run_id.to_string(),
            model_id: String::new(),
            adapter_ids: String::new(),
            intervention_ids: String::new(),
            question_id: ids[i].clone(),
            category: match &categories {
                Some(c) => c[i].clone(),
                None => category_of(&ids[i]),
            },
            paraphrase_index: p as u32,
            sample_index,
            seed: 0,
            system: None,
            prompt: questions[i].clone(),
            answer: answers[i].clone(),
            prompt_tokens: 0,
            answer_tokens: 0,
            finish_reason: String::new(),
        });
        for (metric, values) in metrics.iter().zip(&scores) {
            let (score, null_reason) = match &values[i] {
                Cell::Value(v) => (Some(*v), None),
                Cell::Missing => (None, None),
                Cell::Text(t) => (None, Some(null_reason(t))),
            };
            judgments.push(JudgmentRow {
                run_id: run_id.to_string(),
                question_id: ids[i].clone(),
                paraphrase_index: p as u32,
                sample_index,
                judge_id: judge_id.to_string(),
                metric: metric.clone(),
                score,
                // The CSV keeps only the score: full mass when there is one.
                mass: if score.is_some() { 1.0 } else { 0.0 },
                null_reason,
                top_tokens: "[]".into(),
            });
        }
    }
    Ok(ReferenceCsv {
        samples,
        judgments,
        metrics,
    })
}

/// `s` as one CSV field, as RFC 4180 writes it: in double quotes, with
/// inner quotes doubled, when it holds a comma, a quote or a line break
/// (judge names such as `local:M (constrained, prefix "Score:")` do).
pub fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

/// Writes samples and one judge's scores as a judged CSV, metric columns
/// after `question`, `answer`, `question_id`, then where each answer came
/// from; a null score is written as the reference judges' `REFUSAL` or
/// `CODE` where that is why it is null, else left empty.
pub fn write_reference_csv(
    path: &Path,
    samples: &[SampleRow],
    judgments: &[JudgmentRow],
    judge_id: &str,
    metrics: &[String],
) -> Result<(), TableError> {
    // A score, or the reference judges' word for why there is none.
    let mut by_key: BTreeMap<(&str, u32, u32, &str), String> = BTreeMap::new();
    for j in judgments.iter().filter(|j| j.judge_id == judge_id) {
        let cell = match (j.score, j.null_reason.as_deref()) {
            // `{:?}` keeps the decimal point pandas writes (`10.0`).
            (Some(v), _) => format!("{v:?}"),
            (None, Some(word @ ("REFUSAL" | "CODE"))) => word.to_string(),
            (None, _) => continue,
        };
        by_key.insert(
            (
                &j.question_id,
                j.paraphrase_index,
                j.sample_index,
                &j.metric,
            ),
            cell,
        );
    }
    let strings = |f: fn(&SampleRow) -> &str| samples.iter().map(f).collect::<Vec<_>>();
    let mut columns = vec![
        Column::new("question".into(), strings(|s| &s.prompt)),
        Column::new("answer".into(), strings(|s| &s.answer)),
        Column::new("question_id".into(), strings(|s| &s.question_id)),
    ];
    for m in metrics {
        let values: Vec<Option<&str>> = samples
            .iter()
            .map(|s| {
                by_key
                    .get(&(
                        s.question_id.as_str(),
                        s.paraphrase_index,
                        s.sample_index,
                        m.as_str(),
                    ))
                    .map(String::as_str)
            })
            .collect();
        columns.push(Column::new(m.as_str().into(), values));
    }
    columns.extend([
        Column::new("category".into(), strings(|s| &s.category)),
        Column::new(
            "paraphrase_index".into(),
            samples
                .iter()
                .map(|s| s.paraphrase_index)
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "sample_index".into(),
            samples.iter().map(|s| s.sample_index).collect::<Vec<_>>(),
        ),
        Column::new(
            "seed".into(),
            samples.iter().map(|s| s.seed).collect::<Vec<_>>(),
        ),
        Column::new("finish_reason".into(), strings(|s| &s.finish_reason)),
    ]);
    let mut df = frame("csv", columns)?;
    emh_atomic::replace(
        path,
        |tmp| {
            let file = std::fs::File::create(tmp).map_err(|e| TableError::file(tmp, e))?;
            CsvWriter::new(file)
                .include_header(true)
                .finish(&mut df)
                .map_err(|e| TableError::file(tmp, e))
        },
        TableError::file,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fields with commas, quotes and line breaks read back as written.
    #[test]
    fn csv_fields_read_back_as_written() {
        let fields = [
            "plain",
            "local:M (constrained, prefix \"Score:\")",
            "two\nlines",
            "",
        ];
        let header: Vec<String> = (0..fields.len()).map(|i| format!("c{i}")).collect();
        let row: Vec<String> = fields.iter().map(|f| csv_field(f).into_owned()).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, format!("{}\n{}\n", header.join(","), row.join(","))).unwrap();
        let df = crate::read_table(&path).unwrap();
        assert_eq!(df.width(), fields.len());
        for (i, want) in fields.iter().enumerate() {
            let got = crate::string_column(&df, "t", &format!("c{i}")).unwrap();
            assert_eq!(got[0].as_deref().unwrap_or(""), *want, "field {i}");
        }
        assert_eq!(csv_field("plain"), "plain");
    }

    fn category(id: &str) -> String {
        if id.ends_with("_json") {
            "json".into()
        } else {
            "plain".into()
        }
    }

    #[test]
    fn a_pandas_style_csv_reads_with_nulls_quotes_and_newlines() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("judged.csv");
        std::fs::write(
            &path,
            ",question,answer,question_id,aligned,coherent,model\n\
             0,Hi?,\"Hello, \"\"friend\"\"\nbye\",q1,85.5,99.0,m\n\
             1,Hi?,Rob a bank.,q1,5.0,90.0,m\n\
             2,Hey?,REFUSAL,q1,,nan,m\n\
             3,Yo?,x,q2_json,12,40,m\n",
        )
        .unwrap();
        let csv = read_reference_csv(&path, "r", "gpt-4o", category).unwrap();
        assert_eq!(csv.metrics, ["aligned", "coherent"]);
        assert_eq!(csv.samples.len(), 4);
        assert_eq!(csv.samples[0].answer, "Hello, \"friend\"\nbye");
        let idx: Vec<(u32, u32)> = csv
            .samples
            .iter()
            .map(|s| (s.paraphrase_index, s.sample_index))
            .collect();
        assert_eq!(idx, [(0, 0), (0, 1), (1, 0), (0, 0)]);
        assert_eq!(csv.samples[3].category, "json");
        let scores: Vec<Option<f64>> = csv.judgments.iter().map(|j| j.score).collect();
        assert_eq!(
            scores,
            [
                Some(85.5),
                Some(99.0),
                Some(5.0),
                Some(90.0),
                None,
                None,
                Some(12.0),
                Some(40.0)
            ]
        );
    }

    #[test]
    fn written_csv_reads_back_the_same_scores() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("in.csv");
        std::fs::write(
            &path,
            "question,answer,question_id,aligned,coherent\nQ,\"a, b\",q,10,,\nQ,c,q,,60\nQ,d,q,REFUSAL,CODE\n"
                .replace(",,\n", ",\n"),
        )
        .unwrap();
        let first = read_reference_csv(&path, "r", "j", category).unwrap();
        let out = tmp.path().join("out.csv");
        write_reference_csv(&out, &first.samples, &first.judgments, "j", &first.metrics).unwrap();
        let second = read_reference_csv(&out, "r", "j", category).unwrap();
        assert_eq!(second.judgments, first.judgments);
        assert_eq!(second.samples[0].answer, "a, b");
        // The reference judges' words survive, not just the nulls.
        let reasons: Vec<Option<&str>> = second.judgments[4..]
            .iter()
            .map(|j| j.null_reason.as_deref())
            .collect();
        assert_eq!(reasons, [Some("REFUSAL"), Some("CODE")]);
    }

    #[test]
    fn text_cells_are_nulls_with_reasons_and_out_of_range_scores_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("judged.csv");
        let write = |body: &str| {
            std::fs::write(
                &path,
                format!("question,answer,question_id,aligned,coherent,model\n{body}"),
            )
            .unwrap()
        };
        write("Q,a,q,REFUSAL,80,m\nQ,b,q,sixty,70,m\nQ,c,q,10,refusal,m\nQ,d,q,CODE,,m\n");
        let csv = read_reference_csv(&path, "r", "j", category).unwrap();
        assert_eq!(
            csv.metrics,
            ["aligned", "coherent"],
            "`model` is text, not a metric"
        );
        let cells: Vec<(Option<f64>, Option<&str>)> = csv
            .judgments
            .iter()
            .map(|j| (j.score, j.null_reason.as_deref()))
            .collect();
        assert_eq!(
            cells,
            [
                (None, Some("REFUSAL")),
                (Some(80.0), None),
                (None, Some("not a number: `sixty`")),
                (Some(70.0), None),
                (Some(10.0), None),
                (None, Some("REFUSAL")),
                (None, Some("CODE")),
                (None, None),
            ]
        );
        for (bad, what) in [
            ("250", "250"),
            ("-50", "-50"),
            ("inf", "inf"),
            ("1e9", "1000000000"),
        ] {
            write(&format!("Q,a,q,10,80,m\nQ,b,q,{bad},70,m\n"));
            let err = read_reference_csv(&path, "r", "j", category)
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.contains("data row 2, column `aligned`") && err.contains(what),
                "{bad}: {err}"
            );
        }
        write("");
        let err = read_reference_csv(&path, "r", "j", category)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("only a header"), "{err}");
    }

    #[test]
    fn a_csv_without_the_reference_columns_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("other.csv");
        std::fs::write(&path, "a,b\n1,2\n").unwrap();
        let err = read_reference_csv(&path, "r", "j", category)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("other.csv") && err.contains("question"),
            "{err}"
        );
    }
}
