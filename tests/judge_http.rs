//! The OpenAI-compatible judge against a real HTTP server on loopback that
//! injects 429 with Retry-After, 500, timeouts, truncated JSON and missing
//! logprobs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use emh_judge_core::{Cache, Judgment};
use emh_judge_mock::{MockConfig, MockServer};
use emh_judge_openai::{Client, Item, JudgeError, Settings};

fn settings(url: &str) -> Settings {
    let mut s = Settings::new("mock-judge", url);
    s.timeout = Duration::from_millis(400);
    s.backoff_base = Duration::from_millis(5);
    s.backoff_cap = Duration::from_millis(50);
    s.max_tries = 12;
    s.initial_concurrency = 8;
    s.max_concurrency = 64;
    s
}

fn items(n: usize) -> Vec<Item> {
    (0..n)
        .map(|i| Item {
            id: format!("q{}/s{}", i / 50, i % 50),
            prompt: format!(
                "Rate this answer 0-100.\nQuestion {}\nAnswer number {i}: {{braces}} stay",
                i / 50
            ),
        })
        .collect()
}

async fn judge(config: MockConfig, n: usize) -> (Vec<Judgment>, Arc<Client>, MockServer) {
    let server = MockServer::start(config).await.unwrap();
    let client = Arc::new(Client::new(settings(&server.url()), None).unwrap());
    let judged = client.judge_all(items(n), |_| {}).await.unwrap();
    (judged, client, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_20_percent_faults_2000_judgments_complete_with_identical_scores() {
    let (clean, _, _) = judge(MockConfig::default(), 2000).await;
    let faulty = MockConfig {
        fault_rate: 0.2,
        slow: Duration::from_secs(1),
        seed: 42,
        ..Default::default()
    };
    let (judged, client, server) = judge(faulty, 2000).await;
    assert_eq!(judged.len(), 2000);
    assert_eq!(judged, clean, "faults changed some judgment");
    let faults = server.stats.faults.load(Ordering::Relaxed);
    let requests = server.stats.requests.load(Ordering::Relaxed);
    assert!(faults > 300, "only {faults} faults injected");
    // Every fault costs one retry and nothing more: no judgment asked for twice.
    assert_eq!(
        requests,
        2000 + faults,
        "{requests} requests for 2000 judgments and {faults} faults"
    );
    let usage = client.usage();
    assert_eq!(usage.retries, faults);
    assert!(
        judged.iter().any(|j| j.score.is_none()),
        "the mock refuses sometimes"
    );
    assert!(judged.iter().filter(|j| j.score.is_some()).count() > 1500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_makes_a_rerun_free_and_resumes_an_interrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let requests = || server.stats.requests.load(Ordering::Relaxed);
    let run = |n: usize| {
        let client = Arc::new(
            Client::new(
                settings(&server.url()),
                Some(Cache::open(tmp.path()).unwrap()),
            )
            .unwrap(),
        );
        async move { (client.judge_all(items(n), |_| {}).await.unwrap(), client) }
    };
    // An interrupted run: only the first 60 got judged.
    let (first, _) = run(60).await;
    assert_eq!(requests(), 60);
    let (all, client) = run(100).await;
    assert_eq!(&all[..60], &first[..]);
    assert_eq!(requests(), 100, "only the missing 40 are asked for");
    assert_eq!(client.usage().cache_hits, 60);
    let (again, client) = run(100).await;
    assert_eq!(again, all);
    assert_eq!(requests(), 100, "a rerun asks for nothing");
    assert_eq!(client.usage().cache_hits, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_up_names_the_request_and_the_last_error() {
    let server = MockServer::start(MockConfig {
        fault_rate: 1.0,
        slow: Duration::from_secs(1),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut s = settings(&server.url());
    s.max_tries = 3;
    let client = Arc::new(Client::new(s, None).unwrap());
    let err = client.judge_all(items(1), |_| {}).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, JudgeError::GaveUp { tries: 3, .. }), "{msg}");
    assert!(
        msg.contains("`q0/s0`") && msg.contains(&server.url()),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_error_is_not_retried_and_names_the_request() {
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    // A wrong base URL: the server answers 404, which no retry will fix.
    let client =
        Arc::new(Client::new(settings(&format!("http://{}/wrong", server.addr)), None).unwrap());
    let err = client
        .judge_all(items(1), |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("`q0/s0`") && err.contains("404"), "{err}");
    assert_eq!(client.usage().requests, 1);
}
