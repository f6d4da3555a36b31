//! Plugins as users meet them: built-ins and an out-of-tree plugin load
//! through one path, a plugin for another interface version is refused with
//! both versions named, and a panicking plugin is an error, not a crash.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{emh, emh_bin, emh_ok, s};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds a copy of the template plugin out of tree against the interface
/// crate at `api`, under package name `package`; returns the library.
fn build_template(dir: &Path, api: &Path, package: &str) -> PathBuf {
    let src = root().join("plugins/template");
    let crate_dir = dir.join(package);
    std::fs::create_dir_all(crate_dir.join("src")).unwrap();
    std::fs::copy(src.join("src/lib.rs"), crate_dir.join("src/lib.rs")).unwrap();
    let manifest = std::fs::read_to_string(src.join("Cargo.toml"))
        .unwrap()
        .replace(
            "name = \"emh-plugin-template\"",
            &format!("name = \"{package}\""),
        )
        .replace(
            "path = \"../../harness/plugin-api\"",
            &format!("path = {:?}", s(api)),
        );
    std::fs::write(crate_dir.join("Cargo.toml"), manifest).unwrap();
    // Same dependency versions as the workspace, and no registry access needed.
    std::fs::copy(root().join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    let out = Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .args(["build", "--release", "--offline", "--quiet"])
        .current_dir(&crate_dir)
        // Shared by both builds, so dependencies compile once.
        .env("CARGO_TARGET_DIR", root().join("target/plugin-builds"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building {package} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lib = root()
        .join("target/plugin-builds/release")
        .join(format!("lib{}.so", package.replace('-', "_")));
    assert!(lib.is_file(), "{} was not built", lib.display());
    // Copy out: the shared target folder holds other plugins too.
    let dest = dir.join(lib.file_name().unwrap());
    std::fs::copy(&lib, &dest).unwrap();
    dest
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The generated token ids of a one-prompt `emh generate`.
fn tokens(out: &std::process::Output) -> serde_json::Value {
    let line: serde_json::Value = serde_json::from_str(stdout(out).trim()).unwrap();
    assert!(line["tokens"].is_array(), "{line}");
    line["tokens"].clone()
}

#[test]
fn built_in_plugins_are_listed_with_kind_version_and_origin() {
    let out = stdout(&emh_ok(&["plugins", "list"]));
    for name in [
        "steering",
        "mean-diff-ablation",
        "random-control",
        "adapter-scaling",
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not listed:\n{out}"));
        assert!(
            line.contains("intervention") && line.contains("0.1.0") && line.contains("built-in"),
            "{line}"
        );
    }
    assert!(
        !out.contains("test-panicking"),
        "test fixtures are not built-ins:\n{out}"
    );
}

/// The template builds out of tree, loads like a built-in, and its
/// intervention changes the model's output.
#[test]
fn the_template_builds_out_of_tree_and_loads_like_the_built_ins() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = build_template(
        tmp.path(),
        &root().join("harness/plugin-api"),
        "emh-plugin-template",
    );
    let check = stdout(&emh_ok(&[
        "plugins",
        "check",
        s(&lib),
        "--config",
        "{\"factor\": 0.5}",
    ]));
    assert!(
        check.contains("loads: template-scale 0.1.0 (intervention plugin"),
        "{check}"
    );
    assert!(check.contains("config: valid"), "{check}");

    let dir = lib.parent().unwrap();
    let listed = stdout(&emh_ok(&["plugins", "list", "--plugin-dir", s(dir)]));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("template-scale") && l.contains("plugin-dir")),
        "{listed}"
    );
    let via_env = Command::new(emh_bin())
        .args(["plugins", "list"])
        .env("EMH_PLUGIN_PATH", dir)
        .output()
        .unwrap();
    assert!(stdout(&via_env)
        .lines()
        .any(|l| l.starts_with("template-scale") && l.contains("EMH_PLUGIN_PATH")));

    // The plugin must change the model: scaling the residual stream by 0.5
    // gives another greedy answer, and scaling by 1 (the identity) the same.
    let base = [
        "generate",
        "--device",
        "cpu",
        "--prompt",
        "Name a fruit.",
        "--greedy",
        "--max-new-tokens",
        "12",
    ];
    let plain = tokens(&emh_ok(&base));
    let with = |factor: &str| {
        let config = format!("template-scale={{\"factor\": {factor}}}");
        let mut args = base.to_vec();
        args.extend(["--plugin-dir", s(dir), "--intervention", &config]);
        tokens(&emh_ok(&args))
    };
    assert_ne!(with("0.5"), plain, "factor 0.5 changed nothing");
    assert_eq!(with("1.0"), plain, "factor 1 is not the identity");
    let bad = emh(&["plugins", "check", s(&lib), "--config", "{\"factr\": 1}"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown field `factr`"));
}

#[test]
fn a_plugin_built_against_another_interface_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // The interface crate as the next minor release would be: same code, a later version.
    let ours = emh_plugin_api::INTERFACE_VERSION;
    let (major, rest) = ours.split_once('.').unwrap();
    let minor: u32 = rest.split('.').next().unwrap().parse().unwrap();
    let later = format!("{major}.{}.0", minor + 1);
    let api = tmp.path().join("plugin-api-later");
    std::fs::create_dir_all(api.join("src")).unwrap();
    let src = root().join("harness/plugin-api");
    for f in ["src/lib.rs", "src/plan.rs", "src/config.rs", "src/judge.rs"] {
        std::fs::copy(src.join(f), api.join(f)).unwrap();
    }
    let manifest = std::fs::read_to_string(src.join("Cargo.toml")).unwrap();
    let current = format!("version = \"{ours}\"");
    assert!(manifest.contains(&current));
    std::fs::write(
        api.join("Cargo.toml"),
        manifest.replace(&current, &format!("version = \"{later}\"")),
    )
    .unwrap();
    let lib = build_template(tmp.path(), &api, "emh-plugin-mismatched");

    let out = emh(&["plugins", "check", s(&lib)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("built against emh plugin interface {later}")),
        "{err}"
    );
    assert!(err.contains(&format!("this emh provides {ours}")), "{err}");
    let listed = stdout(&emh_ok(&[
        "plugins",
        "list",
        "--plugin-dir",
        s(lib.parent().unwrap()),
    ]));
    assert!(
        listed.contains("not loaded:") && listed.contains(&later),
        "{listed}"
    );
}

#[test]
fn a_panicking_plugin_is_an_error_and_emh_exits_cleanly() {
    let lib = emh_bin()
        .parent()
        .unwrap()
        .join("libpanicking_plugin_fixture.so");
    let out = emh(&[
        "generate",
        "--device",
        "cpu",
        "--prompt",
        "hi",
        "--max-new-tokens",
        "2",
        "--plugin",
        s(&lib),
        "--intervention",
        "test-panicking={}",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a panic must not abort: {err}");
    assert!(
        err.contains("plugin `test-panicking`: plugin panicked in plan: deliberate panic"),
        "{err}"
    );
}

/// Three interventions in one run are all applied and recorded, and each
/// of them alone changes the sampled tokens of a plain run with the same seed.
#[test]
fn several_interventions_run_side_by_side_and_are_recorded() {
    let v: Vec<String> = (0..576)
        .map(|i| format!("{}", ((i * 37 % 101) as f32 - 50.0) / 50.0))
        .collect();
    let vector = format!("[{}]", v.join(","));
    let interventions = [
        format!("steering={{\"vector\": {vector}, \"layers\": [5], \"scale\": 2}}"),
        format!("random-control={{\"mode\": \"steering\", \"seed\": 9, \"scale\": 2, \"vector\": {vector}, \"layers\": [5]}}"),
        format!("mean-diff-ablation={{\"vector\": {vector}}}"),
    ];
    let base = [
        "generate",
        "--device",
        "cpu",
        "--prompt",
        "hi",
        "--max-new-tokens",
        "4",
        "--seed",
        "3",
    ];
    let run = |chosen: &[&String]| {
        let mut args = base.to_vec();
        for i in chosen {
            args.extend(["--intervention", i.as_str()]);
        }
        emh_ok(&args)
    };
    let plain = tokens(&run(&[]));
    for i in &interventions {
        assert_ne!(
            tokens(&run(&[i])),
            plain,
            "{} alone changed nothing",
            &i[..i.find('=').unwrap()]
        );
    }
    let out = run(&interventions.iter().collect::<Vec<_>>());
    assert_ne!(tokens(&out), plain, "the three together changed nothing");
    let line: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let names: Vec<&str> = line["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["plugin"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["steering", "random-control", "mean-diff-ablation"]);
    let notes: serde_json::Value =
        serde_json::from_str(line["plugins"][1]["notes"].as_str().unwrap()).unwrap();
    assert_eq!(notes["seed"], 9);
}

#[test]
fn a_file_that_is_not_a_plugin_is_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("fake.so");
    std::fs::write(&fake, b"not a shared library").unwrap();
    let out = emh(&["plugins", "check", s(&fake)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains(s(&fake)) && err.contains("not a loadable emh plugin"),
        "{err}"
    );
    let unknown = emh(&[
        "generate",
        "--prompt",
        "hi",
        "--intervention",
        "no-such-plugin={}",
    ]);
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        err.contains("no plugin named `no-such-plugin`") && err.contains("steering"),
        "{err}"
    );
}
