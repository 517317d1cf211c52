//! Differential property test: the compiled index ([`RouteTable::find`]) picks the rule a naive
//! scan picks (every rule in order, [`Rule::matches`]), on random rule sets and requests.
//!
//! The generators stay on small alphabets so that rules and requests collide often: literals
//! in two cases (deny rules and case-insensitive allow rules fold case), `*`, `{name}`, `/**`,
//! patterns and paths deeper than the index's [`MAX_DEPTH`], trailing slashes, wildcard hosts
//! and ports, and the methods only a rule naming them matches.

use http::Method;
use proptest::prelude::*;

use super::*;
use crate::request::facts::ConnInfo;

/// Literal segments, in both cases, one percent-encoded.
const LITERALS: &[&str] = &["a", "A", "b", "users", "Users", "x%20y"];
const HOST_PATTERNS: &[&str] = &["a.test", "*.a.test", "b.test", "*", "A.TEST."];
const HOSTS: &[&str] = &["a.test", "x.a.test", "y.x.a.test", "b.test", "c.test"];
const METHODS: &[&str] = &["GET", "POST", "DELETE", "TRACE"];

#[derive(Debug, Clone)]
struct RawRule {
    hosts: Vec<&'static str>,
    paths: Vec<String>,
    methods: Vec<&'static str>,
    deny: bool,
    case_insensitive: bool,
}

#[derive(Debug, Clone)]
struct RawRequest {
    method: &'static str,
    host: &'static str,
    port: Option<u16>,
    path: String,
}

/// A path pattern: `/`, `/**`, or segments (literal, `*`, `{idN}`), then maybe `/**`.
fn pattern() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        4 => prop::sample::select(LITERALS).prop_map(str::to_owned),
        1 => Just("*".to_owned()),
        1 => Just("{id}".to_owned()),
    ];
    (prop::collection::vec(segment, 0..15), any::<bool>()).prop_map(|(segments, prefix)| {
        let mut p = String::new();
        // Each parameter named apart (a name bound twice is refused).
        let mut params = 0;
        for s in &segments {
            p.push('/');
            if s == "{id}" {
                params += 1;
                p.push_str(&format!("{{id{params}}}"));
            } else {
                p.push_str(s);
            }
        }
        match (prefix, p.is_empty()) {
            (true, _) => p.push_str("/**"),
            (false, true) => p.push('/'),
            (false, false) => {}
        }
        p
    })
}

fn rule() -> impl Strategy<Value = RawRule> {
    (
        prop::collection::vec(prop::sample::select(HOST_PATTERNS), 0..3),
        prop::collection::vec(pattern(), 0..3),
        prop::sample::subsequence(METHODS, 0..=2),
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(hosts, paths, methods, deny, case_insensitive)| RawRule {
            hosts,
            paths,
            methods,
            deny,
            case_insensitive,
        })
}

/// A canonical path over the same literals (and one no pattern names), up to 15 segments.
fn request() -> impl Strategy<Value = RawRequest> {
    let segment = prop_oneof![
        6 => prop::sample::select(LITERALS).prop_map(str::to_owned),
        1 => Just("zz".to_owned()),
    ];
    (
        prop::sample::select(METHODS),
        prop::sample::select(HOSTS),
        prop::option::of(Just(8080u16)),
        prop::collection::vec(segment, 0..15),
        any::<bool>(),
    )
        .prop_map(|(method, host, port, segments, slash)| {
            let mut path = String::new();
            for s in &segments {
                path.push('/');
                path.push_str(s);
            }
            if slash || path.is_empty() {
                path.push('/');
            }
            RawRequest {
                method,
                host,
                port,
                path,
            }
        })
}

fn compile(i: usize, raw: &RawRule) -> Rule {
    let methods: Vec<String> = raw.methods.iter().map(|m| (*m).to_owned()).collect();
    Rule {
        context: Box::default(),
        id: RuleId(format!("r{i}").into()),
        file: "f".into(),
        hosts: raw
            .hosts
            .iter()
            .map(|h| HostPattern::parse(h).unwrap())
            .collect(),
        paths: raw
            .paths
            .iter()
            .map(|p| PathPattern::parse(p).unwrap_or_else(|e| panic!("{p}: {e}")))
            .collect(),
        methods: MethodSet::parse(&methods).unwrap(),
        effect: if raw.deny {
            Effect::Deny
        } else {
            Effect::Allow
        },
        upstream: None,
        authenticators: Box::default(),
        anonymous: true,
        query_credentials: None,
        require: crate::authz::require::Requirements::default(),
        identity: crate::authz::identity::IdentityHeaders::default(),
        when: None,
        denial: None,
        rate_limit: None,
        guard: None,
        timeouts: None,
        edge: None,
        delegate: None,
        case_insensitive: raw.case_insensitive,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_index_agrees_with_trying_every_rule_in_order(
        rules in prop::collection::vec(rule(), 0..24),
        requests in prop::collection::vec(request(), 1..24),
    ) {
        let table = RouteTable::new(rules.iter().enumerate().map(|(i, r)| compile(i, r)).collect());
        let conn = ConnInfo::new("192.0.2.1:1".parse().unwrap(), "l".into(), None);
        for r in &requests {
            let authority = match r.port {
                Some(p) => format!("{}:{p}", r.host),
                None => r.host.to_owned(),
            };
            let (parts, ()) = http::Request::builder()
                .method(Method::from_bytes(r.method.as_bytes()).unwrap())
                .uri(r.path.as_str())
                .header("host", authority)
                .body(())
                .unwrap()
                .into_parts();
            let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
            prop_assert_eq!(&*facts.path, r.path.as_str(), "generated paths are canonical");
            let indexed = table.find(&facts).map(|rule| rule.id.0.to_string());
            let scanned = table
                .rules()
                .iter()
                .find(|rule| rule.matches(&facts))
                .map(|rule| rule.id.0.to_string());
            prop_assert_eq!(indexed, scanned, "{:?}", r);
        }
    }
}
