//! Identity templates (`authz::identity::Template::parse`, rendering, `IdentityHeaders`). The
//! input's first line is a template; the rest is a claims object in JSON, read into a
//! principal the way a verified token is (roles from `roles`, tenant from `tenant`, scopes
//! from `scope`).
//!
//! Contract: never panics; a template that parses is ASCII without control characters; a
//! header that is set has a non-empty value of visible ASCII and spaces only (never CR, LF or
//! another control byte, whatever the claims hold); a joined list never has an element that
//! reads as two or none.

#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use portcullis::authn::principal::Mapping;
use portcullis::authz::identity::{Context, IdentityHeaders, Template};
use portcullis::config::raw::RawPrincipalMapping;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (template, claims) = text.split_once('\n').unwrap_or((text, "{}"));
    let Ok(tpl) = Template::parse(template) else {
        return;
    };
    assert!(template.is_ascii(), "{template:?}");
    assert!(!template.chars().any(char::is_control), "{template:?}");
    let claims = match serde_json::from_str::<serde_json::Value>(claims) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let mapping = Mapping::compile(&RawPrincipalMapping {
        roles_claim: Some("roles".into()),
        tenant_claim: Some("tenant".into()),
        ..RawPrincipalMapping::default()
    });
    let principal = mapping
        .principal(claims, &"users".into(), Some("https://iss".into()), None)
        .ok();
    let client_ip: IpAddr = "2001:db8::7".parse().expect("literal");
    let cx = Context {
        principal: principal.as_ref(),
        client_ip,
        rule: "rule-1",
    };
    let _ = tpl.render(&cx);
    let _ = tpl.render_json(&cx);
    let headers = IdentityHeaders::compile([("x-fuzz", template)])
        .expect("a template that parses compiles under a valid name");
    let (set, _refused) = headers.render(&cx, 0);
    for (name, value) in set {
        let bytes = value.as_bytes();
        assert!(!bytes.is_empty(), "{name}: empty value set");
        assert!(
            bytes.iter().all(|&b| b == b' ' || b.is_ascii_graphic()),
            "{name}: {value:?}"
        );
    }
});
