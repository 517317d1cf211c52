//! Authentication sections: the authenticators (and checks across them: the published
//! development key, mTLS listeners), the signed identity assertion, the `WWW-Authenticate`
//! challenges of the realm, and the global identity headers.

use super::Cx;
use crate::authn::{Authn, CompileError};
use crate::authz::assertion::Assertion;
use crate::authz::identity::IdentityHeaders;
use crate::config::raw::{RawAuthenticator, RawDoor, RawKey};
use crate::snapshot::Challenges;

/// The authenticators; an unchanged one keeps its cache and fetched keys.
pub(super) fn authenticators(cx: &mut Cx<'_>) -> Authn {
    let loaded = cx.loaded;
    let cfg = &loaded.raw;
    let previous = cx.previous.map(|p| &p.authn);
    let authn = match Authn::compile(
        &cfg.authenticators,
        &cfg.authn,
        &loaded.base_dir,
        previous,
        &mut cx.watched,
    ) {
        Ok(a) => a,
        Err(es) => {
            for e in es {
                match e {
                    CompileError::Field(e) => cx.field_errors("", [e]),
                    CompileError::File(d) => cx.diags.push(d),
                }
            }
            Authn::default()
        }
    };
    published_dev_key(cx);
    introspection_audiences(cx);
    mtls_listeners(cx);
    credentials_at_http_doors(cx);
    authn
}

/// An authenticator's kind, whether it strips its credential, and where it reads it: `None`
/// for those that read no credential (mTLS, trusted headers).
fn credential_sources(
    a: &RawAuthenticator,
) -> Option<(
    &'static str,
    bool,
    &[crate::config::raw::RawCredentialSource],
)> {
    match a {
        RawAuthenticator::Jwt(j) => Some(("jwt", j.strip, &j.from)),
        RawAuthenticator::ApiKey(k) => Some(("api_key", k.strip, &k.from)),
        RawAuthenticator::Introspection(i) => Some(("introspection", i.strip, &i.from)),
        _ => None,
    }
}

/// A credential header, kept for the upstream (`strip: false`), that the gateway removes from
/// client requests as another proxy's identity header (`X-Amzn-Oidc-Data`, ALB's signed
/// JWT, which an app may verify itself).
///
/// Why: the authenticator verified it, but the upstream never got it, and nothing said why.
/// Regression: tests (it) grpc::a_kept_credential_the_gateway_strips_is_a_warning
/// `families`: what the gateway removes whoever the rules are.
pub(super) fn credentials_the_gateway_strips(
    cx: &mut Cx<'_>,
    families: &crate::authz::spoofable::Spoofable,
) {
    use crate::config::raw::RawCredentialSource;
    let loaded = cx.loaded;
    let cfg = &loaded.raw;
    for (name, a) in &cfg.authenticators {
        let Some((kind, strip, from)) = credential_sources(a) else {
            continue;
        };
        for (i, source) in from.iter().enumerate() {
            let RawCredentialSource::Header(h) = source else {
                continue;
            };
            // Removed even from a trusted proxy: not one `trusted_proxy_headers` passes.
            let removed = http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                .is_ok_and(|n| families.is_doomed(&n, true));
            if strip || !removed {
                continue;
            }
            cx.warn(
                &format!("authenticators.{name}.{kind}.from[{i}]"),
                format!(
                    "`{h}` is kept for the upstream (`strip: false`), but the gateway removes it from every request as a header only infrastructure may set: the upstream never gets it. If a trusted proxy sets it, name it in `server.trusted_proxy_headers`"
                ),
            );
        }
    }
}

/// Credentials an authenticator strips that a decision door's peer may forward anyway.
///
/// Why: a query credential an authenticator strips is cut from the target by the proxy door
/// and named to Envoy by the gRPC door (`query_parameters_to_remove`), but Envoy's HTTP mode
/// and the forward-auth peers (nginx, Traefik, Caddy, APISIX, Kong) have no way to be told:
/// behind them the upstream receives the credential. Said, since it cannot be done. A cookie
/// credential depends on the forward-auth peer's config (below).
/// Regression: tests (it) grpc::query_credential_behind_an_http_door_is_a_warning
fn credentials_at_http_doors(cx: &mut Cx<'_>) {
    use crate::config::raw::{RawCredentialSource, RawDoor};
    let loaded = cx.loaded;
    let cfg = &loaded.raw;
    let doors: Vec<String> = cfg
        .listeners
        .iter()
        .filter(|l| matches!(l.door, RawDoor::EnvoyHttp(_) | RawDoor::ForwardAuth(_)))
        .map(|l| format!("`{}`", l.name))
        .collect();
    let forward_auth: Vec<String> = cfg
        .listeners
        .iter()
        .filter(|l| matches!(l.door, RawDoor::ForwardAuth(_)))
        .map(|l| format!("`{}`", l.name))
        .collect();
    if doors.is_empty() {
        return;
    }
    for (name, a) in &cfg.authenticators {
        let Some((kind, strip, from)) = credential_sources(a) else {
            continue;
        };
        for (i, source) in from.iter().enumerate() {
            // Whatever `strip` says: the rule's query credentials never leave the gateway's
            // own target, but these peers forward theirs.
            if let RawCredentialSource::Query(q) = source {
                cx.warn(
                    &format!("authenticators.{name}.{kind}.from[{i}]"),
                    format!(
                        "the credential in query parameter `{q}` is not removed behind {}: Envoy's HTTP mode and forward-auth peers cannot remove a query parameter, so their upstream receives it (the proxy and envoy_grpc doors remove it)",
                        doors.join(", ")
                    ),
                );
            }
            // Why: a cookie credential is cut out of `Cookie`, which the door hands back as a
            // `cookie` answer header (or names in `x-portcullis-remove` when it was the only
            // cookie); a peer config that applies neither (Traefik's, Caddy's; nginx's did not
            // either) hands the app the verified session cookie. Envoy's HTTP mode applies both
            // when `allowed_upstream_headers` names `cookie` (examples/envoy/envoy-http.yaml).
            // Regression: tests (it) grpc::query_credential_behind_an_http_door_is_a_warning
            if let (true, RawCredentialSource::Cookie(c), false) =
                (strip, source, forward_auth.is_empty())
            {
                cx.warn(
                    &format!("authenticators.{name}.{kind}.from[{i}]"),
                    format!(
                        "the credential in cookie `{c}` is stripped behind {} only if the peer replaces the request's `Cookie` with the door's `cookie` answer header, and drops it when `x-portcullis-remove` names `cookie`: the shipped nginx and Kong examples do, the Traefik, Caddy and APISIX ones do not",
                        forward_auth.join(", ")
                    ),
                );
            }
        }
    }
}

/// Why: the development key pair ships with Portcullis, private half included; a gateway
/// trusting it accepts tokens anyone can mint. Regression: tests (it)
/// check::shipped_config_checks_and_warns_about_the_development_key
fn published_dev_key(cx: &mut Cx<'_>) {
    let loaded = cx.loaded;
    for (name, a) in &loaded.raw.authenticators {
        let RawAuthenticator::Jwt(j) = a else {
            continue;
        };
        for (i, p) in j.providers.iter().enumerate() {
            for (k, key) in p.keys.iter().enumerate() {
                let field = format!("authenticators.{name}.jwt.providers[{i}].keys[{k}]");
                match key {
                    RawKey::PemFile(f) => {
                        let published = crate::config::files::read_to_string(cx.path(&f.path))
                            .is_ok_and(|t| t.trim() == PUBLISHED_DEV_KEY.trim());
                        if published {
                            cx.warn(&field, PUBLISHED_DEV_KEY_WARNING.into());
                        }
                    }
                    // The same key pair as a JWKS (`config/dev/dev-1.jwks.json`).
                    RawKey::JwksFile(f) => {
                        let read = |t: &str| serde_json::from_str::<serde_json::Value>(t).ok();
                        let published = crate::config::files::read_to_string(cx.path(&f.path))
                            .ok()
                            .and_then(|t| read(&t))
                            .is_some_and(|v| Some(v) == read(PUBLISHED_DEV_JWKS));
                        if published {
                            cx.warn(&field, PUBLISHED_DEV_KEY_WARNING.into());
                        }
                    }
                    // Why: the example HMAC secret ships with Portcullis too; a gateway
                    // using it accepts tokens anyone can mint. Regression: tests (it)
                    // check::published_example_secret_warns
                    RawKey::Hmac(h) => {
                        let value = match &h.secret {
                            crate::config::raw::RawSecret::File(p) => {
                                crate::config::files::read_to_string(cx.path(p)).ok()
                            }
                            crate::config::raw::RawSecret::Env(var) => std::env::var(var).ok(),
                        };
                        if value.is_some_and(|v| v.trim() == PUBLISHED_EXAMPLE_SECRET.trim()) {
                            cx.warn(
                                &format!("{field}.hmac.secret"),
                                "this is the example secret published with Portcullis: anyone can mint tokens it verifies; replace it before deploying".into(),
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// An introspection authenticator without `audiences` accepts a token the authorization
/// server issued for any of its clients.
///
/// Why: a `jwt` provider must name its audiences, for that reason; an introspection
/// authenticator may not (RFC 7662 answers need not carry `aud`), and one without them took
/// a token minted for another service as its own. Said, since some servers never send `aud`.
/// Regression: tests (it) check::introspection_without_audiences_warns
fn introspection_audiences(cx: &mut Cx<'_>) {
    let loaded = cx.loaded;
    for (name, a) in &loaded.raw.authenticators {
        if let RawAuthenticator::Introspection(x) = a
            && x.audiences.is_empty()
        {
            cx.warn(
                &format!("authenticators.{name}.introspection"),
                "no `audiences`: an active token issued for any client of the authorization server is accepted, one meant for another service included; list the audiences this gateway's tokens carry".into(),
            );
        }
    }
}

/// mTLS authenticators name listeners that carry the client's certificate: a proxy listener
/// asking for one (`tls.client_auth`), or an `envoy_grpc` door passing on Envoy's
/// (`client_certificates: true`). A decision door's own TLS client certificate is its peer's,
/// never the client's.
///
/// Why the gRPC door: `check` warned that no listener asked for client certificates where the
/// gRPC door carried them and the authenticator found them.
/// Regression: tests (it) policy::mtls_through_the_grpc_door_is_not_warned_about
fn mtls_listeners(cx: &mut Cx<'_>) {
    let loaded = cx.loaded;
    let cfg = &loaded.raw;
    let asks_certs = |name: &str| {
        cfg.listeners.iter().any(|l| {
            l.name == name
                && match &l.door {
                    RawDoor::Proxy => l.tls.as_ref().is_some_and(|t| {
                        t.client_auth.is_some()
                            || t.certificates.iter().any(|c| c.client_auth.is_some())
                    }),
                    RawDoor::EnvoyGrpc(d) => d.client_certificates,
                    _ => false,
                }
        })
    };
    for (name, a) in &cfg.authenticators {
        let RawAuthenticator::Mtls(m) = a else {
            continue;
        };
        for (j, l) in m.listeners.iter().enumerate() {
            if !asks_certs(l) {
                let decision_door = cfg.listeners.iter().any(|x| {
                    x.name == *l && !matches!(x.door, RawDoor::Proxy | RawDoor::EnvoyGrpc(_))
                });
                cx.error(
                    &format!("authenticators.{name}.mtls.listeners[{j}]"),
                    if decision_door {
                        format!(
                            "listener `{l}` is a decision door: its TLS client certificate is its peer's, never the client's"
                        )
                    } else {
                        format!(
                            "no listener `{l}` with `tls.client_auth` (nor an `envoy_grpc` door with `client_certificates: true`)"
                        )
                    },
                );
            }
        }
        if m.listeners.is_empty() && !cfg.listeners.iter().any(|l| asks_certs(&l.name)) {
            cx.warn(
                &format!("authenticators.{name}"),
                "no listener carries client certificates (a proxy listener's `tls.client_auth`, an `envoy_grpc` door's `client_certificates: true`): this authenticator never finds one".into(),
            );
        }
    }
}

/// The signed identity assertion; its key files are watched (a rotation reloads).
pub(super) fn assertion(cx: &mut Cx<'_>) -> Option<Assertion> {
    let loaded = cx.loaded;
    let raw = loaded.raw.identity_assertion.as_ref()?;
    let key = cx.path(&raw.key_file);
    cx.watched.push(key);
    for r in &raw.retired_keys {
        let key = cx.path(&r.key_file);
        cx.watched.push(key);
    }
    // Why: without an audience, an assertion minted for one upstream verifies at every other
    // that trusts this gateway's keys: one service can replay what it was handed to another.
    // Regression: tests (it) assertion::an_assertion_without_audience_warns
    if raw.audience.is_none()
        && loaded
            .raw
            .upstreams
            .values()
            .any(|u| u.assertion_audience.is_none())
    {
        cx.warn(
            "identity_assertion.audience",
            "no `audience`: an assertion minted for one upstream verifies at any other that trusts this gateway's keys; set `audience` (or each upstream's `assertion_audience`)".into(),
        );
    }
    // Why: an assertion header that is also an identity header was overwritten by the
    // identity value (or overwrote it), silently. Rules' identity headers: `rules::identity`.
    // Regression: tests (it) assertion::assertion_header_is_no_identity_header
    let header = raw
        .header
        .as_deref()
        .unwrap_or(crate::authz::assertion::DEFAULT_HEADER);
    let fold = crate::authz::identity::fold_name(header);
    if is_request_id_header(cx, header) {
        cx.error(
            "identity_assertion.header",
            format!("`{header}` is `server.request_id_header`, which the gateway sets; choose another name"),
        );
    }
    if loaded
        .raw
        .identity_headers
        .keys()
        .any(|k| crate::authz::identity::fold_name(k) == fold)
    {
        cx.error(
            "identity_assertion.header",
            format!("`{header}` is also an identity header: name the assertion's header apart"),
        );
    }
    match Assertion::compile(raw, &loaded.base_dir) {
        Ok(a) => Some(a),
        Err(es) => {
            cx.field_errors("identity_assertion", es);
            None
        }
    }
}

/// The realm's challenges.
pub(super) fn challenges(cx: &mut Cx<'_>) -> Challenges {
    match Challenges::new(&cx.cfg().authn.realm) {
        Some(c) => c,
        None => {
            cx.error(
                "authn.realm",
                "must be visible ASCII characters and spaces".into(),
            );
            Challenges::fallback()
        }
    }
}

/// Whether `name` is the configured request id header, which the gateway writes after the
/// identity headers and the assertion (so either would be lost).
pub(super) fn is_request_id_header(cx: &Cx<'_>, name: &str) -> bool {
    crate::authz::identity::fold_name(name)
        == crate::authz::identity::fold_name(&cx.loaded.raw.server.request_id_header)
}

/// The global identity headers, checked alone (rules merge their own over them).
pub(super) fn identity_headers(cx: &mut Cx<'_>) {
    let loaded = cx.loaded;
    for k in loaded.raw.identity_headers.keys() {
        if is_request_id_header(cx, k) {
            cx.error(
                &format!("identity_headers.{k}"),
                format!("`{k}` is `server.request_id_header`, which the gateway sets; choose another name"),
            );
        }
    }
    if let Err(es) = IdentityHeaders::compile(
        loaded
            .raw
            .identity_headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    ) {
        cx.field_errors("identity_headers", es);
    }
}

/// The public half of `config/dev/dev-1.key`, which ships with Portcullis.
const PUBLISHED_DEV_KEY: &str = include_str!("../../../config/dev/dev-1.pem");
/// What `check` says of a key source holding the development key pair.
const PUBLISHED_DEV_KEY_WARNING: &str = "this is the development key published with Portcullis: anyone can mint tokens it verifies; replace it before deploying";
/// The development key pair's public half as a JWKS.
const PUBLISHED_DEV_JWKS: &str = include_str!("../../../config/dev/dev-1.jwks.json");
/// The example HMAC secret `config/examples/seed.yaml` reads.
const PUBLISHED_EXAMPLE_SECRET: &str = include_str!("../../../config/examples/seed.secret");
