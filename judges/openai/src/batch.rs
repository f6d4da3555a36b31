//! The OpenAI Batch API: every prompt of a judging run in one job, at half
//! price and hours of latency. The job's id is kept in a state file named
//! by the hash of the request set, so a run killed while the job is pending
//! picks the same job up again instead of paying for a second one.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use emh_judge_core::TopToken;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::{params, retry_after, top_tokens, Api, Client, JudgeError};

/// The endpoint every batch line calls.
const ENDPOINT: &str = "/v1/chat/completions";

/// One prompt's answer from a batch: its top tokens, or why there are none.
pub type BatchAnswer = Result<Vec<TopToken>, String>;

impl Client {
    fn batch_err(&self, what: &str, reason: impl std::fmt::Display) -> JudgeError {
        JudgeError::Batch {
            url: self.settings.base_url.clone(),
            reason: format!("{what}: {reason}"),
        }
    }

    /// Sends a request built by `build`, retrying transport errors, 429 and
    /// 5xx with backoff (or as long as Retry-After says); returns the body text.
    async fn send_with_retries(
        &self,
        what: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<String, JudgeError> {
        let mut last = String::new();
        for tries in 1..=self.settings.max_tries {
            let mut req = build();
            if let Some(k) = &self.key {
                req = req.bearer_auth(k);
            }
            let mut after = None;
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    after = retry_after(resp.headers());
                    let text = resp.text().await.unwrap_or_default();
                    if status.is_success() {
                        return Ok(text);
                    }
                    last = format!("{status}: {}", text.chars().take(300).collect::<String>());
                    if !(status.as_u16() == 429 || status.is_server_error()) {
                        return Err(self.batch_err(what, last));
                    }
                }
                Err(e) => last = format!("transport: {e}"),
            }
            if tries < self.settings.max_tries {
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(after.unwrap_or_else(|| self.backoff(tries))).await;
            }
        }
        Err(self.batch_err(
            what,
            format!(
                "gave up after {} tries; last error: {last}",
                self.settings.max_tries
            ),
        ))
    }

    async fn json(
        &self,
        what: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Value, JudgeError> {
        let text = self.send_with_retries(what, build).await?;
        serde_json::from_str(&text).map_err(|e| self.batch_err(what, format!("invalid JSON: {e}")))
    }

    /// The state file of this request set under `state_dir`.
    fn state_path(&self, prompts: &[String], state_dir: &Path) -> PathBuf {
        let mut h = Sha256::new();
        h.update(json!([self.settings.model, self.url(), params()]).to_string());
        for p in prompts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p.as_bytes());
        }
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        state_dir.join(format!("{hex}.json"))
    }

    /// Uploads the requests and creates the batch job; returns its id.
    async fn submit(&self, prompts: &[String]) -> Result<String, JudgeError> {
        let mut jsonl = String::new();
        for (i, p) in prompts.iter().enumerate() {
            let mut body = params();
            body["model"] = json!(self.settings.model);
            body["messages"] = json!([{"role": "user", "content": p}]);
            let line = json!({"custom_id": i.to_string(), "method": "POST", "url": ENDPOINT, "body": body});
            jsonl.push_str(&line.to_string());
            jsonl.push('\n');
        }
        let base = &self.settings.base_url;
        let file = self
            .json("uploading the requests", || {
                let part = reqwest::multipart::Part::bytes(jsonl.clone().into_bytes())
                    .file_name("emh-judge.jsonl")
                    .mime_str("application/jsonl")
                    .expect("a valid mime type");
                let form = reqwest::multipart::Form::new()
                    .text("purpose", "batch")
                    .part("file", part);
                self.http.post(format!("{base}/files")).multipart(form)
            })
            .await?;
        let file_id = file["id"]
            .as_str()
            .ok_or_else(|| self.batch_err("uploading the requests", "no file id in the answer"))?
            .to_string();
        let batch = self
            .json("creating the batch", || {
                self.http.post(format!("{base}/batches")).json(&json!({
                    "input_file_id": file_id,
                    "endpoint": ENDPOINT,
                    "completion_window": "24h",
                }))
            })
            .await?;
        batch["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.batch_err("creating the batch", "no batch id in the answer"))
    }

    /// Judges every prompt in one Batch API job, polling every `poll` until
    /// it ends; `on_status` hears each status. Answers are in input order.
    pub async fn judge_batch(
        &self,
        prompts: &[String],
        state_dir: &Path,
        poll: Duration,
        mut on_status: impl FnMut(&str),
    ) -> Result<Vec<BatchAnswer>, JudgeError> {
        if !matches!(self.settings.api, Api::OpenAi) {
            return Err(self.batch_err("batch mode", "only the OpenAI API has it here"));
        }
        let state = self.state_path(prompts, state_dir);
        let batch_id = match std::fs::read_to_string(&state) {
            Ok(text) => serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["batch_id"].as_str().map(str::to_string))
                .ok_or_else(|| self.batch_err("reading the batch state", state.display()))?,
            Err(_) => {
                let id = self.submit(prompts).await?;
                std::fs::create_dir_all(state_dir)
                    .and_then(|_| {
                        emh_atomic::write(&state, json!({"batch_id": id}).to_string().as_bytes())
                    })
                    .map_err(|e| {
                        self.batch_err(
                            "saving the batch state",
                            format!("{}: {e}", state.display()),
                        )
                    })?;
                id
            }
        };
        let base = &self.settings.base_url;
        let done = loop {
            let b = self
                .json("polling the batch", || {
                    self.http.get(format!("{base}/batches/{batch_id}"))
                })
                .await?;
            let status = b["status"].as_str().unwrap_or("unknown").to_string();
            on_status(&status);
            match status.as_str() {
                "completed" | "failed" | "expired" | "cancelled" => break b,
                _ => tokio::time::sleep(poll).await,
            }
        };
        let mut answers: Vec<BatchAnswer> = vec![
            Err(format!(
                "batch {batch_id} ended {} without an answer",
                done["status"]
            ));
            prompts.len()
        ];
        for key in ["output_file_id", "error_file_id"] {
            let Some(file) = done[key].as_str() else {
                continue;
            };
            let text = self
                .send_with_retries("downloading the results", || {
                    self.http.get(format!("{base}/files/{file}/content"))
                })
                .await?;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let v: Value = serde_json::from_str(line)
                    .map_err(|e| self.batch_err("reading the results", e))?;
                let Some(i) = v["custom_id"]
                    .as_str()
                    .and_then(|c| c.parse::<usize>().ok())
                else {
                    continue;
                };
                if i >= answers.len() {
                    continue;
                }
                let body = &v["response"]["body"];
                self.counters.requests.fetch_add(1, Ordering::Relaxed);
                self.counters.prompt_tokens.fetch_add(
                    body["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
                    Ordering::Relaxed,
                );
                self.counters.completion_tokens.fetch_add(
                    body["usage"]["completion_tokens"].as_u64().unwrap_or(0),
                    Ordering::Relaxed,
                );
                answers[i] = match top_tokens(body) {
                    Some(top) if !top.is_empty() => Ok(top),
                    _ => Err(format!(
                        "batch {batch_id} request {i}: {}",
                        if v["error"].is_null() {
                            v["response"].to_string()
                        } else {
                            v["error"].to_string()
                        }
                    )),
                };
            }
        }
        // Collected: a later run with the same prompts starts a new job.
        let _ = std::fs::remove_file(&state);
        Ok(answers)
    }
}
