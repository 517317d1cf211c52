use std::time::Duration;

use super::*;
use crate::clock::Clock;

fn raw(key: &str, requests: u32, per: Duration, burst: Option<u32>) -> RawRateLimit {
    RawRateLimit {
        key: key.into(),
        requests,
        per,
        burst,
        quota: None,
        backend: RawBackend::Local,
        on_redis_failure: RawRedisFailure::Local,
        headers: true,
        shadow: false,
        shadow_header: None,
        tier: None,
        tiers: std::collections::BTreeMap::new(),
        count: RawCount::Allowed,
        max_keys: 100,
    }
}

fn compile(
    def: &RawRateLimit,
    previous: Option<&Arc<Limit>>,
) -> Result<Arc<Limit>, Vec<FieldError>> {
    Limit::compile("l", def, previous, None, &Clock::manual(1_000))
}

fn facts_parts() -> (http::request::Parts, crate::request::facts::ConnInfo) {
    let (parts, ()) = http::Request::get("/")
        .header("host", "a.test")
        .body(())
        .unwrap()
        .into_parts();
    let conn =
        crate::request::facts::ConnInfo::new("192.0.2.1:1".parse().unwrap(), "l".into(), None);
    (parts, conn)
}

fn principal(claims: &serde_json::Value) -> Principal {
    Principal {
        id: "p".into(),
        kind: crate::authn::principal::PrincipalKind::User,
        authenticator: "a".into(),
        issuer: None,
        scopes: Box::default(),
        roles: Box::default(),
        tenant: None,
        api_key_id: None,
        claims: claims.as_object().unwrap().clone(),
        expires_at: None,
        valid_until: None,
        derived: Default::default(),
    }
}

#[test]
fn refuses_bad_definitions_by_field() {
    let s = Duration::from_secs(1);
    let mut redis_without_section = raw("route", 1, s, None);
    redis_without_section.backend = RawBackend::Redis;
    let mut failure_mode_on_local = raw("route", 1, s, None);
    failure_mode_on_local.on_redis_failure = RawRedisFailure::Deny;
    let mut header_without_shadow = raw("route", 1, s, None);
    header_without_shadow.shadow_header = Some("x-shadow".into());
    let mut tiers_without_tier = raw("route", 1, s, None);
    tiers_without_tier.tiers.insert(
        "gold".into(),
        crate::config::raw::RawTier {
            requests: 0,
            per: s,
            burst: None,
            quota: None,
        },
    );
    let mut bad_quota = raw("route", 1, s, None);
    bad_quota.quota = Some(crate::config::raw::RawQuota {
        requests: 0,
        per: s,
    });
    let cases = [
        (raw("everyone", 1, s, None), vec!["key"]),
        (raw("header:bad name", 1, s, None), vec!["key"]),
        (raw("claim:a..b", 1, s, None), vec!["key"]),
        (raw("route", 0, s, None), vec!["requests"]),
        (raw("route", 1, s, Some(0)), vec!["burst"]),
        (raw("route", 1, Duration::ZERO, None), vec!["per"]),
        (raw("route", 10, Duration::from_nanos(5), None), vec!["per"]),
        (redis_without_section, vec!["backend"]),
        (failure_mode_on_local, vec!["on_redis_failure"]),
        (header_without_shadow, vec!["shadow_header"]),
        (tiers_without_tier, vec!["tiers", "tiers.gold.requests"]),
        (bad_quota, vec!["quota.requests"]),
    ];
    for (def, fields) in cases {
        let got: Vec<String> = compile(&def, None)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(got, fields, "{def:?}");
    }
}

#[test]
fn a_redis_limit_counts_microseconds() {
    let raw_redis: crate::config::raw::RawRedis =
        serde_yaml::from_str("url: redis://127.0.0.1:6379").unwrap();
    let store =
        RedisStore::compile(&raw_redis, std::path::Path::new("."), None, &mut Vec::new()).unwrap();
    let mut fast = raw("route", 2_000_000, Duration::from_secs(1), None);
    fast.backend = RawBackend::Redis;
    let fields: Vec<String> = Limit::compile("l", &fast, None, Some(&store), &Clock::manual(1))
        .err()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.field)
        .collect();
    assert_eq!(fields, ["per"]);
    // The same rate in this process counts nanoseconds.
    fast.backend = RawBackend::Local;
    assert!(compile(&fast, None).is_ok());
    fast.backend = RawBackend::Redis;
    fast.requests = 1_000_000;
    assert!(Limit::compile("l", &fast, None, Some(&store), &Clock::manual(1)).is_ok());
}

#[tokio::test]
async fn claim_keys_tell_json_types_apart() {
    let limit = compile(&raw("claim:n", 1, Duration::from_secs(60), None), None).unwrap();
    let (parts, conn) = facts_parts();
    let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
    let with = |n: serde_json::Value| principal(&serde_json::json!({ "n": n }));
    let check = |p: Principal| {
        let limit = Arc::clone(&limit);
        let facts = &facts;
        async move { limit.check(facts, Some(&p), "r", Mode::Spend).await }
    };
    // Each claim value is its own budget: the second request of one value is refused.
    assert!(matches!(
        check(with(serde_json::json!(42))).await,
        Checked::Allowed(Some(_))
    ));
    assert!(matches!(
        check(with(serde_json::json!("42"))).await,
        Checked::Allowed(Some(_))
    ));
    assert!(matches!(
        check(with(serde_json::json!(43))).await,
        Checked::Allowed(Some(_))
    ));
    assert!(matches!(
        check(with(serde_json::json!(42))).await,
        Checked::Limited(_)
    ));
}

#[tokio::test]
async fn tiers_choose_the_rate_and_shadow_never_refuses() {
    let mut def = raw("principal", 1, Duration::from_secs(60), None);
    def.tier = Some("claim:plan".into());
    def.tiers.insert(
        "gold".into(),
        crate::config::raw::RawTier {
            requests: 3,
            per: Duration::from_secs(60),
            burst: None,
            quota: None,
        },
    );
    let limit = compile(&def, None).unwrap();
    let (parts, conn) = facts_parts();
    let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
    let gold = principal(&serde_json::json!({"plan": "gold"}));
    let other = principal(&serde_json::json!({"plan": "tin"}));
    for _ in 0..3 {
        assert!(matches!(
            limit.check(&facts, Some(&gold), "r", Mode::Spend).await,
            Checked::Allowed(Some(_))
        ));
    }
    let Checked::Limited(t) = limit.check(&facts, Some(&gold), "r", Mode::Spend).await else {
        panic!("gold's fourth");
    };
    assert_eq!(
        t,
        Throttle {
            limit: 3,
            retry_after: 20
        }
    );

    let mut shadow = raw("client_ip", 1, Duration::from_secs(60), None);
    shadow.shadow = true;
    let limit = compile(&shadow, None).unwrap();
    assert!(matches!(
        limit.check(&facts, Some(&other), "r", Mode::Spend).await,
        Checked::Allowed(Some(_))
    ));
    for _ in 0..3 {
        assert_eq!(
            limit.check(&facts, None, "r", Mode::Spend).await,
            Checked::ShadowLimited
        );
    }
    assert_eq!(limit.counters.shadow_limited[0].load(Ordering::Relaxed), 3);
    assert_eq!(limit.counters.limited[0].load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_changed_definition_keeps_the_budget_spent() {
    let def = raw("route", 5, Duration::from_secs(60), Some(2));
    let a = compile(&def, None).unwrap();
    let b = compile(&def, Some(&a)).unwrap();
    assert!(Arc::ptr_eq(&a, &b), "unchanged: the same limit");
    let (parts, conn) = facts_parts();
    let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
    for _ in 0..2 {
        assert!(matches!(
            a.check(&facts, None, "r", Mode::Spend).await,
            Checked::Allowed(Some(_))
        ));
    }
    // Tightened to 1 a minute, burst 1: the two spent are still spent.
    let tight = compile(&raw("route", 1, Duration::from_secs(60), None), Some(&a)).unwrap();
    assert!(!Arc::ptr_eq(&a, &tight));
    assert!(matches!(
        tight.check(&facts, None, "r", Mode::Spend).await,
        Checked::Limited(_)
    ));
    assert!(Arc::ptr_eq(&a.counters, &tight.counters));
}

/// `explain` shows a limit as its config says it.
#[test]
fn summaries() {
    let cases = [
        (
            "{key: client_ip, requests: 1, per: 1h}",
            "1 per 1h (burst 1), by client_ip",
        ),
        (
            "{key: principal, requests: 30, per: 1m, burst: 10, quota: {requests: 1000, per: 1d}}",
            "30 per 1m (burst 10), 1000 per 1day, by principal",
        ),
        (
            "{key: 'header:X-Tenant', requests: 5, per: 1s, shadow: true}",
            "5 per 1s (burst 5), by header:x-tenant; shadow mode: never refuses",
        ),
        (
            "{key: route, requests: 7, per: 1m}",
            "7 per 1m (burst 7), by route",
        ),
        (
            "{key: client_ip, requests: 3, per: 90s, count: failures}",
            "3 per 1m 30s (burst 3), by client_ip; counts refusals",
        ),
        (
            "{key: 'claim:org.id', requests: 10, per: 1m, tier: 'claim:plan', tiers: {gold: {requests: 100, per: 1m, burst: 20}}}",
            "10 per 1m (burst 10), by claim:org.id; tier `gold` (claim plan): 100 per 1m (burst 20)",
        ),
    ];
    for (yaml, want) in cases {
        let def: RawRateLimit = serde_yaml::from_str(yaml).unwrap();
        let limit = compile(&def, None).unwrap_or_else(|e| panic!("{yaml}: {e:?}"));
        assert_eq!(limit.summary(), want, "{yaml}");
    }
}

/// A `header:` key's header sent empty (or blank) by a trusted proxy is counted as if
/// absent, by the client's address: counted as a value, every such request shared one budget.
#[test]
fn an_empty_header_value_counts_as_absent() {
    let key = |value: Option<&'static str>, ip: &str| {
        let (mut parts, conn) = facts_parts();
        if let Some(v) = value {
            parts
                .headers
                .insert("x-tenant", http::HeaderValue::from_static(v));
        }
        let facts = RequestFacts {
            peer_trusted: true,
            client_ip: ip.parse().unwrap(),
            ..RequestFacts::from_parts(&parts, &conn, &[]).unwrap()
        };
        let mut h = Sha256::default();
        CountBy::parse("header:x-tenant")
            .unwrap()
            .write(&mut h, &facts, None, "rule");
        let mut out = String::new();
        h.finish_hex(&mut out);
        out
    };
    for empty in ["", "  "] {
        assert_eq!(
            key(Some(empty), "10.0.0.1"),
            key(None, "10.0.0.1"),
            "{empty:?}"
        );
        assert_ne!(
            key(Some(empty), "10.0.0.1"),
            key(Some(empty), "10.0.0.2"),
            "{empty:?}"
        );
    }
    assert_eq!(key(Some("acme"), "10.0.0.1"), key(Some("acme"), "10.0.0.2"));
}

/// The Redis key of every kind, pinned: every gateway of a fleet, whatever its build, Rust
/// release or platform, must name a client's budget alike, and an upgrade must not hand
/// everyone a fresh budget.
///
/// Why: the keys were fed through `std::hash::Hash`, whose bytes (length prefixes, enum
/// discriminants, native-endian integers) the standard library does not promise to keep
/// across releases or platforms; they are now written by `key::write` itself, as the
/// same bytes a 64-bit little-endian build fed before, so the keys did not change.
#[test]
fn redis_keys_are_pinned() {
    let (mut parts, conn) = facts_parts();
    parts
        .headers
        .insert("x-tenant", http::HeaderValue::from_static("acme"));
    let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
    let trusted = RequestFacts {
        peer_trusted: true,
        ..RequestFacts::from_parts(&parts, &conn, &[]).unwrap()
    };
    let v6 = RequestFacts {
        client_ip: "2001:db8:1:2:3:4:5:6".parse().unwrap(),
        ..RequestFacts::from_parts(&parts, &conn, &[]).unwrap()
    };
    let user = principal(&serde_json::json!({"org": "acme", "n": 42}));
    let machine = Principal {
        kind: crate::authn::principal::PrincipalKind::Machine,
        issuer: Some("https://issuer.test".into()),
        ..user.clone()
    };
    let keyed = Principal {
        api_key_id: Some("k1".into()),
        ..user.clone()
    };
    let key = |by: &str, facts: &RequestFacts<'_>, p: Option<&Principal>| {
        let mut h = Sha256::default();
        CountBy::parse(by).unwrap().write(&mut h, facts, p, "rule");
        let mut out = String::new();
        h.finish_hex(&mut out);
        out
    };
    let cases: [(&str, &RequestFacts<'_>, Option<&Principal>, &str); 12] = [
        (
            "client_ip",
            &facts,
            None,
            "9ba1342a5a3e68bbde26945f3b34d61e",
        ),
        ("client_ip", &v6, None, "a21714b80b8d7fcf2e55e621f85c477b"),
        ("route", &facts, None, "ba37d3f3b151363ce19ee414d154004a"),
        (
            "principal",
            &facts,
            Some(&user),
            "e61824638e300a579df7c7d2cc82cf19",
        ),
        (
            "principal",
            &facts,
            Some(&machine),
            "159db8b3d5aee963d15f63a578b2db95",
        ),
        (
            "principal",
            &facts,
            None,
            "9ba1342a5a3e68bbde26945f3b34d61e",
        ),
        (
            "api_key",
            &facts,
            Some(&keyed),
            "edd47b5990b4987afa0772223ff6e4be",
        ),
        (
            "api_key",
            &facts,
            Some(&user),
            "e61824638e300a579df7c7d2cc82cf19",
        ),
        (
            "header:x-tenant",
            &trusted,
            None,
            "e423e069b166e4ac9abb4a86878f74cd",
        ),
        (
            "header:x-tenant",
            &facts,
            None,
            "9ba1342a5a3e68bbde26945f3b34d61e",
        ),
        (
            "claim:org",
            &facts,
            Some(&user),
            "ac8a8561bee4f87a6f8c0d1ce7d3eb7e",
        ),
        (
            "claim:n",
            &facts,
            Some(&user),
            "b8f49da0cb71db44c35636a906b5a698",
        ),
    ];
    for (by, facts, p, want) in cases {
        assert_eq!(key(by, facts, p), want, "{by} {p:?}");
    }
}
