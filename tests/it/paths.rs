//! Canonical paths: what was decided on is exactly what the upstream receives, and ambiguous
//! spellings never reach it.

use crate::support::{ALLOW_ALL_BUT_ADMIN, Setup, raw, raw_get};

#[tokio::test]
async fn canonical_path_is_what_the_upstream_receives() {
    let gw = Setup::default().start().await;
    let cases = [
        ("//a", "/a"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/%61", "/a"),
        ("/a///b/", "/a/b/"),
        ("/a/b?x=%2F&y=1", "/a/b?x=%2F&y=1"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a%20b", "/a%20b"),
    ];
    for (sent, want) in cases {
        let r = raw_get(gw.addr(), sent).await;
        assert_eq!(r.status, 200, "{sent}: {}", r.head);
        let got = gw.echo.last().expect("upstream saw the request").target;
        assert_eq!(got, want, "sent {sent}");
    }
}

#[tokio::test]
async fn ambiguous_paths_rejected_before_the_upstream() {
    let gw = Setup::default().start().await;
    let cases = [
        ("/a%2Fb", "encoded_slash"),
        ("/a%2fb", "encoded_slash"),
        ("/..", "dot_segment_underflow"),
        ("/a/../..", "dot_segment_underflow"),
        ("/a%5Cb", "encoded_backslash"),
        ("/a%00", "control_character"),
        ("/public/%2e%2e/admin", "encoded_dot_segment"),
        ("/admin;x", "semicolon"),
        ("/a%zz", "invalid_percent_encoding"),
        ("/%C3", "invalid_utf8"),
        ("/admin%3Bx", "encoded_delimiter"),
        ("/admin%3fx", "encoded_delimiter"),
        ("/admin%23x", "encoded_delimiter"),
        ("/x/%252e%252e/admin", "double_encoding"),
        ("/x/%25%32%65%25%32%65/admin", "double_encoding"),
        ("/a%2520", "double_encoding"),
    ];
    for (sent, reason) in cases {
        let r = raw_get(gw.addr(), sent).await;
        assert_eq!(r.status, 400, "{sent}: {}", r.head);
        assert!(r.body.contains(reason), "{sent}: body {}", r.body);
        assert!(!r.body.contains(sent), "the body must not echo the input");
    }
    assert_eq!(gw.echo.count(), 0, "nothing ambiguous reached the upstream");
}

#[tokio::test]
async fn admin_path_tricks_denied() {
    let gw = Setup::with_policy(ALLOW_ALL_BUT_ADMIN).start().await;
    for sent in [
        "/admin",
        "/admin/",
        "//admin",
        "/%61dmin",
        "/./admin",
        "/public/../admin",
        "/public/..//admin/users",
        "/x/../admin/users",
        // Windows and IIS drop trailing dots and spaces from a name.
        "/admin./users",
        "/admin%20/users",
        "/ADMIN.%20",
        // Java's equalsIgnoreCase reads `ı` (U+0131) and `İ` (U+0130) as `i`.
        "/adm%C4%B1n/users",
        "/ADM%C4%B0N",
        // IIS serves an NTFS stream of a directory as the directory.
        "/admin::$INDEX_ALLOCATION/users",
        "/admin%3A%3A%24INDEX_ALLOCATION/users",
    ] {
        let r = raw_get(gw.addr(), sent).await;
        assert_eq!(r.status, 403, "{sent}: {}", r.head);
    }
    for sent in [
        "/public/%2e%2e/admin",
        "/admin;x",
        "/admin%2f",
        "/%2e/admin",
        "/admin%3Bx",
        "/admin%3b.json",
        "/admin%3Fx",
        "/admin%23",
        "/public/%252e%252e/admin",
        "/public/%25%32%65%25%32%65/admin",
        "/public/%25%32e%25%32e/admin",
    ] {
        let r = raw_get(gw.addr(), sent).await;
        assert_eq!(r.status, 400, "{sent}: {}", r.head);
    }
    // Absolute-form target naming /admin.
    let r = raw(
        gw.addr(),
        b"GET http://app.test/%61dmin HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.head);
    assert_eq!(gw.echo.count(), 0);
}

/// A sub-delimiter, `:` or `@` sent escaped meets the rules written for it raw, as nginx,
/// Caddy and Go decode it before they route: `/v1/users%3Adelete` was allowed by a catch-all
/// while the upstream served the denied `/v1/users:delete`. An allowed one is forwarded as the
/// client wrote it (a signature over it holds, `%2B` stays a plus), so it must be allowed by
/// the same rule read that way too, as an upstream routing on the raw path reads it; if not,
/// 400 `non_canonical_path`.
#[tokio::test]
async fn an_escaped_delimiter_is_decided_as_the_upstream_routes_it() {
    let policy = "\
rules:
  - name: verbs
    match:
      paths: [\"/v1/users:delete\", \"/@admin/**\", \"/a+b/**\", \"/x=y/**\", \"/it's/**\", \"/run!/**\"]
    effect: deny
  - name: public-profiles
    match:
      paths: [\"/@public/**\"]
    effect: allow
    anonymous: true
    upstream: echo
  - name: profiles
    match:
      paths: [\"/{user}/profile/**\"]
    effect: deny
  - name: team-docs
    match:
      paths: [\"/{space}/docs/**\"]
    effect: allow
    anonymous: true
    when: request.path.startsWith('/@team/')
    upstream: echo
  - name: mail
    match:
      paths: [\"/mail/{email}/**\"]
    effect: allow
    anonymous: true
    when: params.email.endsWith('@example.com')
    upstream: echo
  - name: all
    match:
      paths: [\"/**\"]
    effect: allow
    anonymous: true
    upstream: echo
";
    let gw = Setup::with_policy(policy).start().await;
    for sent in [
        "/v1/users:delete",
        "/v1/users%3Adelete",
        "/v1/users%3adelete",
        "/%40admin/x",
        "/a%2Bb/x",
        "/x%3Dy/z",
        "/it%27s/x",
        "/run%21/x",
    ] {
        let r = raw_get(gw.addr(), sent).await;
        assert_eq!(r.status, 403, "{sent}: {}", r.head);
    }
    assert_eq!(gw.echo.count(), 0, "nothing denied reached the upstream");
    for (sent, want) in [
        ("/users/a%40b.example", "/users/a%40b.example"),
        ("/v1/users%3aundelete", "/v1/users%3Aundelete"),
        ("/tags/a%2Cb%2A/./x", "/tags/a%2Cb%2A/x"),
        ("/files/a%2Bb", "/files/a%2Bb"),
        ("/a%5Bb%5D", "/a%5Bb%5D"),
        ("/@public/profile/x", "/@public/profile/x"),
    ] {
        let r = raw_get(gw.addr(), sent).await;
        assert_eq!(r.status, 200, "{sent}: {}", r.head);
        assert_eq!(gw.echo.last().unwrap().target, want, "sent {sent}");
    }
    // Decoded, `public-profiles` allows it; as sent (Express: `/:user/profile/x` with the user
    // `@public`) the deny rule `profiles` meets it, or another rule than the one that allowed.
    let before = gw.echo.count();
    for sent in ["/%40public/profile/x", "/%40public/x"] {
        let r = raw_get(gw.addr(), sent).await;
        assert_eq!(r.status, 400, "{sent}: {}", r.head);
        assert!(r.body.contains("non_canonical_path"), "{sent}: {}", r.body);
    }
    assert_eq!(
        gw.echo.count(),
        before,
        "nothing read two ways reached the upstream"
    );
    // One rule both ways, but its condition on the path holds only decoded: as sent (Express
    // routing `/%40team/docs/x` to `/:space/docs`, not to `/@team/docs`) it does not.
    let r = raw_get(gw.addr(), "/%40team/docs/x").await;
    assert_eq!(r.status, 400, "{}", r.head);
    assert!(r.body.contains("non_canonical_path"), "{}", r.body);
    assert_eq!(gw.echo.count(), before, "the escaped space stayed here");
    let r = raw_get(gw.addr(), "/@team/docs/x").await;
    assert_eq!(r.status, 200, "{}", r.head);
    let r = raw_get(gw.addr(), "/other/docs/x").await;
    assert_eq!(r.status, 403, "{}", r.head);
    assert!(r.body.contains("condition_failed"), "{}", r.body);
    // A parameter is read decoded both ways, as the upstream's handler reads it: an address
    // escaped as `encodeURIComponent` writes it passes a condition on its domain.
    let r = raw_get(gw.addr(), "/mail/alice%40example.com/x").await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(
        gw.echo.last().unwrap().target,
        "/mail/alice%40example.com/x"
    );
    let r = raw_get(gw.addr(), "/mail/alice%40evil.test/x").await;
    assert_eq!(r.status, 403, "{}", r.head);
}

#[tokio::test]
async fn connect_and_asterisk_targets_rejected() {
    let gw = Setup::default().start().await;
    let r = raw(
        gw.addr(),
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 405, "{}", r.head);
    assert!(r.body.contains("method_not_allowed"), "{}", r.body);
    let r = raw(
        gw.addr(),
        b"OPTIONS * HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.head);
    assert_eq!(gw.echo.count(), 0);
}

#[tokio::test]
async fn admin_case_variants_denied() {
    let gw = Setup::with_policy(ALLOW_ALL_BUT_ADMIN).start().await;
    for sent in ["/ADMIN", "/Admin/users", "/%41dmin/users", "/aDmIn/"] {
        let r = raw_get(gw.addr(), sent).await;
        assert_eq!(r.status, 403, "{sent}: {}", r.head);
    }
    assert_eq!(gw.echo.count(), 0);
}

#[tokio::test]
async fn ambiguous_host_rejected() {
    let gw = Setup::default().start().await;
    for host in ["admin.example.com:1:443", "a..b", "a]b", "app.test:+80"] {
        let r = raw(
            gw.addr(),
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(r.status, 400, "{host}: {}", r.head);
    }
    assert_eq!(gw.echo.count(), 0);
}

/// A host-specific deny under a policy that allows everything else: the admin host's name in
/// another case, with a trailing dot, with a port, or in an absolute-form target whose
/// authority disagrees with `Host`, is still the admin host.
#[tokio::test]
async fn admin_host_spellings_denied() {
    let policy = "rules:
  - name: admin-host
    match: {hosts: [admin.example.com]}
    effect: deny
  - name: all
    match: {paths: [\"/**\"]}
    effect: allow
    anonymous: true
    upstream: echo
";
    let gw = Setup::with_policy(policy).start().await;
    let send = |head: String| {
        let addr = gw.addr();
        async move { raw(addr, head.as_bytes()).await }
    };
    for host in [
        "admin.example.com",
        "ADMIN.Example.COM",
        "admin.example.com.",
        "admin.example.com:8080",
        "Admin.Example.Com.:443",
    ] {
        let r = send(format!(
            "GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        ))
        .await;
        assert_eq!(r.status, 403, "Host: {host}: {}", r.head);
    }
    // The absolute-form authority is what is decided on (RFC 9112 §3.2.2), not `Host`.
    let r = send(
        "GET http://ADMIN.example.com./x HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n"
            .to_owned(),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.head);
    // Another scheme is no HTTP request for that host (hyper takes any).
    let r = send(
        "GET ftp://www.example.com/x HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n"
            .to_owned(),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.head);
    assert!(r.body.contains("unsupported_target"), "{}", r.body);
    assert_eq!(gw.echo.count(), 0, "nothing reached the upstream");
    // An empty absolute-form path asks for `/`.
    let r = send(
        "GET http://www.example.com?x=1 HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n"
            .to_owned(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(gw.echo.last().expect("upstream saw it").target, "/?x=1");
    // Another host passes: the rule is not simply denying everything.
    let r =
        send("GET /x HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n".to_owned())
            .await;
    assert_eq!(r.status, 200, "{}", r.head);
}

/// TRACE and TRACK echo the request (cookies and credentials included); CONNECT opens a tunnel.
/// A rule allowing any method allows none of them: 405, and the upstream sees nothing. Only a
/// rule naming the method matches it.
#[tokio::test]
async fn trace_track_and_connect_refused_even_when_any_method_is_allowed() {
    let gw = Setup::default().start().await;
    for method in ["TRACE", "TRACK"] {
        let r = raw(
            gw.addr(),
            format!(
                "{method} /x HTTP/1.1\r\nHost: app.test\r\nCookie: s=1\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(r.status, 405, "{method}: {}", r.head);
        assert!(r.body.contains("method_not_allowed"), "{}", r.body);
    }
    let r = raw(
        gw.addr(),
        b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 405, "{}", r.head);
    assert_eq!(gw.echo.count(), 0);

    // A rule that names TRACE lets it through; TRACK stays refused.
    let gw = Setup::with_policy(
        "rules:\n  - name: trace\n    match: {paths: [\"/**\"], methods: [TRACE]}\n    effect: allow\n    anonymous: true\n    upstream: echo\n",
    )
    .start()
    .await;
    assert_eq!(
        raw(
            gw.addr(),
            b"TRACE /x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
        )
        .await
        .status,
        200
    );
    assert_eq!(
        raw(
            gw.addr(),
            b"TRACK /x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
        )
        .await
        .status,
        405
    );
}

/// An upstream that serves `/ADMIN` as `/admin`: with `case_insensitive_paths` (in the policy
/// file, or on the upstream) `/ADMIN/x` meets the admin rule's requirement (401 without a
/// credential) instead of slipping past it to the catch-all rule.
#[tokio::test]
async fn case_insensitive_paths_keep_requirements_on_case_variants() {
    let rules = "rules:
  - name: admin
    match: {paths: [\"/admin/**\"]}
    effect: allow
    authenticators: [users]
    upstream: echo
  - name: all
    match: {paths: [\"/**\"]}
    effect: allow
    anonymous: true
    upstream: echo
";
    let start = |policy: String, upstreams: &str| {
        let upstreams = upstreams.to_owned();
        async move {
            Setup {
                policies: vec![("10-p.yaml".into(), policy)],
                files: vec![("hs.secret".into(), vec![b'k'; 32])],
                extra: crate::support::hs256_users("{}"),
                upstreams,
                ..Setup::default()
            }
            .start()
            .await
        }
    };
    let variants = ["/ADMIN/x", "/Admin/users", "/aDmIn/"];

    // By default the allow rule is exact: the case variants reach the catch-all rule.
    let gw = start(rules.into(), "").await;
    for p in variants {
        assert_eq!(raw_get(gw.addr(), p).await.status, 200, "{p}");
    }

    // The policy file says the paths are case-insensitive.
    let gw = start(format!("case_insensitive_paths: true\n{rules}"), "").await;
    for p in variants.iter().chain(&["/admin/x"]) {
        let r = raw_get(gw.addr(), p).await;
        assert_eq!(r.status, 401, "{p}: {}", r.head);
    }
    assert_eq!(gw.echo.count(), 0);
    assert_eq!(raw_get(gw.addr(), "/admins").await.status, 200);
    // Java's equalsIgnoreCase reads `admın` as `admin`, an ASCII-only upstream as another
    // name: neither the admin rule's grant nor the catch-all's, refused.
    let reached = gw.echo.count();
    for p in ["/adm%C4%B1n/x", "/ADM%C4%B0N/users"] {
        let r = raw_get(gw.addr(), p).await;
        assert_eq!(r.status, 403, "{p}: {}", r.head);
    }
    assert_eq!(gw.echo.count(), reached);

    // The upstream says so: every allow rule forwarding to it folds case.
    let gw = start(
        rules.replace("upstream: echo", "upstream: iis"),
        "  iis:\n    url: http://{echo}\n    case_insensitive_paths: true\n",
    )
    .await;
    for p in variants {
        assert_eq!(raw_get(gw.addr(), p).await.status, 401, "{p}");
    }
}

/// A condition on `request.path` compares the path as sent, while a case-folding rule's
/// upstream serves `/Secret/x` as `/secret/x`: `check` warns about such a condition.
#[test]
fn a_path_condition_on_a_case_folding_rule_warns() {
    let rule = |when: &str| {
        format!(
            "case_insensitive_paths: true\nrules:\n  - name: all\n    match: {{paths: [\"/**\"]}}\n    effect: allow\n    anonymous: true\n    upstream: echo\n    when: \"{when}\"\n"
        )
    };
    for (when, warned) in [
        ("!request.path.startsWith('/secret')", true),
        ("request['path'] != '/x'", true),
        ("size(request) > 0", true),
        ("request.method == 'GET'", false),
    ] {
        let cfg = crate::support::ConfigDir::new("");
        cfg.write("policies/p.yaml", rule(when));
        let (code, text) = cfg.run("check", &[]);
        assert_eq!(code, Some(0), "{when}: a warning at most: {text}");
        assert_eq!(
            text.contains("reads `request.path`, which keeps the case the client sent"),
            warned,
            "{when}: {text}"
        );
    }
}

/// A method that looks like a typo of a common one gets a warning from `check` (a deny rule
/// naming `DELET` denies nothing); extension methods such as `TRACK` do not.
#[test]
fn a_misspelled_method_is_warned_about() {
    for (methods, warned) in [("[DELET]", true), ("[TRACE, TRACK]", false)] {
        let cfg = crate::support::ConfigDir::new("");
        cfg.write(
            "policies/p.yaml",
            format!(
                "rules:\n  - name: no\n    match: {{paths: [\"/**\"], methods: {methods}}}\n    effect: deny\n  - name: all\n    match: {{paths: [\"/**\"]}}\n    effect: allow\n    anonymous: true\n    upstream: echo\n"
            ),
        );
        let (code, text) = cfg.run("check", &[]);
        assert_eq!(code, Some(0), "{methods}: a warning at most: {text}");
        assert_eq!(
            text.contains(
                "rules[0].match.methods[0]: `DELET` is no registered method: did you mean `DELETE`?"
            ),
            warned,
            "{methods}: {text}"
        );
    }
}

/// Methods are case-sensitive: a deny rule on `DELETE` does not match `delete`, which an
/// upstream reading methods without regard to case would act on as DELETE. Refused.
#[tokio::test]
async fn lowercase_methods_refused() {
    let gw = Setup::with_policy(
        "rules:\n  - name: no-delete\n    match: {paths: [\"/**\"], methods: [DELETE]}\n    effect: deny\n  - name: all\n    match: {paths: [\"/**\"]}\n    effect: allow\n    anonymous: true\n    upstream: echo\n",
    )
    .start()
    .await;
    for method in ["delete", "Delete", "get"] {
        let r = raw(
            gw.addr(),
            format!("{method} /x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(r.status, 400, "{method}: {}", r.head);
        assert!(r.body.contains("invalid_method"), "{method}: {}", r.body);
    }
    assert_eq!(gw.echo.count(), 0, "nothing reached the upstream");
    let r = raw(
        gw.addr(),
        b"GET /x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
}

/// Property: through the real gateway, the path an allowed request is decided on is the path
/// the upstream receives (its escaped sub-delimiters, `:` and `@` as sent), plus the query as
/// sent. Random raw targets (dot segments, repeated
/// slashes, escapes of every kind, refused characters) are sent byte for byte; a target
/// `canonicalize` accepts reaches the upstream as its canonical form, one it refuses gets 400
/// and reaches nothing.
#[test]
fn decided_path_is_forwarded_path() {
    use portcullis::request::path::canonicalize_as_sent;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    const ACCEPTED: &[&str] = &[
        "/",
        "/",
        "/",
        "a",
        "Z",
        "0",
        ".",
        "..",
        "-",
        "~",
        "_",
        "!",
        "$",
        "'",
        "(",
        ")",
        "*",
        "+",
        ",",
        "=",
        ":",
        "@",
        "&",
        "%2e",
        "%2E",
        "%61",
        "%7E",
        "%20",
        "%2b",
        "%3a",
        "%25",
        "%25z",
        "%C3%A9",
        "%c3%a9",
        "%E2%82%AC",
    ];
    const REFUSED: &[&str] = &[
        ";", "%252e", "%2F", "%5C", "%3B", "%3F", "%23", "%00", "%zz", "%C3", "\\", "\"", "{",
    ];
    let piece = prop_oneof![
        16 => prop::sample::select(ACCEPTED),
        1 => prop::sample::select(REFUSED),
    ];
    let target = (
        prop::collection::vec(piece, 0..16),
        prop::option::of("[a-zA-Z0-9=&%._~/?-]{0,12}"),
    )
        .prop_map(|(pieces, query)| {
            let mut path = String::from("/");
            path.extend(pieces);
            (path, query)
        });

    // A runtime of its own: each case blocks on one exchange while the gateway's tasks run
    // on the workers.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let gw = rt.block_on(Setup::default().start());
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&target, |(path, query)| {
        let sent = match &query {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        let before = gw.echo.count();
        let r = rt.block_on(raw_get(gw.addr(), &sent));
        match canonicalize_as_sent(&path) {
            Ok(canonical) => {
                prop_assert_eq!(r.status, 200, "sent {}: {}", sent, r.head);
                let want = match &query {
                    Some(q) => format!("{canonical}?{q}"),
                    None => canonical.into_owned(),
                };
                let records = gw.echo.records();
                prop_assert_eq!(records.len(), before + 1, "sent {}", sent);
                prop_assert_eq!(&records[before].target, &want, "sent {}", sent);
            }
            Err(e) => {
                prop_assert_eq!(r.status, 400, "sent {} ({}): {}", sent, e.as_str(), r.head);
                prop_assert_eq!(gw.echo.count(), before, "sent {}", sent);
            }
        }
        Ok(())
    });
    rt.block_on(async move { drop(gw) });
    if let Err(e) = result {
        panic!("{e}");
    }
}
