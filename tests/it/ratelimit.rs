//! Rate limits through the proxy door: 429 with `Retry-After` and `RateLimit-*` once a key's
//! burst is spent, separate budgets per principal and per client address, nothing forwarded
//! past the limit, and a reload that keeps the definition keeps the count.

use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::support::{Setup, TestGateway, send};

const SECRET: &[u8] = b"ratelimit-test-secret-ratelimit-test-secret-0123";

const LIMITS: &str = "rate_limits:
  per-user:
    key: principal
    requests: 3
    per: 1h
  per-address:
    key: client_ip
    requests: 2
    per: 1h
  per-team:
    key: header:x-team
    requests: 1
    per: 1h
";

fn policy(extra_rule: &str) -> String {
    format!(
        "rules:
  - name: api
    match: {{paths: [\"/api/**\"]}}
    effect: allow
    authenticators: [users]
    anonymous: true
    rate_limit: per-user
    upstream: echo
  - name: public
    match: {{paths: [\"/public/**\"]}}
    effect: allow
    anonymous: true
    rate_limit: per-address
    upstream: echo
  - name: team
    match: {{paths: [\"/team/**\"]}}
    effect: allow
    anonymous: true
    rate_limit: per-team
    upstream: echo
{extra_rule}"
    )
}

async fn gateway() -> TestGateway {
    Setup {
        policies: vec![("10-p.yaml".into(), policy(""))],
        files: vec![("hs.secret".into(), SECRET.to_vec())],
        extra: format!("{}{LIMITS}", crate::support::hs256_users("{}")),
        ..Setup::default()
    }
    .start()
    .await
}

async fn get(
    gw: &TestGateway,
    path: &str,
    sub: Option<&str>,
) -> (StatusCode, http::HeaderMap, Value) {
    let mut req = Request::get(path);
    if let Some(sub) = sub {
        let t = crate::support::hs256_token(SECRET, &json!({"sub": sub}));
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let (status, headers, body) = send(gw.addr(), req.body(Full::default()).unwrap()).await;
    (
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn over_the_limit_is_429_with_retry_after_per_principal() {
    let gw = gateway().await;
    for i in 0..3 {
        assert_eq!(
            get(&gw, "/api/x", Some("alice")).await.0,
            StatusCode::OK,
            "alice request {i}"
        );
    }
    let (status, headers, body) = get(&gw, "/api/x", Some("alice")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"], "rate_limited");
    // 3 an hour: the next one is 20 minutes away.
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1100..=1200).contains(&retry), "retry-after {retry}");
    assert_eq!(headers["ratelimit-limit"], "3");
    assert_eq!(headers["ratelimit-remaining"], "0");
    assert_eq!(headers["ratelimit-reset"], headers["retry-after"]);
    assert_eq!(gw.echo.count(), 3, "the refused request was not forwarded");

    // Bob has his own budget.
    assert_eq!(get(&gw, "/api/x", Some("bob")).await.0, StatusCode::OK);
    // Invalid tokens are refused (401) before anything is counted: the address's anonymous
    // budget is still whole afterwards.
    for _ in 0..5 {
        let req = Request::get("/api/x")
            .header("authorization", "Bearer a.b.c")
            .body(Full::default())
            .unwrap();
        assert_eq!(send(gw.addr(), req).await.0, StatusCode::UNAUTHORIZED);
    }
    // Anonymous callers are counted by address.
    for _ in 0..3 {
        assert_eq!(get(&gw, "/api/x", None).await.0, StatusCode::OK);
    }
    assert_eq!(
        get(&gw, "/api/x", None).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );

    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("portcullis_denials_total{door=\"proxy\",reason=\"rate_limited\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_reload_keeps_the_count_of_an_unchanged_limit() {
    let gw = gateway().await;
    for _ in 0..2 {
        assert_eq!(get(&gw, "/public/x", None).await.0, StatusCode::OK);
    }
    assert_eq!(
        get(&gw, "/public/x", None).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // A policy edit (a new rule) is applied; the spent budget stays spent.
    gw.write(
        "policies/10-p.yaml",
        policy(
            "  - name: more
    match: {paths: [\"/more/**\"]}
    effect: allow
    anonymous: true
    upstream: echo
",
        ),
    );
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("applied"), "{body}");
    assert_eq!(get(&gw, "/more/x", None).await.0, StatusCode::OK);
    assert_eq!(
        get(&gw, "/public/x", None).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // A changed definition starts afresh.
    gw.write(
        "portcullis.yaml",
        std::fs::read_to_string(gw.path("portcullis.yaml"))
            .unwrap()
            .replace("requests: 2", "requests: 5"),
    );
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(get(&gw, "/public/x", None).await.0, StatusCode::OK);
}

/// A header key is the client's to choose unless a trusted proxy set it: from anyone else
/// the limit counts by address, so a new value per request buys nothing.
#[tokio::test]
async fn a_header_key_from_an_untrusted_client_counts_by_address() {
    let gw = gateway().await;
    let team = |t: &str| {
        Request::get("/team/x")
            .header("x-team", t)
            .body(Full::default())
            .unwrap()
    };
    assert_eq!(send(gw.addr(), team("red")).await.0, StatusCode::OK);
    assert_eq!(
        send(gw.addr(), team("blue")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        send(gw.addr(), team("green")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// GCRA on the gateway's clock, moved by the test: the burst, then the steady rate, with
/// `Retry-After` right to the second.
#[tokio::test]
async fn burst_then_steady_rate_with_exact_retry_after() {
    let clock = portcullis::clock::Clock::manual_now();
    let gw = Setup {
        policies: vec![(
            "10-p.yaml".into(),
            "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, rate_limit: steady, upstream: echo}\n"
                .into(),
        )],
        extra: "rate_limits:\n  steady: {key: client_ip, requests: 6, per: 1m, burst: 3}\n".into(),
        clock: clock.clone(),
        ..Setup::default()
    }
    .start()
    .await;
    let status = |path: &'static str| {
        let addr = gw.addr();
        async move {
            let (s, h, _) = send(addr, Request::get(path).body(Full::default()).unwrap()).await;
            let retry = h
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            (s, retry)
        }
    };
    // The burst: 3 at once, then the steady rate of one every 10 s.
    for _ in 0..3 {
        assert_eq!(status("/x").await, (StatusCode::OK, None));
    }
    assert_eq!(
        status("/x").await,
        (StatusCode::TOO_MANY_REQUESTS, Some(10))
    );
    clock.advance(std::time::Duration::from_secs(4));
    assert_eq!(status("/x").await, (StatusCode::TOO_MANY_REQUESTS, Some(6)));
    clock.advance(std::time::Duration::from_millis(5_500));
    assert_eq!(
        status("/x").await,
        (StatusCode::TOO_MANY_REQUESTS, Some(1)),
        "0.5 s is 1 s"
    );
    clock.advance(std::time::Duration::from_millis(500));
    assert_eq!(status("/x").await, (StatusCode::OK, None));
    assert_eq!(
        status("/x").await,
        (StatusCode::TOO_MANY_REQUESTS, Some(10))
    );
    // A full refill after a quiet spell: the burst again, no more.
    clock.advance(std::time::Duration::from_secs(60));
    for _ in 0..3 {
        assert_eq!(status("/x").await.0, StatusCode::OK);
    }
    assert_eq!(status("/x").await.0, StatusCode::TOO_MANY_REQUESTS);
}
