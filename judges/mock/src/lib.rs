//! A chat-completions server on loopback that answers like a logprob judge,
//! with latency and faults to inject: 429 with Retry-After, 500, responses
//! slower than the client's timeout, truncated JSON, missing logprobs.
//!
//! Answers depend only on the prompt, so a run with faults must end with the
//! same scores as a run without.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            latency: Duration::ZERO,
            fault_rate: 0.0,
            slow: Duration::from_secs(2),
            seed: 0,
        }
    }
}

/// Counts of what the server did.
#[derive(Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub faults: AtomicU64,
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
        let s = stats.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, config.clone(), s.clone()));
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

async fn serve(
    stream: TcpStream,
    config: Arc<MockConfig>,
    stats: Arc<Stats>,
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
            respond(
                &mut stream,
                "404 Not Found",
                "",
                "{\"error\": \"not found\"}",
            )
            .await?;
            continue;
        }
        let n = stats.requests.fetch_add(1, Ordering::Relaxed);
        let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let prompt = request["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or("")
            .to_string();
        tokio::time::sleep(config.latency).await;
        let top: Vec<serde_json::Value> = answer_for(&prompt)
            .into_iter()
            .map(|(t, lp)| serde_json::json!({"token": t, "logprob": lp}))
            .collect();
        let first = top[0]["token"].clone();
        let full = serde_json::json!({
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
        .to_string();
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
