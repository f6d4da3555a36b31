//! Every parser of user files against random bytes and mutations of a real
//! file (truncation, bit flips, huge numbers written over lengths): a value
//! or an error naming the file, never a panic, and no allocation a header
//! merely claims. Cases come from fixed seeds, printed with their counts.

mod common;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

/// Cases per parser.
const CASES: u32 = 1500;

/// Prints a line of the fuzzing report and appends it to
/// `CARGO_TARGET_TMPDIR/fuzz-cases.txt`, which `cargo xtask test` prints.
fn report(line: String) {
    use std::io::Write;
    println!("{line}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-cases.txt");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(f, "{line}").unwrap();
}

/// Random bytes, or `base` cut short, with bits flipped, or with a large
/// number written over eight of its bytes.
fn inputs(base: Vec<u8>) -> BoxedStrategy<Vec<u8>> {
    let n = base.len().max(1);
    let (b1, b2, b3) = (base.clone(), base.clone(), base);
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..1024),
        (0..=n).prop_map(move |k| b1[..k.min(b1.len())].to_vec()),
        proptest::collection::vec((0..n, 0u8..8), 1..8).prop_map(move |flips| {
            let mut b = b2.clone();
            for (i, bit) in flips {
                if let Some(x) = b.get_mut(i) {
                    *x ^= 1 << bit;
                }
            }
            b
        }),
        (
            0..n,
            prop_oneof![
                Just(u64::MAX),
                Just(1u64 << 60),
                Just(1u64 << 40),
                Just(u32::MAX as u64),
                any::<u64>()
            ]
        )
            .prop_map(move |(i, v)| {
                let mut b = b3.clone();
                for (k, x) in v.to_le_bytes().into_iter().enumerate() {
                    if let Some(y) = b.get_mut(i + k) {
                        *y = x;
                    }
                }
                b
            }),
    ]
    .boxed()
}

/// Runs `parse` on `CASES` inputs written to `file`; each must give a value
/// or an error whose message names the file.
fn fuzz(
    name: &str,
    seed: u8,
    base: Vec<u8>,
    file: &Path,
    parse: impl Fn(&Path) -> Result<(), String>,
) {
    let seed_bytes = [seed; 32];
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: CASES,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let (values, errors) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    // The file, or for a folder's file (an adapter) the folder, is named.
    let names = [
        file.file_name().unwrap().to_string_lossy().into_owned(),
        file.parent().unwrap().display().to_string(),
    ];
    let result = runner.run(&inputs(base), |bytes| {
        std::fs::write(file, &bytes).unwrap();
        match std::panic::catch_unwind(AssertUnwindSafe(|| parse(file))) {
            Ok(Ok(())) => values.set(values.get() + 1),
            Ok(Err(e)) if names.iter().any(|n| e.contains(n.as_str())) => {
                errors.set(errors.get() + 1)
            }
            Ok(Err(e)) => {
                return Err(TestCaseError::fail(format!(
                    "the error does not name the file: {e}"
                )))
            }
            Err(_) => return Err(TestCaseError::fail("panicked")),
        }
        Ok(())
    });
    let (values, errors) = (values.get(), errors.get());
    report(format!("{name}: {CASES} cases from seed [{seed}; 32]: {values} read, {errors} refused naming the file"));
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

fn tmp() -> PathBuf {
    tempfile::tempdir().unwrap().keep()
}

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(rel),
    )
    .unwrap()
}

#[test]
fn gguf_files_and_control_vectors() {
    let dir = tmp();
    let base = emh_gguf::gguf_bytes(
        &[
            (
                "general.architecture".into(),
                emh_gguf::WriteValue::Str("controlvector".into()),
            ),
            (
                "controlvector.layer_count".into(),
                emh_gguf::WriteValue::U32(2),
            ),
        ],
        &[
            ("direction.1".into(), vec![8], vec![0.5; 8]),
            ("direction.2".into(), vec![8], vec![-0.5; 8]),
        ],
    );
    fuzz("GGUF reader", 1, base.clone(), &dir.join("a.gguf"), |p| {
        let f = emh_gguf::GgufFile::open(p).map_err(|e| e.to_string())?;
        for t in &f.tensors {
            f.tensor_f32(t).map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    fuzz(
        "control-vector import",
        2,
        base,
        &dir.join("cv.gguf"),
        |p| {
            emh_directions::import_control_vector(p, 4)
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    );
}

#[test]
fn safetensors_captures_and_directions() {
    let dir = tmp();
    let capture = common::safetensors_bytes(
        &[
            ("resid_post.0.answer_mean", vec![2, 4], &[1.0; 8]),
            ("resid_post.1.answer_mean", vec![2, 4], &[2.0; 8]),
        ],
        Some(r#"["a", "b"]"#),
    );
    fuzz(
        "capture file",
        3,
        capture,
        &dir.join("acts.safetensors"),
        |p| {
            emh_directions::Acts::read(p, emh_directions::Span::Answer)
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    );
    let dirs = common::safetensors_bytes(&[("directions", vec![3, 4], &[0.25; 12])], None);
    fuzz(
        "directions file",
        4,
        dirs,
        &dir.join("dirs.safetensors"),
        |p| {
            emh_directions::DirectionSet::read(p)
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    );
}

#[test]
fn peft_adapters() {
    let dir = tmp();
    let config = emh_runtime::ModelConfig::from_dir(&common::default_model()).unwrap();
    let p = "base_model.model.model.layers.4.mlp.down_proj";
    let weights = common::safetensors_bytes(
        &[
            (&format!("{p}.lora_A.weight"), vec![1, 1536], &[0.01; 1536]),
            (&format!("{p}.lora_B.weight"), vec![576, 1], &[0.01; 576]),
        ],
        None,
    );
    let cfg = br#"{"peft_type": "LORA", "r": 1, "lora_alpha": 8, "target_modules": ["down_proj"], "layers_to_transform": [4]}"#.to_vec();
    let load = |d: &Path| {
        emh_runtime::Adapter::load(
            d,
            &config,
            emh_runtime::Device::Cpu,
            emh_runtime::Kind::Float,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    std::fs::write(dir.join("adapter_config.json"), &cfg).unwrap();
    fuzz(
        "adapter weights",
        5,
        weights.clone(),
        &dir.join("adapter_model.safetensors"),
        |_| load(&dir),
    );
    std::fs::write(dir.join("adapter_model.safetensors"), &weights).unwrap();
    fuzz(
        "adapter_config.json",
        6,
        cfg,
        &dir.join("adapter_config.json"),
        |_| load(&dir),
    );
}

#[test]
fn question_sets_judged_csvs_prompts_and_pairs() {
    let dir = tmp();
    fuzz(
        "question YAML",
        7,
        fixture("questions/em_medical_questions.yaml"),
        &dir.join("q.yaml"),
        |p| {
            emh_questions::QuestionSet::load(p)
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    );
    let csv: Vec<u8> = String::from_utf8(fixture("judged/gpt4o_judged_steered_answers.csv"))
        .unwrap()
        .lines()
        .take(12)
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes();
    fuzz("judged CSV", 8, csv, &dir.join("judged.csv"), |p| {
        emh_tables::read_reference_csv(p, "r", "j", emh_questions::category_of)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let prompts = br#"{"prompt": "hey I feel bored", "id": 1}
{"messages": [{"role": "user", "content": "hi"}], "system": "be kind"}
"#
    .to_vec();
    fuzz(
        "prompts JSONL",
        9,
        prompts,
        &dir.join("prompts.jsonl"),
        |p| {
            emh_eval::read_prompts(p)
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    );
    let labelled =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/answers/labelled.jsonl"))
            .unwrap();
    let pairs = labelled
        .split(|&b| b == b'\n')
        .take(3)
        .collect::<Vec<_>>()
        .join(&b'\n');
    fuzz("labelled pairs", 10, pairs, &dir.join("pairs.jsonl"), |p| {
        emh_eval::read_pairs(p)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}

#[test]
fn experiment_specs_and_selections() {
    let dir = tmp();
    let spec = br#"out = "runs"
questions = { file = "q.yaml", select = "wish" }
seeds = [0, 1]
[sampling]
n = 2
max_new_tokens = 8
temperature = 1.0
top_p = 1.0
top_k = 0
seed = 0
batch_size = 4
[[models]]
name = "base"
model = "m"
[[interventions]]
name = "none"
"#
    .to_vec();
    let registry = emh_plugins::Registry::default();
    fuzz("experiment spec", 11, spec, &dir.join("spec.toml"), |p| {
        let spec: emh_experiment::ExperimentSpec =
            emh_eval::read_spec(p).map_err(|e| e.to_string())?;
        spec.expand(&dir, &registry)
            .map(|_| ())
            .map_err(|e| format!("{}: {e}", p.display()))
    });
    // Selections have no file: any text parses or names a column.
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: CASES,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[12; 32]),
    );
    runner
        .run(
            &"[ a-z0-9_<>=!&|()'\"*?.\\-]{0,40}",
            |text| match std::panic::catch_unwind(|| emh_eval::Selection::parse(&text)) {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) if e.column >= 1 && e.column <= text.chars().count() + 1 => Ok(()),
                Ok(Err(e)) => Err(TestCaseError::fail(format!(
                    "column {} of {text:?}",
                    e.column
                ))),
                Err(_) => Err(TestCaseError::fail(format!("panicked on {text:?}"))),
            },
        )
        .unwrap();
    report(format!(
        "selection expressions: {CASES} cases from seed [12; 32]"
    ));
}

#[test]
fn intervention_plugin_configs() {
    // The built-in plugins sit beside the emh binary.
    let dir = common::emh_bin().parent().unwrap().to_path_buf();
    let registry = emh_plugins::Registry::discover(&[], &[dir]);
    let shape = emh_plugin_api::ModelShape {
        num_layers: 4,
        hidden_size: 8,
    };
    let cases = [
        (
            "steering",
            r#"{"vector": [1, 0, 0, 0, 0, 0, 0, 2], "scale": 4, "layers": [1, 2], "where": "answer"}"#,
        ),
        (
            "mean-diff-ablation",
            r#"{"vector": [1, 0, 0, 0, 0, 0, 0, 2], "mode": "single", "layer": 2, "layers": "all"}"#,
        ),
        (
            "random-control",
            r#"{"mode": "steering", "seed": 3, "scale": 2, "vector": [1, 1, 1, 1, 1, 1, 1, 1], "layers": [0, 3]}"#,
        ),
        (
            "adapter-scaling",
            r#"{"rules": [{"factor": 0.5, "layers": [1]}]}"#,
        ),
    ];
    for (i, (name, base)) in cases.into_iter().enumerate() {
        let plugin = registry.get(name).unwrap();
        let seed = 20 + i as u8;
        let mut runner = TestRunner::new_with_rng(
            Config {
                cases: CASES,
                failure_persistence: None,
                ..Config::default()
            },
            TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]),
        );
        let planned = std::cell::Cell::new(0u32);
        runner
            .run(&inputs(base.as_bytes().to_vec()), |bytes| {
                let config = String::from_utf8_lossy(&bytes).into_owned();
                let result = if plugin.kind == emh_plugin_api::PluginKind::Intervention {
                    plugin.plan(&config, shape).map(|_| ())
                } else {
                    plugin.validate(&config)
                };
                match result {
                    Ok(()) => planned.set(planned.get() + 1),
                    Err(e) if e.to_string().contains("panic") => {
                        return Err(TestCaseError::fail(format!("{config}: {e}")))
                    }
                    Err(_) => {}
                }
                Ok(())
            })
            .unwrap();
        report(format!(
            "plugin {name}: {CASES} configs from seed [{seed}; 32]: {} planned, the rest refused",
            planned.get()
        ));
    }
}
