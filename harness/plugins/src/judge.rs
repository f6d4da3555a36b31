//! Judging through a judge plugin: cache first, the plugin for the rest in
//! batches, every batch's answers stored before the next starts.

use emh_judge_core::{aggregate, Cache, CacheKey, Judgment, TopToken, MIN_MASS};
use emh_plugin_api::{JudgeIdentity, JudgeOutput, JudgeUsage};

use crate::{Plugin, PluginError};

/// A judge plugin with its config, identity and judgment cache.
pub struct Judge<'a> {
    pub plugin: &'a Plugin,
    config: String,
    pub identity: JudgeIdentity,
    cache: Option<Cache>,
    /// Prompts per call to the plugin; an interrupted run loses at most one
    /// batch. Unbounded for judges that want one call (batch jobs).
    batch_size: usize,
}

/// One judged prompt: its judgment, or why the judge gave none.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    pub judgment: Result<Judgment, String>,
    /// Read from the cache rather than asked.
    pub cached: bool,
}

/// How far a judging run has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JudgeProgress {
    pub done: usize,
    pub total: usize,
    pub cached: usize,
    pub failed: usize,
}

/// The score of a plugin's output, as every judge is scored.
fn score(output: JudgeOutput) -> Result<Judgment, String> {
    match output {
        JudgeOutput::Top { top } => Ok(aggregate(
            top.into_iter()
                .map(|t| TopToken {
                    token: t.token,
                    logprob: t.logprob,
                })
                .collect(),
        )),
        JudgeOutput::Numbers {
            probs,
            preferred,
            min_mass,
        } if probs.len() == 101 => Ok(Judgment::from_number_probs(
            &probs,
            &preferred,
            min_mass.unwrap_or(MIN_MASS),
        )),
        JudgeOutput::Numbers { probs, .. } => Err(format!(
            "the judge gave {} number probabilities instead of 101",
            probs.len()
        )),
        JudgeOutput::Failed { error } => Err(error),
    }
}

impl<'a> Judge<'a> {
    /// A judge from a judge plugin and its JSON config, asking `batch_size`
    /// prompts per call (all at once if the judge wants one call); `cache`
    /// stores every judgment.
    pub fn new(
        plugin: &'a Plugin,
        config: &str,
        cache: Option<Cache>,
        batch_size: usize,
    ) -> Result<Self, PluginError> {
        let identity = plugin.judge_identity(config)?;
        Ok(Judge {
            plugin,
            config: config.to_string(),
            batch_size: if identity.one_call {
                usize::MAX
            } else {
                batch_size.max(1)
            },
            identity,
            cache,
        })
    }

    /// The cache key of a filled prompt for this judge.
    pub fn key(&self, prompt: &str) -> CacheKey {
        let id = &self.identity;
        CacheKey::new(&id.model, &id.endpoint, prompt, &id.params)
    }

    /// Judges filled prompts, in order; `on_progress` hears after every batch.
    /// A prompt the judge could not answer is an `Err` in its slot, so one
    /// bad request loses nothing else; a broken plugin or cache is an error.
    pub fn judge_all(
        &self,
        prompts: &[String],
        mut on_progress: impl FnMut(JudgeProgress),
    ) -> Result<(Vec<Judged>, JudgeUsage), PluginError> {
        let cache_err = |e: emh_judge_core::CacheError| PluginError::Call {
            plugin: self.plugin.name.clone(),
            reason: e.to_string(),
        };
        let mut results: Vec<Option<Judged>> = vec![None; prompts.len()];
        let mut todo = Vec::new();
        let mut progress = JudgeProgress {
            total: prompts.len(),
            ..Default::default()
        };
        for (i, prompt) in prompts.iter().enumerate() {
            let hit = match &self.cache {
                Some(c) => c.get(&self.key(prompt)).map_err(cache_err)?,
                None => None,
            };
            match hit {
                Some(j) => {
                    results[i] = Some(Judged {
                        judgment: Ok(j),
                        cached: true,
                    });
                    progress.cached += 1;
                    progress.done += 1;
                }
                None => todo.push(i),
            }
        }
        on_progress(progress);
        let mut usage = JudgeUsage::default();
        for batch in todo.chunks(self.batch_size) {
            let asked: Vec<String> = batch.iter().map(|&i| prompts[i].clone()).collect();
            let answer = self.plugin.judge(&self.config, &asked)?;
            usage.add(&answer.usage);
            for (&i, output) in batch.iter().zip(answer.outputs) {
                let judgment = score(output);
                match (&judgment, &self.cache) {
                    (Ok(j), Some(c)) => c.put(&self.key(&prompts[i]), j).map_err(cache_err)?,
                    (Err(_), _) => progress.failed += 1,
                    _ => {}
                }
                results[i] = Some(Judged {
                    judgment,
                    cached: false,
                });
                progress.done += 1;
            }
            on_progress(progress);
        }
        let judged = results
            .into_iter()
            .map(|r| r.expect("every prompt is judged or cached"))
            .collect();
        Ok((judged, usage))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emh_plugin_api::TokenLogprob;

    #[test]
    fn outputs_are_scored_as_every_judge_is() {
        let top = JudgeOutput::Top {
            top: vec![TokenLogprob {
                token: "80".into(),
                logprob: 0.0,
            }],
        };
        assert_eq!(score(top).unwrap().score, Some(80.0));
        let mut probs = vec![0.0; 101];
        probs[10] = 0.5;
        probs[30] = 0.5;
        let numbers = JudgeOutput::Numbers {
            probs: probs.clone(),
            preferred: "1".into(),
            min_mass: None,
        };
        assert_eq!(score(numbers).unwrap().score, Some(20.0));
        // A tenth of the mass: null by the reference rule, scored when constrained.
        let faint: Vec<f64> = probs.iter().map(|p| p / 10.0).collect();
        let reference = JudgeOutput::Numbers {
            probs: faint.clone(),
            preferred: "I".into(),
            min_mass: None,
        };
        assert_eq!(score(reference).unwrap().score, None);
        let constrained = JudgeOutput::Numbers {
            probs: faint,
            preferred: "I".into(),
            min_mass: Some(0.0),
        };
        let j = score(constrained).unwrap();
        assert!((j.score.unwrap() - 20.0).abs() < 1e-9 && (j.mass - 0.1).abs() < 1e-12);
        let short = JudgeOutput::Numbers {
            probs: vec![1.0; 3],
            preferred: "1".into(),
            min_mass: None,
        };
        assert!(score(short).unwrap_err().contains("3 number probabilities"));
        let failed = JudgeOutput::Failed {
            error: "HTTP 500 after 6 tries".into(),
        };
        assert_eq!(score(failed).unwrap_err(), "HTTP 500 after 6 tries");
    }
}
