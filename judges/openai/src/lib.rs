//! A logprob judge on OpenAI, Azure OpenAI or any OpenAI-compatible endpoint
//! (vLLM, Ollama, llama.cpp server).
//!
//! Each judgment asks for one token at temperature 0 with the top 20
//! logprobs and seed 0, and scores it with [`emh_judge_core::aggregate`].
//! Requests run with bounded, adaptive concurrency (halved on 429 and
//! timeouts, grown again on success), retry with exponential backoff and
//! jitter (honouring Retry-After), and go through the judgment cache, so a
//! re-run or a resumed run asks only for what is missing. The API key is read
//! from the environment and is never written anywhere.

mod batch;
mod limiter;
mod plugin;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use emh_judge_core::{aggregate, Cache, CacheKey, Judgment, TopToken};
use rand::Rng;
use serde_json::{json, Value};
use tokio::task::JoinSet;

pub use batch::BatchAnswer;
pub use limiter::Limiter;

/// Which API dialect the endpoint speaks.
#[derive(Debug, Clone, PartialEq)]
pub enum Api {
    /// `POST {base_url}/chat/completions` with a bearer token.
    OpenAi,
    /// `POST {base_url}/openai/deployments/{deployment}/chat/completions?api-version=...` with an `api-key` header.
    Azure {
        deployment: String,
        api_version: String,
    },
}

/// Prices per million tokens, for cost accounting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

/// How to reach and use a judge.
#[derive(Debug, Clone)]
pub struct Settings {
    pub model: String,
    pub base_url: String,
    pub api: Api,
    /// Environment variable holding the API key; `None` for endpoints without one.
    pub api_key_env: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Tries per judgment before giving up on it.
    pub max_tries: u32,
    /// First retry waits about this long; each further one twice as long.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub initial_concurrency: usize,
    pub max_concurrency: usize,
    pub prices: Option<Prices>,
}

impl Settings {
    /// Defaults for an endpoint and model: 60 s timeout, 8 tries, concurrency 8 growing to 128.
    pub fn new(model: &str, base_url: &str) -> Self {
        Settings {
            model: model.into(),
            base_url: base_url.trim_end_matches('/').into(),
            api: Api::OpenAi,
            api_key_env: None,
            timeout: Duration::from_secs(60),
            max_tries: 8,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(60),
            initial_concurrency: 8,
            max_concurrency: 128,
            prices: None,
        }
    }
}

/// Errors that end a judging run.
#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error("judge setup: {0}")]
    Setup(String),
    #[error("judge request `{id}` to {url}: gave up after {tries} tries; last error: {last}")]
    GaveUp {
        id: String,
        url: String,
        tries: u32,
        last: String,
    },
    #[error("judge request `{id}` to {url}: {reason}")]
    Rejected {
        id: String,
        url: String,
        reason: String,
    },
    #[error("judge batch job at {url}: {reason}")]
    Batch { url: String, reason: String },
    #[error(transparent)]
    Cache(#[from] emh_judge_core::CacheError),
}

/// One thing to judge.
#[derive(Debug, Clone)]
pub struct Item {
    /// Names the request in errors (for example `question_id/sample`).
    pub id: String,
    /// The filled judge prompt.
    pub prompt: String,
}

/// Tokens, requests and money spent by a client so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub requests: u64,
    pub retries: u64,
    pub cache_hits: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost: f64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    retries: AtomicU64,
    cache_hits: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

/// What one attempt came to.
enum Attempt {
    Done(Vec<TopToken>),
    /// Worth another try; `throttled` means the server asked us to slow down.
    Retry {
        why: String,
        after: Option<Duration>,
        throttled: bool,
    },
    /// Another try would fail the same way.
    Fatal(String),
}

/// A judge client.
pub struct Client {
    http: reqwest::Client,
    settings: Settings,
    key: Option<String>,
    cache: Option<Cache>,
    counters: Counters,
    limiter: Limiter,
}

/// The request parameters that, with model, endpoint and prompt, decide a judgment.
fn params() -> Value {
    json!({"max_tokens": 1, "temperature": 0, "logprobs": true, "top_logprobs": 20, "seed": 0})
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

fn top_tokens(body: &Value) -> Option<Vec<TopToken>> {
    let top = body["choices"][0]["logprobs"]["content"][0]["top_logprobs"].as_array()?;
    top.iter()
        .map(|t| {
            Some(TopToken {
                token: t["token"].as_str()?.to_string(),
                logprob: t["logprob"].as_f64()?,
            })
        })
        .collect()
}

impl Client {
    /// A client for `settings`, reading the API key from its environment variable.
    pub fn new(settings: Settings, cache: Option<Cache>) -> Result<Self, JudgeError> {
        let key = match &settings.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                JudgeError::Setup(format!("the API key variable {var} is not set"))
            })?),
            None => None,
        };
        if settings.max_tries == 0 || settings.initial_concurrency == 0 {
            return Err(JudgeError::Setup(
                "max tries and concurrency must be at least 1".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .pool_max_idle_per_host(settings.max_concurrency)
            .build()
            .map_err(|e| JudgeError::Setup(e.to_string()))?;
        let limiter = Limiter::new(settings.initial_concurrency, settings.max_concurrency);
        Ok(Client {
            http,
            settings,
            key,
            cache,
            counters: Counters::default(),
            limiter,
        })
    }

    /// The chat-completions URL (without the key, safe to print).
    pub fn url(&self) -> String {
        let base = &self.settings.base_url;
        match &self.settings.api {
            Api::OpenAi => format!("{base}/chat/completions"),
            Api::Azure {
                deployment,
                api_version,
            } => format!(
                "{base}/openai/deployments/{deployment}/chat/completions?api-version={api_version}"
            ),
        }
    }

    /// What this client has spent so far.
    pub fn usage(&self) -> Usage {
        let c = &self.counters;
        let (p, o) = (
            c.prompt_tokens.load(Ordering::Relaxed),
            c.completion_tokens.load(Ordering::Relaxed),
        );
        Usage {
            requests: c.requests.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            prompt_tokens: p,
            completion_tokens: o,
            cost: self.settings.prices.map_or(0.0, |pr| {
                (p as f64 * pr.input_per_million + o as f64 * pr.output_per_million) / 1e6
            }),
        }
    }

    /// The concurrency limit now.
    pub fn concurrency(&self) -> usize {
        self.limiter.current()
    }

    async fn attempt(&self, prompt: &str) -> Attempt {
        let mut body = params();
        body["model"] = json!(self.settings.model);
        body["messages"] = json!([{"role": "user", "content": prompt}]);
        let mut req = self.http.post(self.url()).json(&body);
        req = match (&self.key, &self.settings.api) {
            (Some(k), Api::OpenAi) => req.bearer_auth(k),
            (Some(k), Api::Azure { .. }) => req.header("api-key", k),
            (None, _) => req,
        };
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry {
                    throttled: e.is_timeout(),
                    why: if e.is_timeout() {
                        "timed out".into()
                    } else {
                        format!("transport: {e}")
                    },
                    after: None,
                }
            }
        };
        let status = resp.status();
        let after = retry_after(resp.headers());
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => {
                return Attempt::Retry {
                    throttled: e.is_timeout(),
                    why: format!("reading the body: {e}"),
                    after: None,
                }
            }
        };
        let excerpt = |t: &str| t.chars().take(300).collect::<String>();
        if status.as_u16() == 429 {
            return Attempt::Retry {
                why: format!("429: {}", excerpt(&text)),
                after,
                throttled: true,
            };
        }
        if status.is_server_error() || status.as_u16() == 408 {
            return Attempt::Retry {
                why: format!("{status}: {}", excerpt(&text)),
                after,
                throttled: false,
            };
        }
        if !status.is_success() {
            return Attempt::Fatal(format!("{status}: {}", excerpt(&text)));
        }
        let body: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                return Attempt::Retry {
                    why: format!("invalid JSON ({e}): {}", excerpt(&text)),
                    after: None,
                    throttled: false,
                }
            }
        };
        let c = &self.counters;
        c.prompt_tokens.fetch_add(
            body["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            Ordering::Relaxed,
        );
        c.completion_tokens.fetch_add(
            body["usage"]["completion_tokens"].as_u64().unwrap_or(0),
            Ordering::Relaxed,
        );
        match top_tokens(&body) {
            Some(top) if !top.is_empty() => Attempt::Done(top),
            _ => Attempt::Retry {
                why: "the response has no top logprobs (does the endpoint support logprobs?)"
                    .into(),
                after: None,
                throttled: false,
            },
        }
    }

    fn backoff(&self, tries: u32) -> Duration {
        let exp = self.settings.backoff_base.as_secs_f64() * 2f64.powi(tries.min(30) as i32 - 1);
        let capped = exp.min(self.settings.backoff_cap.as_secs_f64());
        // Full jitter over the upper half: retries of a burst spread out.
        Duration::from_secs_f64(capped * rand::rng().random_range(0.5..1.0))
    }

    /// Judges one item: from the cache, or from the endpoint with retries.
    pub async fn judge(&self, item: &Item) -> Result<Judgment, JudgeError> {
        let url = self.url();
        let key = CacheKey::new(&self.settings.model, &url, &item.prompt, &params());
        if let Some(cache) = &self.cache {
            if let Some(j) = cache.get(&key)? {
                self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(j);
            }
        }
        let mut last = String::new();
        for tries in 1..=self.settings.max_tries {
            match self.attempt(&item.prompt).await {
                Attempt::Done(top) => {
                    self.limiter.success();
                    let judgment = aggregate(top);
                    if let Some(cache) = &self.cache {
                        cache.put(&key, &judgment)?;
                    }
                    return Ok(judgment);
                }
                Attempt::Fatal(reason) => {
                    return Err(JudgeError::Rejected {
                        id: item.id.clone(),
                        url,
                        reason,
                    })
                }
                Attempt::Retry {
                    why,
                    after,
                    throttled,
                } => {
                    if throttled {
                        self.limiter.throttled();
                    }
                    last = why;
                    if tries < self.settings.max_tries {
                        self.counters.retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(after.unwrap_or_else(|| self.backoff(tries))).await;
                    }
                }
            }
        }
        Err(JudgeError::GaveUp {
            id: item.id.clone(),
            url,
            tries: self.settings.max_tries,
            last,
        })
    }

    /// Judges every item, as many at once as the limiter allows; results are
    /// in input order, each item's error in its own slot so a request that
    /// fails loses nothing else. `on_done` is told each time one finishes.
    pub async fn judge_each(
        self: &Arc<Self>,
        items: Vec<Item>,
        mut on_done: impl FnMut(usize),
    ) -> Vec<Result<Judgment, JudgeError>> {
        let mut results: Vec<Option<Result<Judgment, JudgeError>>> =
            (0..items.len()).map(|_| None).collect();
        let mut pending = items.into_iter().enumerate();
        let mut running = JoinSet::new();
        let mut done = 0;
        loop {
            while running.len() < self.limiter.current() {
                let Some((i, item)) = pending.next() else {
                    break;
                };
                let client = Arc::clone(self);
                running.spawn(async move { (i, client.judge(&item).await) });
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            // A judge task only ends early by panicking, which is a bug worth surfacing.
            let (i, result) = joined.expect("judge tasks do not panic");
            results[i] = Some(result);
            done += 1;
            on_done(done);
        }
        results
            .into_iter()
            .map(|r| r.expect("every item was judged"))
            .collect()
    }

    /// Judges every item like [`Client::judge_each`], failing with the first
    /// item's error if any failed.
    pub async fn judge_all(
        self: &Arc<Self>,
        items: Vec<Item>,
        on_done: impl FnMut(usize),
    ) -> Result<Vec<Judgment>, JudgeError> {
        self.judge_each(items, on_done).await.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_for_openai_and_azure() {
        let mut s = Settings::new("gpt-4o", "https://api.openai.com/v1/");
        assert_eq!(
            Client::new(s.clone(), None).unwrap().url(),
            "https://api.openai.com/v1/chat/completions"
        );
        s.base_url = "https://me.openai.azure.com".into();
        s.api = Api::Azure {
            deployment: "judge".into(),
            api_version: "2024-06-01".into(),
        };
        assert_eq!(
            Client::new(s, None).unwrap().url(),
            "https://me.openai.azure.com/openai/deployments/judge/chat/completions?api-version=2024-06-01"
        );
    }

    #[test]
    fn a_missing_key_variable_is_a_setup_error() {
        let mut s = Settings::new("gpt-4o", "https://api.openai.com/v1");
        s.api_key_env = Some("EMH_TEST_SURELY_UNSET_KEY".into());
        let err = Client::new(s, None).err().unwrap().to_string();
        assert!(
            err.contains("EMH_TEST_SURELY_UNSET_KEY is not set"),
            "{err}"
        );
    }

    #[test]
    fn retry_after_reads_seconds() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "1.5".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
