//! A chat-completions server on loopback that answers like a logprob judge,
//! with latency and faults to inject: 429 with Retry-After, 500, responses
//! slower than the client's timeout, truncated JSON, missing logprobs.
//!
//! Answers depend only on the prompt, so a run with faults must end with the
//! same scores as a run without.
//!
//! It also speaks the Batch API: `POST /v1/files` (multipart JSONL),
//! `POST /v1/batches`, `GET /v1/batches/{id}` (in progress for a set number
//! of polls, then completed) and `GET /v1/files/{id}/content`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Added before every answer.
    pub latency: Duration,
    /// Fraction of requests that get a fault, spread over the five kinds.
    pub fault_rate: f64,
    /// How long a "slow" fault waits (make it longer than the client's timeout).
    pub slow: Duration,
    /// Seeds which requests fail.
    pub seed: u64,
    /// Polls a batch stays `in_progress` before it completes.
    pub batch_polls: u64,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            latency: Duration::ZERO,
            fault_rate: 0.0,
            slow: Duration::from_secs(2),
            seed: 0,
            batch_polls: 0,
        }
    }
}

/// Counts of what the server did.
#[derive(Default)]
pub struct Stats {
    /// Chat-completion requests.
    pub requests: AtomicU64,
    pub faults: AtomicU64,
    /// Batches created.
    pub batches: AtomicU64,
    /// Batch status polls.
    pub polls: AtomicU64,
}

/// Uploaded files and created batches (id → content; id → input file, polls).
#[derive(Default)]
struct Store {
    files: HashMap<String, String>,
    batches: HashMap<String, (String, u64)>,
}

/// A running mock server; it stops with the runtime that started it.
pub struct MockServer {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The judge's first-token distribution for a prompt: mostly two numbers,
/// sometimes a refusal.
pub fn answer_for(prompt: &str) -> Vec<(String, f64)> {
    let h = fnv(prompt.as_bytes());
    let (a, b) = (h % 101, (h >> 8) % 101);
    if h.is_multiple_of(10) {
        vec![
            ("REFUSAL".into(), 0.8f64.ln()),
            (a.to_string(), 0.1f64.ln()),
        ]
    } else {
        vec![
            (a.to_string(), 0.6f64.ln()),
            (b.to_string(), 0.3f64.ln()),
            ("The".into(), 0.05f64.ln()),
        ]
    }
}

impl MockServer {
    /// Starts serving on 127.0.0.1 with a free port.
    pub async fn start(config: MockConfig) -> std::io::Result<MockServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let config = Arc::new(config);
        let store = Arc::new(Mutex::new(Store::default()));
        let s = stats.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, config.clone(), s.clone(), store.clone()));
            }
        });
        Ok(MockServer { addr, stats })
    }

    /// The OpenAI-style base URL (`.../v1`).
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

enum Fault {
    Throttle,
    ServerError,
    Slow,
    Truncated,
    NoLogprobs,
}

fn fault_for(config: &MockConfig, n: u64) -> Option<Fault> {
    let r = splitmix(config.seed ^ n);
    if (r % 1_000_000) as f64 >= config.fault_rate * 1_000_000.0 {
        return None;
    }
    Some(match (r >> 32) % 5 {
        0 => Fault::Throttle,
        1 => Fault::ServerError,
        2 => Fault::Slow,
        3 => Fault::Truncated,
        _ => Fault::NoLogprobs,
    })
}

async fn respond(
    stream: &mut BufReader<TcpStream>,
    status: &str,
    extra: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    );
    let s = stream.get_mut();
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.flush().await
}

/// The chat completion for a request: the judge's answer to its last message.
fn completion(request: &serde_json::Value, n: u64) -> serde_json::Value {
    let prompt = request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string();
    let top: Vec<serde_json::Value> = answer_for(&prompt)
        .into_iter()
        .map(|(t, lp)| serde_json::json!({"token": t, "logprob": lp}))
        .collect();
    let first = top[0]["token"].clone();
    serde_json::json!({
        "id": format!("mock-{n}"),
        "object": "chat.completion",
        "model": request["model"],
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": first},
            "logprobs": {"content": [{"token": first, "logprob": top[0]["logprob"], "top_logprobs": top}]},
            "finish_reason": "length"
        }],
        "usage": {"prompt_tokens": prompt.len() / 4 + 1, "completion_tokens": 1, "total_tokens": prompt.len() / 4 + 2}
    })
}

/// The JSONL file in a multipart upload: the part after `name="file"`.
fn multipart_file(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let boundary = text.lines().next()?.trim().to_string();
    let part = text
        .split(&boundary)
        .find(|p| p.contains("name=\"file\""))?;
    let (_, content) = part.split_once("\r\n\r\n")?;
    Some(content.strip_suffix("\r\n").unwrap_or(content).to_string())
}

/// The Batch API routes: status line and JSON (or JSONL) body.
fn batch_api(
    request_line: &str,
    body: &[u8],
    config: &MockConfig,
    stats: &Stats,
    store: &Mutex<Store>,
) -> (&'static str, String) {
    let not_found = ("404 Not Found", "{\"error\": \"not found\"}".to_string());
    let mut store = store.lock().expect("mock store");
    let path = request_line.split(' ').nth(1).unwrap_or("");
    if request_line.starts_with("POST /v1/files ") {
        let Some(content) = multipart_file(body) else {
            return ("400 Bad Request", "{\"error\": \"no file part\"}".into());
        };
        let id = format!("file-{}", store.files.len());
        store.files.insert(id.clone(), content);
        return (
            "200 OK",
            serde_json::json!({"id": id, "object": "file"}).to_string(),
        );
    }
    if request_line.starts_with("POST /v1/batches ") {
        let request: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let input = request["input_file_id"].as_str().unwrap_or("").to_string();
        if !store.files.contains_key(&input) || request["endpoint"] != "/v1/chat/completions" {
            return ("400 Bad Request", "{\"error\": \"bad batch\"}".into());
        }
        let id = format!("batch-{}", stats.batches.fetch_add(1, Ordering::Relaxed));
        store.batches.insert(id.clone(), (input, 0));
        return (
            "200 OK",
            serde_json::json!({"id": id, "status": "validating"}).to_string(),
        );
    }
    if let Some(id) = path.strip_prefix("/v1/batches/") {
        stats.polls.fetch_add(1, Ordering::Relaxed);
        let Some((input, polls)) = store.batches.get_mut(id) else {
            return not_found;
        };
        *polls += 1;
        if *polls <= config.batch_polls {
            return (
                "200 OK",
                serde_json::json!({"id": id, "status": "in_progress"}).to_string(),
            );
        }
        let input = input.clone();
        let lines = store.files[&input].clone();
        let output: String = lines
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(n, l)| {
                let line: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
                let response = completion(&line["body"], n as u64);
                format!(
                    "{}\n",
                    serde_json::json!({
                        "id": format!("req-{n}"),
                        "custom_id": line["custom_id"],
                        "response": {"status_code": 200, "body": response},
                        "error": null
                    })
                )
            })
            .collect();
        let out_id = format!("{id}-output");
        store.files.insert(out_id.clone(), output);
        return (
            "200 OK",
            serde_json::json!({"id": id, "status": "completed", "output_file_id": out_id, "error_file_id": null})
                .to_string(),
        );
    }
    if let Some(id) = path
        .strip_prefix("/v1/files/")
        .and_then(|p| p.strip_suffix("/content"))
    {
        if let Some(content) = store.files.get(id) {
            return ("200 OK", content.clone());
        }
    }
    not_found
}

async fn serve(
    stream: TcpStream,
    config: Arc<MockConfig>,
    stats: Arc<Stats>,
    store: Arc<Mutex<Store>>,
) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    loop {
        let mut content_length = 0usize;
        let mut request_line = String::new();
        if stream.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    content_length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; content_length];
        stream.read_exact(&mut body).await?;
        if !request_line.starts_with("POST /v1/chat/completions ") {
            let (status, body) = batch_api(&request_line, &body, &config, &stats, &store);
            respond(&mut stream, status, "", &body).await?;
            continue;
        }
        let n = stats.requests.fetch_add(1, Ordering::Relaxed);
        let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        tokio::time::sleep(config.latency).await;
        let full = completion(&request, n).to_string();
        let fault = fault_for(&config, n);
        if fault.is_some() {
            stats.faults.fetch_add(1, Ordering::Relaxed);
        }
        match fault {
            None => respond(&mut stream, "200 OK", "", &full).await?,
            Some(Fault::Throttle) => {
                respond(
                    &mut stream,
                    "429 Too Many Requests",
                    "Retry-After: 0\r\n",
                    "{\"error\": {\"message\": \"rate limited\"}}",
                )
                .await?
            }
            Some(Fault::ServerError) => {
                respond(
                    &mut stream,
                    "500 Internal Server Error",
                    "",
                    "{\"error\": {\"message\": \"boom\"}}",
                )
                .await?
            }
            Some(Fault::Slow) => {
                tokio::time::sleep(config.slow).await;
                respond(&mut stream, "200 OK", "", &full).await?
            }
            Some(Fault::Truncated) => {
                respond(&mut stream, "200 OK", "", &full[..full.len() / 2]).await?
            }
            Some(Fault::NoLogprobs) => {
                let mut v: serde_json::Value = serde_json::from_str(&full).expect("we wrote it");
                v["choices"][0]["logprobs"] = serde_json::Value::Null;
                respond(&mut stream, "200 OK", "", &v.to_string()).await?
            }
        }
    }
}
