//! `when` expressions: variables, actions, comprehensions and their budget.

use std::sync::Arc;

use http::Request;
use serde_json::json;

use super::*;
use crate::request::facts::ConnInfo;
use cel::common::ast::Expr;

fn principal() -> Principal {
    Principal {
        id: "u1".into(),
        kind: PrincipalKind::User,
        authenticator: Arc::from("users"),
        issuer: None,
        scopes: vec!["read".into()].into(),
        roles: vec!["admin".into()].into(),
        tenant: Some("acme".into()),
        api_key_id: None,
        claims: json!({"sub": "u1", "org": {"tier": 2}, "groups": ["a", "b"]})
            .as_object()
            .unwrap()
            .clone(),
        expires_at: None,
        valid_until: None,
        derived: Default::default(),
    }
}

fn eval(
    expr: &str,
    method: &str,
    target: &str,
    p: Option<&Principal>,
) -> Result<(), ConditionError> {
    eval_within(expr, method, target, p, Budget::default())
}

fn eval_within(
    expr: &str,
    method: &str,
    target: &str,
    p: Option<&Principal>,
    budget: Budget,
) -> Result<(), ConditionError> {
    let (parts, ()) = Request::builder()
        .method(method)
        .uri(target)
        .header("host", "api.test")
        .header("x-team", "blue")
        .body(())
        .unwrap()
        .into_parts();
    let conn = ConnInfo::new("127.0.0.1:1".parse().unwrap(), "l".into(), None);
    let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
    let params = [("user_id".into(), "u1".to_owned())];
    Condition::compile(expr, budget).unwrap().eval(
        &facts,
        p,
        &params,
        &Spoofable::new([], Vec::new()),
    )
}

#[test]
fn every_variable() {
    let p = principal();
    for expr in [
        "claims.org.tier == 2",
        "'b' in claims.groups",
        "principal.id == 'u1' && principal.kind == 'user' && principal.authenticated",
        "'admin' in principal.roles && principal.tenant == 'acme'",
        "request.method == 'GET' && request.host == 'api.test' && request.path == '/users/u1'",
        "request.query.page == '2' && request.headers['x-team'] == 'blue'",
        "params.user_id == principal.id",
        "action == 'read'",
        "request.path.startsWith('/users/')",
    ] {
        assert_eq!(
            eval(expr, "GET", "/users/u1?page=2", Some(&p)),
            Ok(()),
            "{expr}"
        );
    }
    assert_eq!(
        eval("params.user_id == principal.id", "GET", "/users/u1", None),
        Err(ConditionError::False)
    );
}

#[test]
fn anonymous_and_repeated_variables() {
    for expr in [
        "!principal.authenticated && principal.kind == 'anonymous' && principal.id == ''",
        "size(claims) == 0 && !has(claims.sub) && principal.issuer == null",
        "request.path == '/users/u1' && request.method == 'GET' && request.query.page == '2'",
        "params.user_id == 'u1' && params.user_id.size() == 2",
    ] {
        assert_eq!(
            eval(expr, "GET", "/users/u1?page=2", None),
            Ok(()),
            "{expr}"
        );
    }
}

#[test]
fn principal_view_is_kept_and_reused() {
    let p = principal();
    let expr = "claims.sub == principal.id && principal.roles == ['admin'] && has(claims.org.tier)";
    // The first evaluation builds the principal's view, the next ones reuse it.
    for _ in 0..3 {
        assert_eq!(eval(expr, "GET", "/", Some(&p)), Ok(()));
    }
    assert!(
        p.derived.get_or_init(|| 0u8).is_none(),
        "the view is stored"
    );
    // A clone (another request's principal) builds its own.
    let mut other = p.clone();
    other.id = "u2".into();
    assert_eq!(
        eval("principal.id == 'u2'", "GET", "/", Some(&other)),
        Ok(())
    );
    assert_eq!(
        eval(expr, "GET", "/", Some(&other)),
        Err(ConditionError::False)
    );
    assert_eq!(eval(expr, "GET", "/", Some(&p)), Ok(()));

    // A principal whose slot holds something else still evaluates as itself.
    let taken = principal();
    assert_eq!(taken.derived.get_or_init(|| 7u8), Some(&7));
    assert_eq!(eval(expr, "GET", "/", Some(&taken)), Ok(()));
    assert_eq!(
        eval(
            "principal.authenticated && size(claims) == 3",
            "GET",
            "/",
            Some(&taken)
        ),
        Ok(())
    );
}

#[test]
fn actions_from_methods() {
    for (m, target, want) in [
        ("GET", "/x", "read"),
        ("HEAD", "/x", "read"),
        ("GET", "/x?mine", "read_mine"),
        ("GET", "/x?a=1&mine=true", "read_mine"),
        ("GET", "/x?mined=1", "read"),
        ("POST", "/x", "create"),
        ("PUT", "/x", "update"),
        ("PATCH", "/x", "update"),
        ("DELETE", "/x", "delete"),
    ] {
        assert_eq!(
            eval(&format!("action == '{want}'"), m, target, None),
            Ok(()),
            "{m} {target}"
        );
    }
}

/// Regression: `?m%69ne` was `read`, and the upstream, decoding names, read it as "mine":
/// the seed's `posts-public-except-mine` let anyone read another user's "my posts".
#[test]
fn action_reads_decoded_query_names() {
    for (target, want) in [
        ("/x?m%69ne", "read_mine"),
        ("/x?%6D%69%6E%65=1", "read_mine"),
        ("/x?a=1&mi%6ee&b", "read_mine"),
        ("/x?m%FFine", "read_mine"),
        ("/x?m%69nes", "read"),
        ("/x?q=m%69ne", "read"),
        // As frameworks read names: case, arrays, `;` separators, NUL, leading spaces.
        ("/x?MINE&user_id=bob", "read_mine"),
        ("/x?mine%5B%5D=1&user_id=bob", "read_mine"),
        ("/x?mine[0]=1", "read_mine"),
        ("/x?x=1;mine&user_id=bob", "read_mine"),
        ("/x?mine%00x=1", "read_mine"),
        ("/x?%20mine=1", "read_mine"),
        ("/x?mined=1&user_id=bob", "read"),
        ("/x?x=mine;y=1", "read"),
    ] {
        assert_eq!(
            eval(&format!("action == '{want}'"), "GET", target, None),
            Ok(()),
            "{target}"
        );
    }
}

fn eval_request(expr: &str, req: Request<()>) -> Result<(), ConditionError> {
    let (parts, ()) = req.into_parts();
    let conn = ConnInfo::new("127.0.0.1:1".parse().unwrap(), "l".into(), None);
    let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
    Condition::compile(expr, Budget::default()).unwrap().eval(
        &facts,
        None,
        &[],
        &Spoofable::new([], Vec::new()),
    )
}

/// Regression: `host` was the client's `Host` line, not the authority decided on and sent.
#[test]
fn host_header_is_the_decided_authority() {
    let expr = "request.headers['host'] == 'good.example'";
    let absolute = Request::get("http://evil.example/x")
        .header("host", "good.example")
        .body(())
        .unwrap();
    assert_eq!(eval_request(expr, absolute), Err(ConditionError::False));
    let h2 = Request::get("http://good.example/x")
        .version(http::Version::HTTP_2)
        .body(())
        .unwrap();
    assert_eq!(eval_request(expr, h2), Ok(()));
    let ported = Request::get("/x")
        .header("host", "good.example:8443")
        .body(())
        .unwrap();
    assert_eq!(
        eval_request("request.headers.host == 'good.example:8443'", ported),
        Ok(())
    );
}

/// Regression: a condition read a header the gateway then stripped or overwrote, so it
/// decided on the client's word: `X-User-Id: bob` passed `== params.user` while the upstream
/// got alice's id.
#[test]
fn stripped_headers_are_not_in_the_view() {
    let req = Request::get("/x")
        .header("host", "a.test")
        .header("x-user-id", "bob")
        .header("x-real-ip", "10.9.9.9")
        .header("x-team", "blue")
        .body(())
        .unwrap();
    let (parts, ()) = req.into_parts();
    let conn = ConnInfo::new("127.0.0.1:1".parse().unwrap(), "l".into(), None);
    let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
    let spoofable = Spoofable::new([&http::HeaderName::from_static("x-user-id")], Vec::new());
    let eval = |expr: &str| {
        Condition::compile(expr, Budget::default())
            .unwrap()
            .eval(&facts, None, &[], &spoofable)
    };
    assert!(eval("request.headers['x-user-id'] == 'bob'").is_err());
    assert!(eval("request.headers['x-real-ip'] == '10.9.9.9'").is_err());
    assert_eq!(eval("!('x-user-id' in request.headers)"), Ok(()));
    assert_eq!(eval("request.headers['x-team'] == 'blue'"), Ok(()));
    // A hidden name repeated (two `X-Forwarded-For` lines) is not read, so not a repeat.
    let req = Request::get("/x")
        .header("host", "a.test")
        .header("x-forwarded-for", "198.51.100.1")
        .header("x-forwarded-for", "198.51.100.2")
        .header("x-user-id", "a")
        .header("x-user-id", "b")
        .body(())
        .unwrap();
    let (parts, ()) = req.into_parts();
    let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
    assert_eq!(
        Condition::compile("!('x-debug' in request.headers)", Budget::default())
            .unwrap()
            .eval(&facts, None, &[], &spoofable),
        Ok(())
    );
}

/// Regression: HTTP/2 cookie crumbs were a repeated header, denying every such browser request.
#[test]
fn cookie_crumbs_are_one_header() {
    let crumbs = || {
        Request::get("/x")
            .header("host", "a.test")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(())
            .unwrap()
    };
    assert_eq!(
        eval_request("!('x-debug' in request.headers)", crumbs()),
        Ok(())
    );
    assert_eq!(
        eval_request("request.headers.cookie == 'a=1; b=2'", crumbs()),
        Ok(())
    );
}

#[test]
fn only_true_allows() {
    let p = principal();
    assert_eq!(
        eval("false", "GET", "/", Some(&p)),
        Err(ConditionError::False)
    );
    // Not a boolean (a constant, or a field, of another type is refused at load).
    assert_eq!(
        eval("claims.sub", "GET", "/", Some(&p)),
        Err(ConditionError::False)
    );
    assert!(matches!(
        eval("claims.missing == 'x'", "GET", "/", Some(&p)),
        Err(ConditionError::Error(_))
    ));
    assert!(eval("claims.org.tier == 'two'", "GET", "/", Some(&p)).is_err());
}

#[test]
fn compile_errors() {
    let compile = |e: &str| Condition::compile(e, Budget::default());
    assert!(compile("claims.x ==").is_err());
    assert!(
        compile("user.id == 'a'")
            .unwrap_err()
            .contains("unknown variable `user`")
    );
}

#[test]
fn comprehension_macros_and_their_variables() {
    let p = principal();
    for (expr, want) in [
        ("claims.groups.exists(g, g == 'a')", Ok(())),
        ("claims.groups.all(g, g in ['a', 'b'])", Ok(())),
        ("claims.groups.exists_one(g, g == 'b')", Ok(())),
        ("claims.groups.map(g, g + '!') == ['a!', 'b!']", Ok(())),
        ("claims.groups.filter(g, g != 'a') == ['b']", Ok(())),
        ("principal.roles.exists(r, r == 'admin')", Ok(())),
        ("claims.org.exists(k, k == 'tier')", Ok(())),
        ("request.query.exists(k, k == 'page')", Ok(())),
        (
            "claims.groups.exists(g, principal.roles.exists(r, r == 'admin' && g == 'b'))",
            Ok(()),
        ),
        (
            "claims.groups.exists(g, has(claims.org.tier) && claims.org.tier == 2 && g == 'a')",
            Ok(()),
        ),
        (
            "claims.groups.exists(g, params.user_id == principal.id)",
            Ok(()),
        ),
        ("claims.groups.map(g, g).exists(h, h == 'a')", Ok(())),
        ("claims.groups.exists(claims, claims == 'a')", Ok(())),
        ("claims.groups.all(g, g == 'a')", Err(ConditionError::False)),
        (
            "claims.groups.exists_one(g, g != 'z')",
            Err(ConditionError::False),
        ),
        ("claims.groups.filter(g, g == 'z') == []", Ok(())),
    ] {
        assert_eq!(eval(expr, "GET", "/x?page=1", Some(&p)), want, "{expr}");
    }
    let c = Condition::compile(
        "claims.groups.exists(g, params.user_id == g)",
        Budget::default(),
    )
    .unwrap();
    assert!(c.uses_params(), "params read inside a body");
}

#[test]
fn comprehension_compile_errors() {
    let compile = |e: &str| Condition::compile(e, Budget::default()).map(|_| ());
    for (expr, message) in [
        ("claims.groups.exists(g, h == 'a')", "unknown variable `h`"),
        (
            "claims.groups.exists(g, true) && g == 'a'",
            "unknown variable `g`",
        ),
        (
            "claims.groups.map(g, g).exists(h, g == h)",
            "unknown variable `g`",
        ),
        ("user.roles.exists(r, r == 'a')", "unknown variable `user`"),
        (
            "claims.a.exists(x, claims.b.exists(y, claims.c.exists(z, x == y && y == z)))",
            "nest at most 2 deep",
        ),
        (
            "claims.a.all(x, claims.b.map(y, claims.c.filter(z, z == y)).size() > 0)",
            "nest at most 2 deep",
        ),
    ] {
        let err = compile(expr).unwrap_err();
        assert!(err.contains(message), "{expr}: {err}");
    }
    assert_eq!(
        compile("claims.a.exists(x, claims.b.exists(y, x == y))"),
        Ok(())
    );
    // Nodes are counted once macros are expanded.
    let list = vec!["1"; MAX_NODES].join(",");
    let err = compile(&format!("[{list}].size() > 0")).unwrap_err();
    assert!(err.contains("expression too large"), "{err}");
    let list = vec!["1"; MAX_NODES - 10].join(",");
    assert_eq!(compile(&format!("[{list}].size() > 0")), Ok(()));
    // Deep nesting is refused before anything recurses over it (parsing, checking and
    // evaluating all recurse, on a worker thread's stack).
    let deep = format!("{} == {MAX_NESTING}", vec!["1"; MAX_NESTING].join(" + "));
    let err = compile(&deep).unwrap_err();
    assert!(err.contains("nested too deep"), "{err}");
    let err = compile(&vec!["1"; 3000].join("+")).unwrap_err();
    assert!(err.contains("expression too long"), "{err}");
}

#[test]
fn the_deepest_expression_compiles_and_evaluates() {
    let n = MAX_NESTING - 2;
    let deep = format!("{} == {n}", vec!["1"; n].join(" + "));
    assert_eq!(eval(&deep, "GET", "/", None), Ok(()));
    let deep = format!(
        "claims.groups.exists(g, {} == {n})",
        vec!["1"; n - 4].join(" + ")
    );
    assert_eq!(
        eval(&deep, "GET", "/", Some(&principal())),
        Err(ConditionError::False)
    );
}

/// A principal whose `big` claim holds `n` numbers and `small` ten.
fn with_lists(n: i64) -> Principal {
    let mut p = principal();
    p.claims
        .insert("big".into(), json!((0..n).collect::<Vec<_>>()));
    p.claims
        .insert("small".into(), json!((0..10).collect::<Vec<_>>()));
    p
}

#[test]
fn nested_comprehension_over_a_large_claim_is_cut_short() {
    let over = Err(ConditionError::BudgetExceeded);
    let tight = Budget {
        max_list_size: 1000,
        max_steps: 100_000,
    };
    let started = std::time::Instant::now();
    for (n, expr, want) in [
        // Ranges longer than max_list_size are refused before a step is taken.
        (1001, "claims.big.exists(x, x < 0)", over.clone()),
        (1000, "claims.big.exists(x, x == 999)", Ok(())),
        (1000, "claims.big.map(x, x).size() == 1000", Ok(())),
        // Nested over 1000 × 1000 elements: cut short, not a second of work.
        (
            1000,
            "claims.big.exists(x, claims.big.exists(y, x == y + 1000))",
            over.clone(),
        ),
        (
            1000,
            "claims.big.all(x, claims.big.all(y, x >= 0))",
            over.clone(),
        ),
        // A list read in a body is paid for on each element: 1000 × `x in big`.
        (
            1000,
            "claims.big.exists(x, x in claims.big && x < 0)",
            over.clone(),
        ),
        (
            1000,
            "claims.small.exists(x, x in claims.big && x == 9)",
            Ok(()),
        ),
        // A cut-short evaluation denies even where `||` or `exists` would drop the error.
        (1001, "claims.big.exists(x, x < 0) || true", over.clone()),
        (
            1000,
            "claims.small.exists(x, x == 0 || claims.big.exists(y, y == x))",
            Ok(()),
        ),
        // Cut short at x == 8; at x == 9 `error || true` would have been true.
        (
            1000,
            "claims.small.exists(x, claims.big.exists(y, y > x + 5000) || x == 9)",
            over,
        ),
        // No comprehension, no meter: a long list costs its length once.
        (
            5000,
            "size(claims.big) == 5000 && 4999 in claims.big",
            Ok(()),
        ),
    ] {
        assert_eq!(
            eval_within(expr, "GET", "/", Some(&with_lists(n)), tight),
            want,
            "{expr} over {n}"
        );
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn budget_limits_come_from_the_config() {
    let p = with_lists(50);
    let expr = "claims.big.exists(x, claims.big.exists(y, x == y + 100))";
    let roomy = Budget {
        max_list_size: 50,
        max_steps: 1_000_000,
    };
    assert_eq!(
        eval_within(expr, "GET", "/", Some(&p), roomy),
        Err(ConditionError::False)
    );
    for small in [
        Budget {
            max_list_size: 49,
            ..roomy
        },
        Budget {
            max_steps: 1000,
            ..roomy
        },
    ] {
        assert_eq!(
            eval_within(expr, "GET", "/", Some(&p), small),
            Err(ConditionError::BudgetExceeded),
            "{small:?}"
        );
    }
    // Each evaluation has its own meter.
    for _ in 0..3 {
        assert_eq!(
            eval_within(expr, "GET", "/", Some(&p), roomy),
            Err(ConditionError::False)
        );
    }
}

#[test]
fn what_an_expression_reads_of_the_request() {
    let some = |k: &[&str]| Keys::Some(k.iter().map(|s| (*s).to_owned()).collect());
    for (expr, query, headers) in [
        ("action == 'read'", Keys::None, Keys::None),
        (
            "request.method == 'GET' && request.path == '/x'",
            Keys::None,
            Keys::None,
        ),
        ("request.query.a == 'x'", some(&["a"]), Keys::None),
        (
            "request.query['a'] == 'x' || has(request.query.b)",
            some(&["a", "b"]),
            Keys::None,
        ),
        (
            "request.headers['x-team'] == 'blue'",
            Keys::None,
            some(&["x-team"]),
        ),
        ("size(request.query) > 0", Keys::All, Keys::None),
        (
            "'a' in request.query",
            Keys::Some(vec!["a".into()]),
            Keys::None,
        ),
        ("request.query[request.path] == 'x'", Keys::All, Keys::None),
        ("request.headers.exists(h, h == 'x')", Keys::None, Keys::All),
        ("[request].size() == 1", Keys::All, Keys::All),
    ] {
        let c = Condition::compile(expr, Budget::default()).unwrap();
        assert_eq!(
            c.reads(),
            &RequestReads {
                query: query.clone(),
                headers: headers.clone()
            },
            "{expr}"
        );
    }
}

#[test]
fn repeated_keys_an_expression_reads_deny() {
    let p = principal();
    let mine = "request.query.author_id == principal.id";
    assert_eq!(eval(mine, "GET", "/c?author_id=u1", Some(&p)), Ok(()));
    for target in [
        "/c?author_id=u1&author_id=bob",
        "/c?author_id=u1&author%5Fid=bob",
        "/c?author_id=u1&%ZZ=bob",
        // Spellings a framework reads as the same parameter: arrays (qs, PHP, Rails), PHP's
        // `.`, space and `[` as `_`, ASP.NET's case, `;` pairs (Rack before 3, CGI.pm).
        "/c?author_id%5B%5D=bob&author_id=u1",
        "/c?author_id=u1&author_id%5B0%5D=bob",
        "/c?author_id=u1&author_id[]=bob",
        "/c?author_id=u1&author.id=bob",
        "/c?author_id=u1&author+id=bob",
        "/c?author_id=u1&author%20id=bob",
        "/c?author_id=u1&author%5Bid=bob",
        "/c?author_id=u1&AUTHOR_ID=bob",
        "/c?author_id=u1;author_id=bob",
        "/c?author_id=u1&x=1;author_id=bob",
        // qs reads `[author_id]` as `author_id`; PHP drops leading spaces and cuts at NUL;
        // Rack 2 drops brackets around the base.
        "/c?%5Bauthor_id%5D=bob&author_id=u1",
        "/c?author_id=u1&%20author_id=bob",
        "/c?author_id=u1&+author_id=bob",
        "/c?author_id=u1&author_id%00=bob",
        "/c?author_id=u1&author_id%5D=bob",
        // Another spelling alone: the upstream may read it, the expression does not.
        "/c?AUTHOR_ID=u1",
        "/c?author_id%5B%5D=u1",
    ] {
        assert!(
            matches!(
                eval(mine, "GET", target, Some(&p)),
                Err(ConditionError::Error(_))
            ),
            "{target}"
        );
    }
    // A key the expression does not read may repeat, in any spelling; names that only look
    // alike are other keys.
    for target in [
        "/c?author_id=u1&tag=a&tag=b",
        "/c?author_id=u1&tag[]=a&TAG=b",
        "/c?author_id=u1&author_ids=bob",
        "/c?author_id=u1&authorid=bob",
        "/c?author_id=u1&author-id=bob",
        "/c?author_id=u1&x=a;b",
        "/c?author_id=u1&next=a;%E9t%E9",
    ] {
        assert_eq!(eval(mine, "GET", target, Some(&p)), Ok(()), "{target}");
    }
    // A negative condition: the name alone, in another spelling, is refused.
    let never = "!has(request.query.impersonate)";
    assert_eq!(eval(never, "GET", "/c?x=1", Some(&p)), Ok(()));
    for target in [
        "/c?IMPERSONATE=bob",
        "/c?impersonate%5B%5D=bob",
        "/c?x=1;impersonate=bob",
        // A value that does not decode leaves the key out of `request.query`; qs reads it.
        "/c?impersonate=%ZZ",
        // qs and Rack 2 nest `impersonate[x` under `impersonate`; Spring binds `!name`.
        "/c?impersonate[x=bob",
        "/c?!impersonate=bob",
    ] {
        assert!(
            matches!(
                eval(never, "GET", target, Some(&p)),
                Err(ConditionError::Error(_))
            ),
            "{target}"
        );
    }
    // Keyed children are other parameters, for a keyed read and a whole-map read alike.
    let owner = "request.query['filter[owner]'] == 'u1'";
    assert_eq!(
        eval(
            owner,
            "GET",
            "/c?filter[owner]=u1&filter[status]=open",
            Some(&p)
        ),
        Ok(())
    );
    for target in [
        "/c?filter[owner]=u1&Filter[Owner]=bob",
        // Rack 2 reads runs of brackets as one.
        "/c?filter[owner]=u1&filter[[owner]]=bob",
        "/c?filter[owner]=u1&filter[owner=bob",
    ] {
        assert!(
            matches!(
                eval(owner, "GET", target, Some(&p)),
                Err(ConditionError::Error(_))
            ),
            "{target}"
        );
    }
    // `'k' in request.query` reads one key: arrays of others pass, spellings of it do not.
    let debug = "!('debug' in request.query)";
    for target in ["/c?ids[]=1&ids[]=2", "/c?tags=a&tags=b", "/c?x=1"] {
        assert_eq!(eval(debug, "GET", target, Some(&p)), Ok(()), "{target}");
    }
    for target in [
        "/c?DEBUG=1",
        "/c?debug%5B%5D=1",
        "/c?x=1;debug=1",
        "/c?%20debug=1",
    ] {
        assert!(
            matches!(
                eval(debug, "GET", target, Some(&p)),
                Err(ConditionError::Error(_))
            ),
            "{target}"
        );
    }
    let whole = "size(request.query) >= 0";
    for target in [
        "/c?page[number]=2&page[size]=10",
        "/c?ids[0]=1&ids[1]=2",
        "/c?next=a;%E9t%E9",
    ] {
        assert_eq!(eval(whole, "GET", target, Some(&p)), Ok(()), "{target}");
    }
    for target in ["/c?sort=name&Sort=x", "/c?a=1&a[]=2", "/c?a=1;a=2"] {
        assert!(
            matches!(
                eval(whole, "GET", target, Some(&p)),
                Err(ConditionError::Error(_))
            ),
            "{target}"
        );
    }
    // Headers: the same, by lower-cased name.
    let header = |values: &[&str], expr: &str| {
        let mut req = Request::builder().uri("/c").header("host", "api.test");
        for v in values {
            req = req.header("x-team", *v);
        }
        eval_request(
            expr,
            req.header("accept", "a")
                .header("accept", "b")
                .body(())
                .unwrap(),
        )
    };
    let team = "request.headers['x-team'] == 'blue'";
    assert_eq!(header(&["blue"], team), Ok(()));
    assert!(matches!(
        header(&["blue", "red"], team),
        Err(ConditionError::Error(_))
    ));
    // Another `_`/`.`/`-` spelling of the name is a repeat: a CGI-style upstream reads it as
    // one (PHP folds `.` too).
    for alias in ["x_team", "x.team"] {
        let aliased = Request::get("/c")
            .header("host", "api.test")
            .header("x-team", "blue")
            .header(alias, "red")
            .body(())
            .unwrap();
        assert!(
            matches!(eval_request(team, aliased), Err(ConditionError::Error(_))),
            "{alias}"
        );
    }
    let other = Request::get("/c")
        .header("host", "api.test")
        .header("x-team", "blue")
        .header("x_teams", "red")
        .body(())
        .unwrap();
    assert_eq!(eval_request(team, other), Ok(()));
    // `accept` repeats, unread; read as a whole, every repeat counts.
    assert!(matches!(
        header(&["blue"], "size(request.headers) > 0"),
        Err(ConditionError::Error(_))
    ));
}

#[test]
fn header_values_that_are_not_text_deny() {
    let with = |name: &str, value: &[u8], expr: &str| {
        let req = Request::get("/c")
            .header("host", "api.test")
            .header(name, http::HeaderValue::from_bytes(value).unwrap())
            .body(())
            .unwrap();
        eval_request(expr, req)
    };
    let never = "!('x-impersonate' in request.headers)";
    assert_eq!(with("x-other", b"b\xe9b", never), Ok(()));
    assert_eq!(
        with("x-impersonate", b"bob", never),
        Err(ConditionError::False)
    );
    for name in ["x-impersonate", "x_impersonate"] {
        assert!(
            matches!(with(name, b"b\xe9b", never), Err(ConditionError::Error(_))),
            "{name}"
        );
    }
    // Read as a whole, any such value counts; a `cookie` too.
    let whole = "size(request.headers) > 0";
    assert_eq!(with("x-other", b"fine", whole), Ok(()));
    assert!(matches!(
        with("x-other", b"\xff", whole),
        Err(ConditionError::Error(_))
    ));
    assert!(matches!(
        with(
            "cookie",
            b"sid=\xe9",
            "!request.headers.cookie.contains('admin')"
        ),
        Err(ConditionError::Error(_))
    ));
}

/// A header sent as `X_Impersonate` or `X.Impersonate` alone is read by its dashed name, as
/// CGI-style upstreams read it: it passed `!('x-impersonate' in request.headers)` and reached
/// a WSGI app as `HTTP_X_IMPERSONATE`. An expression naming a header with `_` or `.` is
/// refused at load (it could never match).
#[test]
fn a_header_spelled_with_underscores_or_dots_is_read_by_its_dashed_name() {
    let with = |name: &str, expr: &str| {
        let req = Request::get("/c")
            .header("host", "api.test")
            .header(name, "admin")
            .body(())
            .unwrap();
        eval_request(expr, req)
    };
    let never = "!('x-impersonate' in request.headers)";
    for name in [
        "x-impersonate",
        "x_impersonate",
        "X.Impersonate",
        "x_impersonate",
    ] {
        assert_eq!(with(name, never), Err(ConditionError::False), "{name}");
        assert_eq!(
            with(name, "request.headers['x-impersonate'] == 'admin'"),
            Ok(()),
            "{name}"
        );
        assert_eq!(
            with(name, "!has(request.headers.impersonate)"),
            Ok(()),
            "{name}"
        );
    }
    assert_eq!(with("x-other", never), Ok(()));
    for expr in [
        "!('x_impersonate' in request.headers)",
        "request.headers['x.tenant'] == 'a'",
        "!has(request.headers.x_tenant)",
    ] {
        let err = Condition::compile(expr, Budget::default()).expect_err(expr);
        assert!(err.contains("with `-` for `_` and `.`"), "{expr}: {err}");
    }
}

/// Regression: the compiled subset (`fast`) must decide as the interpreter does, error
/// absorption, nulls, floats, mixed lists and absent keys included; where it cannot say, the
/// interpreter does.
#[test]
fn the_fast_subset_decides_as_the_interpreter() {
    let p = principal();
    let mut odd = principal();
    odd.issuer = Some("https://idp.test".into());
    odd.api_key_id = Some("k1".into());
    odd.kind = PrincipalKind::Machine;
    odd.claims = json!({
        "sub": "u1", "n": null, "f": 1.5, "big": u64::MAX, "mixed": ["a", 1], "flag": true,
        "s": "x", "obj": {"k": "v", "t": 2}, "groups": []
    })
    .as_object()
    .unwrap()
    .clone();
    // (expression, whether it compiles to the subset)
    let cases = [
        ("params.user_id == principal.id", true),
        ("claims.sub == 'u1' && action == 'read'", true),
        (
            "claims['sub'] == principal.id || principal.kind == 'machine'",
            true,
        ),
        ("!(claims.org.tier == 2)", true),
        ("claims.org['tier'] != 3", true),
        ("'b' in claims.groups", true),
        ("'a' in claims.mixed", true),
        (
            "'admin' in principal.roles && !('write' in principal.scopes)",
            true,
        ),
        ("principal.tenant in ['acme', 'other']", true),
        ("action in ['read', 'read_mine']", true),
        ("action in ['read', claims.missing]", true),
        ("has(claims.org) && has(claims.org.tier)", true),
        ("has(claims.missing)", true),
        ("has(claims.s.x)", true),
        ("claims.missing == 'x'", true),
        ("claims.missing == 'x' && false", true),
        ("claims.missing == 'x' || true", true),
        ("false && claims.missing == 'x'", true),
        ("true || claims.missing == 'x'", true),
        ("claims.f == 1", true),
        ("claims.big == 1", true),
        ("claims.obj.t == 2 && claims.obj.k == 'v'", true),
        ("claims.obj == 'v'", true),
        ("claims.sub == 1", true),
        ("claims.groups == 'a'", true),
        ("claims.flag", true),
        ("!claims.flag || claims.flag == false", true),
        ("claims.s", true),
        (
            "principal.authenticated && principal.issuer == 'https://idp.test'",
            true,
        ),
        (
            "principal.api_key_id == 'k1' || principal.authenticator == 'users'",
            true,
        ),
        ("principal.tenant == 'acme'", true),
        (
            "request.method == 'GET' && request.host == 'api.test'",
            true,
        ),
        ("request.path == '/users/u1'", true),
        ("params.nope == 'x'", true),
        ("1 == 1 && 'a' != 'b' && true", true),
        ("claims.n == null", false),
        ("principal.scopes == ['read']", false),
        ("request.query.page == '2'", false),
        ("request.headers['x-team'] == 'blue'", false),
        ("claims.groups.exists(g, g == 'a')", false),
        ("size(claims.sub) == 2", false),
        ("claims.sub.startsWith('u')", false),
    ];
    let conn = ConnInfo::new("127.0.0.1:1".parse().unwrap(), "l".into(), None);
    // A name the pattern repeats: the last value is the one read.
    let params = [
        ("user_id".into(), "u2".to_owned()),
        ("user_id".into(), "u1".to_owned()),
    ];
    let spoofable = Spoofable::new([], Vec::new());
    let mut decided = 0;
    for (expr, in_subset) in cases {
        let c = Condition::compile(expr, Budget::default()).unwrap();
        assert_eq!(c.fast.is_some(), in_subset, "{expr}");
        for (method, target) in [("GET", "/users/u1?page=2"), ("POST", "/users/u2")] {
            let (parts, ()) = Request::builder()
                .method(method)
                .uri(target)
                .header("host", "api.test")
                .header("x-team", "blue")
                .body(())
                .unwrap()
                .into_parts();
            let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
            for who in [Some(&p), Some(&odd), None] {
                let want = c.interpret(&facts, who, &params, &spoofable);
                assert_eq!(
                    c.eval(&facts, who, &params, &spoofable),
                    want,
                    "{expr} {method} {target} {:?}",
                    who.map(|p| &p.claims)
                );
                let input = fast::Input {
                    facts: &facts,
                    principal: who,
                    params: &params,
                };
                if let Some(b) = c.fast.as_ref().and_then(|f| f.eval(&input)) {
                    assert_eq!(
                        want,
                        if b {
                            Ok(())
                        } else {
                            Err(ConditionError::False)
                        },
                        "{expr}"
                    );
                    decided += 1;
                }
            }
        }
    }
    // Most of the cases are decided without the interpreter (not a subset that never runs).
    assert!(decided >= 90, "decided {decided}");
}

/// Regression: typos in what has a fixed shape (`principal`'s and `request`'s fields, the
/// values of `action` and `principal.kind`, the macros) passed `check` and a hot reload,
/// and the rule then failed closed for every request.
#[test]
fn typos_in_fixed_shapes_are_refused() {
    for (expr, says) in [
        ("principal.idd == 'alice'", "principal has no field `idd`"),
        ("request.methd == 'GET'", "request has no field `methd`"),
        ("'admin' in principal.role", "principal has no field `role`"),
        ("has(principal.tenantt)", "principal has no field `tenantt`"),
        ("principal['idd'] == 'x'", "principal has no field `idd`"),
        ("action == 'raed'", "`action` is never 'raed'"),
        ("'raed' != action", "`action` is never 'raed'"),
        ("action in ['read', 'raed']", "`action` is never 'raed'"),
        ("principal.kind == 'usr'", "`principal.kind` is never 'usr'"),
        (
            "principal.roles.exsts(r, r == 'a')",
            "unknown function `exsts`",
        ),
        (
            "claims.m.all(k, v, v == 'a')",
            "`all` takes one variable and an expression",
        ),
        (
            "request.headers['X-Foo'] == 'a'",
            "header names are keyed in lower case, with `-` for `_` and `.` ('x-foo')",
        ),
        (
            "'X-Tenant' in request.headers",
            "keyed in lower case, with `-` for `_` and `.` ('x-tenant')",
        ),
        ("request.method == 'get'", "`request.method` is never 'get'"),
        (
            "'Post' != request.method",
            "`request.method` is never 'Post'",
        ),
        ("'a'", "a condition must be true or false"),
        ("1", "a condition must be true or false"),
        ("principal.id + 'x'", "a condition must be true or false"),
        ("claims.n * 2", "a condition must be true or false"),
        ("[true]", "a condition must be true or false"),
        (
            "principal.id.matches('[a-')",
            "`matches('[a-')`: not a valid regular expression: error: unclosed character class",
        ),
        (
            "matches(principal.id, '(x')",
            "not a valid regular expression",
        ),
        (
            "request.path.matches(principal.id)",
            "a pattern written in the expression",
        ),
        (
            "request.path.matches(request.headers['x-re'])",
            "not one built from the request",
        ),
    ] {
        let e = Condition::compile(expr, Budget::default())
            .err()
            .unwrap_or_else(|| panic!("{expr} compiled"));
        assert!(e.contains(says), "{expr}: {e}");
    }
    for expr in [
        "principal.id == 'alice' && request.method == 'GET'",
        "principal.authenticated && principal.authenticator == 'users'",
        "has(principal.tenant) && principal.issuer != null && principal.api_key_id == null",
        "'admin' in principal.roles || 'write' in principal.scopes",
        "action in ['read', 'read_mine'] || action == 'other' || action == 'options'",
        "action == 'create' || action == 'update' || action == 'delete'",
        "principal.kind != 'machine' && principal.kind != 'anonymous' || principal.kind == 'user'",
        "claims.whatever == 1 && claims['x'] == 'y'",
        "principal.roles.exists(r, r == 'a') && principal.roles.all(r, r != 'b')",
        "request.headers['x-a'] == 'b' && request.query.q == 'c' && request.host != '' && request.path != ''",
        "params.id == principal.id",
        "request.method == 'GET' && 'x-tenant' in request.headers && request.headers['x-b'] == 'B'",
        "true",
        "principal.id.matches('^[a-z]+$') && matches(request.path, '^/v[0-9]+/')",
        "claims.n + 1 == 2",
    ] {
        assert!(
            Condition::compile(expr, Budget::default()).is_ok(),
            "{expr}: {:?}",
            Condition::compile(expr, Budget::default()).err()
        );
    }
}

/// Operations between values of known types that never go together are refused at load,
/// with what was meant; what cannot be known (claims, what may be null) is let through.
#[test]
fn type_errors_between_known_types_are_refused() {
    for (expr, says) in [
        (
            "request.path + 1 == 2",
            "no arithmetic between a string and a number",
        ),
        ("request.path > 5", "compares a string with a number"),
        ("request.path == 1", "compares a string with a number"),
        ("params.id != 5", "compares a string with a number"),
        (
            "request.headers['x-count'] >= 10",
            "compares a string with a number",
        ),
        ("request.query.n < 3", "compares a string with a number"),
        (
            "size(request.path) == 'x'",
            "compares a number with a string",
        ),
        (
            "request.path.startsWith(1)",
            "`startsWith` takes strings; this is a number",
        ),
        (
            "request.path in 5",
            "`in` looks in a list or a map; this is a number",
        ),
        (
            "request.path",
            "a condition must be true or false; this gives a string",
        ),
        ("1 == 1 ? 'a' : 'b'", "this gives a string"),
        ("size(principal.roles)", "this gives a number"),
        (
            "principal.authenticated && request.path",
            "this is a string",
        ),
        ("size(1) > 0", "`size` measures a string, a list or a map"),
        (
            "principal.roles == 'admin'",
            "compares a list with a string",
        ),
        (
            "size(request.query) / 2.0 < 4.0",
            "no arithmetic between an int and a double: convert one",
        ),
    ] {
        let e = Condition::compile(expr, Budget::default())
            .err()
            .unwrap_or_else(|| panic!("{expr} compiled"));
        assert!(e.contains(says), "{expr}: {e}");
    }
    for expr in [
        "int(request.headers['x-count']) >= 10",
        "int(params.id) == 5 && size(request.path) > 1",
        "claims.level > 5 && claims.name == 'x'",
        "principal.tenant == null || principal.tenant == 'acme'",
        "principal.roles.contains('admin') || 'admin' in principal.roles",
        "request.path.startsWith('/v1/') && !request.path.endsWith('.json')",
        "(principal.authenticated ? principal.id : 'anonymous') == 'alice'",
        "size(principal.roles) > 0 && request.path + '/' == '/a/'",
        "1 == 1.0",
    ] {
        assert!(
            Condition::compile(expr, Budget::default()).is_ok(),
            "{expr}: {:?}",
            Condition::compile(expr, Budget::default()).err()
        );
    }
}

/// A condition that reads every query name sees them as written: a name an upstream may read
/// as one the expression writes (case, brackets, spaces, a pair after `;`) is denied; other
/// names pass as the client wrote them.
#[test]
fn whole_map_reads_deny_other_spellings() {
    let ask = |expr: &str, target: &str| {
        let req = Request::get(target)
            .header("host", "app.test")
            .body(())
            .unwrap();
        eval_request(expr, req)
    };
    for expr in [
        "request.query.all(k, k != 'debug')",
        "!request.query.exists(k, k == 'debug')",
        "size(request.query.filter(k, k == 'debug')) == 0",
    ] {
        for fine in [
            "/qd?a=1&b=2",
            "/qd?q=a;b",
            "/qd?page[number]=2&page[size]=1",
            "/qd?pageSize=1&returnUrl=%2Fhome&X-Amz-Date=1&user.name=x&tags[]=x",
            "/qd?redirect_uri=https://a.example/cb;x=y",
        ] {
            assert_eq!(ask(expr, fine), Ok(()), "{expr} {fine}");
        }
        assert!(ask(expr, "/qd?debug=1").is_err(), "{expr}");
        for target in [
            "/qd?DEBUG=1",
            "/qd?debug[]=1",
            "/qd?debug[0]=1",
            "/qd?debug[a]=1",
            "/qd?x=1;debug=1",
            "/qd?x=1;debug",
            "/qd?%20debug=1",
            "/qd?debug%00x=1",
        ] {
            match ask(expr, target) {
                Err(ConditionError::Error(why)) => assert!(
                    why.contains("may be read as another name"),
                    "{expr} {target}: {why}"
                ),
                other => panic!("{expr} {target}: {other:?}"),
            }
        }
    }
    // Names the expression writes with capitals are taken as written.
    let listed = "request.query.all(k, k in ['pageSize', 'page'])";
    assert_eq!(ask(listed, "/qd?pageSize=10&page=2"), Ok(()));
    assert!(ask(listed, "/qd?pagesize=10").is_err());
    assert_eq!(
        ask("size(request.query) < 20", "/qd?pageSize=1&Sort=a;b=c"),
        Ok(())
    );
}

/// Parentheses nested past the parser's own limit are said to be so, not as the parser's
/// internal error.
#[test]
fn deep_parentheses_are_said_to_be_too_deep() {
    let expr = format!("{}true{}", "(".repeat(120), ")".repeat(120));
    let e = Condition::compile(&expr, Budget::default()).unwrap_err();
    assert!(e.starts_with("expression nested too deep"), "{e}");
    assert!(!e.contains("ParseError"), "{e}");
}

/// A call of a function no context declares is refused at load; every declared one passes.
#[test]
fn unknown_functions_are_refused() {
    for (expr, name) in [
        ("request.path.lowerAscii() == '/t'", "lowerAscii"),
        ("nosuchfn(1)", "nosuchfn"),
        ("principal.id.nosuchmethod() == 'a'", "nosuchmethod"),
        (
            "'ADMIN' in principal.roles.map(r, r.upperAscii())",
            "upperAscii",
        ),
    ] {
        let e = Condition::compile(expr, Budget::default())
            .err()
            .unwrap_or_else(|| panic!("{expr} compiled"));
        assert!(
            e.contains(&format!("unknown function `{name}`")),
            "{expr}: {e}"
        );
    }
    for expr in [
        "size(request.path) > 1 && request.path.size() > 1",
        "request.path.contains('a') || request.path.startsWith('/') || request.path.endsWith('x')",
        "request.path.matches('^/v') && int('1') == 1 && uint(1) == 1u && double(1) == 1.0",
        "string(1) == '1' && has(claims.x) && principal.roles.exists(r, r == 'a')",
        "principal.roles.all(r, r != 'b') && principal.roles.exists_one(r, r == 'a')",
        "size(principal.roles.filter(r, r == 'a')) == 1 && principal.roles.map(r, r) == ['a']",
    ] {
        assert!(
            Condition::compile(expr, Budget::default()).is_ok(),
            "{expr}: {:?}",
            Condition::compile(expr, Budget::default()).err()
        );
    }
}

/// A `matches` pattern is compiled once, at load: the expression evaluated holds no call
/// that compiles it (the `cel` crate's `matches` compiles on every call: 150 ms a request for
/// `[\w.-]{1,200}`, 22 s for one request of 990 query names under `all(k, k.matches(…))`),
/// and loading the same pattern again compiles nothing new. It still decides as `matches`.
#[test]
fn matches_compiles_its_pattern_once() {
    fn calls(e: &IdedExpr, name: &str) -> usize {
        let own = usize::from(matches!(&e.expr, Expr::Call(c) if c.func_name == name));
        own + super::budget::children(e)
            .into_iter()
            .map(|c| calls(c, name))
            .sum::<usize>()
    }
    let source =
        r"request.query.all(k, k.matches(r'^[\w-]{1,32}$')) && matches(request.path, '^/q[a-z]+/')";
    let c = Condition::compile(source, Budget::default()).unwrap();
    assert_eq!(calls(&c.expr, "matches"), 0, "{:?}", c.expr);
    assert_eq!(calls(&c.expr, "@match"), 2);
    let patterns = super::budget::PATTERNS.load().len();
    Condition::compile(source, Budget::default()).unwrap();
    assert_eq!(
        super::budget::PATTERNS.load().len(),
        patterns,
        "the same patterns are not compiled again"
    );
    assert!(eval(source, "GET", "/qre/x?a=1&b-c=2", None).is_ok());
    assert!(eval(source, "GET", "/qre/x?a=1&b.c=2", None).is_err());
    assert!(eval(source, "GET", "/other/x?a=1", None).is_err());
}

/// An expression reading the whole `request.query` map takes up to 1,000 distinct names
/// (each looked up among the earlier ones by its base, not compared with every one); more is
/// denied. Repeats are still found among many names.
#[test]
fn many_query_names_are_cheap() {
    let expr = "size(request.query) >= 0";
    let target = |n: usize, extra: &str| {
        let q: Vec<String> = (0..n).map(|i| format!("k{i}=1")).collect();
        format!("/x?{}{extra}", q.join("&"))
    };
    assert!(eval(expr, "GET", &target(1000, ""), None).is_ok());
    let e = eval(expr, "GET", &target(1001, ""), None).unwrap_err();
    assert!(
        format!("{e:?}").contains("more than 1000 query parameters"),
        "{e:?}"
    );
    // Same base, other paths: children, not repeats; a repeat among them is found.
    let children: Vec<String> = (0..500).map(|i| format!("a[{i}]=1")).collect();
    assert!(eval(expr, "GET", &format!("/x?{}", children.join("&")), None).is_ok());
    let e = eval(
        expr,
        "GET",
        &format!("/x?{}&a[7][x]=2", children.join("&")),
        None,
    )
    .unwrap_err();
    assert!(format!("{e:?}").contains("is repeated"), "{e:?}");
    let e = eval(expr, "GET", &target(900, "&K5=2"), None).unwrap_err();
    assert!(format!("{e:?}").contains("is repeated"), "{e:?}");
}

/// Regression: cel's own error text repeats the values it failed on, so a condition that
/// failed on a credential header wrote the client's token into the debug log, `explain` and
/// `test`. A key the expression spells is still told.
#[test]
fn evaluation_errors_repeat_no_value() {
    const CANARY: &str = "CANARYsecret42";
    for expr in [
        // (Through a list: a header compared with a number is refused at load.)
        "[request.headers['x-api-key']][0] / 2 == 1",
        "[request.headers['x-api-key']][0] + 1 == 1",
        "[request.headers['x-api-key']][0] - 1 == 1",
        "[request.headers['x-api-key']][0] < 1",
        "{'a': 1}[request.headers['x-api-key']] == 1",
        "int(request.headers['x-api-key']) == 1",
        "double(request.headers['x-api-key']) == 1.0",
        "[1][request.headers['x-api-key']] == 1",
        "request.headers['x-api-key'].size() / 0 == 1",
    ] {
        let req = Request::get("/x")
            .header("host", "app.test")
            .header("x-api-key", format!("{CANARY}-value"))
            .body(())
            .unwrap();
        match eval_request(expr, req) {
            Err(ConditionError::Error(text)) => {
                assert!(!text.contains("CANARY"), "{expr}: {text}");
                assert!(!text.is_empty(), "{expr}");
            }
            other => panic!("{expr}: {other:?}"),
        }
    }
    let req = Request::get("/x")
        .header("host", "app.test")
        .body(())
        .unwrap();
    assert_eq!(
        eval_request("request.headers['x-tenant'] == 'a'", req),
        Err(ConditionError::Error("no such key: x-tenant".into()))
    );
    // The gateway's own functions' messages, which hold no value, are kept.
    let p = principal();
    assert_eq!(
        eval("claims.org.tier.matches('^2')", "GET", "/", Some(&p)),
        Err(ConditionError::Error(
            "matches: matches() applies to a string".into()
        ))
    );
    // A repeated query name, read through the whole map: a bare token is a name too.
    let req = Request::get(format!("/x?{CANARY}&{CANARY}&page=1&page=2"))
        .header("host", "app.test")
        .body(())
        .unwrap();
    match eval_request("request.query.size() < 5", req) {
        Err(ConditionError::Error(text)) => {
            assert!(!text.contains("CANARY"), "{text}");
            // (Its capitals, which ASP.NET folds, are found before its repeat.)
            assert!(
                text.contains("is repeated") || text.contains("another name"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    let req = Request::get("/x?page=1&page=2")
        .header("host", "app.test")
        .body(())
        .unwrap();
    assert_eq!(
        eval_request("request.query.size() < 5 && 'page' != ''", req),
        Err(ConditionError::Error(
            "query parameter `page` is repeated: the upstream may read another value".into()
        ))
    );
}
