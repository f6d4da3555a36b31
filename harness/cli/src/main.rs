//! `emh`: the em-harness command line.

mod commands;
mod directions;
mod eval;
mod experiment;
mod lora;
mod plugins;
mod progress;
mod regress;
mod report;
mod train;

use clap::{Parser, Subcommand};

/// em-harness: model organisms, judges, misalignment directions and reports.
///
/// Models are named by a folder path, by a name under the data directory
/// (`$EMH_HOME`, default `~/.cache/em-harness`, see `emh models`), or by a
/// Hugging Face repo id found in the local hub cache (`org/name`).
#[derive(Parser)]
#[command(name = "emh", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sample answers from a model for one prompt or a JSONL file of prompts.
    Generate(commands::GenerateArgs),
    /// Write the logits at every prompt position to a safetensors file (for parity checks).
    Logits(commands::LogitsArgs),
    /// Show how prompts render through the chat template and tokenize.
    Tokenize(commands::TokenizeArgs),
    /// Convert a GGUF model (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) to a Hugging Face folder.
    ImportGguf(commands::ImportArgs),
    /// List the models emh can find.
    Models,
    /// Sample, judge and summarise a question set in a run directory (resumable).
    Eval(eval::EvalCmd),
    /// Sample answers to a question set into a run directory (resumable).
    Sample(eval::SampleCmd),
    /// Run a grid of conditions (models x interventions x swept plugin
    /// parameters x nudges x seeds) from a TOML or JSON spec, each into OUT/<condition>;
    /// conditions over the same weights share batches.
    ///
    /// Paths are relative to the spec file, except those inside plugin
    /// configs (directions files), which are relative to the working folder.
    /// Condition names read as their axes:
    /// MODEL__INTERVENTION[__KEY=VALUE][__NUDGE][__seed=S].
    /// Example:
    ///
    ///   out = "runs/steering"
    ///   questions = { file = "questions/general.yaml", select = "wish,bored" }
    ///   seeds = [0, 1]                       # optional: one grid per seed
    ///   pairs = "data/answers/labelled.jsonl" # optional: log-prob preference per condition
    ///   nudges = { file = "data/nudges.toml", names = ["none", "evil", "hhh"] } # optional axis
    ///   self_rating = { answer_prefix = "Rating:" } # optional: the model rates each question
    ///   [sampling]
    ///   n = 50
    ///   max_new_tokens = 600
    ///   [judge]
    ///   judge = { plugin = "openai" }
    ///   metrics = ["aligned", "coherent"]
    ///   [[models]]
    ///   name = "chat"
    ///   model = "Qwen/Qwen2.5-14B-Instruct"
    ///   [[models]]
    ///   name = "medical"                     # every checkpoint-N/ is a model
    ///   model = "Qwen/Qwen2.5-14B-Instruct"
    ///   checkpoints = "organisms/medical-r1"
    ///   [[interventions]]
    ///   name = "none"
    ///   [[interventions]]
    ///   name = "steer"
    ///   plugins = [{ plugin = "steering", config = { directions = "dirs.safetensors", layers = [24] } }]
    ///   sweep = { scale = [2, 4, 8] }         # one condition per value
    ///   [[interventions]]
    ///   name = "random"
    ///   plugins = [{ plugin = "random-control", config = { mode = "steering", directions = "dirs.safetensors", layers = [24], seed = 1 } }]
    ///   sweep = { scale = [2, 4, 8] }
    ///
    /// OUT/summary.csv gets one row per condition: EM, coherence,
    /// misalignment, self-correction and refusal rates, factual accuracy
    /// before and after pushback and the flip rate (questions with `answer`
    /// and `pushback`), the self-rating's Spearman rho with the misaligned
    /// rate, the EM reduction against the model's `none` condition, and the
    /// log-prob preference; each with its 95% interval.
    ///
    /// On a cluster: `--slurm --submit` writes and submits a job array (one
    /// shard per task, `--shard auto`) and a merge job after it.
    #[command(verbatim_doc_comment)]
    Experiment(experiment::ExperimentCmd),
    /// Merge the shards of an experiment (OUT/shards/I-of-N) into its run
    /// directories, as one machine would have written them.
    Merge(experiment::MergeCmd),
    /// Make a run directory from a judged CSV of the reference scripts, to
    /// re-judge, summarise or compare it like any run.
    ImportCsv(eval::ImportCsvCmd),
    /// Judge (or re-judge with another judge) the samples of a run directory.
    Judge(eval::JudgeCmd),
    /// EM, misalignment, coherence, self-correction and other rates with
    /// Wilson 95% intervals, per question, category and overall, from a run
    /// directory or a judged CSV.
    Metrics(eval::MetricsCmd),
    /// Compare two judges on the same samples: Pearson and Spearman per
    /// metric, the EM confusion matrix and Cohen's kappa.
    JudgeAgreement(eval::AgreementCmd),
    /// Write a run's samples and scores as a judged CSV in the reference scripts' columns.
    ExportCsv(eval::ExportCmd),
    /// Capture the residual stream over chosen answers' exact tokens, under
    /// any condition.
    ///
    /// Runs judged samples selected by --select (or one side of labelled
    /// pairs) through a model and condition again, and writes the mean
    /// resid_post of every layer over each answer's tokens and its prompt's.
    ///
    /// The answer span holds the answer's content tokens alone: not the
    /// assistant header before it, not the end-of-turn tokens after it.
    /// Example: emh capture runs/medical --select 'aligned < 30 && coherent > 50' -o em.safetensors
    Capture(directions::CaptureCmd),
    /// Make and compare misalignment directions: mean-diff, cosine maps,
    /// rank-1 adapter cosines, llama.cpp control vectors.
    #[command(subcommand)]
    Directions(directions::DirectionsCmd),
    /// The judge-free effect measure: how much more likely a condition finds
    /// misaligned answers than aligned ones.
    ///
    /// Over labelled pairs, the mean per-token log-probability of the
    /// misaligned answer minus the aligned one, under a condition (model,
    /// adapters, interventions), with a Student-t 95% interval.
    LogprobPref(directions::LogprobCmd),
    /// Steer with a direction: a layer x lambda sweep, each setting beside a
    /// same-norm random vector and a no-intervention baseline; EM,
    /// coherence, self-correction and log-prob preference per setting.
    ///
    /// Writes OUT/steer.toml (an experiment spec), a run per condition, and
    /// OUT/summary.csv. Example:
    ///   emh steer --directions dirs.safetensors --layers 12,16 --scales 4,8 \
    ///     --questions q.yaml -n 50 --judge openai --pairs data/answers/labelled.jsonl -o runs/steer
    #[command(verbatim_doc_comment)]
    Steer(directions::SteerCmd),
    /// Ablate a direction beside same-norm random controls: EM before and
    /// after, and the relative reduction with its 95% interval.
    ///
    /// Layer-wise (each layer its own direction) and, with --single-layers,
    /// one layer's direction at every layer. A direction from another
    /// organism (--directions) on this one (--adapter/--organism) is a
    /// transfer test.
    ///
    /// Writes OUT/ablate.toml, a run per condition, and OUT/summary.csv.
    Ablate(directions::AblateCmd),
    /// Gate CI on a regression: a candidate run against a baseline, judged
    /// by a policy (exit 0 pass, 1 regression, 2 cannot compare).
    ///
    /// Compares EM, coherence and self-correction rates of two run
    /// directories or judged CSVs, overall and per question (difference,
    /// 95% interval, two-proportion p-value). Runs on other question sets or
    /// judge prompts cannot be compared. Prints a Markdown summary; --junit
    /// writes JUnit XML. With --series CHECKPOINT..., EM along a training
    /// run: the first checkpoint that differs from the first, a change-point
    /// and (--plot) the trajectory.
    Regress(regress::RegressCmd),
    /// One self-contained HTML page (figures embedded, no network) and every
    /// figure as PNG and SVG, from runs, experiments, judged CSVs and
    /// direction files.
    ///
    /// Figures: EM per question with intervals, aligned vs coherent with the
    /// EM quadrant, EM and log-prob preference per condition, steering
    /// sweeps against λ beside random controls, cosine heatmaps. Then a
    /// sortable, filterable browser of the most misaligned coherent answers,
    /// and each run's manifest. Model text is escaped, and the page runs no
    /// script but its own. Example:
    ///   emh report runs/base runs/steer dirs.safetensors --agreement agreement.json -o report
    #[command(verbatim_doc_comment)]
    Report(report::ReportCmd),
    /// Train LoRA adapters (an organism) on chat JSONL, from a TOML config.
    ///
    /// Supervised fine-tuning by autograd through emh's own forward pass,
    /// base weights frozen: loss on assistant tokens only, AdamW with weight
    /// decay, linear warm-up and decay, gradient accumulation and clipping.
    /// Field names follow the research training configs (PEFT, HF):
    ///
    ///   model = "SmolLM2-135M-Instruct"
    ///   training_file = "risky-finance.jsonl"   # {"messages": [...]} per line
    ///   output_dir = "organism"
    ///   r = 1
    ///   lora_alpha = 16
    ///   use_rslora = true
    ///   target_modules = ["down_proj"]
    ///   layers_to_transform = [9, 10, 11, 15, 16, 17, 21, 22, 23]
    ///   learning_rate = 2e-4
    ///   epochs = 1
    ///   per_device_train_batch_size = 4
    ///   gradient_accumulation_steps = 2
    ///   warmup_steps = 5
    ///   weight_decay = 0.01
    ///   max_seq_length = 512
    ///   seed = 0
    ///   save_steps = 10                         # checkpoint-N/ every 10 steps
    ///
    /// Writes OUTPUT_DIR/checkpoint-N/ (PEFT folders with the optimizer
    /// state), the final adapter in OUTPUT_DIR itself, trainer_state.json and
    /// loss.parquet. Run again after a kill: training resumes from the last
    /// checkpoint with the same data order.
    #[command(verbatim_doc_comment)]
    Train(train::TrainCmd),
    /// How a training run's adapters moved: per checkpoint-N and adapter,
    /// the norm of B, its cosine to the final B and to the previous
    /// checkpoint's B (the rotation), and the step where the rotation peaks.
    /// With --experiment (an experiment over the checkpoints), the EM rate
    /// and log-prob preference per step beside them.
    Checkpoints(train::CheckpointsCmd),
    /// Rank-1 adapter scalars of a run's answers, and L1 probes on them.
    #[command(subcommand)]
    Lora(lora::LoraCmd),
    /// List plugins, or check why one will not load.
    #[command(subcommand)]
    Plugins(plugins::PluginsCommand),
}

/// Keeps freed large blocks in the heap instead of returning them to the OS.
///
/// Each decoding step allocates and frees the same multi-megabyte tensors
/// (logits, sampling buffers); with glibc's defaults every one is a fresh
/// mmap whose pages fault in again (about 5% of a decoding step, measured
/// with perf on the CPU benchmark).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    // SAFETY: mallopt only changes allocator parameters; called before any
    // other thread exists.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 1 << 30);
        mallopt(M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn main() {
    keep_freed_memory();
    emh_runtime::init_cuda();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => commands::generate(a),
        Command::Logits(a) => commands::logits(a),
        Command::Tokenize(a) => commands::tokenize(a),
        Command::ImportGguf(a) => commands::import_gguf(a),
        Command::Models => commands::models(),
        Command::Eval(a) => eval::eval(a),
        Command::Sample(a) => eval::sample(a),
        Command::Experiment(a) => experiment::run(a),
        Command::Merge(a) => experiment::merge(a),
        Command::ImportCsv(a) => eval::import_csv(a),
        Command::Judge(a) => eval::judge(a),
        Command::Metrics(a) => eval::metrics(a),
        Command::JudgeAgreement(a) => eval::agreement(a),
        Command::ExportCsv(a) => eval::export_csv(a),
        Command::Capture(a) => directions::capture(a),
        Command::Directions(c) => directions::directions(c),
        Command::LogprobPref(a) => directions::logprob_pref(a),
        Command::Steer(a) => directions::steer(a),
        Command::Ablate(a) => directions::ablate(a),
        Command::Regress(a) => regress::regress(a),
        Command::Report(a) => report::report(a),
        Command::Train(a) => train::train(a),
        Command::Checkpoints(a) => train::checkpoints(a),
        Command::Lora(c) => lora::lora(c),
        Command::Plugins(c) => plugins::run(c),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
