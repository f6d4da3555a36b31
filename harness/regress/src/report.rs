//! The comparison as Markdown (for CI job summaries) and JUnit XML (one test
//! case per rate and scope).

use crate::{Check, Scope, Side, Verdict};

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn rate((x, n): (u64, u64)) -> String {
    if n == 0 {
        "-".into()
    } else {
        format!("{} ({x}/{n})", pct(x as f64 / n as f64))
    }
}

fn scope(s: Scope) -> &'static str {
    match s {
        Scope::Overall => "overall",
        Scope::Question => "question",
    }
}

fn change(c: &Check) -> (String, String) {
    match c.difference {
        Some(d) => (
            format!(
                "{:+.1} pts [{:+.1}, {:+.1}]",
                d.diff * 100.0,
                d.ci_low * 100.0,
                d.ci_high * 100.0
            ),
            format!("{:.3}", d.p),
        ),
        None => ("-".into(), "-".into()),
    }
}

fn rule_text(c: &Check) -> String {
    let r = &c.rule;
    format!(
        "{:?} if {} {} by more than {} pts with p < {}",
        r.action,
        r.metric,
        match r.change {
            crate::Change::Increase => "rises",
            crate::Change::Decrease => "drops",
        },
        r.by_more_than * 100.0,
        r.p_below
    )
    .to_lowercase()
}

/// A Markdown summary: the verdict, then every overall rate and every
/// question rate that warned or failed.
pub fn markdown(base: &Side, cand: &Side, checks: &[Check]) -> String {
    let count = |v: Verdict| checks.iter().filter(|c| c.verdict == v).count();
    let worst = checks
        .iter()
        .map(|c| c.verdict)
        .max()
        .unwrap_or(Verdict::Pass);
    let mut out = format!(
        "## emh regress: {}\n\n{} failed, {} warned, {} passed.\n\n- baseline: `{}` (judge `{}`)\n- candidate: `{}` (judge `{}`)\n\n",
        match worst {
            Verdict::Pass => "pass",
            Verdict::Warn => "pass with warnings",
            Verdict::Fail => "REGRESSION",
        },
        count(Verdict::Fail),
        count(Verdict::Warn),
        count(Verdict::Pass),
        base.input.display(),
        base.judge_id,
        cand.input.display(),
        cand.judge_id
    );
    out.push_str("| verdict | rate | scope | baseline | candidate | change [95% CI] | p | rule |\n|---|---|---|---|---|---|---|---|\n");
    let mut hidden = 0;
    for c in checks {
        if c.scope == Scope::Question && c.verdict == Verdict::Pass {
            hidden += 1;
            continue;
        }
        let (ch, p) = change(c);
        let group = if c.scope == Scope::Overall {
            "overall".to_string()
        } else {
            format!("`{}`", c.group.replace('|', "\\|").replace('`', "'"))
        };
        out.push_str(&format!(
            "| {} | {} | {group} | {} | {} | {ch} | {p} | {} |\n",
            match c.verdict {
                Verdict::Pass => "pass",
                Verdict::Warn => "warn",
                Verdict::Fail => "**fail**",
            },
            c.metric,
            rate(c.baseline),
            rate(c.candidate),
            rule_text(c)
        ));
    }
    if hidden > 0 {
        out.push_str(&format!(
            "\n{hidden} per-question rates passed and are not listed.\n"
        ));
    }
    out
}

fn xml(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".into(),
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '"' => "&quot;".into(),
            '\'' => "&apos;".into(),
            c if (c as u32) < 0x20 && !"\t\n\r".contains(c) => "?".into(),
            c => c.to_string(),
        })
        .collect()
}

/// JUnit XML: one test case per rate, scope and question; failures as
/// `<failure>`, warnings in `<system-out>`.
pub fn junit(checks: &[Check]) -> String {
    let failures = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"emh regress\" tests=\"{n}\" failures=\"{failures}\">\n  <testsuite name=\"emh regress\" tests=\"{n}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\">\n",
        n = checks.len()
    );
    for c in checks {
        let (ch, p) = change(c);
        let detail = format!(
            "{}: baseline {}, candidate {}, change {ch}, p {p}; rule: {}",
            c.metric,
            rate(c.baseline),
            rate(c.candidate),
            rule_text(c)
        );
        out.push_str(&format!(
            "    <testcase classname=\"{}.{}\" name=\"{}\">",
            xml(&c.metric),
            scope(c.scope),
            xml(&c.group)
        ));
        match c.verdict {
            Verdict::Pass => {}
            Verdict::Warn => out.push_str(&format!(
                "<system-out>warning: {}</system-out>",
                xml(&detail)
            )),
            Verdict::Fail => out.push_str(&format!(
                "<failure message=\"{}\">{}</failure>",
                xml(&format!("{} regressed", c.metric)),
                xml(&detail)
            )),
        }
        out.push_str("</testcase>\n");
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}
