//! Policy micro-benchmarks (criterion): route matching as rules grow (10, 1,000, 10,000),
//! loading a policy file as rules grow (1,000, 8,000), a CEL `when` evaluation,
//! identity-header rendering and the signed assertion (reused and freshly signed).
//! `cargo bench --bench policy`.
//!
//! Targets: matching among 10,000 rules costs at most 1.5× matching among 10 (issue 4);
//! loading 8,000 rules at most 10× loading 1,000.

#![allow(
    clippy::allow_attributes,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "benchmark set-up"
)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use portcullis::authn::jwt::mint::SigningKey;
use portcullis::authn::principal::{Principal, PrincipalKind};
use portcullis::authz::assertion::Assertion;
use portcullis::authz::expr::{Budget, Condition, ConditionError};
use portcullis::authz::identity::{Context, IdentityHeaders};
use portcullis::authz::require::Requirements;
use portcullis::authz::route::{MethodSet, PathPattern, RouteTable, Rule, RuleId};
use portcullis::authz::spoofable::Spoofable;
use portcullis::config::raw::{Effect, RawAssertion};
use portcullis::request::RequestFacts;
use portcullis::request::facts::ConnInfo;
use serde_json::json;

fn rule(i: usize) -> Rule {
    Rule {
        context: Box::default(),
        id: RuleId(format!("r{i}").into()),
        file: "bench.yaml".into(),
        hosts: Vec::new(),
        paths: vec![PathPattern::parse(&format!("/svc{i}/items/{{id}}/**")).unwrap()],
        methods: MethodSet::parse(&["GET".to_owned()]).unwrap(),
        effect: Effect::Allow,
        upstream: Some(0),
        authenticators: Box::default(),
        anonymous: true,
        query_credentials: None,
        require: Requirements::default(),
        identity: IdentityHeaders::default(),
        when: None,
        denial: None,
        rate_limit: None,
        guard: None,
        delegate: None,
        case_insensitive: false,
        timeouts: None,
        edge: None,
    }
}

fn principal() -> Principal {
    Principal {
        id: "alice".into(),
        kind: PrincipalKind::User,
        authenticator: Arc::from("users"),
        issuer: Some("https://issuer".into()),
        scopes: vec!["orders:read".into(), "orders:write".into()].into(),
        roles: vec!["admin".into()].into(),
        tenant: Some("acme".into()),
        api_key_id: None,
        claims: json!({"sub": "alice", "tenant": "acme", "email": "alice@example.com", "groups": ["a", "b"]})
            .as_object()
            .unwrap()
            .clone(),
        expires_at: None,
        valid_until: None,
        derived: Default::default(),
    }
}

fn benches(c: &mut Criterion) {
    let conn = ConnInfo::new("127.0.0.1:50000".parse().unwrap(), "http".into(), None);
    let mut g = c.benchmark_group("route_match");
    for n in [10usize, 1_000, 10_000] {
        let table = RouteTable::new((0..n).map(rule).collect());
        // The last rule: the worst case for trying rules in order.
        let (parts, ()) = http::Request::get(format!("/svc{}/items/42/detail", n - 1))
            .header("host", "api.example.com")
            .body(())
            .unwrap()
            .into_parts();
        let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
        assert!(table.find(&facts).is_some());
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| table.find(black_box(&facts)).map(|r| r.upstream));
        });
    }
    g.finish();

    // Loading and compiling a policy file of n rules under one literal prefix (`/big/i`),
    // lints included. Target: 8,000 rules cost at most 10× what 1,000 do (linear; it was
    // quadratic: every rule compared with every earlier one, and a scan of the file's
    // location index per field).
    let mut g = c.benchmark_group("config_compile");
    g.sample_size(10);
    for n in [1_000usize, 8_000] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        let mut rules = String::from("rules:\n");
        for i in 0..n {
            rules.push_str(&format!(
                "  - name: r{i}\n    match: {{paths: [\"/big/{i}\"], methods: [GET]}}\n    effect: allow\n    anonymous: true\n    upstream: app\n"
            ));
        }
        std::fs::write(dir.path().join("policies/30-big.yaml"), rules).unwrap();
        let config = dir.path().join("portcullis.yaml");
        std::fs::write(
            &config,
            "listeners: [{name: http, address: \"127.0.0.1:0\"}]\nupstreams: {app: {url: \"http://127.0.0.1:9\"}}\npolicies: {dir: policies}\n",
        )
        .unwrap();
        assert!(portcullis::config::build(&config, None).is_ok());
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| portcullis::config::build(black_box(&config), None).is_ok());
        });
    }
    g.finish();

    let p = principal();
    let (parts, ()) = http::Request::get("/users/alice/orders?mine=1")
        .header("host", "api.example.com")
        .body(())
        .unwrap()
        .into_parts();
    let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
    let params = vec![("user_id".into(), "alice".to_owned())];
    let spoofable = Spoofable::new([], Vec::new());
    let when = Condition::compile(
        "params.user_id == principal.id && claims.tenant == 'acme' && action == 'read_mine'",
        Budget::default(),
    )
    .unwrap();
    assert!(when.eval(&facts, Some(&p), &params, &spoofable).is_ok());
    c.bench_function("cel_when", |b| {
        b.iter(|| {
            when.eval(black_box(&facts), Some(&p), &params, &spoofable)
                .is_ok()
        });
    });

    // Comprehensions: a small one (the usual case, metered), and about the most one
    // evaluation can spend: nested, 50 × 1000 elements, cut short by the default budget
    // after some 20000 steps (two passes over the inner list).
    let roles =
        Condition::compile("principal.roles.exists(r, r == 'admin')", Budget::default()).unwrap();
    assert!(roles.eval(&facts, Some(&p), &params, &spoofable).is_ok());
    c.bench_function("cel_exists_roles", |b| {
        b.iter(|| {
            roles
                .eval(black_box(&facts), Some(&p), &params, &spoofable)
                .is_ok()
        });
    });
    let mut big = principal();
    big.claims
        .insert("big".into(), json!((0..1000).collect::<Vec<_>>()));
    big.claims
        .insert("mid".into(), json!((0..50).collect::<Vec<_>>()));
    let worst = Condition::compile(
        "claims.mid.exists(x, claims.big.exists(y, x == y + 1000))",
        Budget::default(),
    )
    .unwrap();
    assert_eq!(
        worst.eval(&facts, Some(&big), &params, &spoofable),
        Err(ConditionError::BudgetExceeded)
    );
    c.bench_function("cel_budget_spent", |b| {
        b.iter(|| {
            worst
                .eval(black_box(&facts), Some(&big), &params, &spoofable)
                .is_err()
        });
    });

    let identity = IdentityHeaders::compile([
        ("x-user-id", "{principal.id}"),
        ("x-user-roles", "{principal.roles}"),
        ("x-tenant-id", "{principal.tenant}"),
        ("x-user-email", "{claims.email}"),
    ])
    .unwrap();
    let cx = Context {
        principal: Some(&p),
        client_ip: "192.0.2.1".parse().unwrap(),
        rule: "r",
    };
    c.bench_function("identity_headers_4", |b| {
        b.iter(|| identity.render(black_box(&cx), 0).0.len());
    });

    // The signed assertion: a reuse (the serving case) against a fresh ES256 signature.
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(jsonwebtoken::Algorithm::ES256, "gw").unwrap();
    std::fs::write(dir.path().join("a.key"), key.private_pem.expose()).unwrap();
    let raw: RawAssertion = serde_yaml::from_str(
        "{key_file: a.key, algorithm: ES256, kid: gw, issuer: https://gw.test, audience: be, claims: {roles: \"{principal.roles}\", tenant: \"{principal.tenant}\"}}",
    )
    .unwrap();
    let assertion = Assertion::compile(&raw, dir.path()).unwrap();
    assert!(matches!(
        assertion.mint(&cx, 1_700_000_000, None),
        Ok(Some(_))
    ));
    c.bench_function("assertion_reused", |b| {
        b.iter(|| assertion.mint(black_box(&cx), 1_700_000_000, None).is_ok());
    });
    c.bench_function("assertion_sign_es256", |b| {
        b.iter(|| {
            key.sign(black_box(&json!({"sub": "alice", "iat": 1})))
                .is_ok()
        });
    });
}

criterion_group! {
    name = policy;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = benches
}
criterion_main!(policy);
