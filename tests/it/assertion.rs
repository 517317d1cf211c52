//! The signed identity assertion: minted for authenticated requests, verified with the JWKS
//! the admin listener publishes (the way an upstream would), never forged by a client, and
//! reused for the same identity within half its life.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, jwk::JwkSet};
use portcullis::authn::jwt::mint::SigningKey;
use serde_json::{Value, json};

use http::Request;
use http_body_util::Full;

use std::time::Duration;

use crate::support::{Setup, TestGateway, echoed_header, eventually, get, raw, raw_status, send};

const SECRET: &[u8] = b"assertion-test-secret-assertion-test-secret-012";

async fn gateway(signing: &SigningKey, retired: &SigningKey) -> TestGateway {
    gateway_with(signing, retired, "").await
}

async fn gateway_with(signing: &SigningKey, retired: &SigningKey, admin: &str) -> TestGateway {
    let assertion = "identity_assertion:
  key_file: assertion.key
  algorithm: ES256
  kid: gw-2
  retired_keys:
    - {key_file: retired.key, algorithm: EdDSA, kid: gw-1}
  issuer: https://gateway.test
  audience: backend
  ttl: 2m
  claims:
    roles: \"{principal.roles}\"
    email: \"{claims.email}\"
    via: \"{rule.name}\"
";
    let policy = "rules:
  - name: api
    match: {paths: [\"/api/**\"]}
    effect: allow
    authenticators: [users]
    upstream: echo
  - name: open
    match: {paths: [\"/**\"]}
    effect: allow
    anonymous: true
    upstream: echo
";
    Setup {
        policies: vec![("10-p.yaml".into(), policy.into())],
        files: vec![
            ("hs.secret".into(), SECRET.to_vec()),
            (
                "assertion.key".into(),
                signing.private_pem.expose().as_bytes().to_vec(),
            ),
            (
                "retired.key".into(),
                retired.private_pem.expose().as_bytes().to_vec(),
            ),
        ],
        extra: format!(
            "{}{assertion}",
            crate::support::hs256_users("{roles_claim: roles}")
        ),
        admin: admin.into(),
        ..Setup::default()
    }
    .start()
    .await
}

async fn request(gw: &TestGateway, path: &str, headers: &str) -> u16 {
    raw_status(gw.addr(), path, headers).await
}

/// Upstreams that verify assertions need the JWKS, not `POST /reload`: the public admin
/// listener serves health and the keys, and nothing else, whatever the method or spelling.
#[tokio::test]
async fn public_admin_listener_serves_only_health_and_jwks() {
    let signing = SigningKey::generate(Algorithm::ES256, "gw-2").unwrap();
    let retired = SigningKey::generate(Algorithm::EdDSA, "gw-1").unwrap();
    let gw = gateway_with(&signing, &retired, "  public_address: 127.0.0.1:0\n").await;
    let public = gw.app().public_admin_addr().expect("public admin listener");
    assert_ne!(public, gw.app().admin_addr());

    let (_, full_jwks) = gw.admin_get("/.well-known/jwks.json").await;
    let (status, headers, body) = get(public, "/.well-known/jwks.json").await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(headers["content-type"], "application/jwk-set+json");
    assert_eq!(
        body,
        full_jwks.as_bytes(),
        "the same key set as the admin listener"
    );
    for path in ["/healthz", "/readyz"] {
        assert_eq!(get(public, path).await.0, http::StatusCode::OK, "{path}");
    }
    let head = Request::head("/.well-known/jwks.json")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(public, head).await.0, http::StatusCode::OK);

    // The rest of the admin surface does not exist here.
    let reload = Request::post("/reload").body(Full::default()).unwrap();
    assert_eq!(send(public, reload).await.0, http::StatusCode::NOT_FOUND);
    for path in [
        "/config", "/metrics", "/reload", "/nope", "//reload", "/reload/",
    ] {
        assert_eq!(
            get(public, path).await.0,
            http::StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    // The admin listener itself still serves everything.
    assert_eq!(gw.admin_get("/config").await.0, http::StatusCode::OK);

    // Loopback is one client, whichever 127.0.0.x it uses: 64 silent connections from 8
    // of them (enough to fill the listener) keep no health check out, on the public
    // listener or the admin listener proper.
    let mut held = Vec::new();
    for client in 2..10u8 {
        for _ in 0..8 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind(std::net::SocketAddr::from(([127, 0, 0, client], 0)))
                .unwrap();
            held.push(socket.connect(public).await.unwrap());
        }
    }
    let health = "GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n";
    assert_eq!(raw(public, health.as_bytes()).await.status, 200);
    assert_eq!(gw.admin_get("/healthz").await.0, http::StatusCode::OK);
    drop(held);
    assert!(
        eventually(Duration::from_secs(5), || async {
            raw(public, health.as_bytes()).await.status == 200
        })
        .await,
        "served again once they close"
    );

    // Where it listens is fixed for the life of the process: a reload that moves it is
    // refused, and it goes on listening where it did.
    let config = std::fs::read_to_string(gw.path("portcullis.yaml")).unwrap();
    gw.write(
        "portcullis.yaml",
        config.replace("public_address: 127.0.0.1:0", "public_address: 127.0.0.1:1"),
    );
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, http::StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body.contains("admin.public_address: changed: restart required"),
        "{body}"
    );
    assert_eq!(raw(public, health.as_bytes()).await.status, 200);
}

#[tokio::test]
async fn assertion_verifies_against_the_published_jwks() {
    let signing = SigningKey::generate(Algorithm::ES256, "gw-2").unwrap();
    let retired = SigningKey::generate(Algorithm::EdDSA, "gw-1").unwrap();
    let gw = gateway(&signing, &retired).await;

    let (status, body) = gw.admin_get("/.well-known/jwks.json").await;
    assert_eq!(status, http::StatusCode::OK);
    let set: JwkSet = serde_json::from_str(&body).unwrap();
    let kids: Vec<_> = set
        .keys
        .iter()
        .filter_map(|k| k.common.key_id.clone())
        .collect();
    assert_eq!(
        kids,
        ["gw-2", "gw-1"],
        "the signing key, then the retired one"
    );
    assert!(!body.contains("\"d\""), "no private key material: {body}");

    let t = crate::support::hs256_token(
        SECRET,
        &json!({"sub": "alice", "roles": ["admin", "ops"], "email": "a@x.test"}),
    );
    let status = request(&gw, "/api/x", &format!("Authorization: Bearer {t}\r\n")).await;
    assert_eq!(status, 200);
    let token = echoed_header(&gw.echo, "x-portcullis-assertion").expect("assertion sent");

    // Verify as an upstream would: the kid picks the key from the published set.
    let kid = decode_header(&token).unwrap().kid.unwrap();
    let jwk = set.find(&kid).unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.set_issuer(&["https://gateway.test"]);
    v.set_audience(&["backend"]);
    let claims = decode::<Value>(&token, &DecodingKey::from_jwk(jwk).unwrap(), &v)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["authenticator"], "users", "whose id `sub` is");
    assert_eq!(
        claims["roles"],
        json!(["admin", "ops"]),
        "arrays stay arrays"
    );
    assert_eq!(claims["email"], "a@x.test");
    assert_eq!(claims["via"], "api");
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(lifetime, 120);

    // The same identity within half its life: the same assertion (signing is not free).
    assert_eq!(
        request(&gw, "/api/x", &format!("Authorization: Bearer {t}\r\n")).await,
        200
    );
    assert_eq!(
        echoed_header(&gw.echo, "x-portcullis-assertion").as_deref(),
        Some(&*token)
    );
    // Someone else: their own.
    let bob = crate::support::hs256_token(SECRET, &json!({"sub": "bob"}));
    request(&gw, "/api/x", &format!("Authorization: Bearer {bob}\r\n")).await;
    let other = echoed_header(&gw.echo, "x-portcullis-assertion").unwrap();
    assert_ne!(other, token);
    let claims = decode::<Value>(&other, &DecodingKey::from_jwk(jwk).unwrap(), &v)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], "bob");
    assert!(claims.get("email").is_none(), "absent claims are left out");

    // A credential expiring before the assertion would: the assertion expires with it, even
    // when alice's longer-lived token minted one with the same claims just before.
    let now = claims["iat"].as_u64().unwrap();
    let short = crate::support::hs256_token(
        SECRET,
        &json!({"sub": "alice", "roles": ["admin", "ops"], "email": "a@x.test", "exp": now + 30}),
    );
    request(&gw, "/api/x", &format!("Authorization: Bearer {short}\r\n")).await;
    let capped = echoed_header(&gw.echo, "x-portcullis-assertion").unwrap();
    let claims = decode::<Value>(&capped, &DecodingKey::from_jwk(jwk).unwrap(), &v)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], "alice");
    let exp = claims["exp"].as_u64().unwrap();
    assert!(
        (now + 29..=now + 31).contains(&exp),
        "exp {exp}, token's {}",
        now + 30
    );

    // A token already past `exp`, accepted within the verifier's 30 s leeway: the assertion
    // lives until the leeway ends, not minted already expired.
    let late = crate::support::hs256_token(
        SECRET,
        &json!({"sub": "alice", "roles": ["admin", "ops"], "exp": now - 10}),
    );
    assert_eq!(
        request(&gw, "/api/x", &format!("Authorization: Bearer {late}\r\n")).await,
        200
    );
    let minted = echoed_header(&gw.echo, "x-portcullis-assertion").unwrap();
    let claims = decode::<Value>(&minted, &DecodingKey::from_jwk(jwk).unwrap(), &v)
        .unwrap()
        .claims;
    let exp = claims["exp"].as_u64().unwrap();
    assert!(
        (now + 19..=now + 21).contains(&exp),
        "exp {exp}, the leeway's end {}",
        now + 20
    );
}

#[tokio::test]
async fn a_client_cannot_send_its_own_assertion() {
    let signing = SigningKey::generate(Algorithm::ES256, "gw-2").unwrap();
    let retired = SigningKey::generate(Algorithm::EdDSA, "gw-1").unwrap();
    let gw = gateway(&signing, &retired).await;
    // A forged one, in several spellings, on an anonymous route: none reaches the upstream.
    let forged = signing
        .sign(&json!({"sub": "root", "iss": "https://gateway.test", "aud": "backend"}))
        .unwrap();
    let spoofed =
        format!("X-Portcullis-Assertion: {forged}\r\nx_portcullis_assertion: {forged}\r\n");
    assert_eq!(request(&gw, "/open", &spoofed).await, 200);
    let seen = gw.echo.last().unwrap();
    for (name, _) in &seen.headers {
        assert_ne!(
            name.as_str().replace('_', "-"),
            "x-portcullis-assertion",
            "a client's assertion reached the upstream"
        );
    }
}

/// One `jwt` authenticator trusting two issuers, and a machine whose `client_id` spells a
/// user's `sub`: three callers named `alice`, three assertions, told apart by `idp` and
/// `kind` (the partner issuer's alice got the main issuer's alice's assertion, byte for byte).
#[tokio::test]
async fn assertions_tell_issuers_and_kinds_apart() {
    const PARTNER: &[u8] = b"partner-secret-partner-secret-partner-secret-01";
    let signing = SigningKey::generate(Algorithm::ES256, "gw-2").unwrap();
    let assertion = "identity_assertion:
  key_file: assertion.key
  algorithm: ES256
  kid: gw-2
  issuer: https://gateway.test
";
    let users = "authenticators:
  users:
    jwt:
      providers:
        - issuer: https://iss.test
          audiences: [api]
          keys: [{hmac: {secret: {file: hs.secret}, kid: k, algorithms: [HS256]}}]
        - issuer: https://partner.test
          audiences: [api]
          keys: [{hmac: {secret: {file: partner.secret}, kid: k, algorithms: [HS256]}}]
";
    let gw = Setup {
        policies: vec![(
            "10-p.yaml".into(),
            "rules:\n  - {name: api, match: {paths: [\"/**\"]}, effect: allow, authenticators: [users], upstream: echo}\n".into(),
        )],
        files: vec![
            ("hs.secret".into(), SECRET.to_vec()),
            ("partner.secret".into(), PARTNER.to_vec()),
            (
                "assertion.key".into(),
                signing.private_pem.expose().as_bytes().to_vec(),
            ),
        ],
        extra: format!("{users}{assertion}"),
        ..Setup::default()
    }
    .start()
    .await;
    let mut seen = Vec::new();
    for (secret, claims) in [
        (SECRET, json!({"sub": "alice"})),
        (
            PARTNER,
            json!({"sub": "alice", "iss": "https://partner.test"}),
        ),
        (SECRET, json!({"sub": null, "client_id": "alice"})),
    ] {
        let t = crate::support::hs256_token(secret, &claims);
        let status = request(&gw, "/x", &format!("Authorization: Bearer {t}\r\n")).await;
        assert_eq!(status, 200, "{claims}");
        let claims = sent_assertion_claims(&gw);
        assert_eq!(claims["sub"], "alice");
        seen.push((claims["idp"].clone(), claims["kind"].clone()));
    }
    assert_eq!(
        seen,
        [
            (json!("https://iss.test"), json!("user")),
            (json!("https://partner.test"), json!("user")),
            (json!("https://iss.test"), json!("machine")),
        ]
    );
}

/// An assertion whose `sub` renders no text (its template names a claim the token lacks, or
/// one that is an object) is not minted: the request is refused 503 `assertion_unavailable`
/// and never reaches the upstream without it. It went with no `sub`, and alice's very token
/// was reused for bob (their claims were then the same).
#[tokio::test]
async fn an_assertion_without_a_subject_is_not_minted() {
    let signing = SigningKey::generate(Algorithm::ES256, "gw-2").unwrap();
    let assertion = "identity_assertion:
  key_file: assertion.key
  algorithm: ES256
  kid: gw-2
  issuer: https://gateway.test
  audience: backend
  claims:
    sub: \"{claims.preferred_username}\"
";
    let gw = Setup {
        policies: vec![(
            "10-p.yaml".into(),
            "rules:\n  - {name: api, match: {paths: [\"/**\"]}, effect: allow, authenticators: [users], upstream: echo}\n".into(),
        )],
        files: vec![
            ("hs.secret".into(), SECRET.to_vec()),
            (
                "assertion.key".into(),
                signing.private_pem.expose().as_bytes().to_vec(),
            ),
        ],
        extra: format!("{}{assertion}", crate::support::hs256_users("{}")),
        ..Setup::default()
    }
    .start()
    .await;
    for claims in [
        json!({"sub": "alice"}),
        json!({"sub": "bob", "preferred_username": {"x": "admin"}}),
        json!({"sub": "carol", "preferred_username": ""}),
    ] {
        let t = crate::support::hs256_token(SECRET, &claims);
        let before = gw.echo.count();
        let status = request(&gw, "/x", &format!("Authorization: Bearer {t}\r\n")).await;
        assert_eq!(status, 503, "{claims}");
        assert_eq!(gw.echo.count(), before, "{claims}: reached the upstream");
    }
    // One that has it gets its assertion, naming it.
    let t = crate::support::hs256_token(
        SECRET,
        &json!({"sub": "dave", "preferred_username": "dave.d"}),
    );
    let status = request(&gw, "/x", &format!("Authorization: Bearer {t}\r\n")).await;
    assert_eq!(status, 200);
    assert_eq!(sent_assertion_claims(&gw)["sub"], "dave.d");
}

/// The claims of the assertion the upstream got last (its payload, unverified).
fn sent_assertion_claims(gw: &TestGateway) -> Value {
    let token = echoed_header(&gw.echo, "x-portcullis-assertion").expect("assertion sent");
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap()
}

/// One client holding idle connections to the public admin listener (64 of them, the
/// listener's whole share) keeps no other client from its health checks and keys; its own
/// connections past its share are closed at once.
#[tokio::test]
async fn one_client_cannot_hold_the_admin_listener() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let signing = SigningKey::generate(Algorithm::ES256, "gw-2").unwrap();
    let retired = SigningKey::generate(Algorithm::EdDSA, "gw-1").unwrap();
    let gw = gateway_with(&signing, &retired, "  public_address: 127.0.0.1:0\n").await;
    let public = gw.app().public_admin_addr().expect("public admin listener");
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(tokio::net::TcpStream::connect(public).await.unwrap());
    }
    // Past its share, this client's oldest connections are closed without an answer: it
    // holds no more than its share.
    let mut oldest = idle.remove(0);
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), oldest.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}");
    // Another client is answered.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = socket.connect(public).await.unwrap();
    other
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), other.read_to_end(&mut answer))
        .await
        .expect("answered in time")
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    drop(idle);
}

/// Silent connections (the client's share of them, from the loopback address every local
/// process shares) do not keep a health check out: a new connection closes the oldest idle
/// one, never one answering. (A local process held 8 for a minute at a time.)
#[tokio::test]
async fn silent_connections_cannot_keep_a_client_out_of_the_admin_listener() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let signing = SigningKey::generate(Algorithm::ES256, "gw-2").unwrap();
    let retired = SigningKey::generate(Algorithm::EdDSA, "gw-1").unwrap();
    let gw = gateway_with(&signing, &retired, "").await;
    let admin = gw.app().admin_addr();
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }
    // Held open while the checks below run.
    let started = std::time::Instant::now();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let mut probe = tokio::net::TcpStream::connect(admin).await.unwrap();
        probe
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), probe.read_to_end(&mut answer))
            .await
            .expect("answered in time")
            .unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{path}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // The oldest silent ones were closed to make room.
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), silent[0].read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}");
}

/// The assertion's header is no identity header (global or a rule's), and no identity header
/// takes the gateway's own names (`x-portcullis-*`, trace context): `check` says which field,
/// where the gateway's value won silently before.
#[test]
fn assertion_header_is_no_identity_header() {
    let signing = SigningKey::generate(Algorithm::ES256, "gw-2").unwrap();
    let assertion = |header: &str| {
        format!(
            "identity_assertion:\n  key_file: assertion.key\n  algorithm: ES256\n  kid: gw-2\n  issuer: https://gateway.test\n  audience: backend\n  header: {header}\n"
        )
    };
    let policy = |identity: &str| {
        format!(
            "rules:\n  - {{name: all, match: {{paths: [\"/**\"]}}, effect: allow, anonymous: true, upstream: echo{identity}}}\n"
        )
    };
    let cases = [
        (
            format!(
                "{}identity_headers: {{x-user-id: \"{{principal.id}}\"}}\n",
                assertion("x-user-id")
            ),
            policy(""),
            "identity_assertion.header",
        ),
        (
            assertion("x-user-id"),
            policy(", identity_headers: {X_User_Id: \"{principal.id}\"}"),
            "identity_headers.X_User_Id",
        ),
        (
            assertion("traceparent"),
            policy(""),
            "identity_assertion.header",
        ),
        (
            format!(
                "{}identity_headers: {{x-portcullis-assertion: \"{{principal.id}}\"}}\n",
                assertion("x-assertion")
            ),
            policy(""),
            "identity_headers.x-portcullis-assertion",
        ),
        (
            "identity_headers: {traceparent: \"{claims.tp}\"}\n".to_owned(),
            policy(""),
            "identity_headers.traceparent",
        ),
        (
            "server: {request_id_header: x-correlation-id}\nidentity_headers: {x-correlation-id: \"{principal.id}\"}\n".to_owned(),
            policy(""),
            "identity_headers.x-correlation-id",
        ),
        (
            format!("server: {{request_id_header: x-correlation-id}}\n{}", assertion("X_Correlation_Id")),
            policy(""),
            "identity_assertion.header",
        ),
        // A delegate's answer may not set the assertion's header, whatever it is named.
        (
            format!(
                "{}delegates:\n  opa:\n    grpc: http://127.0.0.1:9191\n    headers: [x-opa-note, X_Gw_Assertion]\n",
                assertion("x-gw-assertion")
            ),
            policy(", delegate: opa"),
            "delegates.opa.headers: `x_gw_assertion` is the identity assertion's header",
        ),
    ];
    for (config, policy, field) in cases {
        let cfg = crate::support::ConfigDir::new(&config);
        cfg.write("assertion.key", signing.private_pem.expose().as_bytes());
        cfg.write("policies/p.yaml", &policy);
        let (code, text) = cfg.run("check", &[]);
        assert_ne!(code, Some(0), "{config}{policy}: {text}");
        assert!(text.contains(field), "{field}: {text}");
    }
    // Apart, they are fine.
    let cfg = crate::support::ConfigDir::new(&format!(
        "{}identity_headers: {{x-user-id: \"{{principal.id}}\"}}\n",
        assertion("x-assertion")
    ));
    cfg.write("assertion.key", signing.private_pem.expose().as_bytes());
    cfg.write("policies/p.yaml", policy(""));
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
}

/// An assertion without an audience is warned about (any upstream could replay another's),
/// unless every upstream names its own.
#[test]
fn an_assertion_without_audience_warns() {
    let signing = SigningKey::generate(Algorithm::ES256, "gw-3").unwrap();
    for (audience, upstream, warned) in [
        ("", "", true),
        ("  audience: backend\n", "", false),
        (
            "",
            "upstreams:\n  echo: {url: \"http://127.0.0.1:9\", assertion_audience: echo}\n",
            false,
        ),
    ] {
        let cfg = crate::support::ConfigDir::new(&format!(
            "identity_assertion:\n  key_file: assertion.key\n  algorithm: ES256\n  kid: gw-3\n  issuer: https://gateway.test\n{audience}"
        ));
        if !upstream.is_empty() {
            let main = std::fs::read_to_string(cfg.dir.path().join("portcullis.yaml")).unwrap();
            cfg.write(
                "portcullis.yaml",
                main.replace(
                    "upstreams: {echo: {url: \"http://127.0.0.1:9\"}}\n",
                    upstream,
                ),
            );
        }
        cfg.write("assertion.key", signing.private_pem.expose().as_bytes());
        cfg.write(
            "policies/p.yaml",
            "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: echo}\n",
        );
        let (code, text) = cfg.run("check", &[]);
        assert_eq!(code, Some(0), "{text}");
        assert_eq!(
            text.contains("identity_assertion.audience"),
            warned,
            "{audience}{upstream}: {text}"
        );
    }
}

/// Two retired keys with one `kid` are refused: a verifier picking a key by `kid` may take
/// either.
#[test]
fn a_kid_is_published_once() {
    let signing = SigningKey::generate(Algorithm::ES256, "gw-3").unwrap();
    let old1 = SigningKey::generate(Algorithm::ES256, "gw-1").unwrap();
    let old2 = SigningKey::generate(Algorithm::ES256, "gw-1").unwrap();
    let config = |second: &str| {
        format!(
            "identity_assertion:\n  key_file: assertion.key\n  algorithm: ES256\n  kid: gw-3\n  issuer: https://gateway.test\n  audience: backend\n  retired_keys:\n    - {{key_file: old1.key, algorithm: ES256, kid: gw-1}}\n    - {{key_file: old2.key, algorithm: ES256, kid: {second}}}\n"
        )
    };
    for (second, ok) in [("gw-1", false), ("gw-2", true)] {
        let cfg = crate::support::ConfigDir::new(&config(second));
        cfg.write("assertion.key", signing.private_pem.expose().as_bytes());
        cfg.write("old1.key", old1.private_pem.expose().as_bytes());
        cfg.write("old2.key", old2.private_pem.expose().as_bytes());
        cfg.write(
            "policies/p.yaml",
            "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: echo}\n",
        );
        let (code, text) = cfg.run("check", &[]);
        assert_eq!(code == Some(0), ok, "{second}: {text}");
        if !ok {
            assert!(text.contains("retired_keys[1].kid"), "{text}");
        }
    }
}

/// An upstream with its own `assertion_audience` gets assertions minted for it alone: the
/// same caller's assertion for another upstream has the global audience, so neither upstream
/// can replay what it was handed to the other.
#[tokio::test]
async fn each_upstream_gets_its_own_audience() {
    let signing = SigningKey::generate(Algorithm::ES256, "gw-2").unwrap();
    let policy = "rules:
  - {name: orders, match: {paths: [\"/orders/**\"]}, effect: allow, authenticators: [users], upstream: orders}
  - {name: api, match: {paths: [\"/api/**\"]}, effect: allow, authenticators: [users], upstream: echo}
";
    let gw = Setup {
        policies: vec![("10-p.yaml".into(), policy.into())],
        files: vec![
            ("hs.secret".into(), SECRET.to_vec()),
            (
                "assertion.key".into(),
                signing.private_pem.expose().as_bytes().to_vec(),
            ),
        ],
        upstreams: "  orders:\n    url: http://{echo}\n    assertion_audience: orders-api\n".into(),
        extra: format!(
            "{}identity_assertion:\n  key_file: assertion.key\n  algorithm: ES256\n  kid: gw-2\n  issuer: https://gateway.test\n  audience: backend\n",
            crate::support::hs256_users("{}")
        ),
        ..Setup::default()
    }
    .start()
    .await;
    let (_, body) = gw.admin_get("/.well-known/jwks.json").await;
    let set: JwkSet = serde_json::from_str(&body).unwrap();
    let key = DecodingKey::from_jwk(set.find("gw-2").unwrap()).unwrap();
    let t = crate::support::hs256_token(SECRET, &json!({"sub": "alice"}));
    let auth = format!("Authorization: Bearer {t}\r\n");
    let mut minted = Vec::new();
    for (path, audience, other) in [
        ("/orders/1", "orders-api", "backend"),
        ("/api/1", "backend", "orders-api"),
    ] {
        assert_eq!(request(&gw, path, &auth).await, 200, "{path}");
        let token = echoed_header(&gw.echo, "x-portcullis-assertion").expect("assertion sent");
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&["https://gateway.test"]);
        v.set_audience(&[audience]);
        let claims = decode::<Value>(&token, &key, &v).expect(path).claims;
        assert_eq!(claims["sub"], "alice");
        v.set_audience(&[other]);
        assert!(
            decode::<Value>(&token, &key, &v).is_err(),
            "{path}: accepted by an upstream expecting {other}"
        );
        minted.push(token);
    }
    assert_ne!(minted[0], minted[1]);
}
