//! Authentication micro-benchmarks (criterion): JWT verification per algorithm without the
//! cache, and a whole decision (route match + cached-token authentication) on a snapshot built
//! from real config files. `cargo bench --bench authn`.
//!
//! Target (issue 3): a cached decision costs well under 1 µs, against ~44 µs for an uncached
//! RS256 verification on the same machine.

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
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::Algorithm;
use portcullis::authn::jwt::mint::SigningKey;
use portcullis::decision::{self, Decision, NoTrace};
use portcullis::request::RequestFacts;
use portcullis::request::facts::ConnInfo;
use serde_json::json;

const ISS: &str = "https://issuer.bench";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Fixture {
    _dir: tempfile::TempDir,
    snapshot: portcullis::snapshot::Snapshot,
    tokens: Vec<(&'static str, String)>,
}

fn fixture() -> Fixture {
    let algs: [(&str, Algorithm); 9] = [
        ("HS256", Algorithm::HS256),
        ("RS256", Algorithm::RS256),
        ("RS512", Algorithm::RS512),
        ("PS256", Algorithm::PS256),
        ("ES256", Algorithm::ES256),
        ("ES384", Algorithm::ES384),
        ("EdDSA", Algorithm::EdDSA),
        ("HS512", Algorithm::HS512),
        ("PS512", Algorithm::PS512),
    ];
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    let secret = b"bench-secret-bench-secret-bench-secret-bench-secret-bench-secret!";
    std::fs::write(dir.path().join("hs.secret"), secret).unwrap();
    let rsa = SigningKey::generate(Algorithm::RS256, "rsa").unwrap();
    let mut keys_yaml = String::from(
        "            - hmac: {secret: {file: hs.secret}, kid: hs, algorithms: [HS256, HS512]}\n            - pem_file: {path: rsa.pem, kid: rsa, algorithms: [RS256, RS512, PS256, PS512]}\n",
    );
    std::fs::write(dir.path().join("rsa.pem"), &rsa.public_pem).unwrap();
    let mut tokens = Vec::new();
    let claims = json!({"iss": ISS, "aud": "api", "sub": "bench-user", "scope": "read write", "tenant": "acme", "exp": now() + 3600, "iat": now()});
    for (name, alg) in algs {
        let signer = match alg {
            Algorithm::HS256 | Algorithm::HS512 => SigningKey::hmac(secret, alg, "hs").unwrap(),
            Algorithm::RS256 | Algorithm::RS512 | Algorithm::PS256 | Algorithm::PS512 => {
                SigningKey::from_private_key(rsa.private_pem.expose().as_bytes(), alg, "rsa")
                    .unwrap()
            }
            _ => {
                let k = SigningKey::generate(alg, name).unwrap();
                std::fs::write(dir.path().join(format!("{name}.pem")), &k.public_pem).unwrap();
                keys_yaml.push_str(&format!(
                    "            - pem_file: {{path: {name}.pem, kid: {name}, algorithms: [{name}]}}\n"
                ));
                k
            }
        };
        tokens.push((name, signer.sign(&claims).unwrap()));
    }
    std::fs::write(
        dir.path().join("policies/p.yaml"),
        "rules:
  - name: full
    match: {paths: [\"/full/{tenant}/**\"], methods: [GET]}
    effect: allow
    authenticators: [users]
    require:
      scopes: {all_of: [read]}
      claims: {tenant: {equals: acme}}
    when: params.tenant == claims.tenant && action == 'read'
    rate_limit: per-user
    identity_headers:
      x-user-scopes: \"{principal.scopes}\"
    upstream: app
  - name: api
    match: {paths: [\"/api/**\"], methods: [GET]}
    effect: allow
    authenticators: [users]
    upstream: app
",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("portcullis.yaml"),
        format!(
            "listeners:\n  - name: http\n    address: 127.0.0.1:0\nupstreams:\n  app: {{url: \"http://127.0.0.1:9\"}}\npolicies: {{dir: policies}}\nidentity_headers:\n  x-user-id: \"{{principal.id}}\"\n  x-tenant-id: \"{{claims.tenant}}\"\n  x-real-client: \"{{client.ip}}\"\nrate_limits:\n  per-user: {{key: principal, requests: 100000000, per: 1s}}\nauthenticators:\n  users:\n    jwt:\n      providers:\n        - issuer: {ISS}\n          audiences: [api]\n          keys:\n{keys_yaml}"
        ),
    )
    .unwrap();
    let (snapshot, _) = portcullis::config::build(&dir.path().join("portcullis.yaml"), None)
        .unwrap_or_else(|e| panic!("{e:?}"));
    Fixture {
        _dir: dir,
        snapshot,
        tokens,
    }
}

fn benches(c: &mut Criterion) {
    let f = fixture();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let auth = f.snapshot.authn.at(0).unwrap();
    let portcullis::authn::Kind::Jwt(jwt) = &auth.kind else {
        unreachable!("the bench config's first authenticator is a JWT one")
    };
    let name: Arc<str> = "users".into();

    let mut g = c.benchmark_group("verify_uncached");
    for (alg, token) in &f.tokens {
        g.bench_function(*alg, |b| {
            b.iter(|| {
                rt.block_on(jwt.verify(black_box(token), &name, now(), None))
                    .unwrap()
            });
        });
    }
    g.finish();

    let conn = ConnInfo::new("127.0.0.1:50000".parse().unwrap(), "http".into(), None);
    let (_, rs256) = f.tokens.iter().find(|(a, _)| *a == "RS256").unwrap();
    let req = http::Request::get("/api/orders/42?x=1")
        .header("host", "api.example.com")
        .header("authorization", format!("Bearer {rs256}"))
        .header("user-agent", "bench")
        .body(())
        .unwrap();
    let (parts, ()) = req.into_parts();
    // Warm the cache.
    let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
    assert!(matches!(
        rt.block_on(decision::decide(&f.snapshot, &facts, &mut NoTrace)),
        Decision::Allow(_)
    ));
    c.bench_function("decide_cached_rs256", |b| {
        b.iter(|| {
            let facts = RequestFacts::from_parts(black_box(&parts), &conn, &[]).unwrap();
            let d = rt.block_on(decision::decide(&f.snapshot, &facts, &mut NoTrace));
            black_box(matches!(d, Decision::Allow(_)))
        });
    });
    // The load bench's full route: scope and claim requirements, a CEL condition over a path
    // parameter, a rate limit and four identity headers, on the cached token.
    let (full, ()) = http::Request::get("/full/acme/orders")
        .header("host", "api.example.com")
        .header("authorization", format!("Bearer {rs256}"))
        .header("user-agent", "bench")
        .body(())
        .unwrap()
        .into_parts();
    let facts = RequestFacts::from_parts(&full, &conn, &[]).unwrap();
    let d = rt.block_on(decision::decide(&f.snapshot, &facts, &mut NoTrace));
    assert!(
        matches!(&d, Decision::Allow(a) if a.mutation.set.len() == 4),
        "{d:?}"
    );
    c.bench_function("decide_full_policy", |b| {
        b.iter(|| {
            let facts = RequestFacts::from_parts(black_box(&full), &conn, &[]).unwrap();
            let d = rt.block_on(decision::decide(&f.snapshot, &facts, &mut NoTrace));
            black_box(matches!(d, Decision::Allow(_)))
        });
    });
    c.bench_function("facts_from_parts", |b| {
        b.iter(|| RequestFacts::from_parts(black_box(&parts), &conn, &[]).map(|f| f.path.len()));
    });
    let users = f.snapshot.authn.at(0).unwrap();
    c.bench_function("credential_find_bearer", |b| {
        b.iter(|| {
            matches!(
                portcullis::authn::credential::find(
                    &users.sources,
                    black_box(&parts.headers),
                    None
                ),
                portcullis::authn::credential::Found::Token(_)
            )
        });
    });
    c.bench_function("authenticator_verify_cached_rs256", |b| {
        b.iter(|| {
            rt.block_on(users.verify(
                black_box(rs256),
                now(),
                false,
                std::net::IpAddr::from([127, 0, 0, 1]),
                None,
            ))
            .is_ok()
        });
    });
    c.bench_function("token_digest_sha256_for_comparison", |b| {
        b.iter(|| portcullis::secret::sha256(black_box(rs256.as_bytes())));
    });
}

criterion_group! {
    name = authn;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = benches
}
criterion_main!(authn);
