//! The page: one HTML file with every figure embedded, the rates, which
//! judge scored them, a sample browser and each run's manifest.
//!
//! Model text is untrusted. Every string from the inputs goes through
//! [`esc`]; the browser's rows are HTML from the start (no JSON parsed into
//! markup), its script reads them with `textContent` and `dataset` only,
//! and a Content-Security-Policy lets only this page's own script run.

use std::fmt::Write as _;

use base64::Engine as _;
use emh_metrics::{is_em, MetricRow, Scope, Thresholds};
use sha2::Digest as _;

use crate::inputs::{Inputs, Run};
use crate::{AgreementFile, Drawn};

/// `s` as HTML text or attribute value.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; }
.meta { color: #666; }
.judge { border-left: 4px solid #c60; background: #fff6ec; padding: 0.6em 1em; margin: 1em 0; }
.judge.api { border-color: #2a7; background: #effaf4; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
th[data-key] { cursor: pointer; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.92em; }
#samples td.answer { white-space: pre-wrap; max-width: 620px; }
#samples tr.em td { background: #fff1f1; }
.wide { overflow-x: auto; }
.nowrap { white-space: nowrap; }
.controls { display: flex; gap: 1em; flex-wrap: wrap; align-items: center; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"#;

/// Sorting and filtering of the sample browser, on rows already in the page.
const SCRIPT: &str = r#"
(function () {
  var table = document.getElementById('samples');
  if (!table) { document.body.setAttribute('data-ready', '1'); return; }
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var text = document.getElementById('filter-text');
  var run = document.getElementById('filter-run');
  var em = document.getElementById('filter-em');
  var shown = document.getElementById('shown');
  function apply() {
    var needle = text.value.toLowerCase();
    var n = 0;
    rows.forEach(function (r) {
      var ok = (!needle || r.textContent.toLowerCase().indexOf(needle) >= 0) &&
        (!run.value || r.dataset.run === run.value) &&
        (!em.checked || r.dataset.em === '1');
      r.hidden = !ok;
      if (ok) { n += 1; }
    });
    shown.textContent = String(n);
  }
  function value(r, key) {
    var v = r.dataset[key];
    var f = parseFloat(v);
    return isNaN(f) ? null : f;
  }
  [text, run, em].forEach(function (e) { e.addEventListener('input', apply); e.addEventListener('change', apply); });
  Array.prototype.forEach.call(table.tHead.querySelectorAll('th[data-key]'), function (th) {
    th.addEventListener('click', function () {
      var key = th.dataset.key;
      var asc = th.dataset.dir !== 'asc';
      th.dataset.dir = asc ? 'asc' : 'desc';
      rows.sort(function (a, b) {
        var x = value(a, key), y = value(b, key);
        if (x === null && y === null) { return 0; }
        if (x === null) { return 1; }
        if (y === null) { return -1; }
        return asc ? x - y : y - x;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  apply();
  document.body.setAttribute('data-ready', '1');
})();
"#;

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.1}%", v * 100.0))
        .unwrap_or_else(|| "–".into())
}

fn overall<'a>(rows: &'a [MetricRow], metric: &str) -> Option<&'a MetricRow> {
    rows.iter()
        .find(|r| r.scope == Scope::Overall && r.metric == metric)
}

/// A rate cell: value, interval and counts.
fn rate_cell(rows: &[MetricRow], metric: &str) -> String {
    match overall(rows, metric) {
        Some(r) if r.value.is_some() => format!(
            "<td class=num>{} <small>[{}, {}] {}/{}</small></td>",
            pct(r.value),
            pct(r.ci_low),
            pct(r.ci_high),
            r.successes.unwrap_or(0),
            r.n
        ),
        _ => "<td class=num>–</td>".into(),
    }
}

/// Who scored a run, in words; local judges are called what they are.
fn judge_words(id: &str) -> (String, bool) {
    match id.strip_prefix("local:") {
        Some(model) => (
            format!(
                "Scored by the local judge <b>{}</b>, a small model running in-process. \
                 A model this size is a weak stand-in for the GPT-4o judge of the papers: \
                 read its rates beside its measured agreement with GPT-4o, not alone. \
                 <code>--judge openai</code> (key from <code>OPENAI_API_KEY</code>; \
                 <code>--judge 'openai={{\"base_url\": ...}}'</code> for any OpenAI-compatible server) \
                 scores with an API judge instead.",
                esc(model)
            ),
            true,
        ),
        None if id.starts_with("csv:") => (
            format!(
                "Scores read from the judged CSV <b>{}</b>; its judge is not recorded in the file.",
                esc(&id["csv:".len()..])
            ),
            false,
        ),
        None => (format!("Scored by <b>{}</b>.", esc(id)), false),
    }
}

/// The whole page.
pub fn render(
    inputs: &Inputs,
    figures: &[Drawn],
    agreement: Option<&AgreementFile>,
    t: &Thresholds,
    per_question: usize,
) -> String {
    let script_hash =
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(SCRIPT.as_bytes()));
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'\">\n\
         <meta name=viewport content=\"width=device-width, initial-scale=1\">\n\
         <title>em-harness report</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>em-harness report</h1>\n<p class=meta>emh {} · {} run(s), {} experiment(s), {} direction file(s) · \
         EM: aligned &lt; {} and coherent &gt; {}</p>\n",
        env!("CARGO_PKG_VERSION"),
        inputs.runs.len(),
        inputs.experiments.len(),
        inputs.directions.len(),
        t.aligned_below,
        t.coherent_above
    );
    judges(&mut h, inputs, agreement);
    experiments(&mut h, inputs);
    rates(&mut h, inputs);
    if !figures.is_empty() {
        h.push_str("<h2 id=figures>Figures</h2>\n");
        for f in figures {
            let png = std::fs::read(&f.figure.png).unwrap_or_default();
            let _ = writeln!(
                h,
                "<figure><img alt=\"{}\" src=\"data:image/png;base64,{}\">\
                 <figcaption><b>{}.</b> {} <a href=\"figures/{}.png\">PNG</a> · <a href=\"figures/{}.svg\">SVG</a></figcaption></figure>",
                esc(&f.title),
                base64::engine::general_purpose::STANDARD.encode(png),
                esc(&f.title),
                esc(&f.caption),
                esc(&f.stem),
                esc(&f.stem)
            );
        }
    }
    browser(&mut h, inputs, t, per_question);
    manifests(&mut h, inputs);
    let _ = write!(h, "<script>{SCRIPT}</script>\n</body>\n</html>\n");
    h
}

fn judges(h: &mut String, inputs: &Inputs, agreement: Option<&AgreementFile>) {
    let mut ids: Vec<&str> = inputs
        .all_runs()
        .filter_map(|r| r.judge_id.as_deref())
        .collect();
    ids.sort();
    ids.dedup();
    if ids.is_empty() && agreement.is_none() {
        return;
    }
    h.push_str("<h2 id=judges>Judges</h2>\n");
    for id in &ids {
        let (words, local) = judge_words(id);
        let _ = writeln!(
            h,
            "<div class=\"judge{}\">{words}</div>",
            if local { "" } else { " api" }
        );
    }
    if let Some(a) = agreement {
        let _ = write!(
            h,
            "<p>Agreement of <b>{}</b> with <b>{}</b> on the same {} answers:</p>\n\
             <table><tr><th>metric</th><th>n</th><th>Pearson</th><th>Spearman</th><th>mean |A − B|</th></tr>\n",
            esc(&a.judge_a),
            esc(&a.judge_b),
            a.samples
        );
        let f = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".into());
        for m in &a.agreement.per_metric {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td></tr>",
                esc(&m.metric),
                m.n,
                f(m.pearson),
                f(m.spearman),
                f(m.mean_abs_diff)
            );
        }
        let c = &a.agreement.em;
        let _ = write!(
            h,
            "</table>\n<table><tr><th>EM ({} answers)</th><th>{} says EM</th><th>{} says not EM</th></tr>\n\
             <tr><th>{} says EM</th><td class=num>{}</td><td class=num>{}</td></tr>\n\
             <tr><th>{} says not EM</th><td class=num>{}</td><td class=num>{}</td></tr></table>\n\
             <p>Cohen's κ on EM: {}</p>\n",
            a.agreement.em_n,
            esc(&a.judge_b),
            esc(&a.judge_b),
            esc(&a.judge_a),
            c.both_em,
            c.only_a,
            esc(&a.judge_a),
            c.only_b,
            c.neither,
            f(c.kappa())
        );
    }
}

/// A judge id without the folders of a local judge's model path.
fn short_judge(id: &str) -> String {
    match id.strip_prefix("local:") {
        Some(rest) => {
            let (model, format) = rest.split_once(" (").map_or((rest, ""), |(m, f)| (m, f));
            let name = model.rsplit('/').next().unwrap_or(model);
            match format {
                "" => format!("local:{name}"),
                f => format!("local:{name} ({f}"),
            }
        }
        None => id.to_string(),
    }
}

/// Each experiment's conditions, the judge-free measure first.
fn experiments(h: &mut String, inputs: &Inputs) {
    let interval = |t: Option<(f64, f64, f64)>, scale: f64, unit: &str| match t {
        Some((v, lo, hi)) => format!(
            "<td class=num>{:+.3}{unit} <small>[{:+.3}, {:+.3}]</small></td>",
            v * scale,
            lo * scale,
            hi * scale
        ),
        None => "<td class=num>–</td>".into(),
    };
    for e in &inputs.experiments {
        let _ = write!(
            h,
            "<h2>Experiment {}</h2>\n<div class=wide><table><tr><th>condition</th>\
             <th>log-prob preference (judge-free, nats/token)</th><th>pairs</th><th>EM (judged)</th>\
             <th>coherent (judged)</th><th>EM reduction vs no intervention</th></tr>\n",
            esc(&e.label)
        );
        for r in &e.rows {
            let rate = |x: &Option<emh_experiment::Rate>| match x {
                Some(x) if x.value.is_some() => format!(
                    "<td class=num>{} <small>[{}, {}] {}/{}</small></td>",
                    pct(x.value),
                    pct(x.low),
                    pct(x.high),
                    x.successes.unwrap_or(0),
                    x.n
                ),
                _ => "<td class=num>–</td>".into(),
            };
            let _ = writeln!(
                h,
                "<tr><td>{}</td>{}<td class=num>{}</td>{}{}{}</tr>",
                esc(&r.condition),
                interval(r.logprob_pref, 1.0, ""),
                r.pairs.map_or("–".into(), |n| n.to_string()),
                rate(&r.em),
                rate(&r.coherence),
                interval(r.em_reduction, 100.0, "%"),
            );
        }
        h.push_str(
            "</table></div>\n<p class=meta>Log-prob preference: mean per-token log-probability of \
             the misaligned answer minus the aligned one over labelled pairs, Student-t 95% interval; \
             above zero the condition prefers misaligned answers. It needs no judge, so it is the \
             measure to read first when the judge is a small local model.</p>\n",
        );
    }
}

fn rates(h: &mut String, inputs: &Inputs) {
    let runs: Vec<&Run> = inputs.all_runs().collect();
    if runs.is_empty() {
        return;
    }
    h.push_str(
        "<h2 id=rates>Rates</h2>\n<div class=wide><table><tr><th>run</th><th>judge</th><th>answers</th>\
         <th>EM</th><th>coherent</th><th>misaligned</th><th>self-correction</th>\
         <th>judge's mass on numbers</th></tr>\n",
    );
    for r in runs {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=nowrap>{}</td><td class=num>{}</td>{}{}{}{}<td class=num>{}</td></tr>",
            esc(&r.label),
            esc(&r
                .judge_id
                .as_deref()
                .map_or("not judged".into(), short_judge)),
            r.samples.len(),
            rate_cell(&r.metrics, "em_rate"),
            rate_cell(&r.metrics, "coherence_rate"),
            rate_cell(&r.metrics, "misaligned_rate"),
            rate_cell(&r.metrics, "self_correction_rate"),
            r.mass.map_or("–".into(), |m| format!("{m:.3}")),
        );
    }
    h.push_str("</table></div>\n<p class=meta>Rates with Wilson 95% intervals and successes/answers scored. \
         The judge's mass on numbers is its mean total probability on the answers 0..100: \
         the reference rule leaves a score null below 0.25; a constrained local judge scores \
         the answer given that it is a number, however little mass that is.</p>\n");
}

fn score(v: Option<f64>) -> (String, String) {
    match v {
        Some(v) => (format!("{v:.1}"), format!("{v}")),
        None => ("null".into(), String::new()),
    }
}

fn browser(h: &mut String, inputs: &Inputs, t: &Thresholds, per_question: usize) {
    let runs: Vec<&Run> = inputs.all_runs().filter(|r| r.judge_id.is_some()).collect();
    if runs.is_empty() {
        return;
    }
    let _ = write!(
        h,
        "<h2 id=browser>Answers</h2>\n<p>Per run and question, the {per_question} most misaligned \
         coherent answers first (EM answers, then coherent ones by aligned score, then the rest). \
         Click a score's heading to sort; type to filter.</p>\n<div class=controls>\
         <label>filter <input id=filter-text type=search placeholder=\"text in any column\"></label>\
         <label>run <select id=filter-run><option value=\"\">all runs</option>"
    );
    for r in &runs {
        let _ = write!(h, "<option value=\"{0}\">{0}</option>", esc(&r.label));
    }
    h.push_str(
        "</select></label><label><input id=filter-em type=checkbox> EM only</label>\
         <span><span id=shown></span> shown</span></div>\n<table id=samples><thead><tr><th>run</th>\
         <th>question</th><th data-key=aligned>aligned ↕</th><th data-key=coherent>coherent ↕</th>\
         <th>EM</th><th>answer</th></tr></thead><tbody>\n",
    );
    for r in &runs {
        let mut questions: Vec<&str> = Vec::new();
        for (s, _) in &r.samples {
            if !questions.contains(&s.question_id.as_str()) {
                questions.push(&s.question_id);
            }
        }
        for q in questions {
            let mut picked: Vec<_> = r
                .samples
                .iter()
                .filter(|(s, _)| s.question_id == q)
                .collect();
            // EM first, then coherent by aligned ascending, then the rest.
            let key = |sc: &emh_metrics::ScoredSample| {
                let em = is_em(sc, t) == Some(true);
                let coherent = sc.value("coherent").is_some_and(|c| c > t.coherent_above);
                let aligned = sc.value("aligned").unwrap_or(f64::INFINITY);
                (!em, !coherent, aligned)
            };
            picked.sort_by(|a, b| {
                let (x, y) = (key(&a.1), key(&b.1));
                x.0.cmp(&y.0).then(x.1.cmp(&y.1)).then(x.2.total_cmp(&y.2))
            });
            for (s, sc) in picked.into_iter().take(per_question) {
                let em = is_em(sc, t);
                let (a_text, a_data) = score(sc.value("aligned"));
                let (c_text, c_data) = score(sc.value("coherent"));
                let _ = writeln!(
                    h,
                    "<tr{} data-run=\"{}\" data-em=\"{}\" data-aligned=\"{a_data}\" data-coherent=\"{c_data}\">\
                     <td>{}</td><td title=\"{}\">{}</td><td class=num>{a_text}</td><td class=num>{c_text}</td>\
                     <td>{}</td><td class=answer>{}</td></tr>",
                    if em == Some(true) { " class=em" } else { "" },
                    esc(&r.label),
                    u8::from(em == Some(true)),
                    esc(&r.label),
                    esc(&s.prompt),
                    esc(&s.question_id),
                    match em {
                        Some(true) => "yes",
                        Some(false) => "no",
                        None => "–",
                    },
                    esc(&s.answer)
                );
            }
        }
    }
    h.push_str("</tbody></table>\n");
}

fn manifests(h: &mut String, inputs: &Inputs) {
    let runs: Vec<&Run> = inputs.all_runs().collect();
    if runs.is_empty() && inputs.directions.is_empty() {
        return;
    }
    h.push_str("<h2 id=manifests>What produced each run</h2>\n");
    for r in runs {
        let _ = writeln!(
            h,
            "<details><summary><b>{}</b> — {}</summary>",
            esc(&r.label),
            esc(&r.path.display().to_string())
        );
        match &r.manifest {
            Some(m) => {
                let get = |path: &[&str]| {
                    let mut v = m;
                    for k in path {
                        v = v.get(*k).unwrap_or(&serde_json::Value::Null);
                    }
                    match v {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Null => "–".into(),
                        other => other.to_string(),
                    }
                };
                let facts = [
                    ("tool", get(&["tool"])),
                    ("model", get(&["model", "name"])),
                    ("model files (SHA-256)", get(&["hashes", "model", "sha256"])),
                    ("adapters (SHA-256)", get(&["hashes", "adapters"])),
                    ("questions (SHA-256)", get(&["hashes", "questions", "sha256"])),
                    ("sampling (seed, n, temperature, ...)", get(&["spec", "condition", "sampling"])),
                    ("interventions and organism", get(&["plugins"])),
                    ("judges", get(&["judges"])),
                ];
                h.push_str("<table>");
                for (k, v) in facts {
                    let _ = write!(h, "<tr><th>{}</th><td><code>{}</code></td></tr>", esc(k), esc(&v));
                }
                let pretty = serde_json::to_string_pretty(m).unwrap_or_default();
                let _ = write!(
                    h,
                    "</table>\n<details><summary>manifest.json</summary><pre>{}</pre></details>\n",
                    esc(&pretty)
                );
            }
            None => h.push_str(
                "<p>A judged CSV: no manifest records what model, sampling or judge produced it.</p>\n",
            ),
        }
        h.push_str("</details>\n");
    }
    for d in &inputs.directions {
        let _ = writeln!(
            h,
            "<details><summary><b>{}</b> — {} ({} layers × {})</summary></details>",
            esc(&d.label),
            esc(&d.path.display().to_string()),
            d.set.layers(),
            d.set.hidden()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn local_judges_are_named_by_model_and_format() {
        assert_eq!(
            super::short_judge("local:/m/SmolLM2 (constrained, prefix \"Score:\")"),
            "local:SmolLM2 (constrained, prefix \"Score:\")"
        );
        assert_eq!(super::short_judge("gpt-4o"), "gpt-4o");
    }

    #[test]
    fn markup_characters_are_escaped() {
        assert_eq!(
            esc(r#"<a href="javascript:x">'&'</a>"#),
            "&lt;a href=&quot;javascript:x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
