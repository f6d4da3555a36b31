//! Progress bars for long work, as an observer of the library's runs.

use std::cell::RefCell;
use std::time::Instant;

use emh_eval::{Observer, SampleProgress};
use emh_plugins::JudgeProgress;
use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar for `len` steps of `what`.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:30}}] {{pos}}/{{len}} {{msg}} ({{elapsed}}, eta {{eta}})"
        ))
        .expect("valid template"),
    );
    bar
}

/// Draws sampling and judging on standard error.
#[derive(Default)]
pub struct Bars {
    current: RefCell<Option<(ProgressBar, Instant)>>,
    /// Groups whose sampling summary line was printed.
    summarised: RefCell<Vec<String>>,
}

impl Bars {
    fn with(&self, what: &str, f: impl FnOnce(&ProgressBar, f64)) {
        let mut cur = self.current.borrow_mut();
        let (bar, started) = cur.get_or_insert_with(|| (bar(0, what), Instant::now()));
        f(bar, started.elapsed().as_secs_f64().max(1e-9));
    }
}

impl Observer for Bars {
    fn message(&self, text: &str) {
        match &*self.current.borrow() {
            // `println` prints nothing where the bar is hidden (not a terminal).
            Some((bar, _)) => bar.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }

    fn sampling(&self, group: &str, p: SampleProgress) {
        self.with("sampling", |bar, secs| {
            bar.set_length(p.total as u64);
            bar.set_position(p.done as u64);
            let resumed = if p.resumed > 0 {
                format!(", {} resumed", p.resumed)
            } else {
                String::new()
            };
            let rate = p.new_tokens as f64 / secs;
            bar.set_message(format!("{rate:.1} tok/s{resumed}"));
            let mut summarised = self.summarised.borrow_mut();
            if p.done == p.total && !summarised.iter().any(|g| g == group) {
                summarised.push(group.to_string());
                bar.suspend(|| {
                    eprintln!(
                        "sampled {group}: {} answers{resumed}, {} new tokens in {secs:.1}s ({rate:.1} tok/s)",
                        p.total, p.new_tokens
                    )
                });
            }
        });
    }

    fn judging(&self, _run: &str, p: JudgeProgress) {
        self.with("judging", |bar, _| {
            bar.set_length(p.total as u64);
            bar.set_position(p.done as u64);
            bar.set_message(format!("{} cached, {} failed", p.cached, p.failed));
        });
    }

    fn done(&self) {
        if let Some((bar, _)) = self.current.borrow_mut().take() {
            bar.finish();
        }
    }
}
