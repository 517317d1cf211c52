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
  quiet:
    key: client_ip
    requests: 5
    per: 1h
    headers: false
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
  - name: quiet
    match: {{paths: [\"/quiet/**\"]}}
    effect: allow
    anonymous: true
    rate_limit: quiet
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
async fn allowed_answers_say_what_is_left() {
    let gw = gateway().await;
    // 3 an hour: one request every 20 minutes, so each spent one puts the whole budget 20
    // minutes further off.
    for (left, reset) in [("2", 1200), ("1", 2400), ("0", 3600)] {
        let (status, h, _) = get(&gw, "/api/x", Some("carol")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(h["ratelimit-limit"], "3", "{h:?}");
        assert_eq!(h["ratelimit-remaining"], left, "{h:?}");
        let got: u64 = h["ratelimit-reset"].to_str().unwrap().parse().unwrap();
        assert!(
            (reset - 2..=reset).contains(&got),
            "reset {got}, about {reset}"
        );
        // The client is told; the upstream is not handed the gateway's count.
        let seen = gw.echo.last().unwrap();
        assert!(
            seen.headers.get("ratelimit-remaining").is_none(),
            "{seen:?}"
        );
    }
    // A limit with `headers: false` says nothing (the conformance test: nor a rule without one).
    let (status, h, _) = get(&gw, "/quiet/x", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(h.get("ratelimit-remaining").is_none(), "{h:?}");
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
    // A loosened definition keeps what was spent: 2 of the new 5, so 3 more, no fresh 5.
    gw.write(
        "portcullis.yaml",
        std::fs::read_to_string(gw.path("portcullis.yaml"))
            .unwrap()
            .replace("requests: 2", "requests: 5"),
    );
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for i in 0..3 {
        assert_eq!(get(&gw, "/public/x", None).await.0, StatusCode::OK, "{i}");
    }
    assert_eq!(
        get(&gw, "/public/x", None).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Tightening a limit through a reload never hands out a fresh burst: the requests already
/// spent count against the new rate.
#[tokio::test]
async fn a_tightened_limit_after_reload_grants_no_fresh_burst() {
    let gw = gateway().await;
    for _ in 0..3 {
        assert_eq!(get(&gw, "/api/x", Some("carol")).await.0, StatusCode::OK);
    }
    gw.write(
        "portcullis.yaml",
        std::fs::read_to_string(gw.path("portcullis.yaml"))
            .unwrap()
            .replace("requests: 3", "requests: 1"),
    );
    let (status, body) = gw.admin_post("/reload").await;
    assert!(
        status == StatusCode::OK && body.contains("applied"),
        "{body}"
    );
    let (status, headers, _) = get(&gw, "/api/x", Some("carol")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "no fresh burst");
    assert_eq!(headers["ratelimit-limit"], "1");
    // 3 spent against 1 an hour: three hours of the new budget (it was 20 minutes).
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((10_700..=10_800).contains(&retry), "retry-after {retry}");
    // Someone who spent nothing has the new limit's budget.
    assert_eq!(get(&gw, "/api/x", Some("dave")).await.0, StatusCode::OK);
    assert_eq!(
        get(&gw, "/api/x", Some("dave")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Tiers: the rate chosen by a claim (an API key's `plan` is one), each tier its own rate
/// and burst; a day's quota on top; no tier or an unknown one gets the limit's own.
#[tokio::test]
async fn tiers_choose_the_rate_by_plan() {
    let clock = portcullis::clock::Clock::manual_now();
    let gw = Setup {
        policies: vec![(
            "10-p.yaml".into(),
            "rules:\n  - {name: api, match: {paths: [\"/**\"]}, effect: allow, authenticators: [users, keys], rate_limit: plans, upstream: echo}\n".into(),
        )],
        files: vec![
            ("hs.secret".into(), SECRET.to_vec()),
            ("k.secret".into(), b"gold-key-0123456789abcdef".to_vec()),
        ],
        extra: format!(
            "{}  keys:
    api_key:
      keys: [{{id: k1, secret: {{file: k.secret}}, owner: svc, plan: gold}}]
rate_limits:
  plans:
    key: principal
    requests: 1
    per: 1m
    tier: claim:plan
    tiers:
      gold: {{requests: 4, per: 1m, burst: 2, quota: {{requests: 5, per: 1d}}}}
      silver: {{requests: 2, per: 1m}}
",
            crate::support::hs256_users("{}")
        ),
        clock: clock.clone(),
        ..Setup::default()
    }
    .start()
    .await;
    let token = |sub: &str, plan: Option<&str>| {
        let mut c = json!({"sub": sub});
        if let Some(p) = plan {
            c["plan"] = json!(p);
        }
        format!("Bearer {}", crate::support::hs256_token(SECRET, &c))
    };
    let ask = |header: (&'static str, String)| {
        let addr = gw.addr();
        async move {
            let req = Request::get("/x")
                .header(header.0, header.1)
                .body(Full::default())
                .unwrap();
            let (s, h, _) = send(addr, req).await;
            (
                s,
                h.get("ratelimit-limit")
                    .map(|v| v.to_str().unwrap().to_owned()),
            )
        }
    };
    let burst = |header: (&'static str, String)| {
        let ask = &ask;
        async move {
            let mut n = 0;
            loop {
                let (s, limit) = ask(header.clone()).await;
                if s != StatusCode::OK {
                    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
                    return (n, limit);
                }
                n += 1;
            }
        }
    };
    let silver = ("authorization", token("s", Some("silver")));
    let none = ("authorization", token("n", None));
    let unknown = ("authorization", token("u", Some("platinum")));
    assert_eq!(burst(silver).await, (2, Some("2".into())));
    assert_eq!(burst(none).await, (1, Some("1".into())));
    assert_eq!(burst(unknown).await, (1, Some("1".into())));
    // The API key's plan: gold, burst 2 at 4 a minute...
    let key = ("x-api-key", "gold-key-0123456789abcdef".to_owned());
    assert_eq!(burst(key.clone()).await, (2, Some("4".into())));
    for _ in 0..3 {
        clock.advance(std::time::Duration::from_secs(15));
        assert_eq!(ask(key.clone()).await.0, StatusCode::OK);
    }
    // ...and 5 a day: spent, whatever the minute's rate says.
    clock.advance(std::time::Duration::from_secs(60));
    let (status, limit) = ask(key.clone()).await;
    assert_eq!(
        (status, limit.as_deref()),
        (StatusCode::TOO_MANY_REQUESTS, Some("5"))
    );
}

/// A gateway whose one rule (`/login`, JWT users) is guarded by `tries`, defined by
/// `limit` (the YAML flow mapping), and a valid `Authorization` value.
async fn guarded(limit: &str) -> (TestGateway, String) {
    let gw = Setup {
        policies: vec![(
            "10-p.yaml".into(),
            "rules:\n  - {name: login, match: {paths: [\"/**\"]}, effect: allow, authenticators: [users], guard: tries, upstream: echo}\n".into(),
        )],
        files: vec![("hs.secret".into(), SECRET.to_vec())],
        extra: format!(
            "{}rate_limits:\n  tries: {limit}\n",
            crate::support::hs256_users("{}")
        ),
        ..Setup::default()
    }
    .start()
    .await;
    let good = format!(
        "Bearer {}",
        crate::support::hs256_token(SECRET, &json!({"sub": "alice"}))
    );
    (gw, good)
}

/// `GET /login` with `auth` as its `Authorization`.
fn login(auth: &str) -> Request<Full<bytes::Bytes>> {
    Request::get("/login")
        .header("authorization", auth.to_owned())
        .body(Full::default())
        .unwrap()
}

/// A brute-force guard counts the requests its rule refuses, per client address, and once
/// spent answers 429 before verifying anything: even a valid token is refused.
#[tokio::test]
async fn brute_force_guard_refuses_before_verifying() {
    let (gw, good) = guarded("{key: client_ip, requests: 3, per: 1h, count: failures}").await;
    let with = login;
    // Successes are not failures: any number of them.
    for _ in 0..5 {
        assert_eq!(send(gw.addr(), with(&good)).await.0, StatusCode::OK);
    }
    for i in 0..3 {
        assert_eq!(
            send(gw.addr(), with("Bearer not.a.token")).await.0,
            StatusCode::UNAUTHORIZED,
            "guess {i}"
        );
    }
    let (status, headers, body) = send(gw.addr(), with(&good)).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "refused before verifying"
    );
    assert!(String::from_utf8_lossy(&body).contains("rate_limited"));
    assert_eq!(headers["ratelimit-limit"], "3");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(gw.echo.count(), 5);
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(
            "portcullis_ratelimit_total{limit=\"tries\",door=\"proxy\",outcome=\"allowed\"} 3"
        ),
        "the three failures recorded:\n{metrics}"
    );
    assert!(
        metrics.contains(
            "portcullis_ratelimit_total{limit=\"tries\",door=\"proxy\",outcome=\"limited\"} 1"
        ),
        "{metrics}"
    );
}

/// A brute-force guard in shadow mode never refuses, and an allowed request it would have
/// refused (a valid token after the failures spent it) carries its `shadow_header`, as a
/// shadow rate limit's does. (It counted such requests but named itself on none.)
#[tokio::test]
async fn a_shadow_guard_names_itself_on_what_it_would_refuse() {
    let (gw, good) = guarded(
        "{key: client_ip, requests: 1, per: 1h, count: failures, shadow: true, shadow_header: x-ratelimit-shadow}",
    )
    .await;
    let with = login;
    let (status, headers, _) = send(gw.addr(), with(&good)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !headers.contains_key("x-ratelimit-shadow"),
        "nothing spent yet"
    );
    for _ in 0..3 {
        let (status, _, _) = send(gw.addr(), with("Bearer not.a.token")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, headers, _) = send(gw.addr(), with(&good)).await;
    assert_eq!(status, StatusCode::OK, "shadow mode never refuses");
    assert_eq!(
        headers
            .get("x-ratelimit-shadow")
            .map(|v| v.to_str().unwrap()),
        Some("tries")
    );
}

/// Shadow mode never refuses, but counts what it would have refused, and names itself in a
/// response header when asked to.
#[tokio::test]
async fn shadow_mode_never_denies_but_counts() {
    let gw = Setup {
        policies: vec![(
            "10-p.yaml".into(),
            "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, rate_limit: trial, upstream: echo}\n".into(),
        )],
        extra: "rate_limits:\n  trial: {key: client_ip, requests: 2, per: 1h, shadow: true, shadow_header: x-ratelimit-shadow}\n".into(),
        ..Setup::default()
    }
    .start()
    .await;
    let mut flagged = 0;
    for _ in 0..6 {
        let (status, headers, _) = crate::support::get(gw.addr(), "/x").await;
        assert_eq!(status, StatusCode::OK);
        if let Some(v) = headers.get("x-ratelimit-shadow") {
            assert_eq!(v, "trial");
            flagged += 1;
        }
    }
    assert_eq!(flagged, 4, "the four over the limit are flagged");
    assert_eq!(gw.echo.count(), 6);
    let (_, metrics) = gw.admin_get("/metrics").await;
    for (outcome, n) in [("allowed", 2), ("shadow_limited", 4), ("limited", 0)] {
        let line = format!(
            "portcullis_ratelimit_total{{limit=\"trial\",door=\"proxy\",outcome=\"{outcome}\"}} {n}"
        );
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
    assert!(!metrics.contains("reason=\"rate_limited\""), "{metrics}");
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

/// From a trusted proxy that appends its value to the client's own (as proxies append to
/// `X-Forwarded-For`), the header key is the proxy's value, the last: the client's copy, first,
/// chooses no budget.
#[tokio::test]
async fn header_key_counts_the_trusted_proxys_value() {
    let gw = Setup {
        policies: vec![("10-p.yaml".into(), policy(""))],
        files: vec![("hs.secret".into(), SECRET.to_vec())],
        server: "  trusted_proxies: [127.0.0.0/8]\n".into(),
        extra: format!("{}{LIMITS}", crate::support::hs256_users("{}")),
        ..Setup::default()
    }
    .start()
    .await;
    let team = |forged: &str, set: &str| {
        Request::get("/team/x")
            .header("x-team", forged)
            .header("x-team", set)
            .body(Full::default())
            .unwrap()
    };
    assert_eq!(send(gw.addr(), team("a", "red")).await.0, StatusCode::OK);
    for forged in ["b", "c"] {
        assert_eq!(
            send(gw.addr(), team(forged, "red")).await.0,
            StatusCode::TOO_MANY_REQUESTS,
            "{forged}"
        );
    }
    // Another team's budget is its own.
    assert_eq!(send(gw.addr(), team("a", "blue")).await.0, StatusCode::OK);
}

/// Two issuers of one authenticator, and a machine and a user, may share an id: each has a
/// budget of its own under a `principal` key.
#[tokio::test]
async fn principal_keys_tell_issuers_and_kinds_apart() {
    let gw = gateway().await;
    let ask = |claims: Value| {
        let t = crate::support::hs256_token(SECRET, &claims);
        Request::get("/api/x")
            .header("authorization", format!("Bearer {t}"))
            .body(Full::default())
            .unwrap()
    };
    for _ in 0..3 {
        assert_eq!(
            send(gw.addr(), ask(json!({"sub": "carol"}))).await.0,
            StatusCode::OK
        );
    }
    assert_eq!(
        send(gw.addr(), ask(json!({"sub": "carol"}))).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // A machine token whose `client_id` spells the user's id.
    assert_eq!(
        send(gw.addr(), ask(json!({"sub": null, "client_id": "carol"})))
            .await
            .0,
        StatusCode::OK
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

/// `explain` names a rule's guard and limit, and neither looks at nor spends them: asked
/// more often than the guard allows, it still shows the rule's own answer.
#[test]
fn explain_names_the_guard_without_spending_it() {
    let cfg = crate::support::ConfigDir::new(
        "rate_limits:\n  tries: {key: client_ip, requests: 1, per: 1h, count: failures}\n  one: {key: client_ip, requests: 1, per: 1h}\n",
    );
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: login, match: {paths: [\"/login\"]}, effect: allow, anonymous: true, guard: tries, rate_limit: one, upstream: echo}\n",
    );
    for _ in 0..3 {
        let (code, text) = cfg.run("explain", &["--url", "http://app.test/login"]);
        assert_eq!(code, Some(0), "{text}");
        for expected in [
            "rate limit `tries` applies: 1 per 1h (burst 1), by client_ip; counts refusals \
             (explain does not spend its budget)",
            "rate limit `one` applies: 1 per 1h (burst 1), by client_ip (explain does not \
             spend its budget)",
        ] {
            assert!(text.contains(expected), "{expected}\n{text}");
        }
    }
}
