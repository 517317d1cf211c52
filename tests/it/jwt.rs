//! JWT authentication through the proxy door: every algorithm and key source, one named test per
//! attack (each asserting the status and that the upstream saw nothing), and key-server faults.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use jsonwebtoken::Algorithm;
use portcullis::authn::jwt::mint::{SigningKey, jwks, pem};
use serde_json::{Value, json};

use crate::support::{
    ConnectionCounter, KeyMode, KeyServer, Setup, TestGateway, eventually, raw, render_config, send,
};

const ISS: &str = "https://issuer.test";

const POLICY: &str = "\
rules:
  - name: api
    match: {paths: [\"/api/**\"]}
    effect: allow
    authenticators: [users]
    upstream: echo
  - name: open
    match: {paths: [\"/open/**\"]}
    effect: allow
    authenticators: [users]
    anonymous: true
    upstream: echo
";

struct Keys {
    rsa_private: String,
    rs256: SigningKey,
    es256: SigningKey,
    es384: SigningKey,
    ed: SigningKey,
    hs_secret: Vec<u8>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rs256 = SigningKey::generate(Algorithm::RS256, "rsa").unwrap();
        // Printable, so a secret file never ends in a newline byte by chance.
        let mut random = [0u8; 48];
        aws_lc_rs::rand::fill(&mut random).unwrap();
        let hs_secret = URL_SAFE_NO_PAD.encode(random).into_bytes();
        Keys {
            rsa_private: rs256.private_pem.expose().clone(),
            rs256,
            es256: SigningKey::generate(Algorithm::ES256, "ec256").unwrap(),
            es384: SigningKey::generate(Algorithm::ES384, "ec384").unwrap(),
            ed: SigningKey::generate(Algorithm::EdDSA, "ed").unwrap(),
            hs_secret,
        }
    })
}

fn rsa(alg: Algorithm, kid: &str) -> SigningKey {
    SigningKey::from_private_key(keys().rsa_private.as_bytes(), alg, kid).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Valid claims for the default provider, with `extra` merged over them (`null` removes).
fn claims(extra: &Value) -> Value {
    let mut c =
        json!({"iss": ISS, "aud": "api", "sub": "user-1", "exp": now() + 300, "iat": now()});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn valid() -> String {
    keys().rs256.sign(&claims(&json!({}))).unwrap()
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// The default provider's key files.
fn key_files() -> Vec<(String, Vec<u8>)> {
    let k = keys();
    vec![
        ("rsa.pem".into(), k.rs256.public_pem.clone().into_bytes()),
        ("ec256.pem".into(), k.es256.public_pem.clone().into_bytes()),
        ("ec384.pem".into(), k.es384.public_pem.clone().into_bytes()),
        ("ed.pem".into(), k.ed.public_pem.clone().into_bytes()),
        ("hs.secret".into(), k.hs_secret.clone()),
    ]
}

const KEYS_YAML: &str = "\
- pem_file: {path: rsa.pem, kid: rsa, algorithms: [RS256, RS384, RS512, PS256, PS384, PS512]}
- pem_file: {path: ec256.pem, kid: ec256, algorithms: [ES256]}
- pem_file: {path: ec384.pem, kid: ec384, algorithms: [ES384]}
- pem_file: {path: ed.pem, kid: ed, algorithms: [EdDSA]}
- hmac: {secret: {file: hs.secret}, kid: hs, algorithms: [HS256, HS384, HS512]}
";

/// `authenticators:` with one JWT authenticator `users` and these providers (YAML list items).
fn authenticators(providers: &str, jwt_extra: &str) -> String {
    format!(
        "authenticators:\n  users:\n    jwt:\n{}      providers:\n{}",
        indent(jwt_extra, 6),
        indent(providers, 8)
    )
}

fn provider(issuer: &str, keys_yaml: &str, extra: &str) -> String {
    format!(
        "- issuer: {issuer}\n  audiences: [api]\n{}  keys:\n{}",
        indent(extra, 2),
        indent(keys_yaml, 4)
    )
}

async fn gateway_with(extra: String, files: Vec<(String, Vec<u8>)>) -> TestGateway {
    Setup {
        policies: vec![("10-p.yaml".into(), POLICY.into())],
        files,
        extra,
        ..Setup::default()
    }
    .start()
    .await
}

async fn gateway() -> TestGateway {
    gateway_with(
        authenticators(&provider(ISS, KEYS_YAML, ""), ""),
        key_files(),
    )
    .await
}

/// One Check at the gateway's `grpc` listener (an Envoy gRPC door) for `GET /api/x` from a
/// client at 198.51.100.9, carrying `authorization`.
async fn grpc_check(
    gw: &TestGateway,
    authorization: &str,
) -> envoy_types::pb::envoy::service::auth::v3::CheckResponse {
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

    let mut client = AuthorizationClient::connect(format!("http://{}", gw.addr_of("grpc")))
        .await
        .unwrap();
    client
        .check(crate::grpc::check(
            "/api/x",
            "198.51.100.9",
            &[("authorization", authorization)],
        ))
        .await
        .expect("an answer (maybe a denial), not a failed call")
        .into_inner()
}

async fn call(gw: &TestGateway, path: &str, token: Option<&str>) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = Request::get(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(gw.addr(), req.body(Full::default()).unwrap()).await
}

/// Asserts a 401 `invalid_token` that reached nothing upstream and echoes nothing back.
async fn assert_rejected(gw: &TestGateway, token: &str, what: &str) {
    let before = gw.echo.count();
    let (status, headers, body) = call(gw, "/api/x", Some(token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
    let challenge = headers.get("www-authenticate").unwrap().to_str().unwrap();
    assert!(
        challenge.contains("error=\"invalid_token\""),
        "{what}: {challenge}"
    );
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("\"error\":\"invalid_token\""),
        "{what}: {body}"
    );
    if token.len() > 8 {
        assert!(
            !body.contains(&token[token.len() - 8..]),
            "{what}: body echoes the token"
        );
    }
    assert_eq!(gw.echo.count(), before, "{what}: upstream saw the request");
}

async fn assert_accepted(gw: &TestGateway, token: &str, what: &str) {
    let before = gw.echo.count();
    let (status, _, body) = call(gw, "/api/x", Some(token)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{what}: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(gw.echo.count(), before + 1, "{what}");
}

// === positive ===

#[tokio::test]
async fn every_algorithm_verifies_from_pem_files_and_hmac_secret() {
    let gw = gateway().await;
    let k = keys();
    let c = claims(&json!({}));
    for alg in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ] {
        assert_accepted(&gw, &rsa(alg, "rsa").sign(&c).unwrap(), &format!("{alg:?}")).await;
    }
    assert_accepted(&gw, &k.es256.sign(&c).unwrap(), "ES256").await;
    assert_accepted(&gw, &k.es384.sign(&c).unwrap(), "ES384").await;
    assert_accepted(&gw, &k.ed.sign(&c).unwrap(), "EdDSA").await;
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let hs = SigningKey::hmac(&k.hs_secret, alg, "hs").unwrap();
        assert_accepted(&gw, &hs.sign(&c).unwrap(), &format!("{alg:?}")).await;
    }
}

#[tokio::test]
async fn every_algorithm_verifies_from_a_jwks_file() {
    let k = keys();
    let mut signers: Vec<SigningKey> = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ]
    .into_iter()
    .map(|a| rsa(a, &format!("rsa-{a:?}")))
    .collect();
    signers.push(
        SigningKey::from_private_key(
            k.es256.private_pem.expose().as_bytes(),
            Algorithm::ES256,
            "e1",
        )
        .unwrap(),
    );
    signers.push(
        SigningKey::from_private_key(
            k.es384.private_pem.expose().as_bytes(),
            Algorithm::ES384,
            "e2",
        )
        .unwrap(),
    );
    signers.push(
        SigningKey::from_private_key(k.ed.private_pem.expose().as_bytes(), Algorithm::EdDSA, "e3")
            .unwrap(),
    );
    signers.push(SigningKey::hmac(&k.hs_secret, Algorithm::HS512, "oct").unwrap());
    let doc = jwks(signers.iter()).to_string();
    let gw = gateway_with(
        authenticators(&provider(ISS, "- jwks_file: {path: keys.json}\n", ""), ""),
        vec![("keys.json".into(), doc.into_bytes())],
    )
    .await;
    for s in &signers {
        assert_accepted(&gw, &s.sign(&claims(&json!({}))).unwrap(), &s.kid).await;
    }
}

#[tokio::test]
async fn inline_pem_and_jwk_keys_verify() {
    let k = keys();
    let keys_yaml = format!(
        "- pem:\n    kid: ec256\n    algorithms: [ES256]\n    text: |\n{}- jwk: {{text: '{}'}}\n",
        indent(&k.es256.public_pem, 6),
        k.ed.jwk
    );
    let gw = gateway_with(authenticators(&provider(ISS, &keys_yaml, ""), ""), vec![]).await;
    assert_accepted(
        &gw,
        &k.es256.sign(&claims(&json!({}))).unwrap(),
        "inline pem",
    )
    .await;
    assert_accepted(&gw, &k.ed.sign(&claims(&json!({}))).unwrap(), "inline jwk").await;
}

#[tokio::test]
async fn certificate_file_is_a_key_source() {
    let k = keys();
    let key_pair = rcgen::KeyPair::from_pem(k.es256.private_pem.expose()).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["issuer.test".into()])
        .unwrap()
        .self_signed(&key_pair)
        .unwrap();
    let gw = gateway_with(
        authenticators(
            &provider(
                ISS,
                "- pem_file: {path: idp.crt, kid: ec256, algorithms: [ES256]}\n",
                "",
            ),
            "",
        ),
        vec![("idp.crt".into(), cert.pem().into_bytes())],
    )
    .await;
    assert_accepted(
        &gw,
        &k.es256.sign(&claims(&json!({}))).unwrap(),
        "certificate",
    )
    .await;
}

#[tokio::test]
async fn jwks_url_and_oidc_discovery_verify() {
    let k = keys();
    let server = KeyServer::start(&jwks([&k.rs256, &k.es256])).await;
    server.set_discovery("https://discovered.test");
    let providers = format!(
        "{}{}",
        provider(
            ISS,
            &format!("- jwks_url: {{url: \"{}\"}}\n", server.url("/jwks.json")),
            ""
        ),
        provider(
            "https://discovered.test",
            &format!("- oidc_discovery: {{url: \"{}\"}}\n", server.url("")),
            ""
        )
    );
    let gw = gateway_with(authenticators(&providers, ""), vec![]).await;
    wait_ready(&gw).await;
    assert_accepted(&gw, &k.rs256.sign(&claims(&json!({}))).unwrap(), "jwks url").await;
    let discovered = claims(&json!({"iss": "https://discovered.test"}));
    assert_accepted(&gw, &k.es256.sign(&discovered).unwrap(), "discovery").await;
}

#[tokio::test]
async fn discovery_with_another_issuer_gives_no_keys() {
    let k = keys();
    let server = KeyServer::start(&jwks([&k.rs256])).await;
    server.set_discovery("https://impostor.test");
    let extra = authenticators(
        &provider(
            ISS,
            &format!("- oidc_discovery: {{url: \"{}\"}}\n", server.url("")),
            "fetch: {startup_timeout: 1s, retry: 100ms}\n",
        ),
        "",
    );
    let gw = gateway_with(extra, vec![]).await;
    let (status, _, _) = call(&gw, "/api/x", Some(&valid())).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(gw.echo.count(), 0);
}

// === denials and challenges ===

#[tokio::test]
async fn missing_credential_gets_a_bearer_challenge() {
    let gw = gateway().await;
    let (status, headers, body) = call(&gw, "/api/x", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers.get("www-authenticate").unwrap(),
        "Bearer realm=\"portcullis\""
    );
    assert!(String::from_utf8_lossy(&body).contains("missing_credential"));
    assert_eq!(gw.echo.count(), 0);
}

#[tokio::test]
async fn anonymous_rule_admits_no_credential_but_never_a_bad_one() {
    let gw = gateway().await;
    assert_eq!(call(&gw, "/open/x", None).await.0, StatusCode::OK);
    let forged = format!("{}x", valid());
    let (status, _, _) = call(&gw, "/open/x", Some(&forged)).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "an invalid token never falls through to anonymous"
    );
    assert_eq!(
        call(&gw, "/open/x", Some("not a token")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(gw.echo.count(), 1);
}

#[tokio::test]
async fn bad_signature_rejected() {
    let gw = gateway().await;
    let t = valid();
    let (msg, _) = t.rsplit_once('.').unwrap();
    let other = SigningKey::generate(Algorithm::RS256, "rsa").unwrap();
    let forged = other
        .sign_raw(
            &json!({"alg": "RS256", "kid": "rsa"}),
            &claims(&json!({"sub": "admin"})),
        )
        .unwrap();
    assert_rejected(&gw, &format!("{msg}.AAAA"), "truncated signature").await;
    assert_rejected(&gw, &forged, "signed by another key, same key id").await;
}

// === attacks ===

#[tokio::test]
async fn alg_none_rejected_in_every_casing() {
    let gw = gateway().await;
    let payload = URL_SAFE_NO_PAD.encode(claims(&json!({})).to_string());
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}.c2ln"),
        ] {
            assert_rejected(&gw, &token, alg).await;
        }
    }
    // Without a kid, too, and with the kid of a real key.
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": "rsa"}).to_string());
    assert_rejected(&gw, &format!("{header}.{payload}."), "none with kid").await;
}

/// Every encoding in which an attacker might find a public key, used as an HMAC secret.
fn public_key_encodings(
    signer: &SigningKey,
    cert_pem: Option<String>,
) -> Vec<(&'static str, Vec<u8>)> {
    let pem_text = signer.public_pem.clone();
    let der = ::pem::parse(&pem_text).unwrap().into_contents();
    let mut out = vec![
        ("pem", pem_text.clone().into_bytes()),
        (
            "pem without trailing newline",
            pem_text.trim_end().as_bytes().to_vec(),
        ),
        ("der", der.clone()),
        ("jwk", signer.jwk.to_string().into_bytes()),
    ];
    let spki = portcullis::tls::x509::Spki::from_der(&der).unwrap();
    if signer.alg == Algorithm::RS256 {
        let pkcs1 = spki.key.to_vec();
        out.push(("pkcs1 pem", pem("RSA PUBLIC KEY", &pkcs1).into_bytes()));
        out.push(("pkcs1 der", pkcs1));
    } else {
        out.push(("raw point", spki.key.to_vec()));
    }
    if let Some(c) = cert_pem {
        out.push(("certificate", c.into_bytes()));
    }
    out
}

#[tokio::test]
async fn hs256_signed_with_public_keys_rejected() {
    let gw = gateway().await;
    let k = keys();
    let rsa_cert = {
        let kp = rcgen::KeyPair::from_pem(&k.rsa_private).unwrap();
        rcgen::CertificateParams::new(vec!["issuer.test".into()])
            .unwrap()
            .self_signed(&kp)
            .unwrap()
            .pem()
    };
    for (signer, cert) in [
        (&k.rs256, Some(rsa_cert)),
        (&k.es256, None),
        (&k.es384, None),
        (&k.ed, None),
    ] {
        for (encoding, secret) in public_key_encodings(signer, cert) {
            for hs in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                for kid in [Some(signer.kid.as_str()), None] {
                    let attacker = SigningKey::hmac(&secret, hs, "x").unwrap();
                    let mut header = json!({"alg": format!("{hs:?}"), "typ": "JWT"});
                    if let Some(kid) = kid {
                        header["kid"] = json!(kid);
                    }
                    let token = attacker
                        .sign_raw(&header, &claims(&json!({"sub": "admin"})))
                        .unwrap();
                    assert_rejected(
                        &gw,
                        &token,
                        &format!("{hs:?} with {} {encoding}, kid {kid:?}", signer.kid),
                    )
                    .await;
                }
            }
        }
    }
}

#[tokio::test]
async fn hmac_secret_that_is_a_public_key_refused_by_check() {
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/p.yaml"), POLICY).unwrap();
    std::fs::write(dir.path().join("pub.pem"), &k.rs256.public_pem).unwrap();
    let config = format!(
        "listeners:\n  - name: http\n    address: 127.0.0.1:0\nupstreams:\n  echo: {{url: \"http://127.0.0.1:9\"}}\n{}",
        authenticators(
            &provider(
                ISS,
                "- hmac: {secret: {file: pub.pem}, algorithms: [HS256]}\n",
                ""
            ),
            ""
        )
    );
    std::fs::write(dir.path().join("portcullis.yaml"), config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "-c"])
        .arg(dir.path().join("portcullis.yaml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("authenticators.users.jwt.providers[0].keys[0].hmac.secret"),
        "{stdout}"
    );
    assert!(stdout.contains("looks like a public key"), "{stdout}");
    assert!(
        !stdout.contains("BEGIN"),
        "the secret is not printed: {stdout}"
    );
}

#[tokio::test]
async fn ecdsa_signature_r_s_zero_rejected() {
    let gw = gateway().await;
    for (alg, kid, len) in [("ES256", "ec256", 64), ("ES384", "ec384", 96)] {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "kid": kid}).to_string());
        let payload = URL_SAFE_NO_PAD.encode(claims(&json!({})).to_string());
        let sig = URL_SAFE_NO_PAD.encode(vec![0u8; len]);
        assert_rejected(&gw, &format!("{header}.{payload}.{sig}"), alg).await;
    }
}

#[tokio::test]
async fn embedded_jwk_jku_x5u_x5c_never_fetched_or_trusted() {
    let evil = ConnectionCounter::start().await;
    let k = keys();
    // A provider with a remote key source, so a fetch would be possible at all.
    let server = KeyServer::start(&jwks([&k.rs256])).await;
    let gw = gateway_with(
        remote_gateway_extra(&server, "unknown_kid_cooldown: 1h"),
        vec![],
    )
    .await;
    wait_ready(&gw).await;
    let attacker = SigningKey::generate(Algorithm::ES256, "attacker").unwrap();
    let kp = rcgen::KeyPair::from_pem(attacker.private_pem.expose()).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["evil.test".into()])
        .unwrap()
        .self_signed(&kp)
        .unwrap();
    let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der());
    let url = format!("http://{}/jwks.json", evil.addr);
    for (name, header) in [
        ("jwk", json!({"alg": "ES256", "jwk": attacker.jwk})),
        (
            "jwk with kid",
            json!({"alg": "ES256", "kid": "attacker", "jwk": attacker.jwk}),
        ),
        (
            "jku",
            json!({"alg": "ES256", "kid": "attacker", "jku": url}),
        ),
        (
            "x5u",
            json!({"alg": "ES256", "x5u": format!("http://{}/cert.pem", evil.addr)}),
        ),
        ("x5c", json!({"alg": "ES256", "x5c": [x5c]})),
    ] {
        let token = attacker
            .sign_raw(&header, &claims(&json!({"sub": "admin"})))
            .unwrap();
        assert_rejected(&gw, &token, name).await;
    }
    assert_eq!(
        evil.count(),
        0,
        "the gateway connected to a URL named by a token"
    );
}

#[tokio::test]
async fn kid_path_traversal_and_sql_rejected() {
    let gw = gateway().await;
    let attacker = SigningKey::generate(Algorithm::ES256, "x").unwrap();
    for kid in [
        "../../../../../../dev/null",
        "/dev/null",
        "' OR '1'='1",
        "rsa' --",
        "rsa\u{0}",
        "../hs.secret",
    ] {
        let t = attacker
            .sign_raw(&json!({"alg": "ES256", "kid": kid}), &claims(&json!({})))
            .unwrap();
        assert_rejected(&gw, &t, kid).await;
        // The /dev/null classic: HMAC with an empty key.
        let empty = SigningKey::hmac(b"", Algorithm::HS256, kid).unwrap();
        let t = empty
            .sign_raw(&json!({"alg": "HS256", "kid": kid}), &claims(&json!({})))
            .unwrap();
        assert_rejected(&gw, &t, &format!("{kid} with empty secret")).await;
    }
}

#[tokio::test]
async fn unknown_crit_header_rejected() {
    let gw = gateway().await;
    let k = keys();
    for header in [
        json!({"alg": "RS256", "kid": "rsa", "crit": ["exp"], "exp": 1}),
        json!({"alg": "RS256", "kid": "rsa", "crit": ["b64"], "b64": false}),
        json!({"alg": "RS256", "kid": "rsa", "crit": []}),
    ] {
        let t = k.rs256.sign_raw(&header, &claims(&json!({}))).unwrap();
        assert_rejected(&gw, &t, &header.to_string()).await;
    }
}

/// Asserts that `n` denials were counted for this reason code (the client sees only
/// `invalid_token`; logs and metrics say why).
async fn assert_denials(gw: &TestGateway, reason: &str, n: usize) {
    let (_, metrics) = gw.admin_get("/metrics").await;
    let line = format!("portcullis_denials_total{{door=\"proxy\",reason=\"{reason}\"}} {n}");
    assert!(metrics.contains(&line), "{line} in {metrics}");
}

/// A token signed with the ES256 key over these exact JSON texts (members may repeat).
fn es256_over_text(header: &str, claims: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_ec_pem(keys().es256.private_pem.expose().as_bytes())
        .unwrap();
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::ES256).unwrap();
    format!("{message}.{signature}")
}

#[tokio::test]
async fn duplicate_member_names_rejected() {
    let gw = gateway().await;
    let header = r#"{"alg":"ES256","kid":"ec256"}"#;
    let claims = |sub: &str| {
        format!(
            r#"{{"iss":"{ISS}","aud":"api","exp":{},"sub":"user-1"{sub}}}"#,
            now() + 300
        )
    };
    // The same signer and texts, without a repeat, pass: only the repeat is refused.
    assert_accepted(&gw, &es256_over_text(header, &claims("")), "no repeat").await;
    let twice = [
        (header.to_owned(), claims(r#","sub":"admin""#), "sub twice"),
        (
            header.to_owned(),
            claims(r#","realm":{"roles":["user"],"roles":["admin"]}"#),
            "nested roles twice",
        ),
        (
            r#"{"alg":"ES256","kid":"ec256","kid":"ec256"}"#.to_owned(),
            claims(""),
            "kid twice in the header",
        ),
        (
            r#"{"alg":"HS256","alg":"ES256","kid":"ec256"}"#.to_owned(),
            claims(""),
            "alg twice in the header",
        ),
    ];
    for (h, c, what) in &twice {
        assert_rejected(&gw, &es256_over_text(h, c), what).await;
    }
    assert_denials(&gw, "token_duplicate_member", twice.len()).await;
}

#[tokio::test]
async fn jws_header_with_enc_rejected() {
    let gw = gateway().await;
    let k = keys();
    for enc in ["A256GCM", "A128CBC-HS256"] {
        let header = json!({"alg": "ES256", "kid": "ec256", "enc": enc});
        let t = k.es256.sign_raw(&header, &claims(&json!({}))).unwrap();
        assert_rejected(&gw, &t, enc).await;
    }
    assert_denials(&gw, "token_enc_header", 2).await;
}

#[tokio::test]
async fn token_without_kid_never_reaches_keys_with_a_kid() {
    // Every key of the default provider has a kid.
    let gw = gateway().await;
    let k = keys();
    let t = k
        .es256
        .sign_raw(&json!({"alg": "ES256"}), &claims(&json!({})))
        .unwrap();
    assert_rejected(&gw, &t, "no kid").await;
    assert_denials(&gw, "token_unknown_key", 1).await;
    // A key without kid verifies exactly such tokens.
    let untagged = gateway_with(
        authenticators(
            &provider(
                ISS,
                "- pem_file: {path: ec256.pem, algorithms: [ES256]}\n",
                "",
            ),
            "",
        ),
        key_files(),
    )
    .await;
    assert_accepted(&untagged, &t, "key without kid").await;
}

#[tokio::test]
async fn dates_beyond_year_9999_rejected_not_read_as_never() {
    let gw = gateway().await;
    let k = keys();
    let cases = [
        json!({"exp": 1e300}),
        json!({"exp": 253_402_300_800_u64}),
        json!({"exp": u64::MAX}),
        json!({"exp": now() + 300, "nbf": 1e19}),
    ];
    for c in &cases {
        assert_rejected(&gw, &k.rs256.sign(&claims(c)).unwrap(), &c.to_string()).await;
    }
    assert_denials(&gw, "token_date_out_of_range", cases.len()).await;
    // With max_lifetime, a far `exp` is too long a life, from `iat` or from now.
    let bounded = gateway_with(
        authenticators(&provider(ISS, KEYS_YAML, "max_lifetime: 1h\n"), ""),
        key_files(),
    )
    .await;
    for c in [
        json!({"exp": now() + 7300}),
        json!({"exp": now() + 7300, "iat": null}),
        json!({"exp": 253_402_300_000_u64, "iat": null}),
    ] {
        assert_rejected(
            &bounded,
            &k.rs256.sign(&claims(&c)).unwrap(),
            &c.to_string(),
        )
        .await;
    }
    assert_denials(&bounded, "token_lifetime_too_long", 3).await;
}

#[tokio::test]
async fn id_token_refused_where_access_tokens_are_required() {
    let k = keys();
    let gw = gateway_with(
        authenticators(&provider(ISS, KEYS_YAML, "token_types: [at+jwt]\n"), ""),
        key_files(),
    )
    .await;
    let typed = |typ: Option<&str>| {
        let mut header = json!({"alg": "ES256", "kid": "ec256"});
        if let Some(t) = typ {
            header["typ"] = json!(t);
        }
        k.es256.sign_raw(&header, &claims(&json!({}))).unwrap()
    };
    for typ in ["at+jwt", "application/at+jwt", "AT+JWT"] {
        assert_accepted(&gw, &typed(Some(typ)), typ).await;
    }
    // An ID token of the same issuer and audience: `typ: JWT`, or none at all.
    assert_rejected(&gw, &k.es256.sign(&claims(&json!({}))).unwrap(), "JWT").await;
    assert_rejected(&gw, &typed(None), "no typ").await;
    assert_rejected(&gw, &typed(Some("application/jwt")), "application/jwt").await;
    assert_denials(&gw, "token_type_not_accepted", 3).await;
}

#[tokio::test]
async fn exp_and_nbf_as_strings_rejected() {
    let gw = gateway().await;
    let k = keys();
    for c in [
        json!({"exp": format!("{}", now() + 300)}),
        json!({"nbf": "0"}),
        json!({"iat": "0"}),
        json!({"exp": null}),
        json!({"exp": true}),
        json!({"exp": [now() + 300]}),
    ] {
        assert_rejected(&gw, &k.rs256.sign(&claims(&c)).unwrap(), &c.to_string()).await;
    }
}

#[tokio::test]
async fn expired_and_future_tokens_rejected() {
    let gw = gateway().await;
    let k = keys();
    for c in [
        json!({"exp": now() - 60}),
        json!({"nbf": now() + 120}),
        json!({"iat": now() + 120}),
    ] {
        assert_rejected(&gw, &k.rs256.sign(&claims(&c)).unwrap(), &c.to_string()).await;
    }
    // Within the default 30 s leeway.
    assert_accepted(
        &gw,
        &k.rs256.sign(&claims(&json!({"exp": now() - 5}))).unwrap(),
        "leeway",
    )
    .await;
}

#[tokio::test]
async fn aud_and_iss_missing_empty_or_arrays_rejected() {
    let gw = gateway().await;
    let k = keys();
    for c in [
        json!({"aud": null}),
        json!({"aud": ""}),
        json!({"aud": []}),
        json!({"aud": "other"}),
        json!({"aud": ["other", 1]}),
        json!({"iss": null}),
        json!({"iss": ""}),
        json!({"iss": [ISS]}),
        json!({"iss": format!("{ISS}/")}),
        json!({"iss": ISS.to_uppercase()}),
    ] {
        assert_rejected(&gw, &k.rs256.sign(&claims(&c)).unwrap(), &c.to_string()).await;
    }
    assert_accepted(
        &gw,
        &k.rs256
            .sign(&claims(&json!({"aud": ["other", "api"]})))
            .unwrap(),
        "aud array",
    )
    .await;
}

#[tokio::test]
async fn unknown_issuer_rejected_without_fetch() {
    let k = keys();
    let server = KeyServer::start(&jwks([&k.rs256])).await;
    let gw = gateway_with(remote_gateway_extra(&server, ""), vec![]).await;
    wait_ready(&gw).await;
    let hits = server.hits();
    let token = k
        .rs256
        .sign(&claims(&json!({"iss": format!("http://{}", server.addr)})))
        .unwrap();
    assert_rejected(&gw, &token, "unknown issuer").await;
    let token = rsa(Algorithm::RS256, "unknown-kid")
        .sign(&claims(&json!({"iss": "https://evil.test"})))
        .unwrap();
    assert_rejected(&gw, &token, "unknown issuer, unknown kid").await;
    assert_eq!(server.hits(), hits, "an unknown issuer caused a fetch");
}

#[tokio::test]
async fn kid_of_another_issuer_rejected() {
    let k = keys();
    let providers = format!(
        "{}{}",
        provider(
            ISS,
            "- pem_file: {path: rsa.pem, kid: rsa, algorithms: [RS256]}\n",
            ""
        ),
        provider(
            "https://other.test",
            "- pem_file: {path: ec256.pem, kid: ec256, algorithms: [ES256]}\n",
            ""
        )
    );
    let gw = gateway_with(authenticators(&providers, ""), key_files()).await;
    // Signed by the other issuer's key, claiming to be from ISS.
    assert_rejected(
        &gw,
        &k.es256.sign(&claims(&json!({}))).unwrap(),
        "cross-issuer kid",
    )
    .await;
    assert_accepted(
        &gw,
        &k.es256
            .sign(&claims(&json!({"iss": "https://other.test"})))
            .unwrap(),
        "own issuer",
    )
    .await;
}

#[tokio::test]
async fn huge_token_rejected_unparsed() {
    let gw = Setup {
        policies: vec![("10-p.yaml".into(), POLICY.into())],
        files: key_files(),
        extra: authenticators(&provider(ISS, KEYS_YAML, ""), ""),
        server: "  max_header_bytes: 131072\n".into(),
        ..Setup::default()
    }
    .start()
    .await;
    let huge = format!(
        "{}.{}.{}",
        "e".repeat(32 * 1024),
        "f".repeat(32 * 1024),
        "g".repeat(100)
    );
    assert_rejected(&gw, &huge, "64 KiB token").await;
}

#[tokio::test]
async fn duplicate_authorization_rejected() {
    let gw = gateway().await;
    let t = valid();
    let r = raw(
        gw.addr(),
        format!("GET /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("invalid_request"), "{}", r.body);
    let forged = rsa(Algorithm::RS256, "x")
        .sign(&claims(&json!({"sub": "admin"})))
        .unwrap();
    let r = raw(
        gw.addr(),
        format!("GET /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\nAuthorization: Bearer {forged}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(gw.echo.count(), 0);
}

#[tokio::test]
async fn header_and_cookie_tokens_must_agree() {
    let extra = authenticators(
        &provider(ISS, KEYS_YAML, ""),
        "from: [bearer, {cookie: session}]\n",
    );
    let gw = gateway_with(extra, key_files()).await;
    let t = valid();
    let other = keys()
        .rs256
        .sign(&claims(&json!({"sub": "user-2"})))
        .unwrap();
    let req = |cookie: &str| {
        Request::get("/api/x")
            .header("authorization", format!("Bearer {t}"))
            .header("cookie", cookie)
            .body(Full::default())
            .unwrap()
    };
    assert_eq!(
        send(gw.addr(), req(&format!("session={t}"))).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(gw.addr(), req(&format!("session={other}"))).await.0,
        StatusCode::BAD_REQUEST
    );
    let only_cookie = Request::get("/api/x")
        .header("cookie", format!("a=b; session={t}"))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(gw.addr(), only_cookie).await.0, StatusCode::OK);
    assert_eq!(gw.echo.count(), 2);
}

#[tokio::test]
async fn query_token_is_opt_in_and_removed_before_forwarding() {
    let extra = authenticators(
        &provider(ISS, KEYS_YAML, ""),
        "from: [{query: access_token}]\n",
    );
    let gw = gateway_with(extra, key_files()).await;
    let t = valid();
    let (status, _, _) = call(&gw, &format!("/api/x?a=1&access_token={t}&b=2"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(gw.echo.last().unwrap().target, "/api/x?a=1&b=2");
    // Bearer is not configured for this authenticator.
    assert_eq!(
        call(&gw, "/api/x", Some(&t)).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn strip_removes_the_credential_before_forwarding() {
    // The default: what was verified here is not replayed upstream.
    let stripped = gateway().await;
    assert_eq!(
        call(&stripped, "/api/x", Some(&valid())).await.0,
        StatusCode::OK
    );
    assert!(
        !stripped
            .echo
            .last()
            .unwrap()
            .headers
            .contains_key("authorization")
    );
    // Forwarding is an opt-in.
    let kept = gateway_with(
        authenticators(&provider(ISS, KEYS_YAML, ""), "strip: false\n"),
        key_files(),
    )
    .await;
    call(&kept, "/api/x", Some(&valid())).await;
    assert!(
        kept.echo
            .last()
            .unwrap()
            .headers
            .contains_key("authorization")
    );
}

// === key server faults ===

async fn wait_ready(gw: &TestGateway) {
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.admin_get("/readyz").await.0 == StatusCode::OK
        })
        .await,
        "keys fetched"
    );
}

fn remote_gateway_extra(server: &KeyServer, fetch: &str) -> String {
    authenticators(
        &provider(
            ISS,
            &format!("- jwks_url: {{url: \"{}\"}}\n", server.url("/jwks.json")),
            &format!("fetch: {{{fetch}}}\n"),
        ),
        "",
    )
}

/// A token signed by a key that a slow first fetch brings, at a door whose deadline ends
/// during the refetch that follows (the one its unknown `kid` asked for): it is judged on
/// the keys that arrived while it waited, not refused as signed by an unknown key.
#[tokio::test]
async fn keys_that_arrive_while_a_door_waits_verify_its_token() {
    let k = keys();
    let server = KeyServer::start(&jwks([&k.rs256])).await;
    server.set_mode(KeyMode::Slow(Duration::from_secs(2)));
    let gw = Setup {
        listeners: "  - name: http\n    address: 127.0.0.1:0\n  - name: grpc\n    address: 127.0.0.1:0\n    door: {envoy_grpc: {timeout: 2s}}\n".into(),
        policies: vec![("10-p.yaml".into(), POLICY.into())],
        extra: remote_gateway_extra(&server, "timeout: 10s, unknown_kid_cooldown: 1h"),
        ..Setup::default()
    }
    .start()
    .await;
    // Asked while the first fetch (2 s) is under way: the door waits for it, then for the
    // refetch the token's `kid` asks for (2 s more), until its deadline is near.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let resp = grpc_check(&gw, &format!("Bearer {}", valid())).await;
    assert_eq!(
        resp.status.as_ref().map(|s| s.code),
        Some(0),
        "allowed: {resp:?}"
    );
}

/// A rotation through OIDC discovery: the refetch for a new `kid` is two requests, each
/// within `fetch.timeout` but together past it. The proxy door waits for the fetch to end
/// and verifies the token with the new key.
#[tokio::test]
async fn the_proxy_waits_out_a_rotations_fetch() {
    let k = keys();
    let issuer = "https://discovered.test";
    let server = KeyServer::start(&jwks([&k.rs256])).await;
    server.set_discovery(issuer);
    let gw = gateway_with(
        authenticators(
            &provider(
                issuer,
                &format!("- oidc_discovery: {{url: \"{}\"}}\n", server.url("")),
                "fetch: {timeout: 2s}\n",
            ),
            "",
        ),
        vec![],
    )
    .await;
    wait_ready(&gw).await;
    // The IdP rotates to a second key, and answers each request in 1.5 s.
    server.set_jwks(&jwks([&k.rs256, &k.es256]));
    server.set_mode(KeyMode::Slow(Duration::from_millis(1500)));
    let rotated = k.es256.sign(&claims(&json!({"iss": issuer}))).unwrap();
    let (status, _, body) = call(&gw, "/api/x", Some(&rotated)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn key_server_down_at_start_gives_503_then_recovers() {
    let k = keys();
    let server = KeyServer::start(&jwks([&k.rs256])).await;
    server.set_mode(KeyMode::Status(503));
    let gw = gateway_with(
        remote_gateway_extra(
            &server,
            "startup_timeout: 30s, retry: 100ms, unknown_kid_cooldown: 1s",
        ),
        vec![],
    )
    .await;
    assert_eq!(
        gw.admin_get("/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready without keys"
    );
    let (status, _, body) = call(&gw, "/api/x", Some(&valid())).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(gw.echo.count(), 0);
    let (_, metrics) = gw.admin_get("/metrics").await;
    let labels = format!("authenticator=\"users\",issuer=\"{ISS}\"");
    assert!(
        metrics.contains(&format!(
            "portcullis_key_fetches_total{{{labels},result=\"error\"}} "
        )),
        "{metrics}"
    );
    assert!(
        !metrics.contains("portcullis_key_set_age_seconds"),
        "never fetched: no age"
    );
    server.set_mode(KeyMode::Serve);
    wait_ready(&gw).await;
    assert_accepted(&gw, &valid(), "after recovery").await;
    let (_, metrics) = gw.admin_get("/metrics").await;
    for line in [
        format!("portcullis_key_fetches_total{{{labels},result=\"ok\"}} 1"),
        format!("portcullis_key_set_keys{{{labels}}} 1"),
        "portcullis_token_cache_entries{authenticator=\"users\"} ".to_owned(),
    ] {
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    let age = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("portcullis_key_set_age_seconds{{{labels}}} ")))
        .expect("key age reported");
    assert!(age.parse::<u64>().unwrap() < 60);
    assert!(metrics.trim_end().ends_with("# EOF"));
}

/// Asserts a 503 `authentication_unavailable` that reached nothing upstream.
async fn assert_unavailable(gw: &TestGateway, token: &str, what: &str) {
    let before = gw.echo.count();
    let (status, headers, body) = call(gw, "/api/x", Some(token)).await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {body}");
    assert!(
        body.contains("\"error\":\"authentication_unavailable\""),
        "{what}: {body}"
    );
    assert!(headers.get("www-authenticate").is_none(), "{what}");
    assert_eq!(gw.echo.count(), before, "{what}: upstream saw the request");
    // Counted as a request the gateway could not decide, as every door counts it.
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics
            .contains(r#"portcullis_requests_total{door="proxy",decision="error",status="503"} "#)
            && !metrics.contains(r#"reason="authentication_unavailable""#),
        "{what}: {metrics}"
    );
    assert!(
        !metrics
            .contains(r#"portcullis_requests_total{door="proxy",decision="error",status="503"} 0"#),
        "{what}: {metrics}"
    );
}

/// A provider with a static ES256 key (`ec256`) and a JWKS URL.
fn static_and_remote(server: &KeyServer, optional: bool) -> String {
    authenticators(
        &provider(
            ISS,
            &format!(
                "- pem_file: {{path: ec256.pem, kid: ec256, algorithms: [ES256]}}\n\
                 - jwks_url: {{url: \"{}\"{}}}\n",
                server.url("/jwks.json"),
                if optional { ", optional: true" } else { "" }
            ),
            "fetch: {startup_timeout: 0s, retry: 100ms, unknown_kid_cooldown: 1s}\n",
        ),
        "",
    )
}

#[tokio::test]
async fn static_key_does_not_mask_unfetched_remote_keys() {
    let k = keys();
    let server = KeyServer::start(&jwks([&k.rs256])).await;
    server.set_mode(KeyMode::Status(503));
    let gw = gateway_with(static_and_remote(&server, false), key_files()).await;
    let es = k.es256.sign(&claims(&json!({}))).unwrap();
    assert_accepted(&gw, &es, "the static key verifies meanwhile").await;
    assert_unavailable(&gw, &valid(), "a kid only the JWKS can hold").await;
    let no_kid = k
        .rs256
        .sign_raw(&json!({"alg": "RS256"}), &claims(&json!({})))
        .unwrap();
    assert_unavailable(&gw, &no_kid, "no kid, no static RSA key").await;
    server.set_mode(KeyMode::Serve);
    wait_ready(&gw).await;
    assert_accepted(&gw, &valid(), "after the first fetch").await;
    // Fetched once: an unknown kid is now a plain refusal.
    let stranger = SigningKey::generate(Algorithm::RS256, "stranger").unwrap();
    assert_rejected(
        &gw,
        &stranger.sign(&claims(&json!({}))).unwrap(),
        "unknown kid after a fetch",
    )
    .await;
}

#[tokio::test]
async fn readyz_waits_for_every_remote_key_source_unless_optional() {
    let k = keys();
    let server = KeyServer::start(&jwks([&k.rs256])).await;
    server.set_mode(KeyMode::Status(503));
    // startup_timeout 0s: no wait at all for an optional source, none of it for another.
    let gw = gateway_with(static_and_remote(&server, false), key_files()).await;
    let optional = gateway_with(static_and_remote(&server, true), key_files()).await;
    assert!(
        eventually(Duration::from_secs(5), || async { server.hits() >= 2 }).await,
        "both gateways tried to fetch"
    );
    let (status, body) = gw.admin_get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // The admin listener says what it waits for (the public one, facing other machines,
    // does not).
    assert_eq!(
        body,
        format!("not ready: the keys of `users` (issuer `{ISS}`) not fetched yet\n")
    );
    assert_eq!(
        optional.admin_get("/readyz").await.0,
        StatusCode::OK,
        "an optional source does not hold readiness"
    );
    assert_unavailable(&optional, &valid(), "optional, never fetched").await;
    server.set_mode(KeyMode::Serve);
    // Ready, without asking `/readyz` (its answer once latched it): the keys verify.
    let (gw_ref, token) = (&gw, valid());
    assert!(
        eventually(Duration::from_secs(5), || async {
            call(gw_ref, "/api/x", Some(&token)).await.0 == StatusCode::OK
        })
        .await,
        "keys fetched"
    );

    // Once ready, a reload adding an issuer whose keys cannot be fetched yet keeps the
    // gateway in rotation; only that issuer's tokens wait.
    let down = KeyServer::start(&jwks([&k.es384])).await;
    down.set_mode(KeyMode::Status(503));
    let second = provider(
        "https://second.test",
        &format!("- jwks_url: {{url: \"{}\"}}\n", down.url("/jwks.json")),
        "fetch: {retry: 100ms, unknown_kid_cooldown: 1s}\n",
    );
    let setup = Setup {
        policies: vec![("10-p.yaml".into(), POLICY.into())],
        extra: format!(
            "{}{}",
            static_and_remote(&server, false),
            indent(&second, 8)
        ),
        ..Setup::default()
    };
    gw.write("portcullis.yaml", render_config(&setup, gw.echo.addr));
    gw.app().reload().await.unwrap();
    assert_eq!(gw.admin_get("/readyz").await.0, StatusCode::OK);
    assert_accepted(&gw, &valid(), "the first issuer").await;
    let second_token = k
        .es384
        .sign(&claims(&json!({"iss": "https://second.test"})))
        .unwrap();
    assert_unavailable(&gw, &second_token, "the new issuer, never fetched").await;
}

#[tokio::test]
async fn last_good_keys_kept_when_key_server_fails() {
    let k = keys();
    let server = KeyServer::start(&jwks([&k.rs256])).await;
    let gw = gateway_with(
        remote_gateway_extra(&server, "timeout: 300ms, retry: 50ms, min_refresh: 50ms, refresh: 50ms, unknown_kid_cooldown: 1s"),
        vec![],
    )
    .await;
    wait_ready(&gw).await;
    for mode in [
        KeyMode::Garbage,
        KeyMode::Empty,
        KeyMode::Slow(Duration::from_secs(2)),
        KeyMode::Status(500),
    ] {
        server.set_mode(mode.clone());
        let hits = server.hits();
        // Background refreshes run against the failing server meanwhile.
        assert!(
            eventually(Duration::from_secs(5), || async {
                server.hits() >= hits + 2
            })
            .await,
            "{mode:?}"
        );
        // A fresh token (not cached) still verifies with the last good keys.
        let t = k
            .rs256
            .sign(&claims(&json!({"jti": format!("{mode:?}")})))
            .unwrap();
        assert_accepted(&gw, &t, &format!("{mode:?}")).await;
    }
    server.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = k.rs256.sign(&claims(&json!({"jti": "down"}))).unwrap();
    assert_accepted(&gw, &t, "key server down").await;
}

#[tokio::test]
async fn rotated_keys_new_kid_picked_up_removed_kid_stops_verifying() {
    let old = rsa(Algorithm::RS256, "old");
    let new = SigningKey::generate(Algorithm::ES256, "new").unwrap();
    let server = KeyServer::start(&jwks([&old])).await;
    server.set_cache_control("max-age=3600");
    let gw = gateway_with(
        remote_gateway_extra(&server, "unknown_kid_cooldown: 1s"),
        vec![],
    )
    .await;
    wait_ready(&gw).await;
    let old_token = old.sign(&claims(&json!({}))).unwrap();
    assert_accepted(&gw, &old_token, "old key").await;
    // Rotation: the server now publishes only the new key.
    server.set_jwks(&jwks([&new]));
    assert_accepted(
        &gw,
        &new.sign(&claims(&json!({}))).unwrap(),
        "new kid, fetched on demand",
    )
    .await;
    // The old token was cached; its key is gone, so it no longer passes.
    assert_rejected(&gw, &old_token, "removed kid").await;
}

/// A key set that starts publishing a key's private half (`d`) is refused, and the key it
/// leaked stops verifying at once, a cached token under it included; the other keys go on.
#[tokio::test]
async fn a_key_whose_private_half_is_published_stops_verifying() {
    let leaked = SigningKey::generate(Algorithm::ES256, "leaked").unwrap();
    let kept = SigningKey::generate(Algorithm::ES256, "kept").unwrap();
    let server = KeyServer::start(&jwks([&leaked, &kept])).await;
    let gw = gateway_with(
        remote_gateway_extra(&server, "unknown_kid_cooldown: 1s"),
        vec![],
    )
    .await;
    wait_ready(&gw).await;
    let leaked_token = leaked.sign(&claims(&json!({}))).unwrap();
    assert_accepted(&gw, &leaked_token, "before the leak").await;
    // The IdP now publishes the private half (the value does not matter to the check).
    let mut doc = jwks([&leaked, &kept]);
    doc["keys"][0]["d"] = json!("bGVha2VkLXByaXZhdGUtc2NhbGFy");
    server.set_jwks(&doc);
    // A token naming an unknown kid makes the gateway fetch again (once per cooldown).
    let stranger = SigningKey::generate(Algorithm::ES256, "stranger").unwrap();
    let probe = stranger.sign(&claims(&json!({}))).unwrap();
    let gw_ref = &gw;
    let (probe_ref, leaked_ref) = (&probe, &leaked_token);
    assert!(
        eventually(Duration::from_secs(5), || async move {
            let _ = call(gw_ref, "/api/x", Some(probe_ref)).await;
            call(gw_ref, "/api/x", Some(leaked_ref)).await.0 == StatusCode::UNAUTHORIZED
        })
        .await,
        "the leaked key still verifies"
    );
    assert_accepted(
        &gw,
        &kept.sign(&claims(&json!({"jti": "kept"}))).unwrap(),
        "the other key",
    )
    .await;
    // The IdP's likeliest fix: the same key, without its private half. Whoever read the
    // leaked document can still sign with it: it stays untrusted.
    server.set_jwks(&jwks([&leaked, &kept]));
    // Another unknown kid, once the cooldown has passed, makes it fetch the clean document.
    let fetched = server.hits();
    let other = SigningKey::generate(Algorithm::ES256, "another-stranger").unwrap();
    let probe = other.sign(&claims(&json!({}))).unwrap();
    let (server_ref, probe_ref) = (&server, &probe);
    assert!(
        eventually(Duration::from_secs(5), || async move {
            let _ = call(gw_ref, "/api/x", Some(probe_ref)).await;
            server_ref.hits() > fetched
        })
        .await,
        "refetched"
    );
    let forged = leaked
        .sign(&claims(&json!({"jti": "forged-after-the-fix"})))
        .unwrap();
    assert_rejected(&gw, &forged, "a leaked key served clean again").await;
}

/// A change to a remote source's fetch settings alone (a timeout, the refresh interval)
/// keeps the keys already fetched: made while the IdP is down, it must not turn every token
/// into a 503.
#[tokio::test]
async fn a_fetch_tuning_change_keeps_the_keys_held() {
    let k = keys();
    let server = KeyServer::start(&jwks([&k.rs256])).await;
    let gw = gateway_with(
        remote_gateway_extra(&server, "timeout: 2s, unknown_kid_cooldown: 1s"),
        vec![],
    )
    .await;
    wait_ready(&gw).await;
    assert_accepted(&gw, &valid(), "before").await;
    server.set_mode(KeyMode::Status(500));
    let config = std::fs::read_to_string(gw.path("portcullis.yaml")).unwrap();
    assert!(config.contains("timeout: 2s"), "{config}");
    gw.write(
        "portcullis.yaml",
        config.replace("timeout: 2s", "timeout: 3s"),
    );
    gw.app().reload().await.unwrap();
    assert_accepted(
        &gw,
        &k.rs256.sign(&claims(&json!({"jti": "new"}))).unwrap(),
        "a token never seen, after the change",
    )
    .await;
    assert_eq!(
        gw.admin_get("/readyz").await.0,
        StatusCode::OK,
        "still ready"
    );
}

/// A key URL's CA file changed on a reload makes a new key set, fetched afresh: a token
/// cached under a key the identity provider dropped meanwhile is refused at once, as a
/// refetch of the same set refuses it (it stayed valid until `revalidate_after`).
#[tokio::test]
async fn a_changed_jwks_ca_drops_cached_tokens() {
    let k = keys();
    let server = KeyServer::start(&jwks([&k.rs256, &k.es256])).await;
    let (ca_one, _) = crate::support::tls_peer(&["idp.test"], false);
    let (ca_two, _) = crate::support::tls_peer(&["idp.test"], false);
    let gw = gateway_with(
        authenticators(
            &provider(
                ISS,
                &format!(
                    "- jwks_url: {{url: \"{}\", ca_file: ca.pem}}\n",
                    server.url("/jwks.json")
                ),
                "",
            ),
            "",
        ),
        vec![("ca.pem".into(), ca_one.into_bytes())],
    )
    .await;
    wait_ready(&gw).await;
    let t = k.rs256.sign(&claims(&json!({}))).unwrap();
    assert_accepted(&gw, &t, "before").await;
    // The identity provider drops the key; the CA the keys are fetched under changes.
    server.set_jwks(&jwks([&k.es256]));
    gw.write("ca.pem", ca_two);
    gw.app().reload().await.unwrap();
    assert_rejected(&gw, &t, "cached token of the dropped key").await;
    assert_accepted(
        &gw,
        &k.es256.sign(&claims(&json!({}))).unwrap(),
        "a key still there",
    )
    .await;
}

#[tokio::test]
async fn unknown_kid_refetch_is_rate_limited() {
    let k = keys();
    let server = KeyServer::start(&jwks([&k.rs256])).await;
    let gw = gateway_with(
        remote_gateway_extra(&server, "unknown_kid_cooldown: 1h"),
        vec![],
    )
    .await;
    wait_ready(&gw).await;
    let hits = server.hits();
    for i in 0..20 {
        let t = rsa(Algorithm::RS256, &format!("spray-{i}"))
            .sign(&claims(&json!({})))
            .unwrap();
        assert_rejected(&gw, &t, "sprayed kid").await;
    }
    assert!(
        server.hits() <= hits + 1,
        "{} fetches for 20 unknown kids",
        server.hits() - hits
    );
}

/// A token with a new `kid` while the key source is slow: the refetch is waited for only
/// until the door's deadline is near, then the token is judged on the keys at hand (401). A
/// deadline passing instead answers UNAVAILABLE (503 at the HTTP door), which Envoy's
/// `failure_mode_allow: true` turns into an allow.
#[tokio::test]
async fn an_unknown_kid_during_a_slow_refetch_is_refused_within_the_door_deadline() {
    use envoy_types::ext_authz::v3::pb::HttpResponse;

    let k = keys();
    let server = KeyServer::start(&jwks([&k.rs256])).await;
    let gw = Setup {
        listeners: "  - name: http\n    address: 127.0.0.1:0\n  - name: grpc\n    address: 127.0.0.1:0\n    door: {envoy_grpc: {timeout: 400ms}}\n  - name: envoy\n    address: 127.0.0.1:0\n    door: {envoy_http: {timeout: 400ms}}\n".into(),
        policies: vec![("10-p.yaml".into(), POLICY.into())],
        extra: remote_gateway_extra(&server, "timeout: 10s, unknown_kid_cooldown: 1h"),
        ..Setup::default()
    }
    .start()
    .await;
    wait_ready(&gw).await;
    server.set_mode(KeyMode::Slow(Duration::from_secs(10)));
    let forged = format!(
        "Bearer {}",
        rsa(Algorithm::RS256, "rotated")
            .sign(&claims(&json!({})))
            .unwrap()
    );
    let started = std::time::Instant::now();
    let resp = grpc_check(&gw, &forged).await;
    assert_eq!(resp.status.map(|s| s.code), Some(16), "UNAUTHENTICATED");
    match resp.http_response {
        Some(HttpResponse::DeniedResponse(d)) => {
            assert_eq!(d.status.map(|s| s.code), Some(401), "{d:?}");
            assert!(d.body.contains("invalid_token"), "{}", d.body);
        }
        other => panic!("expected a denied response, got {other:?}"),
    }
    let req = Request::get("/api/y")
        .header("host", "app.test")
        .header("x-forwarded-for", "198.51.100.9")
        .header("authorization", &forged)
        .body(Full::default())
        .unwrap();
    let (status, _, body) = send(gw.addr_of("envoy"), req).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    // Bounded by the doors' deadlines, not the fetch's 10 s (generous for a loaded machine).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The valid token still passes on the keys at hand.
    let (status, _, _) = call(&gw, "/api/z", Some(&valid())).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn cache_never_serves_a_token_past_exp() {
    // The gateway's clock is moved, not waited for.
    let clock = portcullis::clock::Clock::manual_now();
    let gw = Setup {
        policies: vec![("10-p.yaml".into(), POLICY.into())],
        files: key_files(),
        extra: authenticators(&provider(ISS, KEYS_YAML, "leeway: 0s\n"), ""),
        clock: clock.clone(),
        ..Setup::default()
    }
    .start()
    .await;
    // Every time claim from the gateway's clock: the system's may pass a second meanwhile.
    let exp = clock.unix_secs() + 60;
    let t = keys()
        .rs256
        .sign(&claims(&json!({"exp": exp, "iat": clock.unix_secs()})))
        .unwrap();
    assert_accepted(&gw, &t, "before exp").await;
    assert_accepted(&gw, &t, "cached, before exp").await;
    clock.advance(Duration::from_secs(59));
    assert_accepted(&gw, &t, "cached, a second before exp").await;
    clock.advance(Duration::from_secs(1));
    assert_rejected(&gw, &t, "at exp").await;
}

// === CLI helpers ===

#[tokio::test]
async fn keys_new_and_token_mint_make_a_token_the_gateway_accepts() {
    let bin = env!("CARGO_BIN_EXE_portcullis");
    let dir = tempfile::tempdir().unwrap();
    for alg in ["RS256", "ES384", "EdDSA"] {
        let kid = format!("k-{alg}");
        let out = std::process::Command::new(bin)
            .args(["keys", "new", "--alg", alg, "--kid", &kid, "--out"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let private = dir.path().join(format!("{kid}.key"));
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&private).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let out = std::process::Command::new(bin)
            .args([
                "token",
                "mint",
                "--alg",
                alg,
                "--kid",
                &kid,
                "--iss",
                ISS,
                "--aud",
                "api",
                "--sub",
                "cli-user",
                "--ttl",
                "5m",
                "--claim",
                "tenant=\"t1\"",
                "--key",
            ])
            .arg(&private)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let keys_yaml = format!("- pem_file: {{path: key.pem, kid: {kid}, algorithms: [{alg}]}}\n");
        let public = std::fs::read(dir.path().join(format!("{kid}.pem"))).unwrap();
        let gw = gateway_with(
            authenticators(&provider(ISS, &keys_yaml, ""), ""),
            vec![("key.pem".into(), public)],
        )
        .await;
        assert_accepted(&gw, &token, alg).await;
        let jwks_doc = std::fs::read(dir.path().join(format!("{kid}.jwks.json"))).unwrap();
        let gw = gateway_with(
            authenticators(&provider(ISS, "- jwks_file: {path: k.json}\n", ""), ""),
            vec![("k.json".into(), jwks_doc)],
        )
        .await;
        assert_accepted(&gw, &token, &format!("{alg} via the printed JWKS")).await;
    }
}

#[tokio::test]
async fn credentials_for_two_accepted_authenticators_must_agree() {
    let k = keys();
    let extra = format!(
        "authenticators:\n  a:\n    jwt:\n      providers:\n{}  b:\n    jwt:\n      from: [{{query: access_token}}]\n      providers:\n{}",
        indent(&provider(ISS, KEYS_YAML, ""), 8),
        indent(&provider(ISS, KEYS_YAML, ""), 8)
    );
    let policy = "rules:\n  - name: api\n    match: {paths: [\"/api/**\"]}\n    effect: allow\n    authenticators: [a, b]\n    upstream: echo\n";
    let gw = Setup {
        policies: vec![("10-p.yaml".into(), policy.into())],
        files: key_files(),
        extra,
        ..Setup::default()
    }
    .start()
    .await;
    let t = valid();
    let other = k
        .rs256
        .sign(&claims(&json!({"sub": "someone-else"})))
        .unwrap();
    let (status, _, _) = call(&gw, &format!("/api/x?access_token={other}"), Some(&t)).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "an unverified second credential would reach the upstream"
    );
    assert_eq!(gw.echo.count(), 0);
    // The same token in both places passes, and the query copy is removed even though the
    // bearer authenticator decided.
    assert_eq!(
        call(&gw, &format!("/api/x?access_token={t}&q=1"), Some(&t))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(gw.echo.last().unwrap().target, "/api/x?q=1");
}

#[tokio::test]
async fn key_removed_from_a_file_stops_cached_tokens_after_reload() {
    let gw = gateway().await;
    let t = valid();
    assert_accepted(&gw, &t, "before").await;
    assert_accepted(&gw, &t, "cached").await;
    // Ops replace the compromised RSA key with a new one.
    let replacement = SigningKey::generate(Algorithm::RS256, "rsa").unwrap();
    gw.write("rsa.pem", &replacement.public_pem);
    gw.app().reload().await.unwrap();
    assert_rejected(&gw, &t, "cached token of the removed key").await;
    assert_accepted(
        &gw,
        &replacement.sign(&claims(&json!({}))).unwrap(),
        "new key",
    )
    .await;
}
