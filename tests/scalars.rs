//! `emh lora scalars` against peft's own lora_A outputs, and `emh lora probe`
//! on a table with a known answer.

mod common;

use common::lora::make_lora;
use common::{default_model, emh_ok, reference, s, write_jsonl};
use emh_tables::{float_column, read_table, string_column};
use serde_json::json;

fn fixture_csv() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/judged/gpt4o_judged_steered_answers.csv")
}

#[test]
fn scalars_match_peft_per_answer_token_with_the_scores_joined() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("organism");
    make_lora(&adapter, 1, 16.0, "down_proj", "4,12,20", true, 2);
    let out = tmp.path().join("scalars.parquet");
    let csv = fixture_csv();
    emh_ok(&[
        "lora",
        "scalars",
        s(&csv),
        "--adapter",
        s(&adapter),
        "--device",
        "cpu",
        "-o",
        s(&out),
    ]);
    let per_token = read_table(&out).unwrap();
    let ids = string_column(&per_token, "t", "id").unwrap();
    let features = ["L4.down_proj", "L12.down_proj", "L20.down_proj"];

    // Python computes A·x × scaling with its own tokenization for a few answers.
    let (items, _) = emh_eval::select_answers(&csv, None, None).unwrap();
    let items: Vec<_> = items.into_iter().take(4).collect();
    let items_path = tmp.path().join("items.jsonl");
    write_jsonl(
        &items_path,
        &items
            .iter()
            .map(|f| json!({"id": f.id, "prompt": f.prompt, "answer": f.answer}))
            .collect::<Vec<_>>(),
    );
    let r = reference(&[
        "adapter-scalars",
        "--model",
        s(&default_model()),
        "--adapter",
        s(&adapter),
        "--items",
        s(&items_path),
    ]);
    let mut compared = 0;
    let mut worst: f64 = 0.0;
    let mut largest: f64 = 0.0;
    for item in &items {
        let rows: Vec<usize> = (0..ids.len())
            .filter(|&i| ids[i].as_deref() == Some(item.id.as_str()))
            .collect();
        for f in features {
            let ours = float_column(&per_token, "t", f).unwrap();
            let theirs = r[&item.id][f].as_array().unwrap();
            assert_eq!(rows.len(), theirs.len(), "{} {f}: token count", item.id);
            for (&row, t) in rows.iter().zip(theirs) {
                let (a, b) = (ours[row].unwrap(), t.as_f64().unwrap());
                worst = worst.max((a - b).abs());
                largest = largest.max(b.abs());
                compared += 1;
            }
        }
    }
    assert!(compared > 100, "compared {compared} values");
    assert!(largest > 0.01, "scalars too small to test ({largest})");
    assert!(
        worst < 1e-3 * largest.max(1.0),
        "scalars differ by {worst} (largest {largest})"
    );

    // The per-answer means: one row per non-empty answer, each feature the
    // mean of its tokens, with the judge's scores.
    let means = read_table(&tmp.path().join("scalars.means.parquet")).unwrap();
    let mean_ids = string_column(&means, "m", "id").unwrap();
    let first = &items[0].id;
    let m_row = mean_ids
        .iter()
        .position(|i| i.as_deref() == Some(first.as_str()))
        .unwrap();
    let rows: Vec<usize> = (0..ids.len())
        .filter(|&i| ids[i].as_deref() == Some(first.as_str()))
        .collect();
    let col = float_column(&per_token, "t", "L12.down_proj").unwrap();
    let mean = rows.iter().map(|&i| col[i].unwrap()).sum::<f64>() / rows.len() as f64;
    let got = float_column(&means, "m", "L12.down_proj").unwrap()[m_row].unwrap();
    assert!((got - mean).abs() < 1e-9, "{got} vs {mean}");
    let csv_text = std::fs::read_to_string(&csv).unwrap();
    let aligned = float_column(&means, "m", "aligned").unwrap()[m_row].unwrap();
    assert!(
        csv_text.contains(&aligned.to_string()),
        "the joined aligned score {aligned} is the CSV's"
    );
}

/// A table where only `L3.down_proj` carries the label: the probe keeps it,
/// drops the noise adapter, and separates the classes.
#[test]
fn the_probe_keeps_the_informative_adapter_and_drops_the_noise() {
    let tmp = tempfile::tempdir().unwrap();
    let mut state = 12345u64;
    let mut uniform = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut csv = String::from("id,L3.down_proj,L7.down_proj,aligned,coherent,em\n");
    for i in 0..200 {
        let misaligned = i % 3 == 0;
        let signal = if misaligned { 1.0 } else { -1.0 } + 1.2 * (uniform() - 0.5);
        let noise = uniform() - 0.5;
        let aligned = if misaligned { 10.0 } else { 90.0 };
        csv += &format!("a{i},{signal},{noise},{aligned},80,{}\n", misaligned as u8);
    }
    let table = tmp.path().join("features.csv");
    std::fs::write(&table, csv).unwrap();
    let json_out = tmp.path().join("probe.json");
    let out = emh_ok(&[
        "lora",
        "probe",
        s(&table),
        "--target",
        "misaligned",
        "--c",
        "0.05",
        "--json",
        s(&json_out),
    ]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("ROC AUC") && printed.contains("L7.down_proj"),
        "{printed}"
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_out).unwrap()).unwrap();
    assert_eq!(
        r["names"],
        json!(["L3.down_proj", "L7.down_proj"]),
        "adapter columns only"
    );
    assert!(
        r["full"]["coef"][0].as_f64().unwrap() > 0.5,
        "{}",
        r["full"]
    );
    assert_eq!(r["full"]["coef"][1].as_f64().unwrap(), 0.0, "{}", r["full"]);
    assert!(r["auc"]["mean"].as_f64().unwrap() > 0.95, "{}", r["auc"]);
    // The same label from a 0/1 column gives the same probe.
    let json2 = tmp.path().join("probe2.json");
    emh_ok(&[
        "lora",
        "probe",
        s(&table),
        "--target",
        "column:em",
        "--c",
        "0.05",
        "--json",
        s(&json2),
    ]);
    let r2: serde_json::Value = serde_json::from_slice(&std::fs::read(&json2).unwrap()).unwrap();
    assert_eq!(r["full"]["coef"], r2["full"]["coef"]);
}
