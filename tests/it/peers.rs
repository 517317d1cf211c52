//! Real peers in front of the forward-auth door: nginx (`auth_request`) and Caddy
//! (`forward_auth`) from Debian, each started on 127.0.0.1 with the config shipped under
//! `examples/` (only its addresses and file paths substituted), between a client and the echo
//! upstream, asking the real gateway. What the client gets and what the upstream receives are
//! asserted through the peer, so the shipped configs are what is proven.
//!
//! The attacks are the ones the door's families of spoofable headers name
//! (`authz::spoofable`): a client's forwarding, override, address-claim and infrastructure
//! headers, identity headers in every `_`/`-` spelling, and the credential the gateway
//! verified. The door cannot remove a header itself; what the upstream gets proves the peer's
//! config does.
//!
//! A peer whose binary is missing skips its test (printing why) unless
//! `PORTCULLIS_REQUIRE_PEERS` is set; `.ci/run` sets it and installs them, so CI never skips.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

use portcullis::authz::spoofable::{Family, family};

use crate::support::{Setup, TestGateway, hs256_token, raw, send};

const SECRET: &[u8] = b"peers-test-secret-peers-test-secret-0123456789";

/// `/admin/**` denied; `/api/**` needs a token (which `users` strips, the default); `/app/**`
/// too, and sends browsers to a login page; `/limited/**` allows one request a minute;
/// `/open/**` is anonymous; `/passthrough/**` needs a token that goes on to the upstream.
const POLICY: &str = "rules:
  - name: internal
    match: {hosts: [internal.example], paths: [\"/**\"]}
    effect: deny
  - name: admin
    match: {paths: [\"/admin/**\"]}
    effect: deny
  - name: api
    match: {paths: [\"/api/**\"]}
    effect: allow
    authenticators: [users]
  - name: app
    match: {paths: [\"/app/**\"]}
    effect: allow
    authenticators: [users]
    denial: {login_url: \"https://login.example/start\"}
  - name: limited
    match: {paths: [\"/limited/**\"]}
    effect: allow
    anonymous: true
    rate_limit: one-a-minute
  - name: open
    match: {paths: [\"/open/**\"]}
    effect: allow
    anonymous: true
  - name: scoped
    match: {paths: [\"/scoped/**\"]}
    effect: allow
    authenticators: [users]
    require: {scopes: {all_of: [orders:read]}}
  - name: passthrough
    match: {paths: [\"/passthrough/**\"]}
    effect: allow
    authenticators: [forwarding]
  - name: session
    match: {paths: [\"/session/**\"]}
    effect: allow
    authenticators: [session]
";

/// A second authenticator, `forwarding`: the same tokens as `users`, not stripped.
const FORWARDING: &str = "  forwarding:
    jwt:
      strip: false
      providers:
        - issuer: https://iss.test
          audiences: [api]
          keys: [{hmac: {secret: {file: hs.secret}, kid: k, algorithms: [HS256]}}]
";

/// A third, `session`: the same tokens in cookie `session`, stripped (the default).
const SESSION: &str = "  session:
    jwt:
      from: [{cookie: session}]
      providers:
        - issuer: https://iss.test
          audiences: [api]
          keys: [{hmac: {secret: {file: hs.secret}, kid: k, algorithms: [HS256]}}]
";

const LIMITS: &str = "rate_limits:
  one-a-minute:
    key: route
    requests: 1
    per: 1m
identity_headers:
  x-user-id: \"{principal.id}\"
";

// === the peers ===

#[tokio::test]
async fn nginx_auth_request_in_front_of_the_forward_auth_door() {
    let Some(nginx) = tool(&["nginx"], "nginx") else {
        return;
    };
    // The example clears the prefix families with headers-more.
    if !installed(
        Path::new(HEADERS_MORE),
        "libnginx-mod-http-headers-more-filter",
    ) {
        return;
    }
    let gw = gateway("nginx").await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let conf = substitute(
        &example("examples/nginx/nginx.conf"),
        &[
            (
                "server 127.0.0.1:8081;",
                &format!("server {};", gw.addr_of("door")),
            ),
            (
                "server 127.0.0.1:3000;",
                &format!("server {};", gw.echo.addr),
            ),
            ("listen 127.0.0.1:8000;", &format!("listen {listen};")),
            // Paths nginx would otherwise take from its build (/var/lib/nginx, /var/log/nginx).
            (
                "\nhttp {\n",
                &format!("\nhttp {{\n{}", nginx_paths(dir.path())),
            ),
        ],
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut globals = format!(
        "daemon off; pid {}; error_log stderr;",
        dir.path().join("nginx.pid").display()
    );
    if is_root(dir.path()) {
        // Workers run as the current user too, and can reach the temp dir.
        globals.push_str(" user root;");
    }
    let args = |test: bool| {
        let mut a: Vec<String> = vec!["-e".into(), "stderr".into()];
        if test {
            a.push("-t".into());
        }
        a.extend([
            "-p".into(),
            dir.path().display().to_string(),
            "-c".into(),
            conf_path.display().to_string(),
            "-g".into(),
            globals.clone(),
        ]);
        a
    };
    let test = Command::new(&nginx).args(args(true)).output().unwrap();
    assert!(
        test.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&test.stderr)
    );
    let peer = Peer::start("nginx", Command::new(&nginx).args(args(false)), dir, listen).await;
    through_the_peer(&peer, &gw).await;
    cookie_credential_cut_out(&peer, &gw).await;
}

/// A cookie credential the door verified and strips never reaches the app behind the peer:
/// the other cookies do, and a request without one keeps its cookies.
// Regression: this session's audit saw the verified session cookie reach the app behind the
// shipped nginx config.
async fn cookie_credential_cut_out(peer: &Peer, gw: &TestGateway) {
    let token = hs256_token(SECRET, &json!({}));
    let jar = (0..40)
        .map(|i| format!("pref{i}={}", "v".repeat(100)))
        .collect::<Vec<_>>()
        .join("; ");
    let cases = [
        (
            "/session/x",
            format!("theme=dark; session={token}"),
            Some("theme=dark"),
        ),
        ("/session/x", format!("session={token}"), None),
        ("/open/x", "theme=dark".to_owned(), Some("theme=dark")),
        // Regression: the door's answer repeats the other cookies; past nginx's default
        // proxy_buffer_size (4 KiB) the shipped config answered 500.
        (
            "/session/x",
            format!("{jar}; session={token}"),
            Some(jar.as_str()),
        ),
    ];
    for (path, cookie, kept) in cases {
        let (status, _, body) = peer.ask(path, &[("cookie", &cookie)]).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{}: {}",
            peer.name,
            peer.failed(&body)
        );
        let got = gw.echo.last().unwrap();
        assert_eq!(got.target, path);
        assert_eq!(
            got.headers.get("cookie").map(|v| v.to_str().unwrap()),
            kept,
            "{}: {path} with `{}`",
            peer.name,
            cookie.replace(&token, "<token>")
        );
    }
}

#[tokio::test]
async fn caddy_forward_auth_in_front_of_the_forward_auth_door() {
    let Some(caddy) = tool(&["caddy"], "caddy") else {
        return;
    };
    let gw = gateway("forward-auth").await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let admin = free_port();
    let conf = substitute(
        &example("examples/caddy/Caddyfile"),
        &[
            ("admin localhost:2019", &format!("admin {admin}")),
            ("http://:8000 {", &format!("http://:{} {{", listen.port())),
            (
                "forward_auth 127.0.0.1:8082 {",
                &format!("forward_auth {} {{", gw.addr_of("door")),
            ),
            (
                "reverse_proxy 127.0.0.1:3000",
                &format!("reverse_proxy {}", gw.echo.addr),
            ),
        ],
    );
    let conf_path = dir.path().join("Caddyfile");
    std::fs::write(&conf_path, conf).unwrap();
    let caddy_cmd = |sub: &str| {
        let mut c = Command::new(&caddy);
        c.args([sub, "--config"])
            .arg(&conf_path)
            .args(["--adapter", "caddyfile"])
            // Its storage and autosaved config stay in the temp dir.
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"));
        c
    };
    let validate = caddy_cmd("validate").output().unwrap();
    assert!(
        validate.status.success(),
        "caddy validate: {}",
        String::from_utf8_lossy(&validate.stderr)
    );
    let mut run = caddy_cmd("run");
    let peer = Peer::start("caddy", &mut run, dir, listen).await;
    through_the_peer(&peer, &gw).await;
}

/// A missing peer skips its test, saying why, unless peers are required (CI): then it fails.
#[test]
fn a_missing_peer_skips_unless_peers_are_required() {
    let required = std::env::var_os("PORTCULLIS_REQUIRE_PEERS").is_some();
    let found = std::panic::catch_unwind(|| tool(&["portcullis-no-such-peer"], "none"));
    match found {
        Ok(found) => assert!(!required && found.is_none()),
        Err(_) => assert!(required, "only a required peer fails when missing"),
    }
}

/// The same requests through either peer, and the same answers.
async fn through_the_peer(peer: &Peer, gw: &TestGateway) {
    let bearer = format!("Bearer {}", hs256_token(SECRET, &json!({})));

    // Allowed, with every header a client must not hand the upstream, in several spellings
    // (raw, so the case is the client's): the upstream gets the request with the gateway's
    // identity and what the peer and the gateway decided, and nothing else of those families.
    let r = raw(peer.addr, &attack("/api/orders?x=1", peer, Some(&bearer))).await;
    assert_eq!(r.status, 200, "{}: {}", peer.name, peer.failed(&r.head));
    let got = gw.echo.last().expect("the upstream got the request");
    assert_eq!(got.target, "/api/orders?x=1", "{}", peer.name);
    only_what_was_decided(peer, &got.headers, Some("alice"));
    // `users` strips the token it verified (the default).
    assert!(
        !got.headers.contains_key("authorization"),
        "{}: the verified credential reached the upstream: {:?}",
        peer.name,
        got.headers
    );

    // A client's `Connection` naming the identity headers: hop-by-hop to the peer, which
    // must not remove the door's values with them (Caddy's reverse_proxy removed them after
    // forward_auth copied them in).
    let r = raw(
        peer.addr,
        format!(
            "GET /api/orders HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close, X-User-Id, X-Real-Ip, X-Request-Id\r\nAuthorization: {bearer}\r\n\r\n",
            peer.addr.port()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}: {}", peer.name, peer.failed(&r.head));
    let got = gw.echo.last().expect("the upstream got the request");
    assert_eq!(
        got.headers.get("x-user-id").map(|v| v.as_bytes()),
        Some(&b"alice"[..]),
        "{}: {:?}",
        peer.name,
        got.headers
    );
    assert!(
        got.headers.contains_key("x-real-ip"),
        "{}: {:?}",
        peer.name,
        got.headers
    );

    // An authenticator that does not strip: the credential goes on.
    let (status, _, body) = peer
        .ask("/passthrough/x", &[("authorization", &bearer)])
        .await;
    assert_eq!(status, StatusCode::OK, "{}", peer.failed(&body));
    let got = gw.echo.last().unwrap();
    assert_eq!(got.target, "/passthrough/x");
    assert_eq!(
        got.headers["authorization"],
        bearer.as_str(),
        "{}",
        peer.name
    );

    // Anonymous: no identity, and a client's copy, in any spelling, never arrives.
    let r = raw(peer.addr, &attack("/open/x", peer, None)).await;
    assert_eq!(r.status, 200, "{}: {}", peer.name, peer.failed(&r.head));
    let got = gw.echo.last().unwrap();
    assert_eq!(got.target, "/open/x");
    only_what_was_decided(peer, &got.headers, None);

    // An absolute-form target naming another host than `Host`: the peer routes on the
    // target's (RFC 9112 §3.2.2), and the door must judge that host, as the proxy door does.
    // Regression: nginx described the `Host` header (`$http_host`) and a `hosts:` deny rule
    // was passed by.
    let r = raw(
        peer.addr,
        format!(
            "GET http://internal.example/open/x HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            peer.addr.port()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 403, "{}: {}", peer.name, peer.failed(&r.head));

    // 97 fields, within `server.max_headers` (100) as the proxy door counts them: the peer's
    // own describing headers come on top and are not the client's to pay for.
    // Regression: hyper counted them, the door answered a bare 431 and nginx turned it into
    // a 500.
    let mut many = format!(
        "GET /open/many HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n",
        peer.addr.port()
    );
    for i in 0..95 {
        many.push_str(&format!("X-Pad-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let r = raw(peer.addr, many.as_bytes()).await;
    assert_eq!(r.status, 200, "{}: {}", peer.name, peer.failed(&r.head));
    assert_eq!(gw.echo.last().unwrap().target, "/open/many");
    // Past it, the door's own 431 with its body, as the proxy door refuses it; also past the
    // peer's allowance (130, 300 fields). Regression: beyond 124 fields hyper answered a bare
    // 431, which nginx turned into a 500.
    for fields in [110, 130, 300] {
        let mut too_many = format!(
            "GET /open/many HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n",
            peer.addr.port()
        );
        for i in 0..fields {
            too_many.push_str(&format!("X-Pad-{i}: v\r\n"));
        }
        too_many.push_str("\r\n");
        let forwarded = gw.echo.records().len();
        let r = raw(peer.addr, too_many.as_bytes()).await;
        assert_eq!(
            r.status,
            431,
            "{} {fields}: {}",
            peer.name,
            peer.failed(&r.head)
        );
        assert!(
            r.body.contains("headers_too_many"),
            "{} {fields}: {}",
            peer.name,
            peer.failed(&r.head)
        );
        assert_eq!(gw.echo.records().len(), forwarded, "{}", peer.name);
    }

    let forwarded = gw.echo.records().len();

    // No token: 401 with the challenge and the JSON body naming the request id.
    let (status, h, body) = peer.ask("/api/orders", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", peer.failed(&body));
    let challenges: Vec<_> = h.get_all("www-authenticate").iter().collect();
    assert_eq!(challenges, ["Bearer realm=\"portcullis\""], "{}", peer.name);
    refusal_body(peer, &h, &body, "missing_credential");

    // A token that does not verify.
    let (status, h, body) = peer
        .ask("/api/orders", &[("authorization", "Bearer not.a.token")])
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", peer.failed(&body));
    assert!(
        h["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\""),
        "{}: {h:?}",
        peer.name
    );
    refusal_body(peer, &h, &body, "invalid_token");

    // A token without the scope the rule needs: 403 with RFC 6750's challenge naming it
    // (nginx copies WWW-Authenticate onto a 401 only: the example copies it onto a 403).
    let (status, h, body) = peer.ask("/scoped/x", &[("authorization", &bearer)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{}", peer.failed(&body));
    let challenge = h.get("www-authenticate").map(|v| v.to_str().unwrap());
    assert!(
        challenge
            .is_some_and(|c| c.contains("error=\"insufficient_scope\"")
                && c.contains("scope=\"orders:read\"")),
        "{}: {h:?}",
        peer.name
    );
    refusal_body(peer, &h, &body, "insufficient_scope");

    // Spoofed identity and overrides change no decision: no credential is 401, a denied
    // path 403, whatever the client claims to be.
    let r = raw(peer.addr, &attack("/api/orders", peer, None)).await;
    assert_eq!(r.status, 401, "{}: {}", peer.name, peer.failed(&r.body));
    let r = raw(peer.addr, &attack("/admin/users", peer, Some(&bearer))).await;
    assert_eq!(r.status, 403, "{}: {}", peer.name, peer.failed(&r.body));

    // A denied path, by any spelling; the peer's own description headers cannot be forged.
    for (target, headers) in [
        ("/admin/users", vec![]),
        ("/%61dmin/users", vec![]),
        (
            "/admin/users",
            vec![
                ("x-forwarded-uri", "/open/x"),
                ("x-original-uri", "/open/x"),
                ("x-forwarded-method", "GET"),
            ],
        ),
    ] {
        let (status, h, body) = peer.ask(target, &headers).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{target} {headers:?}: {}",
            peer.failed(&body)
        );
        if headers.is_empty() {
            refusal_body(peer, &h, &body, "forbidden");
        }
    }

    // An ambiguous path: 400, whatever the peer itself makes of it (an app that decodes
    // once more would serve `/admin/users`).
    for (target, error) in [
        ("/a%2Fb", Some("encoded_slash")),
        ("/open%2F..%2Fadmin/users", Some("encoded_slash")),
        ("/open/%2e%2e/admin/users", Some("encoded_dot_segment")),
        ("/open/%2E%2E/admin/users", Some("encoded_dot_segment")),
        // Above the root: nginx refuses it itself (HTML), before asking.
        ("/%2e%2e/admin/users", None),
    ] {
        let (status, h, body) = peer.ask(target, &[]).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{target}: {}",
            peer.failed(&body)
        );
        if let Some(error) = error {
            refusal_body(peer, &h, &body, error);
        }
    }
    // The peer forwards the path as sent: one the gateway would allow in another form is
    // refused, or the app would serve `/admin/../open/x` from its admin handler. One the
    // canonical path denies gets the proxy's answer.
    for target in ["//admin/users", "/open/../admin/users"] {
        let (status, h, body) = peer.ask(target, &[]).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{target}: {}",
            peer.failed(&body)
        );
        refusal_body(peer, &h, &body, "forbidden");
    }
    for target in ["/admin/../open/x", "//open/x", "/open/./x"] {
        let (status, h, body) = peer.ask(target, &[]).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{target}: {}",
            peer.failed(&body)
        );
        refusal_body(peer, &h, &body, "non_canonical_path");
    }

    // A browser without a token on a rule with a login page: 302 there, with its way back.
    let (status, h, body) = peer
        .ask("/app/home?tab=2", &[("accept", "text/html,*/*;q=0.8")])
        .await;
    assert_eq!(status, StatusCode::FOUND, "{}", peer.failed(&body));
    let back = format!(
        "https://login.example/start?rd=http%3A%2F%2F127.0.0.1%3A{}%2Fapp%2Fhome%3Ftab%3D2",
        peer.addr.port()
    );
    assert_eq!(h["location"], back.as_str(), "{}", peer.name);
    // The same request from an API client: 401.
    assert_eq!(
        peer.ask("/app/home", &[]).await.0,
        StatusCode::UNAUTHORIZED,
        "{}",
        peer.name
    );

    assert_eq!(
        gw.echo.records().len(),
        forwarded,
        "{}: a refused request reached the upstream",
        peer.name
    );

    // One request a minute: the second gets 429 with Retry-After and RateLimit-*.
    let (status, h, body) = peer.ask("/limited/a", &[]).await;
    assert_eq!(status, StatusCode::OK, "{}", peer.failed(&body));
    // nginx hands the client what is left (Caddy's forward_auth copies the door's headers
    // onto the request to the app only).
    if peer.name == "nginx" {
        assert_eq!(h["ratelimit-limit"], "1", "{}: {h:?}", peer.name);
        assert_eq!(h["ratelimit-remaining"], "0", "{}: {h:?}", peer.name);
        let reset: u64 = h["ratelimit-reset"].to_str().unwrap().parse().unwrap();
        assert!(
            (1..=60).contains(&reset),
            "{}: RateLimit-Reset {reset}",
            peer.name
        );
    }
    let (status, h, body) = peer.ask("/limited/b", &[]).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        peer.failed(&body)
    );
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (1..=60).contains(&retry),
        "{}: Retry-After {retry}",
        peer.name
    );
    assert_eq!(h["ratelimit-limit"], "1", "{}: {h:?}", peer.name);
    assert_eq!(h["ratelimit-remaining"], "0", "{}: {h:?}", peer.name);
    refusal_body(peer, &h, &body, "rate_limited");
    assert_eq!(gw.echo.records().len(), forwarded + 1, "{}", peer.name);
}

/// A raw `GET target` through the peer carrying every header a client must not hand the
/// upstream, in several spellings and cases: identity headers (`X-User-Id: admin`), forwarding
/// (`X-Forwarded-For`, `X-Real-IP`, `Forwarded`), path and method overrides (`X-Original-URL`,
/// `X-Forwarded-Uri`), address claims, infrastructure and the gateway's own namespace.
fn attack(target: &str, peer: &Peer, bearer: Option<&str>) -> Vec<u8> {
    let mut req = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n",
        peer.addr.port()
    );
    if let Some(b) = bearer {
        req.push_str(&format!("Authorization: {b}\r\n"));
    }
    for (name, value) in SPOOFED {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// What a client sends to be someone else, somewhere else, or to be believed as infrastructure.
const SPOOFED: &[(&str, &str)] = &[
    // httpoxy (`HTTP_PROXY` to a CGI, PHP or Go net/http/cgi app), and hop-by-hop headers
    // nginx passes on.
    ("Proxy", "http://127.0.0.1:9/"),
    ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
    ("Proxy-Connection", "keep-alive"),
    ("Trailer", "X-User-Id"),
    // Identity, in every case and `_`/`-` spelling frameworks fold together.
    ("X-User-Id", "admin"),
    ("X-USER-ID", "admin"),
    ("x-user-id", "root"),
    ("X-User_Id", "admin"),
    ("X_User-Id", "admin"),
    ("X_USER_ID", "admin"),
    // PHP reads a `.` in a name as `_`: `HTTP_X_USER_ID`.
    ("X-User.Id", "admin"),
    ("X-User-Roles", "admin"),
    ("X_User_Roles", "admin"),
    ("X-Tenant-Id", "other"),
    ("X-Api-Key-Id", "k1"),
    // Forwarding: who the client is, where it came to.
    ("X-Forwarded-For", "10.9.9.9"),
    ("X_Forwarded_For", "10.9.9.9"),
    ("X-Real-IP", "10.0.0.1"),
    ("X_Real_IP", "10.0.0.1"),
    ("X-Real.IP", "10.0.0.1"),
    ("X-Forwarded-Host", "evil.example"),
    ("X-Forwarded-Proto", "https"),
    ("Forwarded", "for=10.0.0.1;host=evil.example;proto=https"),
    // Path and method overrides: the decision is on the request line, never on these.
    ("X-Original-URL", "/admin/users"),
    ("X_Original_URL", "/admin/users"),
    ("X-Original.URL", "/admin/users"),
    ("X-Original-URI", "/admin/users"),
    ("X-Forwarded-Uri", "/admin/users"),
    ("X-Forwarded-Path", "/admin/users"),
    ("X-Forwarded-Prefix", "/admin"),
    ("X-Rewrite-URL", "/admin/users"),
    ("X-Original-Method", "DELETE"),
    ("X-Forwarded-Method", "DELETE"),
    ("X-HTTP-Method-Override", "DELETE"),
    // Address and scheme claims.
    ("X-Forwarded-Port", "443"),
    ("X-Forwarded-Ssl", "on"),
    ("True-Client-IP", "10.0.0.2"),
    ("X-Client-IP", "10.0.0.2"),
    ("CF-Connecting-IP", "10.0.0.2"),
    ("Client-IP", "10.0.0.2"),
    ("X-Original-Host", "admin.internal"),
    ("X-Forwarded-Protocol", "https"),
    // Other auth proxies' identity headers, which an app moved from behind one may believe.
    ("X-Forwarded-User", "admin"),
    ("Remote-User", "admin"),
    ("X-Auth-Request-Email", "admin@example.com"),
    ("X-Amzn-Oidc-Identity", "admin"),
    ("X-MS-CLIENT-PRINCIPAL-NAME", "admin"),
    ("Remote-Groups", "admins"),
    ("X-Auth-Roles", "admin"),
    ("Cf-Access-Authenticated-User-Email", "admin@example.com"),
    // Infrastructure: client certificates, Envoy, the gateway's own namespace.
    ("X-Forwarded-Client-Cert", "Hash=0;Subject=\"CN=admin\""),
    ("X-Client-Cert", "x"),
    ("X-Client-Cert-Chain", "x"),
    ("X-SSL-Client-Verify", "SUCCESS"),
    ("X-SSL-Client-S-DN", "CN=admin"),
    ("SSL-Client-Verify", "SUCCESS"),
    ("SSL-Client-S-DN", "CN=admin"),
    ("Client-Cert", ":MIIB:"),
    ("X-Ssl-Subject", "CN=admin"),
    ("X-Forwarded-Tls-Client-Cert", "x"),
    ("X-Forwarded-Tls-Client-Cert-Info", "Subject=\"CN=admin\""),
    ("X-Amzn-Mtls-Clientcert", "x"),
    ("CloudFront-Viewer-Cert-Subject", "CN=admin"),
    ("Cf-Client-Cert-Sha256", "x"),
    ("Cf-Cert-Verified", "true"),
    ("X-Envoy-Original-Path", "/admin/users"),
    ("X-Envoy-Internal", "true"),
    ("X-Portcullis-User", "admin"),
    ("X-PORTCULLIS-REMOVE", "x-user-id"),
    ("X-Portcullis-Status", "200"),
    ("X_Portcullis_Assertion", "x"),
];

/// Of the headers a client must not hand the upstream (the families of `authz::spoofable`,
/// the example config's identity headers, any name with `_` or `.`), the upstream got only what the
/// peer and the gateway set: the gateway's `x-user-id` (`user`), the client address and host
/// the peer saw, its scheme.
fn only_what_was_decided(peer: &Peer, h: &HeaderMap, user: Option<&str>) {
    let identity = crate::examples::identity_headers("examples/portcullis/portcullis.yaml");
    let host = format!("127.0.0.1:{}", peer.addr.port());
    for name in h.keys() {
        let name = name.as_str();
        assert!(
            !name.contains(['_', '.']),
            "{}: the upstream got the client's {name}: {h:?}",
            peer.name
        );
        assert!(
            !matches!(name, "proxy-authorization" | "proxy-connection" | "trailer"),
            "{}: the upstream got the client's hop-by-hop {name}: {h:?}",
            peer.name
        );
        // (The framing family's dashed names are the HTTP stack's: `host`, `content-length`.)
        if family(name).is_none_or(|f| f == Family::Framing) && !identity.contains(name) {
            continue;
        }
        let values: Vec<&str> = h
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        let decided: Vec<&str> = match name {
            "x-forwarded-for" | "x-real-ip" => vec!["127.0.0.1"],
            "x-forwarded-host" => vec![host.as_str()],
            "x-forwarded-proto" => vec!["http"],
            "x-user-id" if user.is_some() => user.into_iter().collect(),
            _ => panic!(
                "{}: the upstream got the client's {name}: {values:?}",
                peer.name
            ),
        };
        assert_eq!(values, decided, "{}: {name}", peer.name);
    }
    // What the gateway set arrives.
    assert_eq!(
        h.get("x-user-id").map(|v| v.to_str().unwrap()),
        user,
        "{}: {h:?}",
        peer.name
    );
    let real: Vec<_> = h.get_all("x-real-ip").iter().collect();
    assert_eq!(real, ["127.0.0.1"], "{}: {h:?}", peer.name);
    let hosts: Vec<_> = h.get_all("x-forwarded-host").iter().collect();
    assert_eq!(hosts, [host.as_str()], "{}: {h:?}", peer.name);
}

/// A refusal's body: JSON naming the reason and the request id the answer carries.
fn refusal_body(peer: &Peer, h: &HeaderMap, body: &str, error: &str) {
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{}: {h:?}",
        peer.name
    );
    let v: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {body}", peer.name));
    assert_eq!(v["error"], error, "{}: {body}", peer.name);
    let id = h["x-request-id"].to_str().unwrap();
    assert!(!id.is_empty(), "{}", peer.name);
    assert_eq!(v["request_id"], id, "{}: {body}", peer.name);
}

// === harness ===

/// The gateway: one forward-auth door listener, `door`, with the settings of the example
/// listener `example_listener` in examples/portcullis/portcullis.yaml.
async fn gateway(example_listener: &str) -> TestGateway {
    Setup {
        listeners: format!(
            "  - name: door\n    address: 127.0.0.1:0\n    door:\n{}",
            indent(&example_door(example_listener), 6)
        ),
        policies: vec![("10-p.yaml".into(), POLICY.into())],
        files: vec![("hs.secret".into(), SECRET.to_vec())],
        extra: format!(
            "{}{FORWARDING}{SESSION}{LIMITS}",
            crate::support::hs256_users("{}")
        ),
        ..Setup::default()
    }
    .start()
    .await
}

/// The `door:` of the listener `name` in examples/portcullis/portcullis.yaml, as YAML.
pub fn example_door(name: &str) -> String {
    let config: serde_yaml::Value =
        serde_yaml::from_str(&example("examples/portcullis/portcullis.yaml")).unwrap();
    let listener = config["listeners"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|l| l["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no listener {name} in examples/portcullis/portcullis.yaml"));
    serde_yaml::to_string(&listener["door"]).unwrap()
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// A file of the repository.
pub fn example(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `text` with each `from` replaced by its `to`; each `from` must occur exactly once, so a
/// shipped config that drifts from what the test expects fails here, not silently.
pub fn substitute(text: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = text.to_owned();
    for (from, to) in pairs {
        assert_eq!(
            out.matches(from).count(),
            1,
            "`{from}` should occur exactly once in the shipped config"
        );
        out = out.replacen(from, to, 1);
    }
    out
}

/// nginx's temp and log paths in `dir`.
fn nginx_paths(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "    client_body_temp_path {d}/client_body;\n    proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n    access_log {d}/access.log;\n"
    )
}

fn is_root(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(dir)
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A free port on 127.0.0.1 (bound, read, released: the peer binds it next), drawn at
/// random from 10000-29999, below the kernel's ephemeral range.
///
/// Why: a port the kernel handed out for port 0 and took back was handed out again, to
/// another test process binding port 0 (or to the other peer's `free_port`) before the peer
/// bound it; the peer then failed to bind while the wait for it connected to the other
/// listener, and nginx's requests went to another test's gateway (CI, a fresh machine).
fn free_port() -> SocketAddr {
    use std::hash::{BuildHasher as _, Hasher as _};
    loop {
        let draw = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let port = 10_000 + u16::try_from(draw % 20_000).unwrap();
        if let Ok(addr) = TcpListener::bind(("127.0.0.1", port)).and_then(|l| l.local_addr()) {
            return addr;
        }
    }
}

/// Where examples/nginx/nginx.conf loads the headers-more module from (Debian's path).
const HEADERS_MORE: &str = "/usr/lib/nginx/modules/ngx_http_headers_more_filter_module.so";

/// Whether `path` (from `package`) is there; when it is not, as [`tool`]: skip after saying
/// why, or fail when `PORTCULLIS_REQUIRE_PEERS` is set.
fn installed(path: &Path, package: &str) -> bool {
    let found = path.is_file();
    if !found {
        missing(&format!("{}", path.display()), package);
    }
    found
}

/// Says why a test that needs `what` skips, or fails when peers are required.
fn missing(what: &str, package: &str) {
    assert!(
        std::env::var_os("PORTCULLIS_REQUIRE_PEERS").is_none(),
        "{what} is not installed and PORTCULLIS_REQUIRE_PEERS is set (apt-get install {package})"
    );
    eprintln!(
        "skipped: {what} is not installed (apt-get install {package}; PORTCULLIS_REQUIRE_PEERS=1 makes this a failure)"
    );
}

/// The first of `names` found in PATH or the sbin directories (nginx lives in /usr/sbin);
/// `None`, after saying why, when none is and `PORTCULLIS_REQUIRE_PEERS` is unset (then the
/// caller skips its test); a failure when it is set.
pub fn tool(names: &[&str], package: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from))
        .collect();
    let found = names
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| p.is_file());
    if found.is_none() {
        missing(&format!("none of {names:?}"), package);
    }
    found
}

/// A peer process in its own process group, stopped (with its workers) when dropped; its
/// output goes to files in its temp dir, shown when a test fails.
pub struct Peer {
    pub name: &'static str,
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Peer {
    /// Starts `cmd` and waits (at most 10 s) until it accepts connections on `addr`.
    pub async fn start(
        name: &'static str,
        cmd: &mut Command,
        dir: tempfile::TempDir,
        addr: SocketAddr,
    ) -> Self {
        use std::os::unix::process::CommandExt as _;
        let out = std::fs::File::create(dir.path().join("stdout.log")).unwrap();
        let err = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let mut peer = Self {
            name,
            addr,
            child,
            dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return peer;
            }
            if let Ok(Some(status)) = peer.child.try_wait() {
                panic!(
                    "{name} exited ({status}) before listening:\n{}",
                    peer.logs()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} not listening on {addr} within 10 s:\n{}",
                peer.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `GET target` through the peer with these headers: status, headers, body text.
    pub async fn ask(
        &self,
        target: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        let mut req = Request::get(target);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (status, h, body) = send(self.addr, req.body(Full::default()).unwrap()).await;
        (status, h, String::from_utf8_lossy(&body).into_owned())
    }

    /// The peer's output so far.
    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            read("stdout.log"),
            self.name,
            read("stderr.log")
        )
    }

    /// A failure message: the body, then the peer's logs.
    pub fn failed(&self, body: &str) -> String {
        format!("{}: body {body}\n{}", self.name, self.logs())
    }

    fn signal_group(&self, signal: &str) {
        // Why the shell: std sends only SIGKILL, and only to the child; nginx's master must
        // get SIGTERM to stop its workers, which are in the same group.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{signal} -{}", self.child.id()))
            .status();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        self.signal_group("TERM");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                // The group's other members (nginx workers) got the TERM too.
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal_group("KILL");
        let _ = self.child.wait();
    }
}
