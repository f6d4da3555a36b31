//! `emh capture`, `emh directions ...`, `emh logprob-pref`, `emh steer` and
//! `emh ablate`: from judged answers to a misalignment direction, and from a
//! direction to its measured effects beside random controls.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use emh_directions::{Acts, DirectionSet, MeanDiffOptions, Span};
use emh_eval::{
    load_model, plan_all, read_pairs, run_forced, select_answers, write_capture, EvalSpec,
    ForcedOptions, Preference, Selection, Side,
};
use emh_experiment::{AblatePreset, Experiment, ExperimentSpec, SteerPreset};

use crate::commands::ModelArgs;
use crate::eval::{judged_spec, JudgeUseArgs, SampleArgs, ThresholdArgs};
use crate::plugins::PluginUseArgs;
use crate::progress::{bar, Bars};

/// Which answer of each labelled pair.
#[derive(Clone, Copy, ValueEnum)]
pub enum SideArg {
    Aligned,
    Misaligned,
}

/// Arguments of `emh capture`.
#[derive(Args)]
pub struct CaptureCmd {
    /// A run directory or a judged CSV whose answers to capture.
    #[arg(required_unless_present = "pairs", conflicts_with = "pairs")]
    pub input: Option<PathBuf>,
    /// Which answers, e.g. 'aligned < 30 && coherent > 50' or
    /// '!(aligned < 30) && question == "quick_buck*"'. Comparisons on judge
    /// metrics (< <= > >= == !=), `&&`, `||`, `!`, parentheses, and
    /// `question == "GLOB"` on question ids. A comparison on a metric an
    /// answer has no score for is false. [default: every answer]
    #[arg(long, value_name = "EXPR")]
    pub select: Option<String>,
    /// Which judge's scores the selection reads, when several judged the run.
    #[arg(long)]
    pub judge_id: Option<String>,
    /// Labelled pairs (JSONL: id, question, aligned, misaligned) instead of a run.
    #[arg(long, requires = "side")]
    pub pairs: Option<PathBuf>,
    /// With --pairs: which answer of each pair.
    #[arg(long, value_enum)]
    pub side: Option<SideArg>,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// The capture file (safetensors): per layer L, `resid_post.L.answer_mean`
    /// and `resid_post.L.prompt_mean` [n, hidden], with the ids in its metadata.
    #[arg(long, short)]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub plugins: PluginUseArgs,
}

/// `emh directions` subcommands.
#[derive(Subcommand)]
pub enum DirectionsCmd {
    /// Per layer, mean(positive) − mean(negative) of two captures: a
    /// `directions` file the steering, ablation and random-control plugins read.
    MeanDiff(MeanDiffCmd),
    /// Cosine map: layer by layer between two direction sets, or with one
    /// set, every layer against every other (CSV: layer_a,layer_b,cosine).
    Cosine(CosineCmd),
    /// Cosine of each rank-1 adapter B vector (o_proj, down_proj) with the
    /// direction at its layer.
    AdapterCosine(AdapterCosineCmd),
    /// Write a direction set as a llama.cpp control vector (GGUF).
    ///
    /// `direction.N` is added by llama.cpp to the output of block N, emh's
    /// resid_post.N; llama.cpp has no `direction.0`, so layer 0 is left out.
    /// Use it with `llama-cli --control-vector FILE` (or --control-vector-scaled FILE S).
    ExportGguf(ExportGgufCmd),
    /// Read a llama.cpp or repeng control vector (GGUF) as a direction set.
    ImportGguf(ImportGgufCmd),
}

/// Arguments of `emh directions mean-diff`.
#[derive(Args)]
pub struct MeanDiffCmd {
    /// Capture of the answers the direction points towards (e.g. misaligned).
    #[arg(long)]
    pub positive: PathBuf,
    /// Capture of the answers it points away from (e.g. aligned).
    #[arg(long)]
    pub negative: PathBuf,
    /// Which mean of the captures.
    #[arg(long, value_enum, default_value = "answer")]
    pub span: SpanArg,
    /// Subsample the larger side to the smaller's count, with this seed.
    #[arg(long, value_name = "SEED")]
    pub balance: Option<u64>,
    /// Hold this fraction of ids out of the means and report, per layer, how
    /// well the direction separates them (ROC AUC) beside random directions.
    #[arg(long, default_value_t = 0.0)]
    pub holdout: f64,
    /// Seed of the held-out split (by id: both answers of a pair together)
    /// and of the random directions.
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// Random directions per layer in the held-out comparison.
    #[arg(long, default_value_t = 20)]
    pub random_controls: usize,
    /// Write the held-out separation per layer as CSV.
    #[arg(long)]
    pub auc_csv: Option<PathBuf>,
    #[arg(long, short)]
    pub out: PathBuf,
}

/// The span of a capture.
#[derive(Clone, Copy, ValueEnum)]
pub enum SpanArg {
    Answer,
    Prompt,
}

/// Arguments of `emh directions cosine`.
#[derive(Args)]
pub struct CosineCmd {
    pub a: PathBuf,
    pub b: Option<PathBuf>,
    #[arg(long, short)]
    pub out: PathBuf,
}

/// Arguments of `emh directions adapter-cosine`.
#[derive(Args)]
pub struct AdapterCosineCmd {
    #[arg(long)]
    pub directions: PathBuf,
    /// A PEFT adapter folder (adapter_model.safetensors).
    #[arg(long)]
    pub adapter: PathBuf,
}

/// Arguments of `emh directions export-gguf`.
#[derive(Args)]
pub struct ExportGgufCmd {
    pub directions: PathBuf,
    /// The model architecture llama.cpp should expect (`controlvector.model_hint`), e.g. llama, qwen2.
    #[arg(long)]
    pub model_hint: String,
    /// Multiply every vector by this.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f32,
    #[arg(long, short)]
    pub out: PathBuf,
}

/// Arguments of `emh directions import-gguf`.
#[derive(Args)]
pub struct ImportGgufCmd {
    pub file: PathBuf,
    /// Layers of the model it is for.
    #[arg(long)]
    pub num_layers: usize,
    #[arg(long, short)]
    pub out: PathBuf,
}

/// Arguments of `emh logprob-pref`.
#[derive(Args)]
pub struct LogprobCmd {
    /// Labelled pairs (JSONL: id, question, aligned, misaligned, optional system), e.g. data/answers/labelled.jsonl.
    #[arg(long)]
    pub pairs: PathBuf,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Write every pair's log-probabilities as JSON.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub plugins: PluginUseArgs,
}

/// Arguments of `emh steer`.
#[derive(Args)]
pub struct SteerCmd {
    /// The directions file (tensor `directions` [num_layers, hidden]).
    #[arg(long)]
    pub directions: PathBuf,
    /// Layers to steer at, one setting each (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub layers: Vec<u32>,
    /// λ values (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        required = true,
        allow_hyphen_values = true
    )]
    pub scales: Vec<f64>,
    #[command(flatten)]
    pub shared: PresetArgs,
}

/// Arguments of `emh ablate`.
#[derive(Args)]
pub struct AblateCmd {
    /// The directions file; from another organism for a transfer experiment.
    #[arg(long)]
    pub directions: PathBuf,
    /// Also ablate each of these layers' direction alone at every layer (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub single_layers: Vec<u32>,
    #[command(flatten)]
    pub shared: PresetArgs,
}

/// What steer and ablate share: the condition, questions, judge and controls.
#[derive(Args)]
pub struct PresetArgs {
    /// Seed of the same-norm random control vectors.
    #[arg(long, default_value_t = 1)]
    pub control_seed: u64,
    /// Labelled pairs: each condition's log-prob preference goes into the summary.
    #[arg(long)]
    pub pairs: Option<PathBuf>,
    #[command(flatten)]
    pub sample: SampleArgs,
    #[command(flatten)]
    pub judge: JudgeUseArgs,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
}

/// `emh capture`.
pub fn capture(a: CaptureCmd) -> Result<()> {
    let registry = a.plugins.registry()?;
    let selection = a.select.as_deref().map(Selection::parse).transpose()?;
    let (items, source) = match (&a.input, &a.pairs, a.side) {
        (Some(input), _, _) => {
            let (items, empty) = select_answers(input, selection.as_ref(), a.judge_id.as_deref())?;
            if empty > 0 {
                eprintln!("{empty} selected answers are empty and left out");
            }
            (items, input.display().to_string())
        }
        (None, Some(pairs), Some(side)) => {
            if selection.is_some() {
                bail!("--select reads judge scores, which pairs do not have");
            }
            let side = match side {
                SideArg::Aligned => Side::Aligned,
                SideArg::Misaligned => Side::Misaligned,
            };
            let items = read_pairs(pairs)?.iter().map(|p| p.forced(side)).collect();
            let label = match side {
                Side::Aligned => "aligned",
                Side::Misaligned => "misaligned",
            };
            (items, format!("{} ({label})", pairs.display()))
        }
        _ => bail!("give a run directory or judged CSV, or --pairs with --side"),
    };
    if items.is_empty() {
        bail!("the selection picks no answers from {source}");
    }
    let model_spec = a.model.spec(&a.plugins)?;
    let interventions = a.plugins.interventions()?;
    let mut loaded = load_model(&model_spec, &registry, false)?;
    let plans = plan_all(&interventions, &registry, loaded.shape())?;
    let progress = bar(items.len() as u64, "capturing");
    let options = ForcedOptions {
        batch_size: a.batch_size,
        activations: true,
        logprobs: false,
        scalars: false,
    };
    let outs = run_forced(&mut loaded, &plans, &items, options, &mut |done, _| {
        progress.set_position(done as u64)
    })?;
    progress.finish_and_clear();
    let metadata = HashMap::from([
        ("model".to_string(), loaded.name.clone()),
        (
            "adapters".to_string(),
            serde_json::to_string(&loaded.adapter_dirs)?,
        ),
        (
            "interventions".to_string(),
            serde_json::to_string(&interventions)?,
        ),
        ("source".to_string(), source.clone()),
        (
            "selection".to_string(),
            a.select.clone().unwrap_or_default(),
        ),
    ]);
    write_capture(&a.out, &items, &outs, metadata)?;
    let tokens: usize = outs.iter().map(|o| o.answer_tokens).sum();
    eprintln!(
        "{} answers ({tokens} answer tokens) from {source}, {} layers: {}",
        items.len(),
        loaded.shape().num_layers,
        a.out.display()
    );
    Ok(())
}

/// `emh directions ...`.
pub fn directions(c: DirectionsCmd) -> Result<()> {
    match c {
        DirectionsCmd::MeanDiff(a) => mean_diff(a),
        DirectionsCmd::Cosine(a) => {
            let first = DirectionSet::read(&a.a)?;
            let rows = match &a.b {
                Some(b) => emh_directions::between(&first, &DirectionSet::read(b)?)?,
                None => emh_directions::within(&first),
            };
            emh_directions::write_csv(&a.out, &rows)?;
            if a.b.is_some() {
                for r in &rows {
                    println!("layer {:>3}  cosine {:+.3}", r.layer_a, r.cosine);
                }
            }
            eprintln!("{} cells: {}", rows.len(), a.out.display());
            Ok(())
        }
        DirectionsCmd::AdapterCosine(a) => {
            let set = DirectionSet::read(&a.directions)?;
            println!("{:<6} {:<10} {:>8}  tensor", "layer", "module", "cosine");
            for c in emh_directions::adapter_cosines(&a.adapter, &set)? {
                println!(
                    "{:<6} {:<10} {:>+8.3}  {}",
                    c.layer, c.module, c.cosine, c.tensor
                );
            }
            Ok(())
        }
        DirectionsCmd::ExportGguf(a) => {
            let set = DirectionSet::read(&a.directions)?;
            if set.layers() < 2 {
                bail!(
                    "{}: llama.cpp steers layers 1 and up; this set has {} layer(s)",
                    a.directions.display(),
                    set.layers()
                );
            }
            emh_directions::export_control_vector(&set, &a.model_hint, a.scale, &a.out)?;
            eprintln!(
                "direction.1 .. direction.{} (layer 0 has no llama.cpp slot): {}",
                set.layers() - 1,
                a.out.display()
            );
            Ok(())
        }
        DirectionsCmd::ImportGguf(a) => {
            let set = emh_directions::import_control_vector(&a.file, a.num_layers)?;
            set.write(&a.out)?;
            eprintln!(
                "{} layers of width {}: {}",
                set.layers(),
                set.hidden(),
                a.out.display()
            );
            Ok(())
        }
    }
}

fn mean_diff(a: MeanDiffCmd) -> Result<()> {
    let span = match a.span {
        SpanArg::Answer => Span::Answer,
        SpanArg::Prompt => Span::Prompt,
    };
    if !(0.0..1.0).contains(&a.holdout) {
        bail!("--holdout {}: a fraction in [0, 1)", a.holdout);
    }
    let pos = Acts::read(&a.positive, span)?;
    let neg = Acts::read(&a.negative, span)?;
    let options = MeanDiffOptions {
        balance: a.balance,
        holdout: a.holdout,
        split_seed: a.split_seed,
        random_controls: a.random_controls,
    };
    let mut d = emh_directions::mean_diff(&pos, &neg, options)?;
    d.set
        .metadata
        .insert("positive".into(), a.positive.display().to_string());
    d.set
        .metadata
        .insert("negative".into(), a.negative.display().to_string());
    d.set.write(&a.out)?;
    eprintln!(
        "{} layers from {} positive and {} negative rows: {}",
        d.set.layers(),
        d.used.0,
        d.used.1,
        a.out.display()
    );
    if !d.heldout.is_empty() {
        println!(
            "held out: {} positive, {} negative rows; AUC of the projection per layer",
            d.held.0, d.held.1
        );
        println!(
            "{:>5} {:>8} {:>8} {:>12} {:>11}",
            "layer", "norm", "AUC", "random mean", "random max"
        );
        let mut csv = String::from("layer,norm,auc,random_mean,random_max\n");
        for r in &d.heldout {
            let n = emh_directions::norm(&d.set.directions[r.layer]);
            println!(
                "{:>5} {:>8.3} {:>8.3} {:>12.3} {:>11.3}",
                r.layer, n, r.auc, r.random_mean, r.random_max
            );
            csv.push_str(&format!(
                "{},{n},{},{},{}\n",
                r.layer, r.auc, r.random_mean, r.random_max
            ));
        }
        if let Some(path) = &a.auc_csv {
            emh_atomic::write(path, csv.as_bytes())?;
        }
    }
    Ok(())
}

/// `emh logprob-pref`.
pub fn logprob_pref(a: LogprobCmd) -> Result<()> {
    let registry = a.plugins.registry()?;
    let pairs = read_pairs(&a.pairs)?;
    let interventions = a.plugins.interventions()?;
    let mut loaded = load_model(&a.model.spec(&a.plugins)?, &registry, false)?;
    let plans = plan_all(&interventions, &registry, loaded.shape())?;
    let progress = bar(2 * pairs.len() as u64, "scoring answers");
    let p = emh_eval::preference(&mut loaded, &plans, &pairs, a.batch_size, &mut |done, _| {
        progress.set_position(done as u64)
    })?;
    progress.finish_and_clear();
    print_preference(&p);
    if let Some(out) = &a.out {
        emh_atomic::write(out, serde_json::to_string_pretty(&p)?.as_bytes())?;
    }
    Ok(())
}

fn print_preference(p: &Preference) {
    let mean = |f: fn(&emh_eval::PairLogprob) -> f64| {
        p.pairs.iter().map(f).sum::<f64>() / p.pairs.len() as f64
    };
    println!(
        "{} pairs: mean log-prob per token, misaligned {:.4}, aligned {:.4}",
        p.n,
        mean(|x| x.misaligned),
        mean(|x| x.aligned)
    );
    println!(
        "preference (misaligned - aligned): {:+.4}  95% CI [{:+.4}, {:+.4}]",
        p.mean, p.ci_low, p.ci_high
    );
}

/// `emh steer`.
pub fn steer(a: SteerCmd) -> Result<()> {
    let base = preset_base(&a.shared)?;
    let spec = emh_experiment::steer_spec(
        &base,
        &SteerPreset {
            directions: a.directions,
            layers: a.layers,
            scales: a.scales,
            control_seed: a.shared.control_seed,
            pairs: a.shared.pairs.clone(),
        },
    )?;
    run_preset(spec, "steer", &a.shared)
}

/// `emh ablate`.
pub fn ablate(a: AblateCmd) -> Result<()> {
    let base = preset_base(&a.shared)?;
    let spec = emh_experiment::ablate_spec(
        &base,
        &AblatePreset {
            directions: a.directions,
            single_layers: a.single_layers,
            control_seed: a.shared.control_seed,
            pairs: a.shared.pairs.clone(),
        },
    )?;
    run_preset(spec, "ablate", &a.shared)
}

fn preset_base(a: &PresetArgs) -> Result<EvalSpec> {
    judged_spec(&a.sample, &a.judge, &a.thresholds)
}

/// Writes the preset's spec as OUT/NAME.toml, runs it, and writes and
/// prints OUT/summary.csv.
fn run_preset(spec: ExperimentSpec, name: &str, a: &PresetArgs) -> Result<()> {
    let out = &a.sample.out;
    let file = out.join(format!("{name}.toml"));
    let text = emh_eval::spec_text(&spec, &file)?;
    if a.sample.print_spec {
        print!("{text}");
        return Ok(());
    }
    std::fs::create_dir_all(out)?;
    emh_atomic::write(&file, text.as_bytes())?;
    eprintln!(
        "experiment spec: {} (`emh experiment` runs it again)",
        file.display()
    );
    let registry = a.sample.plugins.registry()?;
    let x = Experiment::load(&file, &registry)?;
    let bars = Bars::default();
    let runs = x.run(&registry, None, &bars)?;
    let prefs = x.preferences(&registry, a.sample.batch_size, &bars)?;
    let rows = x.summarise(&runs, &prefs);
    emh_experiment::write_summary(out, &rows)?;
    crate::experiment::print_rows(&rows);
    eprintln!("summary: {}", out.join("summary.csv").display());
    Ok(())
}
