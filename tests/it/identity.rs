//! Identity headers through the proxy door: rendered from the principal, per-rule overrides,
//! spoofed copies stripped in every spelling, and values with CR/LF never forwarded.

use portcullis::authn::apikey::{generate, hash_of};
use serde_json::{Value, json};

use crate::support::{ConfigDir, Setup, TestGateway, echoed_header};

const SECRET: &[u8] = b"identity-test-secret-identity-test-secret-0123";

fn token(claims: &Value) -> String {
    crate::support::hs256_token(SECRET, claims)
}

async fn gateway(api_key: &str) -> TestGateway {
    let extra = "  partners:
    api_key: {keys_file: keys.yaml}
identity_headers:
  x-user-id: \"{principal.id}\"
  x-user-kind: \"{principal.kind}\"
  x-user-roles: \"{principal.roles}\"
  x-tenant-id: \"{principal.tenant}\"
  x-api-key-id: \"{apikey.id}\"
  x-client: \"{client.ip} via {rule.name}\"
";
    let policy = "rules:
  - name: api
    match: {paths: [\"/api/**\"]}
    effect: allow
    authenticators: [users, partners]
    upstream: echo
    identity_headers:
      x-user-email: \"{claims.email}\"
      x-user-kind: null
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
                "keys.yaml".into(),
                format!(
                    "keys:\n  - {{id: k-7, hash: \"{}\", owner: svc-7, kind: machine, plan: gold}}\n",
                    hash_of(api_key)
                )
                .into_bytes(),
            ),
        ],
        extra: format!(
            "{}{extra}",
            crate::support::hs256_users("{roles_claim: roles, tenant_claim: org.tenant}")
        ),
        ..Setup::default()
    }
    .start()
    .await
}

/// A raw request with the given extra header lines; returns the status.
async fn request(gw: &TestGateway, path: &str, headers: &str) -> u16 {
    crate::support::raw_status(gw.addr(), path, headers).await
}

#[tokio::test]
async fn identity_headers_are_rendered_from_the_principal() {
    let key = generate().unwrap();
    let gw = gateway(&key).await;
    let t =
        token(&json!({"roles": ["admin", "ops"], "org": {"tenant": "acme"}, "email": "a@x.test"}));
    let status = request(&gw, "/api/x", &format!("Authorization: Bearer {t}\r\n")).await;
    assert_eq!(status, 200);
    let h = |n| echoed_header(&gw.echo, n);
    assert_eq!(h("x-user-id").as_deref(), Some("alice"));
    assert_eq!(h("x-user-roles").as_deref(), Some("admin,ops"));
    assert_eq!(h("x-tenant-id").as_deref(), Some("acme"));
    assert_eq!(
        h("x-user-email").as_deref(),
        Some("a@x.test"),
        "rule adds its own"
    );
    assert_eq!(h("x-user-kind"), None, "rule removes a global one");
    assert_eq!(h("x-api-key-id"), None, "absent variable: header not set");
    assert_eq!(h("x-client").as_deref(), Some("127.0.0.1 via api"));

    let status = request(&gw, "/api/x", &format!("x-api-key: {key}\r\n")).await;
    assert_eq!(status, 200);
    assert_eq!(h("x-user-id").as_deref(), Some("svc-7"));
    assert_eq!(h("x-api-key-id").as_deref(), Some("k-7"));
}

#[tokio::test]
async fn client_sent_identity_headers_never_reach_the_upstream() {
    let gw = gateway(&generate().unwrap()).await;
    let spoofed = "X-User-Id: root\r\nx_user_id: root\r\nX_Tenant-Id: evil\r\nx-user-email: e@evil\r\nx-user-kind: machine\r\n";
    // Anonymous route: no identity, and none of the client's copies.
    assert_eq!(request(&gw, "/open/x", spoofed).await, 200);
    let seen = gw.echo.last().unwrap();
    for (name, value) in &seen.headers {
        let n = name.as_str().replace('_', "-");
        assert!(
            !matches!(
                &*n,
                "x-user-id" | "x-tenant-id" | "x-user-email" | "x-user-kind"
            ),
            "{name}: {value:?} reached the upstream"
        );
    }
    assert_eq!(
        echoed_header(&gw.echo, "x-client").as_deref(),
        Some("127.0.0.1 via open"),
        "variables that need no principal still render"
    );
    // Authenticated: the gateway's values replace the client's.
    let t = token(&json!({"email": "a@x.test"}));
    let status = request(
        &gw,
        "/api/x",
        &format!("{spoofed}Authorization: Bearer {t}\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    let seen = gw.echo.last().unwrap();
    let ids: Vec<_> = seen.headers.get_all("x-user-id").iter().collect();
    assert_eq!(ids, ["alice"]);
    assert!(!seen.headers.contains_key("x_user_id"));
    assert_eq!(
        echoed_header(&gw.echo, "x-user-email").as_deref(),
        Some("a@x.test")
    );
}

#[tokio::test]
async fn values_with_cr_lf_or_non_ascii_are_left_out_and_counted() {
    let gw = gateway(&generate().unwrap()).await;
    let t = token(&json!({"email": "a@x.test\r\nx-admin: true", "org": {"tenant": "Zürich"}}));
    let status = request(&gw, "/api/x", &format!("Authorization: Bearer {t}\r\n")).await;
    assert_eq!(status, 200);
    let seen = gw.echo.last().unwrap();
    assert!(!seen.headers.contains_key("x-user-email"));
    assert!(!seen.headers.contains_key("x-admin"));
    assert!(!seen.headers.contains_key("x-tenant-id"));
    assert_eq!(
        echoed_header(&gw.echo, "x-user-id").as_deref(),
        Some("alice")
    );
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("portcullis_identity_headers_refused_total{door=\"proxy\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_identity_headers_are_config_errors_with_their_line() {
    let cfg = ConfigDir::new(
        "identity_headers:
  x-user-id: \"{principal.email}\"
  host: \"{principal.id}\"
  X-Tenant: \"{claims.tenant}\"
  x_tenant: \"{claims.org}\"
",
    );
    cfg.write(
        "policies/p.yaml",
        "rules:
  - name: r
    match: {paths: [\"/**\"]}
    effect: allow
    anonymous: true
    upstream: echo
    identity_headers:
      x-a: \"{claims.}\"
",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(1), "{text}");
    for expected in [
        "portcullis.yaml:5:3: error: identity_headers.x-user-id: unknown variable `{principal.email}`",
        "portcullis.yaml:6:3: error: identity_headers.host: `host` is set by the gateway",
        "p.yaml:8:7: error: rules[0].identity_headers.x-a: unknown variable `{claims.}`",
        "error: identity_headers.x_tenant: the same header as `X-Tenant` to an upstream that folds `_` and case",
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }
}

/// A role holding the list separator would read as two roles upstream: the header is left
/// out (and counted) rather than sent ambiguous; an empty list is no header at all.
#[tokio::test]
async fn ambiguous_or_empty_joined_values_are_not_sent() {
    let gw = gateway(&generate().unwrap()).await;
    let h = |n| echoed_header(&gw.echo, n);
    for roles in [
        json!(["admin, user"]),
        json!(["admin,user"]),
        json!(["", "admin"]),
        json!([" admin"]),
    ] {
        let t = token(&json!({"roles": roles, "org": {"tenant": "acme"}}));
        let status = request(&gw, "/api/x", &format!("Authorization: Bearer {t}\r\n")).await;
        assert_eq!(status, 200);
        assert_eq!(h("x-user-roles"), None, "roles {roles}");
        assert_eq!(h("x-user-id").as_deref(), Some("alice"), "the rest is set");
    }
    let t = token(&json!({"roles": [], "org": {"tenant": "acme"}}));
    assert_eq!(
        request(&gw, "/api/x", &format!("Authorization: Bearer {t}\r\n")).await,
        200
    );
    assert_eq!(
        h("x-user-roles"),
        None,
        "an empty list is not an empty header"
    );
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("portcullis_identity_headers_refused_total{door=\"proxy\"} 4"),
        "{metrics}"
    );
}
