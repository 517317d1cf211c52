//! Rule requirements through the proxy door: scopes (403 `insufficient_scope` with its
//! challenge), roles, claims, principal kind, client networks and client certificates; each
//! refusal asserted with its status and reason, and that the upstream saw nothing.

use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::support::{ConfigDir, Setup, TestGateway, send};

const SECRET: &[u8] = b"policy-test-secret-policy-test-secret-0123456789";

fn token(claims: &Value) -> String {
    crate::support::hs256_token(SECRET, claims)
}

fn authn() -> String {
    crate::support::hs256_users("{roles_claim: realm.roles}")
}

async fn gateway(rules: &str) -> TestGateway {
    Setup {
        policies: vec![("10-p.yaml".into(), format!("rules:\n{rules}"))],
        files: vec![("hs.secret".into(), SECRET.to_vec())],
        extra: authn(),
        ..Setup::default()
    }
    .start()
    .await
}

/// Status, `WWW-Authenticate` and body of a GET with an optional bearer token; asserts the
/// upstream saw the request exactly when it was allowed.
async fn get(gw: &TestGateway, path: &str, token: Option<&str>) -> (StatusCode, String, String) {
    let before = gw.echo.count();
    let mut req = Request::get(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let (status, headers, body) = send(gw.addr(), req.body(Full::default()).unwrap()).await;
    let forwarded = gw.echo.count() - before;
    assert_eq!(
        forwarded,
        usize::from(status == StatusCode::OK),
        "{path}: {status}"
    );
    (
        status,
        headers
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn rule(name: &str, path: &str, require: &str) -> String {
    format!(
        "  - name: {name}\n    match: {{paths: [\"{path}\"]}}\n    effect: allow\n    authenticators: [users]\n    upstream: echo\n    require: {require}\n"
    )
}

#[tokio::test]
async fn missing_scope_is_403_insufficient_scope_with_its_challenge() {
    let gw = gateway(&format!(
        "{}{}",
        rule("w", "/w/**", "{scopes: {all_of: [orders:write]}}"),
        rule(
            "a",
            "/a/**",
            "{scopes: {all_of: [a:1, a:2], any_of: [b, c]}}"
        )
    ))
    .await;
    let read_only = token(&json!({"scope": "orders:read"}));
    let (status, challenge, body) = get(&gw, "/w/1", Some(&read_only)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    // RFC 6750 §3: the challenge names the scope the resource requires.
    assert!(
        challenge.ends_with(", scope=\"orders:write\""),
        "{challenge}"
    );
    let (status, challenge, _) = get(&gw, "/a/1", Some(&read_only)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        challenge.ends_with(", scope=\"a:1 a:2 b c\""),
        "{challenge}"
    );
    assert!(body.contains("\"error\":\"insufficient_scope\""), "{body}");
    assert!(
        !body.contains("orders:write"),
        "the body names no policy internals: {body}"
    );
    let writer = token(&json!({"scope": "orders:read orders:write"}));
    assert_eq!(get(&gw, "/w/1", Some(&writer)).await.0, StatusCode::OK);
    // scp as an array counts too.
    let scp = token(&json!({"scp": ["orders:write"]}));
    assert_eq!(get(&gw, "/w/1", Some(&scp)).await.0, StatusCode::OK);
    // No token at all is still a 401, not a 403.
    assert_eq!(get(&gw, "/w/1", None).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn roles_claims_and_kind() {
    let rules = [
        rule("admin", "/admin/**", "{roles: {any_of: [admin, ops]}}"),
        rule(
            "tenant",
            "/acme/**",
            "{claims: {tenant: {equals: acme}, groups: {contains: billing}}}",
        ),
        rule("svc", "/svc/**", "{kind: machine}"),
    ]
    .concat();
    let gw = gateway(&rules).await;
    let admin = token(&json!({"realm": {"roles": ["ops"]}}));
    let user = token(&json!({"realm": {"roles": ["user"]}}));
    assert_eq!(get(&gw, "/admin/x", Some(&admin)).await.0, StatusCode::OK);
    let (status, challenge, body) = get(&gw, "/admin/x", Some(&user)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        challenge.is_empty(),
        "only scopes get a challenge: {challenge}"
    );
    assert!(body.contains("role_required"), "{body}");

    let acme = token(&json!({"tenant": "acme", "groups": ["billing", "x"]}));
    let other = token(&json!({"tenant": "other", "groups": ["billing"]}));
    let no_group = token(&json!({"tenant": "acme", "groups": ["x"]}));
    assert_eq!(get(&gw, "/acme/x", Some(&acme)).await.0, StatusCode::OK);
    for t in [&other, &no_group] {
        let (status, _, body) = get(&gw, "/acme/x", Some(t)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.contains("claim_mismatch"), "{body}");
    }

    // A client-credentials token (client_id, no sub) is a machine; a user token is not.
    let machine = token(&json!({"sub": null, "client_id": "svc-1"}));
    assert_eq!(get(&gw, "/svc/x", Some(&machine)).await.0, StatusCode::OK);
    let (status, _, body) = get(&gw, "/svc/x", Some(&user)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("principal_kind"), "{body}");
}

#[tokio::test]
async fn client_networks_are_checked_before_the_credential() {
    let rules = [
        rule("inside", "/in/**", "{networks: [127.0.0.0/8]}"),
        rule(
            "outside",
            "/out/**",
            "{networks: [10.0.0.0/8, \"fd00::/8\"]}",
        ),
    ]
    .concat();
    let gw = gateway(&rules).await;
    let t = token(&json!({}));
    assert_eq!(get(&gw, "/in/x", Some(&t)).await.0, StatusCode::OK);
    let (status, _, body) = get(&gw, "/out/x", Some(&t)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("network_not_allowed"), "{body}");
    // Even without a credential: the address alone decides, before any verification.
    assert_eq!(get(&gw, "/out/x", None).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_client_certificate_requirement_refuses_plain_connections() {
    let gw = gateway(&rule("m", "/m/**", "{mtls: true}")).await;
    let (status, _, body) = get(&gw, "/m/x", Some(&token(&json!({})))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("client_certificate_required"), "{body}");
}

#[tokio::test]
async fn contradictory_requirements_are_config_errors() {
    let cfg = ConfigDir::new(&authn());
    cfg.write("hs.secret", SECRET);
    cfg.write(
        "policies/p.yaml",
        "rules:
  - name: anon-with-scope
    match: {paths: [\"/a/**\"]}
    effect: allow
    anonymous: true
    upstream: echo
    require: {scopes: {all_of: [x]}}
  - name: deny-with-require
    match: {paths: [\"/b/**\"]}
    effect: deny
    require: {roles: {any_of: [x]}}
  - name: empty-set
    match: {paths: [\"/c/**\"]}
    effect: allow
    authenticators: [users]
    upstream: echo
    require: {scopes: {}}
",
    );
    cfg.write(
        "policies/q.yaml",
        "rules:
  - name: bad-claim-check
    match: {paths: [\"/d/**\"]}
    effect: allow
    authenticators: [users]
    upstream: echo
    require: {claims: {tenant: {starts_with: a}}}
",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(1), "{text}");
    for expected in [
        "p.yaml:5:5: error: rules[0].anonymous",
        "p.yaml:11:5: error: rules[1].require",
        "p.yaml:17:15: error: rules[2].require.scopes: give `all_of` or `any_of`",
        "q.yaml:7:32: error: rules[0].require.claims.tenant: unknown variant `starts_with`",
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }
}

/// `paths: []` (or `hosts: []`, `methods: []`) matches everything, as leaving the field out
/// does: written out, it is said, with its line; left out, nothing is said.
#[tokio::test]
async fn explicit_empty_match_lists_warn() {
    let cfg = ConfigDir::new(&authn());
    cfg.write("hs.secret", SECRET).write(
        "policies/p.yaml",
        "rules:\n  - name: reports\n    match:\n      paths: []\n      methods: [GET]\n    effect: allow\n    authenticators: [users]\n    upstream: echo\n  - name: rest\n    match: {hosts: []}\n    effect: deny\n",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "warnings, not errors: {text}");
    for expected in [
        "p.yaml:4:7: warning: rules[0].match.paths: an empty list matches every request, as leaving `paths` out does: this allow rule applies to all paths",
        "p.yaml:10:13: warning: rules[1].match.hosts: an empty list matches every request",
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }
    assert!(!text.contains("match.methods"), "{text}");
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - name: reports\n    match: {methods: [GET]}\n    effect: allow\n    authenticators: [users]\n    upstream: echo\n",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("an empty list"), "{text}");
}

/// A policy file holding no rules is said, with its line, while the others still load.
#[tokio::test]
async fn a_policy_file_without_rules_warns() {
    let cfg = ConfigDir::new(&authn());
    cfg.write("hs.secret", SECRET)
        .write("policies/10-empty.yaml", "# emptied by a template\nrules: []\n")
        .write(
            "policies/20-open.yaml",
            "rules:\n  - name: open\n    match: {paths: [\"/open/**\"]}\n    effect: allow\n    anonymous: true\n    upstream: echo\n",
        );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "a warning, not an error: {text}");
    assert!(
        text.contains("10-empty.yaml:2:1: warning: rules: this policy file holds no rules"),
        "{text}"
    );
    assert!(
        text.contains("1 rule(s) in 1 policy file(s), 1 warning(s)"),
        "{text}"
    );
}

/// `check` reports the error of every rule in a file, not only the first (serde stops there),
/// each at its field.
#[tokio::test]
async fn check_reports_an_error_in_every_rule() {
    let cfg = ConfigDir::new(&authn());
    cfg.write("hs.secret", SECRET).write(
        "policies/p.yaml",
        "rules:\n  - name: one\n    match: {paths: [\"/a/**\"]}\n    effect: alow\n  - name: two\n    match: {pathz: [\"/b/**\"]}\n    effect: deny\n  - name: fine\n    match: {paths: [\"/c/**\"]}\n    effect: deny\n  - name: four\n    match: {paths: [\"/d/**\"], methods: GET}\n    effect: deny\n",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(1), "{text}");
    for expected in [
        "p.yaml:4:13: error: rules[0].effect: unknown variant `alow`",
        "p.yaml:6:5: error: rules[1].match: unknown field `pathz`",
        "p.yaml:12:31: error: rules[3].match.methods: invalid type: string \"GET\", expected a sequence",
        "3 error(s)",
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }
    assert!(!text.contains("rules[2]"), "{text}");
}

/// A policy file that is a list (its `rules:` line forgotten), a bare word, or has `rules:`
/// holding something else is told what it holds, not that it holds only comments.
#[tokio::test]
async fn check_names_what_a_policy_file_holds_instead_of_a_rules_list() {
    let cfg = ConfigDir::new(&authn());
    cfg.write("hs.secret", SECRET);
    for (text, expected) in [
        (
            "- name: one\n  match: {paths: [\"/a/**\"]}\n  effect: deny\n",
            "p.yaml: error: the file is a list, not a mapping: a policy file holds its rules under a `rules:` key",
        ),
        (
            "deny everything\n",
            "p.yaml: error: the file is a single value, not a mapping",
        ),
        (
            "rules: 5\n",
            "p.yaml:1:8: error: rules: invalid type: integer `5`, expected a sequence",
        ),
        ("# all gone\n", "p.yaml: error: no `rules:` list"),
    ] {
        cfg.write("policies/p.yaml", text);
        let (code, out) = cfg.run("check", &[]);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains(expected), "{expected} in {out}");
        if !text.starts_with('#') {
            assert!(!out.contains("only blank lines"), "{out}");
        }
    }
}

/// A host pattern with a port is refused, naming the field: the client writes the port, so a
/// deny rule on `admin.example:8443` was passed by `Host: admin.example`.
#[tokio::test]
async fn a_port_in_a_host_pattern_is_refused() {
    let cfg = ConfigDir::new(&authn());
    cfg.write("hs.secret", SECRET).write(
        "policies/p.yaml",
        "rules:\n  - name: admin\n    match: {hosts: [\"admin.example:8443\"]}\n    effect: deny\n",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("p.yaml:3:21: error: rules[0].match.hosts[0]: `admin.example:8443`: a host pattern cannot name a port"),
        "{text}"
    );
}

#[tokio::test]
async fn check_warns_when_two_authenticators_read_one_credential() {
    let authn = format!(
        "{}  keys:\n    api_key: {{from: [bearer], keys: []}}\n  devices:\n    mtls: {{listeners: [http]}}\n",
        authn()
    );
    let policy = "rules:\n  - name: both\n    match: {paths: [\"/**\"]}\n    effect: allow\n    authenticators: [users, keys]\n    upstream: echo\n";
    let cfg = ConfigDir::new(&authn);
    cfg.write("hs.secret", SECRET)
        .write("policies/p.yaml", policy);
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(1), "{text}");
    // Without the error, the config loads: the warning does not drop the rule.
    let fixed = ConfigDir::new(&authn.replace("mtls: {listeners: [http]}", "api_key: {keys: []}"));
    fixed
        .write("hs.secret", SECRET)
        .write("policies/p.yaml", policy);
    let (_, ok_text) = fixed.run("check", &[]);
    assert!(ok_text.contains("1 rule(s)"), "{ok_text}");
    for expected in [
        "p.yaml:5:29: warning: rules[0].authenticators[1]: `keys` reads the same credential (bearer) as `users`",
        "error: authenticators.devices.mtls.listeners[0]: no listener `http` with `tls.client_auth` (nor an `envoy_grpc` door with `client_certificates: true`)",
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }
}

#[tokio::test]
async fn explain_shows_the_rule_trace_status_and_upstream_headers_without_credentials() {
    let cfg = ConfigDir::new(&format!(
        "identity_headers: {{x-user-id: \"{{principal.id}}\"}}\n{}",
        authn()
    ));
    cfg.write("hs.secret", SECRET);
    cfg.write(
        "policies/p.yaml",
        format!(
            "rules:\n  - name: admin\n    match: {{paths: [\"/admin/**\"]}}\n    effect: deny\n{}",
            rule("orders", "/orders/**", "{scopes: {all_of: [orders:read]}}")
        ),
    );
    let explain = |args: &[&str]| cfg.run("explain", args);
    let good = token(&json!({"scope": "orders:read"}));
    let auth = format!("Authorization: Bearer {good}");
    let (code, text) = explain(&[
        "--url",
        "https://api.test/orders/7",
        "-H",
        &auth,
        "-H",
        "X_User_Id: root",
    ]);
    assert_eq!(code, Some(0), "{text}");
    for expected in [
        "rule      orders",
        "authenticator `users` verified the credential",
        "every requirement of the rule holds",
        "principal alice (user, via users)",
        "x-user-id: alice",
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }
    assert!(
        !text.contains(&good[good.len() - 12..]),
        "the token is never printed"
    );
    assert!(
        !text.contains("authorization:"),
        "the verified credential is stripped by default: {text}"
    );
    assert!(!text.contains("root"), "the spoofed header is gone: {text}");

    let weak = token(&json!({"scope": "orders:list"}));
    let (code, text) = explain(&[
        "--url",
        "https://api.test/orders/7",
        "-H",
        &format!("Authorization: Bearer {weak}"),
        "--json",
    ]);
    assert_eq!(code, Some(1), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["status"], 403);
    assert_eq!(v["reason"], "insufficient_scope");
    assert!(
        v["www_authenticate"]
            .as_str()
            .unwrap()
            .contains("insufficient_scope")
    );
    // The path tricks resolve to the rule that serving would pick.
    for url in [
        "https://api.test//admin/x",
        "https://api.test/%61dmin/x",
        "https://api.test/orders/../admin/x",
    ] {
        let (code, text) = explain(&["--url", url, "--json"]);
        assert_eq!(code, Some(1), "{url}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["rule"]["name"], "admin", "{url}");
        assert_eq!(v["status"], 403, "{url}");
    }
}

/// A requirement written with nothing in it (`scopes:` from a template's empty variable)
/// would require nothing: refused, naming the field; left out, it is fine.
#[test]
fn a_requirement_written_empty_is_refused() {
    let cfg = ConfigDir::new(
        "authenticators:\n  keys:\n    api_key:\n      from: [bearer]\n      keys: []\n",
    );
    let rule = |require: &str| {
        format!(
            "rules:\n  - name: admin\n    match: {{paths: [\"/admin/**\"]}}\n    effect: allow\n    authenticators: [keys]\n    upstream: echo\n    require:\n{require}"
        )
    };
    for (require, field) in [
        ("      scopes:\n", "scopes"),
        ("      roles: ~\n", "roles"),
        ("      claims: {}\n", "claims"),
        ("      networks: []\n", "networks"),
        ("      kind:\n      mtls: true\n", "kind"),
    ] {
        cfg.write("policies/p.yaml", rule(require));
        let (code, text) = cfg.run("check", &[]);
        assert_eq!(code, Some(1), "{require}: {text}");
        assert!(
            text.contains(&format!(
                "error: rules[0].require.{field}: `require.{field}` is written with nothing in it"
            )),
            "{text}"
        );
    }
    // `require:` alone, `{}`, or only `mtls: false`.
    for written in [
        "    require:\n",
        "    require: {}\n",
        "    require: {mtls: false}\n",
    ] {
        let policy = rule("").replace("    require:\n", written);
        cfg.write("policies/p.yaml", policy);
        let (code, text) = cfg.run("check", &[]);
        assert_eq!(code, Some(1), "{written}: {text}");
        assert!(
            text.contains("error: rules[0].require: `require` as written requires nothing"),
            "{text}"
        );
    }
    cfg.write(
        "policies/p.yaml",
        rule("      scopes: {all_of: [admin]}\n      mtls: false\n"),
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    // One requirement shared through a YAML alias is written in full.
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: a, match: {paths: [\"/a/**\"]}, effect: allow, authenticators: [keys], upstream: echo, require: &ops {roles: {any_of: [admin]}}}\n  - {name: b, match: {paths: [\"/b/**\"]}, effect: allow, authenticators: [keys], upstream: echo, require: *ops}\n",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
}

/// A credential in the query is never echoed by `explain`, in text or JSON, as one in a
/// header never is, nor sent to the login page in a redirect's return address (the
/// gateway's too). (The request line showed the whole URL, key included; the return address
/// carried the key to the login page.)
#[test]
fn explain_never_echoes_a_query_credential() {
    let cfg = ConfigDir::new(
        "authenticators:\n  keys:\n    api_key:\n      from: [{query: api_key}]\n      keys: []\n  others:\n    api_key:\n      from: [{query: other_key}]\n      keys: []\n",
    );
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: k, match: {paths: [\"/k/**\"]}, effect: allow, authenticators: [keys], upstream: echo, denial: {login_url: \"https://login.example/start\"}}\n",
    );
    let secret = "pk_live_do_not_echo_0123456789";
    // Its name percent-encoded is still its name (as the gateway reads it); a browser sent to
    // log in carries no credential to the login page in its return address.
    // Another authenticator's query credential is cut from the return address too, and user
    // information is never shown.
    for name in ["api_key", "api%5Fkey"] {
        let url = format!("http://a.test/k/1?x=1&{name}={secret}&other_key={secret}");
        for (json, browser) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut args = vec!["--url", url.as_str()];
            if json {
                args.push("--json");
            }
            if browser {
                args.extend(["-H", "Accept: text/html"]);
            }
            let (code, text) = cfg.run("explain", &args);
            assert_eq!(code, Some(1), "{text}");
            assert!(!text.contains(secret), "echoed: {text}");
            assert!(text.contains(&format!("{name}=[redacted]")), "{text}");
            assert!(text.contains("x=1"), "{text}");
            if browser {
                assert!(
                    text.contains(
                        "https://login.example/start?rd=http%3A%2F%2Fa.test%2Fk%2F1%3Fx%3D1"
                    ),
                    "{text}"
                );
                assert!(!text.contains("other_key%3D"), "{text}");
            }
        }
    }
    // A target with user information is refused (400), and it is not shown either.
    let url = format!("http://u:{secret}@a.test/k/1");
    let (code, text) = cfg.run("explain", &["--url", url.as_str()]);
    assert_eq!(code, Some(1), "{text}");
    assert!(!text.contains(secret), "echoed: {text}");
    assert!(text.contains("http://***@a.test/k/1"), "{text}");
}

/// `explain` refuses the heads the proxy door refuses before any rule, with its status: an
/// h2c upgrade (400), a transfer coding but `chunked` (501), a head over the limits (431).
/// (It said "forwarded".)
#[test]
fn explain_refuses_the_heads_the_proxy_refuses() {
    let cfg = ConfigDir::new("");
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: echo}\n",
    );
    let big = format!("X-Big: {}", "b".repeat(17_000));
    for (headers, status, reason) in [
        (
            vec!["Upgrade: h2c", "Connection: Upgrade, HTTP2-Settings"],
            400,
            "h2c_upgrade",
        ),
        (
            vec!["Transfer-Encoding: gzip, chunked"],
            501,
            "unsupported_transfer_coding",
        ),
        (vec![big.as_str()], 431, "headers_too_large"),
    ] {
        let mut args = vec!["--url", "http://a.test/public/x", "--json"];
        for h in &headers {
            args.extend(["-H", h]);
        }
        let (code, text) = cfg.run("explain", &args);
        assert_eq!(code, Some(1), "{headers:?}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["status"], status, "{headers:?}");
        assert_eq!(v["reason"], reason, "{headers:?}");
    }
    let (code, text) = cfg.run("explain", &["--url", "http://a.test/public/x"]);
    assert_eq!(code, Some(0), "{text}");
}

/// `check --strict` fails on a warning (a deny rule an earlier allow rule shadows), for CI;
/// without it the warning is said and the config passes; a config without warnings passes
/// either way.
#[test]
fn check_strict_fails_on_a_warning() {
    let cfg = ConfigDir::new("");
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: echo}\n  - {name: admin, match: {paths: [\"/admin/**\"]}, effect: deny}\n",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("warning"), "{text}");
    let (code, text) = cfg.run("check", &["--strict"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("warning(s) with --strict: config rejected"),
        "{text}"
    );
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: admin, match: {paths: [\"/admin/**\"]}, effect: deny}\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: echo}\n",
    );
    let (code, text) = cfg.run("check", &["--strict"]);
    assert_eq!(code, Some(0), "{text}");
}

/// `explain`'s refusals of a URL or a header it cannot read show no credential: the URL's
/// query and user information are masked, a header is named by its place. At every door.
#[test]
fn explain_errors_show_no_credential() {
    let cfg = ConfigDir::new("");
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: echo}\n",
    );
    const CANARY: &str = "CANARYtok3n";
    for door in [None, Some("envoy-grpc"), Some("forward-auth")] {
        for args in [
            vec![
                "--url".to_owned(),
                format!("http://app.test/x?access_token={CANARY}&q=a b"),
            ],
            vec![
                "--url".to_owned(),
                format!("http://user:{CANARY}@app.test/x y"),
            ],
            vec![
                "--url".to_owned(),
                "http://app.test/x".to_owned(),
                "-H".to_owned(),
                format!("Authorization=Bearer {CANARY}"),
            ],
            vec![
                "--url".to_owned(),
                "http://app.test/x".to_owned(),
                "-H".to_owned(),
                "Accept: */*".to_owned(),
                "-H".to_owned(),
                format!("X-Api-Key {CANARY}: x"),
            ],
        ] {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
            cmd.args(["explain", "-c"])
                .arg(cfg.dir.path().join("portcullis.yaml"))
                .args(&args);
            if let Some(d) = door {
                cmd.args(["--door", d]);
            }
            let out = cmd.output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.status.code(), Some(2), "{door:?} {args:?}: {text}");
            assert!(!text.contains("CANARY"), "{door:?} {args:?}: {text}");
            assert!(
                text.contains("is not a URL")
                    || text.contains("header 1 is not `Name: value`")
                    || text.contains("header 2 has no valid name"),
                "{door:?} {args:?}: {text}"
            );
        }
    }
}

/// `explain` decides on one host, the URL's: a `-H Host` naming another is refused (it was
/// decided on, while the answer showed the URL's host, and the gateway decides an
/// absolute-form request on the URL's). The same host in any case is fine.
#[test]
fn explain_refuses_a_host_header_other_than_the_urls() {
    let cfg = ConfigDir::new("");
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: public, match: {hosts: [public.example.com], paths: [\"/h/**\"]}, effect: allow, anonymous: true, upstream: echo}\n  - {name: rest, match: {paths: [\"/**\"]}, effect: deny}\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["explain", "-c"])
        .arg(cfg.dir.path().join("portcullis.yaml"))
        .args([
            "--url",
            "http://secret.example.com/h/x",
            "-H",
            "Host: public.example.com",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("`Host: public.example.com` is not the URL's host `secret.example.com`"),
        "{text}"
    );
    for (url, host, code) in [
        (
            "http://public.example.com/h/x",
            Some("Host: PUBLIC.example.com"),
            0,
        ),
        ("http://public.example.com/h/x", None, 0),
        ("http://secret.example.com/h/x", None, 1),
    ] {
        let mut args = vec!["--url", url];
        if let Some(h) = host {
            args.extend(["-H", h]);
        }
        let (got, text) = cfg.run("explain", &args);
        assert_eq!(got, Some(code), "{url} {host:?}: {text}");
    }
}

#[test]
fn policy_list_prints_the_rules_in_evaluation_order() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["policy", "list", "-c", "config/portcullis.yaml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|n| !n.starts_with("rule"))
        .collect();
    assert_eq!(
        names,
        ["admin-denied", "health", "public", "api", "orders", "live"],
        "{text}"
    );
    assert!(
        text.lines().next().unwrap().starts_with("#  NAME  "),
        "{text}"
    );
    assert!(text.contains("6 rule(s)"), "{text}");
}

/// The seed policies (policies/examples/seed.yaml), served as written.
async fn seed_gateway() -> TestGateway {
    let policy = std::fs::read_to_string("policies/examples/seed.yaml")
        .unwrap()
        .replace("upstream: app", "upstream: echo");
    Setup {
        policies: vec![("seed.yaml".into(), policy)],
        files: vec![("hs.secret".into(), SECRET.to_vec())],
        extra: format!(
            "{}rate_limits:\n  admin-pace: {{key: principal, requests: 30, per: 1m, burst: 10}}\n",
            authn()
        ),
        ..Setup::default()
    }
    .start()
    .await
}

async fn status(gw: &TestGateway, method: &str, path: &str, token: Option<&str>) -> StatusCode {
    let before = gw.echo.count();
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let (status, _, _) = send(gw.addr(), req.body(Full::default()).unwrap()).await;
    assert_eq!(
        gw.echo.count() - before,
        usize::from(status == StatusCode::OK),
        "{method} {path}: {status}"
    );
    status
}

#[tokio::test]
async fn seed_parity_policies() {
    let gw = seed_gateway().await;
    let admin = token(&json!({"sub": "root", "realm": {"roles": ["admin"]}}));
    let alice = token(&json!({"sub": "alice"}));
    let (ok, unauth, forbidden) = (
        StatusCode::OK,
        StatusCode::UNAUTHORIZED,
        StatusCode::FORBIDDEN,
    );
    for (method, path, token, want) in [
        // Admin-only user and policy management.
        ("GET", "/users/42", Some(&admin), ok),
        ("POST", "/policies/p1", Some(&admin), ok),
        ("GET", "/users/42", Some(&alice), forbidden),
        ("GET", "/users/42", None, unauth),
        // A public table.
        ("GET", "/tables/announcements", None, ok),
        ("GET", "/tables/announcements/7", Some(&alice), ok),
        ("POST", "/tables/announcements", Some(&alice), forbidden),
        // Public except read_mine, which needs the caller and only their rows.
        ("GET", "/tables/posts", None, ok),
        ("GET", "/tables/posts?mine&user_id=alice", Some(&alice), ok),
        (
            "GET",
            "/tables/posts?mine&user_id=bob",
            Some(&alice),
            forbidden,
        ),
        ("GET", "/tables/posts?mine&user_id=alice", None, forbidden),
        // Filtered by author_id.
        ("GET", "/tables/comments?author_id=alice", Some(&alice), ok),
        (
            "GET",
            "/tables/comments?author_id=bob",
            Some(&alice),
            forbidden,
        ),
        ("GET", "/tables/comments", Some(&alice), forbidden),
        // Every other table: the caller's rows, by path or query parameter.
        ("GET", "/tables/orders/users/alice", Some(&alice), ok),
        ("PUT", "/tables/orders/users/alice/17", Some(&alice), ok),
        ("GET", "/tables/orders/users/bob", Some(&alice), forbidden),
        (
            "DELETE",
            "/tables/orders/users/bob/17",
            Some(&alice),
            forbidden,
        ),
        ("GET", "/tables/orders?user_id=alice", Some(&alice), ok),
        (
            "POST",
            "/tables/orders?user_id=bob",
            Some(&alice),
            forbidden,
        ),
        ("GET", "/tables/orders", Some(&alice), forbidden),
        ("GET", "/tables/orders?user_id=alice", None, unauth),
        // Path tricks resolve before matching: bob's rows stay bob's.
        (
            "GET",
            "/tables/orders/users/alice/../bob",
            Some(&alice),
            forbidden,
        ),
        ("GET", "/tables/orders/users/%62ob", Some(&alice), forbidden),
    ] {
        assert_eq!(
            status(&gw, method, path, token.map(String::as_str)).await,
            want,
            "{method} {path} as {}",
            if token.is_some() { "a user" } else { "nobody" }
        );
    }
}

#[tokio::test]
async fn when_expressions_are_compiled_at_load() {
    let cfg = ConfigDir::new(&authn());
    cfg.write("hs.secret", SECRET);
    cfg.write(
        "policies/p.yaml",
        "rules:
  - name: syntax
    match: {paths: [\"/a/**\"]}
    effect: allow
    authenticators: [users]
    upstream: echo
    when: \"claims.x ==\"
  - name: unknown
    match: {paths: [\"/b/**\"]}
    effect: allow
    authenticators: [users]
    upstream: echo
    when: \"user.id == 'x'\"
  - name: field
    match: {paths: [\"/c/**\"]}
    effect: allow
    authenticators: [users]
    upstream: echo
    when: \"principal.idd == 'x'\"
  - name: action
    match: {paths: [\"/d/**\"]}
    effect: allow
    authenticators: [users]
    upstream: echo
    when: \"action == 'raed'\"
",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(1), "{text}");
    for expected in [
        "p.yaml:7:5: error: rules[0].when: invalid CEL",
        "p.yaml:13:5: error: rules[1].when: unknown variable `user`",
        "p.yaml:19:5: error: rules[2].when: `principal.idd`: principal has no field `idd`",
        "p.yaml:25:5: error: rules[3].when: `action` is never 'raed'",
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }
}

/// A condition reading a header the gateway removes or rewrites fails for every request:
/// `check` says so (a warning), and is silent for a header the view holds.
#[test]
fn a_condition_reading_a_removed_header_is_a_warning() {
    let rule = |when: &str| {
        format!(
            "rules:\n  - name: r\n    match: {{paths: [\"/**\"]}}\n    effect: allow\n    anonymous: true\n    upstream: echo\n    when: \"{when}\"\n"
        )
    };
    for (server, when, said) in [
        (
            "",
            "request.headers['x-forwarded-for'] == '10.0.0.1'",
            Some("require.networks"),
        ),
        (
            "",
            "request.headers['x-original-url'] == '/'",
            Some("fails for every request"),
        ),
        (
            "",
            "request.headers['cf-access-authenticated-user-email'] != ''",
            Some("`server.trusted_proxy_headers` names it"),
        ),
        (
            "",
            "request.headers['true-client-ip'] != ''",
            Some("names none"),
        ),
        (
            "server: {trusted_proxies: [10.0.0.0/8]}\n",
            "request.headers['true-client-ip'] != ''",
            None,
        ),
        ("", "request.headers['x-team'] == 'blue'", None),
    ] {
        let cfg = ConfigDir::new(server);
        cfg.write("policies/p.yaml", rule(when));
        let (code, text) = cfg.run("check", &[]);
        assert_eq!(code, Some(0), "{when}: a warning at most: {text}");
        match said {
            Some(said) => assert!(
                text.contains("rules[0].when: reads `request.headers[") && text.contains(said),
                "{when}: {text}"
            ),
            None => assert!(!text.contains("reads `request.headers["), "{when}: {text}"),
        }
    }
}

fn when_rule(name: &str, path: &str, when: &str) -> String {
    format!(
        "  - name: {name}\n    match: {{paths: [\"{path}\"]}}\n    effect: allow\n    authenticators: [users]\n    upstream: echo\n    when: \"{when}\"\n"
    )
}

#[tokio::test]
async fn when_comprehension_macros_pass_check_and_decide() {
    let macros = [
        ("exists", "claims.realm.roles.exists(r, r == 'admin')"),
        ("all", "claims.realm.roles.all(r, r.startsWith('team-'))"),
        ("one", "claims.realm.roles.exists_one(r, r == 'lead')"),
        (
            "map",
            "claims.realm.roles.map(r, r + '!').exists(r, r == 'admin!')",
        ),
        (
            "filter",
            "size(claims.realm.roles.filter(r, r in principal.roles)) >= 2",
        ),
        (
            "nested",
            "claims.teams.exists(t, claims.realm.roles.exists(r, r == 'team-' + t))",
        ),
    ];
    let rules: String = macros
        .iter()
        .map(|(name, when)| when_rule(name, &format!("/{name}/**"), when))
        .collect();
    let cfg = ConfigDir::new(&authn());
    cfg.write("hs.secret", SECRET);
    cfg.write("policies/p.yaml", format!("rules:\n{rules}"));
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("unknown variable"), "{text}");

    let gw = gateway(&rules).await;
    let admin = token(&json!({"realm": {"roles": ["admin", "lead", "team-a"]}, "teams": ["a"]}));
    let team = token(&json!({"realm": {"roles": ["team-a", "team-b"]}, "teams": ["c"]}));
    for (path, t, want) in [
        ("/exists/x", &admin, StatusCode::OK),
        ("/exists/x", &team, StatusCode::FORBIDDEN),
        ("/all/x", &team, StatusCode::OK),
        ("/all/x", &admin, StatusCode::FORBIDDEN),
        ("/one/x", &admin, StatusCode::OK),
        ("/one/x", &team, StatusCode::FORBIDDEN),
        ("/map/x", &admin, StatusCode::OK),
        ("/map/x", &team, StatusCode::FORBIDDEN),
        ("/filter/x", &admin, StatusCode::OK),
        ("/filter/x", &team, StatusCode::OK),
        ("/nested/x", &admin, StatusCode::OK),
        ("/nested/x", &team, StatusCode::FORBIDDEN),
    ] {
        let (status, challenge, body) = get(&gw, path, Some(t)).await;
        assert_eq!(status, want, "{path}: {body}");
        if status == StatusCode::FORBIDDEN {
            assert!(body.contains("\"error\":\"condition_failed\""), "{body}");
            assert!(challenge.is_empty(), "{challenge}");
        }
    }
}

#[tokio::test]
async fn when_too_deep_or_too_large_is_refused_by_check() {
    let deep = "claims.a.exists(x, claims.b.exists(y, claims.c.exists(z, x == y && y == z)))";
    let cfg = ConfigDir::new(&authn());
    cfg.write("hs.secret", SECRET);
    cfg.write(
        "policies/p.yaml",
        format!(
            "rules:\n{}{}",
            when_rule("deep", "/a/**", deep),
            when_rule("free", "/b/**", "claims.a.exists(x, true) && x")
        ),
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(1), "{text}");
    for expected in [
        "p.yaml:7:5: error: rules[0].when: comprehensions (all, exists, exists_one, map, filter) nest at most 2 deep",
        "p.yaml:13:5: error: rules[1].when: unknown variable `x`",
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }
}

#[tokio::test]
async fn when_over_its_budget_is_denied_with_its_reason() {
    let rules = [
        when_rule("long", "/long/**", "claims.big.exists(x, x < 0)"),
        when_rule(
            "nested",
            "/nested/**",
            "claims.big.exists(x, claims.big.exists(y, x == y + 1000))",
        ),
        when_rule("swallowed", "/or/**", "claims.big.exists(x, x < 0) || true"),
    ]
    .concat();
    let gw = gateway(&rules).await;
    // 1001 numbers: one more than policies.conditions.max_list_size allows by default.
    let too_long = token(&json!({"big": (0..1001).collect::<Vec<_>>()}));
    // 600 × 600 pairs: within the list size, far over max_steps.
    let wide = token(&json!({"big": (0..600).collect::<Vec<_>>()}));
    let fine = token(&json!({"big": (0..10).collect::<Vec<_>>()}));
    let started = std::time::Instant::now();
    for (path, t) in [
        ("/long/x", &too_long),
        ("/nested/x", &wide),
        ("/or/x", &too_long),
    ] {
        let (status, challenge, body) = get(&gw, path, Some(t)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert!(
            body.contains("\"error\":\"condition_budget_exceeded\""),
            "{path}: {body}"
        );
        assert!(challenge.is_empty(), "{challenge}");
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        get(&gw, "/long/x", Some(&fine)).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(get(&gw, "/or/x", Some(&fine)).await.0, StatusCode::OK);
    let (_, metrics) = gw.admin_get("/metrics").await;
    let line = "portcullis_denials_total{door=\"proxy\",reason=\"condition_budget_exceeded\"} 3";
    assert!(metrics.contains(line), "{line} in {metrics}");
}

#[test]
fn check_warns_about_rules_that_can_never_match() {
    let cfg = ConfigDir::new("");
    cfg.write(
        "policies/p.yaml",
        "rules:
  - name: api
    match: {paths: [\"/api/**\"]}
    effect: allow
    anonymous: true
    upstream: echo
  - name: api-admin-deny
    match: {paths: [\"/api/admin/**\"]}
    effect: deny
  - name: reads
    match: {paths: [\"/docs/**\"], methods: [GET]}
    effect: allow
    anonymous: true
    upstream: echo
  - name: writes
    match: {paths: [\"/docs/{id}\"], methods: [PUT]}
    effect: deny
  - name: deny-admin
    match: {paths: [\"/admin/**\"]}
    effect: deny
  - name: admin-users
    match: {paths: [\"/ADMIN/users\"], methods: [GET]}
    effect: allow
    anonymous: true
    upstream: echo
  - name: items
    match: {paths: [\"/items/{item}\"]}
    effect: allow
    anonymous: true
    upstream: echo
    when: \"request.path != '/items/secret'\"
",
    );
    let (code, text) = cfg.run("check", &[]);
    assert!(
        text.contains("warning: rules[6].when: reads `request.path`, which keeps a trailing slash"),
        "{text}"
    );
    assert_eq!(code, Some(0), "warnings only: {text}");
    assert!(
        // Not dead: it decides `/API/admin/x`, which the case-sensitive allow rule does not
        // match, but the allow rule decides the rest of what it would refuse.
        text.contains(
            "p.yaml:8:5: warning: rules[1].match: deny rule `api-admin-deny` does not refuse everything it matches: `api`"
        ),
        "{text}"
    );
    assert!(
        text.contains("warning: rules[5].match: rule `admin-users` can never match: `deny-admin`"),
        "deny rules match every case: {text}"
    );
    assert!(
        !text.contains("`writes` can never"),
        "another method: {text}"
    );
    assert!(text.contains("3 warning(s)"), "{text}");
}

/// `check` finds a rule an earlier host wildcard or format-suffix reading decides whole
/// (`*.example.org` before `x.example.org`; deny `/secret` before `/secret.json`, which deny
/// rules match), and `explain` agrees: the earlier rule decides the later one's request.
#[test]
fn check_sees_rules_a_wildcard_host_or_a_format_suffix_shadows() {
    let cfg = ConfigDir::new("");
    cfg.write(
        "policies/p.yaml",
        "rules:
  - name: wild
    match: {hosts: [\"*.example.org\"], paths: [\"/w/**\"]}
    effect: allow
    anonymous: true
    upstream: echo
  - name: sub
    match: {hosts: [\"x.example.org\"], paths: [\"/w/1\"]}
    effect: allow
    anonymous: true
    upstream: echo
  - name: deny-secret
    match: {paths: [\"/secret\"]}
    effect: deny
  - name: secret-json
    match: {paths: [\"/secret.json\"]}
    effect: allow
    anonymous: true
    upstream: echo
  - name: wide
    match: {hosts: [\"*.example.com\"], paths: [\"/**\"]}
    effect: allow
    anonymous: true
    upstream: echo
  - name: a-admin
    match: {hosts: [\"a.example.com\"], paths: [\"/admin/**\"]}
    effect: deny
",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "warnings only: {text}");
    for (at, rule, by) in [
        ("rules[1]", "sub", "wild"),
        ("rules[3]", "secret-json", "deny-secret"),
        ("rules[5]", "a-admin", "wide"),
    ] {
        let line = format!("warning: {at}.match: rule `{rule}` can never match: `{by}`");
        assert!(text.contains(&line), "{line} in {text}");
    }
    assert!(text.contains("3 warning(s)"), "{text}");
    for (url, rule) in [
        ("http://x.example.org/w/1", "wild"),
        ("http://a.test/secret.json", "deny-secret"),
        ("http://a.example.com/admin/x", "wide"),
    ] {
        let (_, out) = cfg.run("explain", &["--url", url, "--json"]);
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|_| panic!("{url}: {out}"));
        assert_eq!(v["rule"]["name"].as_str(), Some(rule), "{url}: {out}");
    }
}

/// A WebSocket its rule relays, from an origin the rule's CORS does not name: the proxy
/// refuses it (403 `cors_origin_not_allowed`), and so do `explain` and `test`; from the named
/// origin, or as a plain request, it is allowed. (Both tools said allowed.)
#[test]
fn explain_refuses_a_websocket_from_a_foreign_origin_as_the_proxy_does() {
    let cfg = ConfigDir::new("");
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - name: ws\n    match: {paths: [\"/ws/**\"]}\n    effect: allow\n    anonymous: true\n    upstream: echo\n    upgrade: {protocols: [websocket]}\n    cors: {allowed_origins: [\"https://app.example.com\"]}\n",
    );
    let upgrade = ["-H", "Connection: Upgrade", "-H", "Upgrade: websocket"];
    for (origin, code, says) in [
        ("https://evil.example", 1, "cors_origin_not_allowed"),
        ("https://app.example.com", 0, "allow"),
    ] {
        let header = format!("Origin: {origin}");
        let mut args = vec!["--url", "http://gw.example/ws/x", "-H", &header];
        args.extend(upgrade);
        let (got, text) = cfg.run("explain", &args);
        assert_eq!(got, Some(code), "{origin}: {text}");
        assert!(text.contains(says), "{origin}: {text}");
        // Not an upgrade: CORS does not apply to a plain request's decision.
        let (got, text) = cfg.run("explain", &args[..4]);
        assert_eq!(got, Some(0), "{origin}, no upgrade: {text}");
    }
    let cases = cfg.dir.path().join("ws.test.yaml");
    std::fs::write(
        &cases,
        format!(
            "config: {}\ncases:\n  - name: foreign\n    request: {{url: \"http://gw.example/ws/x\", headers: {{upgrade: websocket, connection: Upgrade, origin: \"https://evil.example\"}}}}\n    expect: {{decision: deny, status: 403, reason: cors_origin_not_allowed}}\n  - name: own\n    request: {{url: \"http://gw.example/ws/x\", headers: {{upgrade: websocket, connection: Upgrade, origin: \"https://app.example.com\"}}}}\n    expect: {{decision: allow, status: 200}}\n",
            cfg.dir.path().join("portcullis.yaml").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("test")
        .arg(&cases)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("2 passed, 0 failed"), "{text}");
}

#[test]
fn policy_test_files_pass_for_the_examples_and_print_a_diff_on_mismatch() {
    let run = |file: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("test")
            .arg(file)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let shipped = std::path::Path::new("policies/examples/tests/seed.test.yaml");
    let (code, text) = run(shipped);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("12 passed, 0 failed"), "{text}");

    // A wrong expectation fails with a readable diff.
    let dir = tempfile::tempdir().unwrap();
    let wrong = std::fs::read_to_string(shipped)
        .unwrap()
        .replace(
            "../../../config/",
            &format!("{}/config/", env!("CARGO_MANIFEST_DIR")),
        )
        .replace(
            "expect: {decision: deny, status: 403, rule: admin-management, reason: role_required}",
            "expect: {decision: allow, status: 200}",
        );
    let file = dir.path().join("wrong.yaml");
    std::fs::write(&file, wrong).unwrap();
    let (code, text) = run(&file);
    assert_eq!(code, Some(1), "{text}");
    for expected in [
        "FAIL  others may not",
        "decision: expected allow, got deny",
        "status: expected 200, got 403",
        "11 passed, 1 failed",
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }

    // A mistake in the test file names its line and field.
    let unknown = format!(
        "config: {}/config/examples/seed.yaml\ncases:\n  - name: x\n    request: {{url: \"https://a/tables/posts\", token: nobody}}\n    expect: {{decision: allow}}\n",
        env!("CARGO_MANIFEST_DIR")
    );
    let file = dir.path().join("unknown.yaml");
    std::fs::write(&file, unknown).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("test")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("unknown.yaml:4:")
            && stderr.contains("cases[0].request.token: unknown token `nobody`"),
        "{stderr}"
    );
}

/// `explain` shows the `te` and trace headers the proxy passes on: `TE: trailers` as the
/// client said it, the gateway's own `traceparent` (a new span of the client's valid trace, or
/// a new trace) with the client's `tracestate` kept beside a valid parent only.
#[test]
fn explain_shows_the_trace_and_te_the_upstream_gets() {
    let cfg = ConfigDir::new("");
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: open, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: echo}\n",
    );
    // The headers as explain lists them: `[name, value]` pairs, sorted.
    let headers = |args: &[&str]| -> Vec<(String, String)> {
        let mut all = vec!["--url", "http://app.test/x", "--json"];
        all.extend_from_slice(args);
        let (code, out) = cfg.run("explain", &all);
        assert_eq!(code, Some(0), "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        serde_json::from_value(v["upstream"]["headers"].clone()).unwrap()
    };
    let value = |h: &[(String, String)], name: &str| {
        h.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    };
    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let parent = format!("traceparent: {PARENT}");
    let h = headers(&["-H", "TE: trailers", "-H", &parent, "-H", "tracestate: a=1"]);
    assert_eq!(value(&h, "te").as_deref(), Some("trailers"), "{h:?}");
    assert_eq!(
        value(&h, "traceparent").as_deref(),
        Some("(the client's trace, a new span per request)"),
        "{h:?}"
    );
    assert_eq!(value(&h, "tracestate").as_deref(), Some("a=1"), "{h:?}");
    let h = headers(&["-H", "tracestate: a=1"]);
    assert_eq!(
        value(&h, "traceparent").as_deref(),
        Some("(a new trace per request)"),
        "{h:?}"
    );
    assert_eq!(value(&h, "tracestate"), None, "{h:?}");
    assert_eq!(value(&h, "te"), None, "{h:?}");
}

/// A test file with no case, or a case that expects nothing, is refused (exit 2, its line and
/// field named): it passed while testing nothing.
#[test]
fn a_test_file_that_tests_nothing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{}/config/examples/seed.yaml", env!("CARGO_MANIFEST_DIR"));
    for (name, text, said) in [
        (
            "none.yaml",
            format!("config: {config}\ncases: []\n"),
            "none.yaml:2:1: error: cases: no cases",
        ),
        (
            "empty.yaml",
            format!(
                "config: {config}\ncases:\n  - name: ok\n    request: {{url: \"https://a/tables/posts\"}}\n    expect: {{decision: deny}}\n  - name: nothing\n    request: {{url: \"https://a/tables/posts\"}}\n    expect: {{}}\n"
            ),
            "cases[1].expect: expects nothing",
        ),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("test")
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(said), "{said} in {stderr}");
    }
}

/// A policy test case may name the door, or the listener, whose code decides it: what that
/// door answers its peer is compared (an nginx listener's mapped status, the identity headers
/// the peer copies), and a wrong expectation there fails as through the proxy.
#[test]
fn policy_test_cases_run_through_the_door_they_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/p.yaml"),
        "rules:
  - {name: open, match: {paths: [\"/open/**\"]}, effect: allow, anonymous: true, upstream: app}
  - {name: hidden, match: {paths: [\"/hidden/**\"]}, effect: deny, denial: {status: 404}}
  - {name: admin, match: {paths: [\"/admin/**\"]}, effect: deny}
",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("portcullis.yaml"),
        "listeners:
  - {name: http, address: \"127.0.0.1:0\"}
  - {name: nginx, address: \"127.0.0.1:0\", door: {forward_auth: {status_map: {404: 403}}}}
  - {name: envoy, address: \"127.0.0.1:0\", door: {envoy_http: {}}}
upstreams: {app: {url: \"http://127.0.0.1:9\"}}
policies: {dir: policies}
identity_headers: {x-route: \"{rule.name}\"}
",
    )
    .unwrap();
    let cases = || -> String {
        "config: portcullis.yaml
cases:
  - name: the proxy forwards
    request: {url: \"http://app.test/open/x\"}
    expect: {decision: allow, status: 200, headers: {x-route: open}}
  - name: the envoy door answers 200 with the identity header
    request: {url: \"http://app.test/open/x\", door: envoy-http}
    expect: {decision: allow, status: 200, headers: {x-route: open}}
  - name: the forward-auth door refuses the admin path
    request: {url: \"http://app.test/admin/x\", door: forward-auth}
    expect: {decision: deny, status: 403, reason: forbidden}
  - name: the envoy door answers a denial's own status
    request: {url: \"http://app.test/hidden/x\", door: envoy-http}
    expect: {decision: deny, status: 404, reason: forbidden}
  - name: the nginx listener maps it for nginx
    request: {url: \"http://app.test/hidden/x\", listener: nginx, headers: {x-n: \"1\"}}
    expect: {decision: deny, status: 403, reason: forbidden}
"
        .to_owned()
    };
    let run = |text: String| {
        let file = dir.path().join("t.test.yaml");
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("test")
            .arg(&file)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = run(cases());
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("5 passed, 0 failed"), "{text}");
    // Through the door, a wrong expectation fails with the door's answer.
    let (code, text) = run(cases().replace(
        "expect: {decision: deny, status: 403, reason: forbidden}",
        "expect: {decision: deny, status: 401, reason: forbidden}",
    ));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("status: expected 401, got 403"), "{text}");
    let (code, text) = run(cases().replace(
        "door: envoy-http}\n    expect: {decision: allow, status: 200, headers: {x-route: open}}",
        "door: envoy-http}\n    expect: {decision: allow, status: 200, headers: {x-route: other}}",
    ));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("header x-route: expected \"other\", got \"open\""),
        "{text}"
    );
    // A listener that is not the door named is the file's mistake.
    let (code, text) = run(cases().replace(
        "listener: nginx, headers",
        "listener: envoy, door: forward-auth, headers",
    ));
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("listener `envoy` serves the envoy-http door, not forward-auth"),
        "{text}"
    );
}

/// A rule's denial shape: a browser without a credential is sent to log in and comes back to
/// what it asked for; an API client gets the 401 with the rule's extra JSON; a policy denial
/// takes the rule's status (and then announces no scope).
#[tokio::test]
async fn denial_shape_login_redirect_status_and_body() {
    let rules = "  - name: app
    match: {paths: [\"/app/**\"]}
    effect: allow
    authenticators: [users]
    upstream: echo
    require: {scopes: {all_of: [app]}}
    denial:
      status: 404
      login_url: https://login.example.com/start?client=gw
      body: {help: \"ask #platform for access\"}
";
    let gw = gateway(rules).await;
    let browse = |path: &str, accept: &str, method: http::Method| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("accept", accept)
            .body(Full::default())
            .unwrap()
    };
    let html = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8";

    // A browser navigation without a token: 302 to the login URL with the return address
    // (the canonical path and the raw query) as one encoded value.
    let (status, headers, body) = send(
        gw.addr(),
        browse("/app//a/./b?x=1&y=%20", html, http::Method::GET),
    )
    .await;
    assert_eq!(status, StatusCode::FOUND);
    let host = gw.addr().to_string().replace(':', "%3A");
    assert_eq!(
        headers["location"].to_str().unwrap(),
        format!(
            "https://login.example.com/start?client=gw&rd=http%3A%2F%2F{host}%2Fapp%2Fa%2Fb%3Fx%3D1%26y%3D%2520"
        )
    );
    assert!(body.is_empty());
    assert_eq!(headers["cache-control"], "no-store");
    // An expired or forged token is as good as none for a browser.
    let mut forged = browse("/app/x", html, http::Method::HEAD);
    forged
        .headers_mut()
        .insert("authorization", "Bearer a.b.c".parse().unwrap());
    assert_eq!(send(gw.addr(), forged).await.0, StatusCode::FOUND);

    // An API client, or a browser's POST, gets the 401, with the rule's extra JSON.
    for req in [
        browse("/app/x", "application/json", http::Method::GET),
        browse("/app/x", html, http::Method::POST),
    ] {
        let (status, headers, body) = send(gw.addr(), req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(headers.contains_key("www-authenticate"));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "missing_credential");
        assert_eq!(v["help"], "ask #platform for access");
        assert_eq!(
            v["request_id"].as_str(),
            headers["x-request-id"].to_str().ok()
        );
    }

    // Authenticated but without the scope: the rule hides the route (404), and a 404 names
    // no scope; a browser is not redirected (logging in again would not help).
    let no_scope = token(&json!({"scope": "other"}));
    let mut req = browse("/app/x", html, http::Method::GET);
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {no_scope}").parse().unwrap(),
    );
    let (status, headers, body) = send(gw.addr(), req).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!headers.contains_key("www-authenticate"), "{headers:?}");
    assert!(!headers.contains_key("location"));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "not_found", "a hidden route names no scope");
    assert_eq!(gw.echo.count(), 0, "nothing reached the upstream");
    let ok = token(&json!({"scope": "app"}));
    assert_eq!(get(&gw, "/app/x", Some(&ok)).await.0, StatusCode::OK);

    // Each denial is counted under its reason code; why a token failed is a reason too.
    let (_, metrics) = gw.admin_get("/metrics").await;
    for line in [
        "portcullis_denials_total{door=\"proxy\",reason=\"missing_credential\"} 3",
        "portcullis_denials_total{door=\"proxy\",reason=\"token_malformed\"} 1",
        "portcullis_denials_total{door=\"proxy\",reason=\"insufficient_scope\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
}

#[test]
fn check_warns_when_an_earlier_allow_rule_takes_part_of_a_deny_rule() {
    let cfg = ConfigDir::new("");
    cfg.write(
        "policies/p.yaml",
        "rules:
  - name: reads
    match: {paths: [\"/files/*\"], methods: [GET]}
    effect: allow
    anonymous: true
    upstream: echo
  - name: no-posts
    match: {paths: [\"/files/**\"], methods: [POST]}
    effect: deny
  - name: no-files
    match: {paths: [\"/files/**\"]}
    effect: deny
  - name: internal-reports
    match: {paths: [\"/internal/reports\"]}
    effect: allow
    anonymous: true
    upstream: echo
  - name: no-internal
    match: {paths: [\"/admin/**\", \"/internal/**\"]}
    effect: deny
  - name: tenant-read
    match: {hosts: [\"*.example.com\"], paths: [\"/{tenant}/reports\"]}
    effect: allow
    anonymous: true
    upstream: echo
  - name: no-acme-reports
    match: {hosts: [acme.example.com], paths: [\"/ACME/**\"]}
    effect: deny
  - name: other-host
    match: {hosts: [api.other.com], paths: [\"/x/**\"]}
    effect: allow
    anonymous: true
    upstream: echo
  - name: no-x-here
    match: {hosts: [api.example.com], paths: [\"/x/admin/**\"]}
    effect: deny
",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "warnings only: {text}");
    for expected in [
        "p.yaml:11:5: warning: rules[2].match: deny rule `no-files` does not refuse everything it matches: `reads`",
        "warning: rules[6].match: deny rule `no-acme-reports` does not refuse everything it matches: `tenant-read`",
        "warning: rules[4].match: deny rule `no-internal` does not refuse everything it matches: `internal-reports`",
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }
    // Another host, another segment, another method: no overlap, no warning.
    assert!(!text.contains("`no-x-here`"), "{text}");
    assert!(!text.contains("`no-posts`"), "{text}");
    assert!(text.contains("3 warning(s)"), "{text}");
}

/// `portcullis test` and `explain` say which rate limit applies but spend no budget: a test
/// file's verdicts never depend on how many cases came before.
#[test]
fn policy_tests_spend_no_rate_limit_budget() {
    let cfg = ConfigDir::new(&format!(
        "{}rate_limits:\n  once: {{key: client_ip, requests: 1, per: 1h}}\n",
        authn()
    ));
    cfg.write("hs.secret", SECRET).write(
        "policies/p.yaml",
        "rules:\n  - name: limited\n    match: {paths: [\"/**\"]}\n    effect: allow\n    anonymous: true\n    rate_limit: once\n    upstream: echo\n",
    );
    let case = "  - name: again\n    request: {url: \"http://a.test/x\"}\n    expect: {decision: allow, status: 200, rule: limited}\n";
    cfg.write(
        "t.yaml",
        format!("config: portcullis.yaml\ncases:\n{}", case.repeat(3)),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("test")
        .arg(cfg.dir.path().join("t.yaml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("3 passed, 0 failed"), "{text}");
    let (code, text) = cfg.run("explain", &["--method", "GET", "--url", "http://a.test/x"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("rate limit `once` applies"), "{text}");
}

/// A `when` reading a query parameter or header the request repeats denies: the rule saw one
/// value, the upstream may read another (the last, or all of them joined).
#[tokio::test]
async fn when_refuses_a_repeated_key_it_reads() {
    let gw = gateway(
        "  - name: mine\n    match: {paths: [\"/comments\"]}\n    effect: allow\n    authenticators: [users]\n    upstream: echo\n    when: request.query.author_id == principal.id\n",
    )
    .await;
    let alice = token(&json!({}));
    let (status, _, _) = get(&gw, "/comments?author_id=alice", Some(&alice)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = get(&gw, "/comments?author_id=bob", Some(&alice)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for attack in [
        "/comments?author_id=alice&author_id=bob",
        "/comments?author_id=alice&author%5Fid=bob",
        // Express (qs) reads [bob, alice]; PHP reads `author.id` as `author_id`; Rack before
        // 3 splits on `;`; ASP.NET ignores case.
        "/comments?author_id%5B%5D=bob&author_id=alice",
        "/comments?author_id=alice&author_id%5B0%5D=bob",
        "/comments?author_id=alice&author.id=bob",
        "/comments?author_id=alice;author_id=bob",
        "/comments?author_id=alice&AUTHOR_ID=bob",
    ] {
        let (status, _, body) = get(&gw, attack, Some(&alice)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{attack}");
        assert!(body.contains("condition_failed"), "{attack}: {body}");
    }
    // A parameter the condition does not read may repeat.
    let (status, _, _) = get(&gw, "/comments?author_id=alice&tag=a&tag=b", Some(&alice)).await;
    assert_eq!(status, StatusCode::OK);
}

/// Regression: `check` warned that an mTLS authenticator never found a certificate when the
/// only listener carrying them was an `envoy_grpc` door with `client_certificates: true`
/// (Envoy's `source.certificate`), where it does find them. Without that setting the warning
/// stays; naming a forward-auth listener (its TLS client certificate is the peer's) is an
/// error.
#[tokio::test]
async fn mtls_through_the_grpc_door_is_not_warned_about() {
    const NEVER: &str = "this authenticator never finds one";
    let policy = "rules:\n  - name: d\n    match: {paths: [\"/**\"]}\n    effect: allow\n    authenticators: [devices]\n    upstream: echo\n";
    for (carries, expect_warning) in [("true", false), ("false", true)] {
        let cfg = ConfigDir::new(&format!(
            "{}  devices:\n    mtls: {{id: [san_uri, subject_cn]}}\n",
            authn()
        ));
        cfg.write("hs.secret", SECRET)
            .write("policies/p.yaml", policy)
            .add_listeners(&format!(
                "{{name: g1, address: \"127.0.0.1:0\", door: {{envoy_grpc: {{client_certificates: {carries}}}}}}}"
            ));
        let (code, text) = cfg.run("check", &[]);
        assert_eq!(code, Some(0), "{carries}: {text}");
        assert_eq!(text.contains(NEVER), expect_warning, "{carries}: {text}");
    }
    let cfg = ConfigDir::new(&format!(
        "{}  devices:\n    mtls: {{listeners: [fa]}}\n",
        authn()
    ));
    cfg.write("hs.secret", SECRET)
        .write("policies/p.yaml", policy)
        .add_listeners("{name: fa, address: \"127.0.0.1:0\", door: {forward_auth: {}}}");
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("mtls.listeners[0]: listener `fa` is a decision door"),
        "{text}"
    );
}
