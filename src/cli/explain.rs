//! `portcullis explain`: one request through the same decision code as serving, with a
//! recording trace: the rule that matched, each step with its result, the decision and
//! status, and the exact headers the upstream would receive (credentials redacted).

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, Request, Uri, header};
use serde_json::{Value, json};

use crate::config;
use crate::decision::{self, Decision, TraceEvent};
use crate::proxy::service;
use crate::request::RequestFacts;
use crate::request::facts::{ConnInfo, Door, Scheme, TlsInfo};
use crate::server::hop_by_hop;
use crate::snapshot::Snapshot;

/// The request to explain.
#[derive(Debug)]
pub struct ExplainArgs<'a> {
    /// The gateway config.
    pub config: &'a Path,
    /// Method.
    pub method: &'a str,
    /// `https://host[:port]/path?query`.
    pub url: &'a str,
    /// `Name: value` headers.
    pub headers: &'a [String],
    /// The client address (default 127.0.0.1).
    pub client_ip: Option<IpAddr>,
    /// Print JSON.
    pub json: bool,
    /// Which door's code to run (the proxy, or `listener`'s door, by default).
    pub door: Option<Door>,
    /// Which listener of the door (the first by default).
    pub listener: Option<&'a str>,
    /// `name=value` context extensions of the Check (the Envoy gRPC door only).
    pub context: &'a [String],
}

/// Runs `explain`; exit 0 when the request would be allowed, 1 when denied, 2 on bad input.
pub fn explain(args: &ExplainArgs<'_>) -> ExitCode {
    let (snapshot, _) = match config::build(args.config, None) {
        Ok(s) => s,
        Err(diags) => {
            let mut err = std::io::stderr().lock();
            for d in &diags {
                let _ = writeln!(err, "{d}");
            }
            return ExitCode::from(2);
        }
    };
    let rt = match super::run::runtime(1) {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let request = Request1 {
        method: args.method,
        url: args.url,
        headers: args.headers,
        client_ip: args.client_ip,
    };
    let (door, listener) = match door_of(&snapshot, args.door, args.listener) {
        Ok(d) => d,
        Err(m) => return fail(&m),
    };
    // Why: only Envoy's Check carries context extensions; given for another door they would
    // be silently ignored, and the explanation would not be of the request meant.
    if !args.context.is_empty() && door != Door::EnvoyGrpc {
        return fail("--context is Envoy's context_extensions: only with --door envoy-grpc");
    }
    let mut context = HashMap::new();
    for c in args.context {
        let Some((name, value)) = c.split_once('=') else {
            return fail(&format!("context `{c}` is not `name=value`"));
        };
        context.insert(name.to_owned(), value.to_owned());
    }
    let evaluated = if door == Door::Proxy {
        rt.block_on(run(&snapshot, &request))
    } else {
        rt.block_on(run_door(&snapshot, &request, door, listener, &context))
    };
    match evaluated {
        Ok((report, allowed)) => {
            let text = if args.json {
                serde_json::to_string_pretty(&report).unwrap_or_default() + "\n"
            } else {
                render_text(&report)
            };
            let _ = std::io::stdout().write_all(text.as_bytes());
            if allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(m) => fail(&m),
    }
}

/// The door to run and the listener named: `door` (the proxy by default), or `listener`'s,
/// which must be `door` when both are given.
///
/// Why a listener: with two listeners of a door (the shipped config has `nginx`, with a
/// status map, and `forward-auth`), the first one's answer was the only one explain could
/// give. Regression: tests (it) doors::explain_runs_the_listener_named
fn door_of<'a>(
    snapshot: &Snapshot,
    door: Option<Door>,
    listener: Option<&'a str>,
) -> Result<(Door, Option<&'a str>), String> {
    match listener {
        None => Ok((door.unwrap_or(Door::Proxy), None)),
        Some(name) => match snapshot.listeners.iter().find(|l| &*l.name == name) {
            None => Err(format!("no listener `{name}` in the config")),
            Some(l) if door.is_some_and(|d| d != l.door.door()) => Err(format!(
                "listener `{name}` serves the {} door, not {}",
                l.door.door().as_str(),
                door.map_or("", |d| d.as_str())
            )),
            Some(l) => Ok((l.door.door(), Some(name))),
        },
    }
}

/// Decides one request (`method`, `url`, `Name: value` headers, client address) against
/// `snapshot` as serving would, through `door` (or `listener`'s door; the proxy by default):
/// the JSON report and whether it was allowed.
pub(crate) async fn evaluate(
    snapshot: &Snapshot,
    request: (&str, &str, &[String], Option<IpAddr>),
    door: Option<Door>,
    listener: Option<&str>,
) -> Result<(Value, bool), String> {
    let (method, url, headers, client_ip) = request;
    let args = Request1 {
        method,
        url,
        headers,
        client_ip,
    };
    match door_of(snapshot, door, listener)? {
        (Door::Proxy, _) => run(snapshot, &args).await,
        (door, listener) => run_door(snapshot, &args, door, listener, &HashMap::new()).await,
    }
}

struct Request1<'a> {
    method: &'a str,
    url: &'a str,
    headers: &'a [String],
    client_ip: Option<IpAddr>,
}

/// The refusal of a URL that does not parse, its query and user information not shown.
///
/// Why: `explain --url` and `test` cases printed the URL whole, with the `access_token=` or
/// the `user:pass@` in it; and `-H`'s errors printed the header, value and all (a header
/// without its `:` is likely a credential written `Authorization=Bearer …`). Headers are named
/// by their place. Regression: tests (it) policy::explain_errors_show_no_credential
fn not_a_url(url: &str) -> String {
    format!("`{}` is not a URL", crate::secret::redacted_url(url))
}

async fn run(snapshot: &Snapshot, args: &Request1<'_>) -> Result<(Value, bool), String> {
    let url: Uri = args.url.parse().map_err(|_| not_a_url(args.url))?;
    let scheme = match url.scheme_str() {
        Some("https") => Scheme::Https,
        Some("http") => Scheme::Http,
        _ => return Err("the URL must start with http:// or https://".into()),
    };
    let authority = url
        .authority()
        .ok_or("the URL needs a host")?
        .as_str()
        .to_owned();
    let target = url.path_and_query().map_or("/", |p| p.as_str());
    let method = http::Method::from_bytes(args.method.as_bytes())
        .map_err(|_| "invalid method".to_owned())?;
    let mut req = Request::builder().method(method).uri(target);
    let mut has_host = false;
    for (i, h) in args.headers.iter().enumerate() {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("header {} is not `Name: value`", i + 1))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("header {} has no valid name before its `:`", i + 1))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("invalid header value for `{name}`"))?;
        // Why: the request was decided on `-H Host` while the answer showed the URL's host,
        // and the gateway decides an absolute-form (or HTTP/2) request on the URL's: a host
        // rule read as allowed here was denied live. One host, in the URL.
        // Regression: tests (it) policy::explain_refuses_a_host_header_other_than_the_urls
        if name == header::HOST && !value.as_bytes().eq_ignore_ascii_case(authority.as_bytes()) {
            return Err(format!(
                "`Host: {}` is not the URL's host `{authority}`: put the host to decide on in the URL",
                value.to_str().unwrap_or("?")
            ));
        }
        has_host |= name == header::HOST;
        req = req.header(name, value);
    }
    if !has_host {
        req = req.header(header::HOST, authority);
    }
    let (mut parts, ()) = req
        .body(())
        .map_err(|e| format!("invalid request: {e}"))?
        .into_parts();
    let client_ip = args.client_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let listener = snapshot
        .listeners
        .iter()
        .find(|l| l.tls.is_some() == (scheme == Scheme::Https))
        .or_else(|| snapshot.listeners.first())
        .map_or_else(|| Arc::from("-"), |l| Arc::clone(&l.name));
    let conn = ConnInfo::new(
        SocketAddr::new(client_ip, 50000),
        listener,
        (scheme == Scheme::Https).then(TlsInfo::default),
    );
    let redact = redacted_names(snapshot);
    let mut report = json!({
        // Why: a query credential was echoed whole, where `-H` ones never are.
        // Regression: tests (it) policy::explain_never_echoes_a_query_credential
        "request": {"method": parts.method.as_str(), "url": redact_query(args.url, snapshot), "client_ip": client_ip.to_string()},
    });
    if let Some((status, reason)) = crate::proxy::service::head_refusal(&parts, &snapshot.server) {
        report["decision"] = json!("deny");
        report["status"] = json!(status.as_u16());
        report["reason"] = json!(reason);
        report["trace"] = json!(["the request is refused before any rule: malformed"]);
        return Ok((report, false));
    }
    // The upgrade asked for, read before the hop-by-hop headers go, as the proxy reads it.
    let upgrade = crate::proxy::upgrade::asked(&mut parts);
    // What the proxy passes on of them and of the trace (`proxy::service`): `TE: trailers`,
    // and its own `traceparent`, a new span of the client's trace (or of a new one).
    // Why: the upstream got `te`, `traceparent` and `tracestate`, and explain showed none,
    // so a test expecting no `traceparent` passed. Regression: tests (it)
    // policy::explain_shows_the_trace_and_te_the_upstream_gets
    let te_trailers = service::takes_trailers(&parts.headers);
    let trace_context = service::trace_of(snapshot, &parts.headers);
    hop_by_hop::strip(&mut parts.headers);
    let facts = match RequestFacts::from_parts(&parts, &conn, &snapshot.server.trusted_proxies) {
        Ok(f) => f,
        Err(e) => {
            report["decision"] = json!("deny");
            // Why: every refusal here was shown as 400, while the proxy answers `CONNECT`
            // with 405, a misdirected host with 421, a long target with 414.
            // Regression: tests (it) doors::explain_shows_the_door_answer_to_a_malformed_request
            report["status"] = json!(e.status().as_u16());
            report["reason"] = json!(e.as_str());
            report["trace"] = json!(["the request is refused before any rule: malformed"]);
            return Ok((report, false));
        }
    };
    report["request"]["canonical_path"] = json!(facts.path.as_ref());
    if let Some((rule, checked)) = crate::authz::edge::preflight(snapshot, &facts) {
        return Ok(preflight_report(report, snapshot, &rule, checked, None));
    }
    // Remote keys: fetched as when serving, within their startup timeout.
    snapshot.authn.start();
    let started = Instant::now();
    while !snapshot.authn.keys_settled() && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut trace: Vec<TraceEvent> = Vec::new();
    let decision = decision::decide(snapshot, &facts, &mut trace).await;
    let steps: Vec<String> = trace.iter().map(|e| describe(e, snapshot)).collect();
    report["trace"] = json!(steps);
    if let Some(rule) = decision.rule() {
        report["rule"] = json!({"name": rule, "file": rule_file(snapshot, rule)});
    }
    match decision {
        Decision::Deny(d) => {
            report["decision"] = json!("deny");
            let refusal = d.refusal(
                &snapshot.challenges,
                &HeaderValue::from_static("(generated per request)"),
            );
            report["status"] = json!(refusal.status.as_u16());
            report["reason"] = json!(d.kind.as_str());
            report["response_code"] = json!(d.public_code());
            if let Some(c) = &refusal.challenge {
                report["www_authenticate"] = json!(c.to_str().unwrap_or(""));
            }
            if let Some(l) = &refusal.location {
                report["location"] = json!(l.to_str().unwrap_or(""));
            }
            Ok((report, false))
        }
        Decision::Allow(mut allow) => {
            // Why: the proxy refuses a WebSocket its rule relays from an origin the rule's
            // CORS does not name (403 `cors_origin_not_allowed`), and `explain` and `test`
            // said allowed: an operator could not check the guard against cross-site
            // WebSocket hijacking with them. Regression: tests (it)
            // policy::explain_refuses_a_websocket_from_a_foreign_origin_as_the_proxy_does
            if let Some(asked) = &upgrade
                && let Some(edge) = allow.edge.as_deref()
                && edge.relays(asked.protocols.as_bytes())
                && edge.refuses_upgrade_origin(&parts.headers)
            {
                let reason = crate::authz::edge::PreflightRefusal::Origin.as_str();
                report["decision"] = json!("deny");
                report["status"] = json!(403);
                report["reason"] = json!(reason);
                report["response_code"] = json!(reason);
                if let Some(steps) = report["trace"].as_array_mut() {
                    steps.push(json!(format!(
                        "the rule allows the request but refuses the upgrade it asks for: {reason}"
                    )));
                }
                return Ok((report, false));
            }
            report["decision"] = json!("allow");
            if let Some(p) = &allow.principal {
                report["principal"] = json!({
                    "id": &*p.id,
                    "kind": match p.kind { crate::authn::PrincipalKind::User => "user", crate::authn::PrincipalKind::Machine => "machine" },
                    "authenticator": &*p.authenticator,
                    "scopes": p.scopes.iter().map(|s| &**s).collect::<Vec<_>>(),
                    "roles": p.roles.iter().map(|s| &**s).collect::<Vec<_>>(),
                });
            }
            let Some(upstream) = allow.upstream.and_then(|i| snapshot.upstreams.get(i)) else {
                report["status"] = json!(502);
                return Ok((report, true));
            };
            let uri = service::upstream_uri(upstream, &allow, &facts, &parts.uri);
            let peer_text = crate::request::facts::ip_header_value(facts.conn.peer.ip());
            let origin = service::Origin::of(&facts, &parts, &peer_text);
            drop(facts);
            let mutation = std::mem::take(&mut allow.mutation);

            let request_id = HeaderValue::from_static("(generated per request)");
            service::upstream_headers(
                &mut parts.headers,
                snapshot,
                mutation,
                origin,
                &request_id,
                upstream,
            );
            if te_trailers {
                parts
                    .headers
                    .insert(http::header::TE, HeaderValue::from_static("trailers"));
            }
            if let Some((cx, kept)) = &trace_context {
                cx.apply(&mut parts.headers);
                // Its span id and, for a new trace, its trace id are drawn per request.
                parts.headers.insert(
                    crate::telemetry::trace_context::TRACEPARENT,
                    HeaderValue::from_static(
                        if *kept == crate::telemetry::trace_context::Received::Valid {
                            "(the client's trace, a new span per request)"
                        } else {
                            "(a new trace per request)"
                        },
                    ),
                );
            }
            let mut headers: Vec<(String, String)> = parts
                .headers
                .iter()
                .map(|(k, v)| {
                    let shown = if redact.iter().any(|r| r == k) {
                        "[redacted]".to_owned()
                    } else {
                        String::from_utf8_lossy(v.as_bytes()).into_owned()
                    };
                    (k.as_str().to_owned(), shown)
                })
                .collect();
            headers.sort();
            report["status"] = json!("forwarded");
            report["upstream"] = json!({
                "name": &*upstream.name,
                "url": uri.map(|u| redact_query(&u.to_string(), snapshot)),
                "headers": headers.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            });
            Ok((report, true))
        }
    }
}

/// The request as a decision door's peer would hand it over, through that door's own code:
/// its description of the request, the facts, the decision (recorded) and its answer.
async fn run_door(
    snapshot: &Snapshot,
    args: &Request1<'_>,
    door: Door,
    listener: Option<&str>,
    context: &HashMap<String, String>,
) -> Result<(Value, bool), String> {
    use crate::door::HttpDoor as _;
    let context_pairs: Vec<(&str, &str)> = context
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let url: Uri = args.url.parse().map_err(|_| not_a_url(args.url))?;
    let proto = url.scheme_str().unwrap_or("http").to_owned();
    let authority = url.authority().ok_or("the URL needs a host")?.to_string();
    let target = url.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    // The target with the URL's fragment, as a peer that passes the raw target on hands it
    // to the forward-auth and gRPC doors (nginx's `$request_uri`), which refuse it; the URL
    // parser drops it. Regression: tests (it) doors::explain_runs_each_doors_code (fragment)
    let raw_target = match args.url.find('#') {
        Some(i) => format!("{target}{}", &args.url[i..]),
        None => target.clone(),
    };
    let client_ip = args.client_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let mut headers = http::HeaderMap::new();
    for (i, h) in args.headers.iter().enumerate() {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("header {} is not `Name: value`", i + 1))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("header {} has no valid name before its `:`", i + 1))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("invalid header value for `{name}`"))?;
        headers.append(name, value);
    }
    let named = listener.is_some();
    let listener = snapshot.listeners.iter().find(|l| match listener {
        Some(name) => &*l.name == name,
        None => l.door.door() == door,
    });
    let settings = listener.map_or(crate::snapshot::DoorSettings::Proxy, |l| l.door.clone());
    let listener_name: Arc<str> = listener.map_or_else(|| Arc::from("-"), |l| Arc::clone(&l.name));
    // Why named: with several listeners of one door (an nginx one with a status map, a
    // plain one), the first was used silently and its answer (403) read as the door's (302).
    let same_door = snapshot
        .listeners
        .iter()
        .filter(|l| l.door.door() == door)
        .count();
    let mut report = json!({
        "request": {"method": args.method, "url": redact_query(args.url, snapshot), "client_ip": client_ip.to_string()},
        "door": door.as_str(),
        "listener": &*listener_name,
    });
    if same_door > 1 && !named {
        report["listener_note"] = json!(format!(
            "the first of {same_door} {} listeners; --listener NAME for another",
            door.as_str()
        ));
    }
    // What the peer sends the door: the description its configuration gives.
    let peer_said = |method: &str, path: &str, extra: &[(&str, &str)]| {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in &headers {
            req = req.header(k, v);
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        req.header("x-forwarded-for", client_ip.to_string())
            .body(())
            .map(|r| r.into_parts().0)
            .map_err(|e| format!("invalid request: {e}"))
    };
    // As the HTTP doors do before reading the description (`door::hop_by_hop_pass`): the
    // upgrade asked for, and the bytes of the hop-by-hop fields removed, which still count.
    let mut first_pass = None;
    let mut hop_by_hop = |parts: &mut http::request::Parts| {
        crate::door::hop_by_hop_pass(&mut parts.headers).map(|(upgrade, stripped, _)| {
            first_pass = Some((upgrade, stripped));
        })
    };
    let (described, render): (Result<crate::door::Described, &'static str>, Renderer) = match door {
        Door::ForwardAuth => {
            // In the headers the door reads (its `headers:`, else the usual ones).
            let usual = crate::forward_auth::DescriptionHeaders::default();
            let names = match &settings {
                crate::snapshot::DoorSettings::ForwardAuth { headers, .. } => &**headers,
                _ => &usual,
            };
            let first = |n: &[HeaderName]| n.first().map_or("", HeaderName::as_str).to_owned();
            let (m, u, h, p) = (
                first(&names.method),
                first(&names.uri),
                first(&names.host),
                names.proto.as_str().to_owned(),
            );
            let mut parts = peer_said(
                "GET",
                "/auth",
                &[
                    (&m, args.method),
                    (&u, &raw_target),
                    (&h, &authority),
                    (&p, &proto),
                ],
            )?;
            let d = hop_by_hop(&mut parts).and_then(|()| {
                crate::forward_auth::ForwardAuth
                    .describe(&settings, &mut parts)
                    .map_err(|u| u.0)
            });
            (d, Renderer::ForwardAuth)
        }
        Door::EnvoyHttp => {
            let prefix = match &settings {
                crate::snapshot::DoorSettings::EnvoyHttp { path_prefix, .. } => {
                    path_prefix.to_string()
                }
                _ => String::new(),
            };
            let mut parts = peer_said(
                args.method,
                &format!("{prefix}{target}"),
                &[("host", &authority), ("x-forwarded-proto", &proto)],
            )?;
            let d = hop_by_hop(&mut parts).and_then(|()| {
                crate::extauthz::http::EnvoyHttp
                    .describe(&settings, &mut parts)
                    .map_err(|u| u.0)
            });
            (d, Renderer::EnvoyHttp)
        }
        Door::EnvoyGrpc => {
            // The Check Envoy would send, read by the door's own code (header limits, the
            // path, the host, the source address).
            use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
            use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
            use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
                HttpRequest, Peer, Request as AttrRequest,
            };
            let mut sent: std::collections::HashMap<String, String> =
                std::collections::HashMap::new();
            for (k, v) in &headers {
                // Envoy lower-cases names and joins repeated headers with a comma.
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                sent.entry(k.as_str().to_owned())
                    .and_modify(|e| {
                        e.push(',');
                        e.push_str(&v);
                    })
                    .or_insert(v);
            }
            sent.insert(":authority".into(), authority.clone());
            sent.insert(":path".into(), raw_target.clone());
            sent.insert(":method".into(), args.method.to_owned());
            let check = envoy_types::ext_authz::v3::pb::CheckRequest {
                attributes: Some(AttributeContext {
                    source: Some(Peer {
                        address: Some(Address {
                            address: Some(address::Address::SocketAddress(SocketAddress {
                                address: client_ip.to_string(),
                                ..SocketAddress::default()
                            })),
                        }),
                        ..Peer::default()
                    }),
                    request: Some(AttrRequest {
                        http: Some(HttpRequest {
                            method: args.method.to_owned(),
                            host: authority.clone(),
                            path: raw_target.clone(),
                            scheme: proto.clone(),
                            headers: sent,
                            ..HttpRequest::default()
                        }),
                        ..AttrRequest::default()
                    }),
                    context_extensions: context.clone(),
                    ..AttributeContext::default()
                }),
            };
            let client_certificates = matches!(&settings, crate::snapshot::DoorSettings::EnvoyGrpc(c) if c.client_certificates);
            // Read from its bytes as the door reads a Check (`extauthz::grpc::wire`).
            let check = crate::extauthz::grpc::wire::CheckRequest::read(
                bytes::Bytes::from(prost::Message::encode_to_vec(&check)),
                crate::extauthz::grpc::max_entries(snapshot),
            );
            let d = check
                .as_ref()
                .map_err(|why| why.code())
                .and_then(|check| {
                    crate::extauthz::grpc::describe(
                        check,
                        snapshot,
                        &listener_name,
                        client_certificates,
                    )
                })
                .map(|d| crate::door::Described {
                    method: d.method,
                    scheme: d.scheme,
                    authority: Some(d.authority.to_owned()),
                    target: d.target.to_owned(),
                    headers: d.headers,
                    // Envoy's scheme field, once the hop-by-hop pass below is done.
                    describing: 0,
                });
            (d, Renderer::EnvoyGrpc)
        }
        Door::Proxy => return run(snapshot, args).await,
    };
    // The gRPC door's client is Envoy's source address; the HTTP doors', the hop the peer's
    // chain vouches for.
    let described = described.and_then(|mut d| {
        let client = if door == Door::EnvoyGrpc {
            client_ip
        } else {
            crate::door::vouched_hop(&mut d.headers).map_err(|u| u.0)?
        };
        Ok((d, client))
    });
    let (mut described, client) = match described {
        Ok(d) => d,
        Err(reason) => {
            report["trace"] = json!([if reason == "h2c_upgrade" {
                "the request is refused before any rule: it asks for cleartext HTTP/2"
            } else {
                "the door cannot read the request from its peer's description"
            }]);
            let status = crate::door::undescribed_status(reason);
            return Ok(refused_report(report, render, &settings, status, reason));
        }
    };
    // Why: the HTTP doors count the client's fields against `server.max_headers`
    // (`door::too_many_fields`, as `decide_for` does; the gRPC door's reading above counts
    // them), and explain at those doors said allowed what they refuse with 431.
    // Regression: tests (it) doors::explain_counts_the_header_fields_as_the_http_doors_do
    if door != Door::EnvoyGrpc
        && crate::door::too_many_fields(
            described.headers.len(),
            described.headers.iter().map(|(n, _)| n.as_str()),
            snapshot.server.max_headers,
        )
    {
        report["trace"] = json!(["the request is refused before any rule: too many header fields"]);
        let status = http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        return Ok(refused_report(
            report,
            render,
            &settings,
            status,
            "headers_too_many",
        ));
    }
    // As every decision door reads an upgrade (`door::asked_upgrade`) and removes the
    // hop-by-hop fields: the HTTP doors before reading the description (above), the gRPC
    // door after (`extauthz::grpc`).
    let (upgrade, stripped) = match first_pass {
        Some(pass) => pass,
        None => match crate::door::asked_upgrade(&described.headers) {
            Ok(u) => {
                let stripped = crate::door::strip_counted(&mut described.headers).0;
                // As the gRPC door counts Envoy's scheme field (`extauthz::grpc`).
                described.describing = crate::door::scheme_field_bytes(&described.headers);
                (u, stripped)
            }
            Err(reason) => {
                report["trace"] =
                    json!(["the request is refused before any rule: it asks for cleartext HTTP/2"]);
                let status = http::StatusCode::BAD_REQUEST;
                return Ok(refused_report(report, render, &settings, status, reason));
            }
        },
    };
    let conn = ConnInfo::for_door(door, SocketAddr::new(client, 0), listener_name, None);
    let head = crate::request::facts::Head {
        method: &described.method,
        scheme: described.scheme,
        authority: described.authority.as_deref(),
        target: &described.target,
        headers: &described.headers,
    };
    let facts = match head
        .within(
            snapshot.server.max_target_bytes,
            snapshot
                .server
                .max_header_bytes
                .saturating_sub(stripped)
                .saturating_add(described.describing),
        )
        .and_then(|()| RequestFacts::new(head, &conn, &snapshot.server.trusted_proxies))
    {
        Ok(mut f) => {
            // As the gRPC door sets them (`extauthz::grpc`).
            if door == Door::EnvoyGrpc && !context_pairs.is_empty() {
                f.context = Some(&context_pairs);
            }
            f
        }
        Err(e) => {
            report["trace"] = json!(["the request is refused before any rule: malformed"]);
            return Ok(refused_report(
                report,
                render,
                &settings,
                e.status(),
                e.as_str(),
            ));
        }
    };
    report["request"]["canonical_path"] = json!(facts.path.as_ref());
    // As the doors that answer preflights do (`door::HttpDoor::ANSWERS_PREFLIGHTS`).
    if door != Door::ForwardAuth
        && let Some((rule, checked)) = crate::authz::edge::preflight(snapshot, &facts)
    {
        return Ok(preflight_report(
            report,
            snapshot,
            &rule,
            checked,
            Some(door),
        ));
    }
    // As the HTTP decision doors refuse before any rule (`door::refused_before_rules`).
    // Regression: tests (it) doors::explain_door_refuses_a_method_override_in_the_query
    if door != Door::EnvoyGrpc
        && let Some((status, reason)) = crate::door::refused_before_rules(&facts)
    {
        report["trace"] = json!([format!(
            "the request is refused before any rule: {reason} (the door's peer cannot remove it)"
        )]);
        return Ok(refused_report(report, render, &settings, status, reason));
    }
    snapshot.authn.start();
    let started = Instant::now();
    while !snapshot.authn.keys_settled() && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut trace: Vec<TraceEvent> = Vec::new();
    let decision = decision::decide(snapshot, &facts, &mut trace).await;
    report["trace"] = json!(
        trace
            .iter()
            .map(|e| describe(e, snapshot))
            .collect::<Vec<_>>()
    );
    if let Some(rule) = decision.rule() {
        report["rule"] = json!({"name": rule, "file": rule_file(snapshot, rule)});
    }
    // As the door refuses an upgrade its rule does not relay (`door::upgrade_refusal`).
    if let Decision::Allow(a) = &decision
        && let Some(reason) = crate::door::upgrade_refusal(upgrade.as_ref(), a, &described.headers)
    {
        if let Some(steps) = report["trace"].as_array_mut() {
            steps.push(json!(format!(
                "the rule allows the request but refuses the upgrade it asks for: {reason}"
            )));
        }
        let status = http::StatusCode::FORBIDDEN;
        return Ok(refused_report(report, render, &settings, status, reason));
    }
    let request_id = HeaderValue::from_static("(generated per request)");
    let redact = redacted_names(snapshot);
    let shown = |name: &HeaderName, v: &HeaderValue| {
        if redact.iter().any(|r| r == name) {
            "[redacted]".to_owned()
        } else {
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        }
    };
    let allowed = matches!(decision, Decision::Allow(_));
    let answer = match &decision {
        Decision::Allow(a) => {
            report["decision"] = json!("allow");
            if let Some(p) = &a.principal {
                report["principal"] = json!({"id": &*p.id, "authenticator": &*p.authenticator,
                    "kind": match p.kind { crate::authn::PrincipalKind::User => "user", crate::authn::PrincipalKind::Machine => "machine" }});
            }
            render.allow(a)
        }
        Decision::Deny(d) => {
            report["decision"] = json!("deny");
            report["reason"] = json!(d.kind.as_str());
            let refusal = d.refusal(&snapshot.challenges, &request_id);
            match render {
                // As the door answers: its metadata names the rule and the principal.
                Renderer::EnvoyGrpc => grpc_answer(&crate::extauthz::grpc::denial(d, refusal)),
                _ => render.deny(&settings, refusal),
            }
        }
    };
    report["status"] = json!(answer.status);
    report["answer"] = json!({
        "status": answer.status,
        "grpc_code": answer.grpc_code,
        "headers": answer.headers.iter().map(|(k, v)| json!([k.as_str(), shown(k, v)])).collect::<Vec<_>>(),
        "headers_to_remove": answer.remove.iter().map(HeaderName::as_str).collect::<Vec<_>>(),
    });
    if let Some(metadata) = answer.metadata {
        report["answer"]["dynamic_metadata"] = metadata;
    }
    // Why: the gRPC door names a query credential or method override for Envoy to remove, and
    // explain did not say so: what reached the upstream could not be seen.
    // Regression: tests (it) doors::explain_door_refuses_a_method_override_in_the_query
    if !answer.query_remove.is_empty() {
        report["answer"]["query_parameters_to_remove"] = json!(answer.query_remove);
    }
    Ok((report, allowed))
}

/// A door's answer, as explain shows it.
#[derive(Default)]
struct DoorAnswer {
    status: u16,
    grpc_code: Option<i32>,
    headers: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
    /// The gRPC door's `query_parameters_to_remove`.
    query_remove: Vec<String>,
    /// The gRPC door's `dynamic_metadata`.
    metadata: Option<Value>,
}

/// A protobuf `Struct` (the gRPC door's `dynamic_metadata`) as JSON.
fn struct_json(s: &envoy_types::pb::google::protobuf::Struct) -> Value {
    use envoy_types::pb::google::protobuf::value::Kind;
    fn value(v: &envoy_types::pb::google::protobuf::Value) -> Value {
        match &v.kind {
            None | Some(Kind::NullValue(_)) => Value::Null,
            Some(Kind::NumberValue(n)) => json!(n),
            Some(Kind::StringValue(s)) => json!(s),
            Some(Kind::BoolValue(b)) => json!(b),
            Some(Kind::StructValue(s)) => struct_json(s),
            Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value).collect()),
        }
    }
    let mut fields: Vec<_> = s.fields.iter().collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.clone(), value(v)))
            .collect(),
    )
}

/// Which door's rendering.
#[derive(Clone, Copy)]
enum Renderer {
    ForwardAuth,
    EnvoyHttp,
    EnvoyGrpc,
}

impl Renderer {
    fn allow(self, a: &crate::decision::Allow) -> DoorAnswer {
        use crate::door::HttpDoor as _;
        let resp = match self {
            Self::ForwardAuth => crate::forward_auth::ForwardAuth.allow(a),
            Self::EnvoyHttp => crate::extauthz::http::EnvoyHttp.allow(a),
            Self::EnvoyGrpc => return grpc_answer(&crate::extauthz::grpc::allowed(a)),
        };
        DoorAnswer {
            status: resp.status().as_u16(),
            grpc_code: matches!(self, Self::EnvoyGrpc).then_some(0),
            headers: resp
                .headers()
                .iter()
                .filter(|(k, _)| *k != header::CACHE_CONTROL)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            remove: a.mutation.removed().cloned().collect(),
            ..DoorAnswer::default()
        }
    }

    fn deny(
        self,
        settings: &crate::snapshot::DoorSettings,
        r: crate::decision::Refusal,
    ) -> DoorAnswer {
        use crate::door::HttpDoor as _;
        let resp = match self {
            Self::ForwardAuth => crate::forward_auth::ForwardAuth.deny(settings, r),
            Self::EnvoyHttp => crate::extauthz::http::EnvoyHttp.deny(settings, r),
            Self::EnvoyGrpc => return grpc_answer(&crate::extauthz::grpc::denied(r)),
        };
        DoorAnswer {
            status: resp.status().as_u16(),
            grpc_code: None,
            headers: resp
                .headers()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..DoorAnswer::default()
        }
    }
}

/// The gRPC door's `CheckResponse`, as explain shows it.
fn grpc_answer(r: &envoy_types::ext_authz::v3::pb::CheckResponse) -> DoorAnswer {
    use envoy_types::ext_authz::v3::pb::HttpResponse;
    let pairs = |options: &[envoy_types::ext_authz::v3::pb::HeaderValueOption]| {
        options
            .iter()
            .filter_map(|o| o.header.as_ref())
            .filter_map(|h| {
                Some((
                    HeaderName::from_bytes(h.key.as_bytes()).ok()?,
                    HeaderValue::from_str(&h.value).ok()?,
                ))
            })
            .collect()
    };
    let code = r.status.as_ref().map_or(0, |s| s.code);
    let metadata = r.dynamic_metadata.as_ref().map(struct_json);
    match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => DoorAnswer {
            status: d
                .status
                .as_ref()
                .and_then(|s| u16::try_from(s.code).ok())
                .unwrap_or(403),
            grpc_code: Some(code),
            headers: pairs(&d.headers),
            metadata,
            ..DoorAnswer::default()
        },
        Some(HttpResponse::OkResponse(ok)) => DoorAnswer {
            status: 200,
            grpc_code: Some(code),
            headers: pairs(&ok.headers),
            remove: ok
                .headers_to_remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
            query_remove: ok.query_parameters_to_remove.clone(),
            metadata,
        },
        _ => DoorAnswer {
            status: 200,
            grpc_code: Some(code),
            metadata,
            ..DoorAnswer::default()
        },
    }
}

/// A request a decision door refuses before any rule (its description unreadable, the
/// request malformed), with the answer that door gives: its status map applied, its gRPC code.
// Regression: tests (it) doors::explain_shows_the_door_answer_to_a_malformed_request
fn refused_report(
    mut report: Value,
    render: Renderer,
    settings: &crate::snapshot::DoorSettings,
    status: http::StatusCode,
    reason: &'static str,
) -> (Value, bool) {
    let request_id = HeaderValue::from_static("(generated per request)");
    let answer = render.deny(
        settings,
        crate::decision::Refusal::error(status, reason, &request_id),
    );
    report["decision"] = json!("deny");
    report["reason"] = json!(reason);
    report["status"] = json!(answer.status);
    report["answer"] = json!({
        "status": answer.status,
        "grpc_code": answer.grpc_code,
        "headers": answer.headers.iter().map(|(k, v)| json!([k.as_str(), String::from_utf8_lossy(v.as_bytes())])).collect::<Vec<_>>(),
        "headers_to_remove": [],
    });
    (report, false)
}

/// A CORS preflight the door answers itself, without a decision: 204 with the rule's CORS
/// headers, or 403. At the gRPC door, the denied response Envoy passes on.
fn preflight_report(
    mut report: Value,
    snapshot: &Snapshot,
    rule: &crate::authz::route::RuleId,
    checked: crate::authz::edge::Preflight,
    door: Option<Door>,
) -> (Value, bool) {
    report["rule"] = json!({"name": &*rule.0, "file": rule_file(snapshot, &rule.0)});
    report["trace"] = json!([format!(
        "CORS preflight for rule `{}`: answered by the gateway, without a credential or the upstream",
        rule.0
    )]);
    let (status, reason, headers) = match checked {
        Ok(headers) => (204, crate::door::CORS_PREFLIGHT, headers),
        Err(refused) => (403, refused.as_str(), vec![crate::authz::edge::VARY_ORIGIN]),
    };
    let headers: Vec<Value> = headers
        .iter()
        .map(|(k, v)| json!([k.as_str(), String::from_utf8_lossy(v.as_bytes())]))
        .collect();
    report["decision"] = json!(if status == 204 { "allow" } else { "deny" });
    report["status"] = json!(status);
    report["reason"] = json!(reason);
    report["answer"] = json!({
        "status": status,
        "grpc_code": (door == Some(Door::EnvoyGrpc)).then_some(crate::decision::GrpcCode::PermissionDenied.as_i32()),
        "headers": headers,
        "headers_to_remove": [],
    });
    report["door"] = json!(door.unwrap_or(Door::Proxy).as_str());
    (report, status == 204)
}

/// The policy file that holds `rule`.
fn rule_file(snapshot: &Snapshot, rule: &str) -> Option<String> {
    snapshot
        .routes
        .rules()
        .iter()
        .find(|r| &*r.id.0 == rule)
        .map(|r| r.file.to_string())
}

/// Header names whose values are credentials: never printed.
fn redacted_names(snapshot: &Snapshot) -> Vec<HeaderName> {
    let mut out = vec![
        header::AUTHORIZATION,
        header::COOKIE,
        header::PROXY_AUTHORIZATION,
    ];
    // The assertion is a bearer credential for the upstream.
    out.extend(snapshot.assertion.iter().map(|a| a.header.clone()));
    for a in snapshot.authn.iter() {
        for s in &*a.sources {
            if let crate::authn::credential::CredentialSource::Header(h) = s {
                out.push(h.clone());
            }
        }
    }
    out
}

/// Query credentials are stripped before forwarding; any left would be shown: redact anyway.
/// User information (`user:pass@`) too.
pub(super) fn redact_query(url: &str, snapshot: &Snapshot) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    // (No query left in `base`: only its user information is masked.)
    let base = crate::secret::redacted_url(base);
    let Some(query) = query else {
        return base;
    };
    let names: Vec<&str> = snapshot
        .authn
        .iter()
        .flat_map(|a| a.query_sources())
        .collect();
    let parts: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            // As the gateway reads a name: percent-decoded (`api%5Fkey` is `api_key`).
            Some((k, _))
                if crate::authn::credential::decode(k)
                    .is_some_and(|d| names.iter().any(|n| **n == *d)) =>
            {
                format!("{k}=[redacted]")
            }
            _ => kv.to_owned(),
        })
        .collect();
    format!("{base}?{}", parts.join("&"))
}

fn describe(e: &TraceEvent, snapshot: &Snapshot) -> String {
    match e {
        TraceEvent::RuleMatched(id) => format!("rule `{}` matched (first match wins)", id.0),
        TraceEvent::NoRuleMatched => "no rule matched: denied by default".into(),
        TraceEvent::Authenticated(name) => {
            format!("authenticator `{name}` verified the credential")
        }
        TraceEvent::Anonymous => "no credential; the rule allows anonymous access".into(),
        TraceEvent::AuthnFailed(kind) => format!(
            "authentication failed: {} ({})",
            kind.as_str(),
            kind.status().as_u16()
        ),
        TraceEvent::RequirementFailed(u) => format!("requirement not met: {}", u.as_str()),
        TraceEvent::RequirementsMet => "every requirement of the rule holds".into(),
        TraceEvent::ConditionHeld => "the `when` condition holds".into(),
        TraceEvent::ConditionFailed(why) => format!("the `when` condition failed: {why}"),
        TraceEvent::RateLimited(name) => format!("over rate limit `{name}`"),
        TraceEvent::RateLimitApplies(name) => match snapshot.rate_limits.get(name) {
            Some(limit) => format!(
                "rate limit `{name}` applies: {} (explain does not spend its budget)",
                limit.summary()
            ),
            None => format!("rate limit `{name}` applies (explain does not spend its budget)"),
        },
        TraceEvent::DelegateAllowed(name) => format!("delegate `{name}` allowed"),
        TraceEvent::DelegateDenied(name) => format!("delegate `{name}` denied"),
        TraceEvent::DelegateFailed(name) => {
            format!("delegate `{name}` gave no answer; its failure mode decided")
        }
        TraceEvent::ForwardedAsSent => "allowed on the canonical path, but the door's peer \
             forwards the path as sent (`.`, `..` or empty segments): refused"
            .into(),
        TraceEvent::ConditionReadsTwoWays => "allowed on the decoded path, but read with its \
             escapes as sent the rule's condition does not hold: refused"
            .into(),
        TraceEvent::ReadsTwoWays(other) => format!(
            "allowed on the decoded path, but read with its escapes as sent it meets {}: refused",
            other
                .as_ref()
                .map_or("no rule".to_owned(), |r| format!("rule `{r}`"))
        ),
    }
}

fn render_text(r: &Value) -> String {
    let mut out = String::new();
    let s = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let req = &r["request"];
    out.push_str(&format!(
        "request   {} {}  (client {})\n",
        s(&req["method"]),
        s(&req["url"]),
        s(&req["client_ip"])
    ));
    if let Some(p) = req["canonical_path"].as_str() {
        out.push_str(&format!("path      {p}  (canonical)\n"));
    }
    if let (Some(door), Some(listener)) = (r["door"].as_str(), r["listener"].as_str()) {
        out.push_str(&format!("door      {door} on listener {listener}"));
        if let Some(note) = r["listener_note"].as_str() {
            out.push_str(&format!("  ({note})"));
        }
        out.push('\n');
    }
    if let Some(rule) = r.get("rule") {
        out.push_str(&format!(
            "rule      {}  ({})\n",
            s(&rule["name"]),
            s(&rule["file"])
        ));
    }
    out.push_str("trace\n");
    for step in r["trace"].as_array().into_iter().flatten() {
        out.push_str(&format!("  - {}\n", s(step)));
    }
    if let Some(p) = r.get("principal") {
        out.push_str(&format!(
            "principal {} ({}, via {})\n",
            s(&p["id"]),
            s(&p["kind"]),
            s(&p["authenticator"])
        ));
    }
    out.push_str(&format!("decision  {}\n", s(&r["decision"])));
    out.push_str(&format!("status    {}", s(&r["status"])));
    if let Some(reason) = r.get("reason") {
        out.push_str(&format!("  reason {}", s(reason)));
    }
    out.push('\n');
    if let Some(c) = r.get("www_authenticate") {
        out.push_str(&format!("www-authenticate: {}\n", s(c)));
    }
    if let Some(l) = r.get("location") {
        out.push_str(&format!("location: {}\n", s(l)));
    }
    if let Some(u) = r.get("upstream") {
        out.push_str(&format!("upstream  {} {}\n", s(&u["name"]), s(&u["url"])));
        for h in u["headers"].as_array().into_iter().flatten() {
            out.push_str(&format!("  {}: {}\n", s(&h[0]), s(&h[1])));
        }
    }
    if let Some(a) = r.get("answer") {
        out.push_str(&format!(
            "door      {}  answers {}",
            s(&r["door"]),
            s(&a["status"])
        ));
        if let Some(code) = a["grpc_code"].as_i64() {
            out.push_str(&format!("  (gRPC code {code})"));
        }
        out.push('\n');
        for h in a["headers"].as_array().into_iter().flatten() {
            out.push_str(&format!("  {}: {}\n", s(&h[0]), s(&h[1])));
        }
        for h in a["headers_to_remove"].as_array().into_iter().flatten() {
            out.push_str(&format!("  remove {}\n", s(h)));
        }
        for q in a["query_parameters_to_remove"]
            .as_array()
            .into_iter()
            .flatten()
        {
            out.push_str(&format!("  remove query parameter {}\n", s(q)));
        }
        if let Some(m) = a["dynamic_metadata"].as_object() {
            for (k, v) in m {
                out.push_str(&format!("  metadata {k}: {}\n", s(v)));
            }
        }
    }

    out
}

fn fail(msg: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "portcullis explain: {msg}");
    ExitCode::from(2)
}
