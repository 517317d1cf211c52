//! Listeners: addresses, TLS (certificates by SNI, client CAs per listener or per
//! certificate) and the door each serves.

use std::collections::HashMap;
use std::sync::Arc;

use super::Cx;
use crate::snapshot::ListenerSettings;
use crate::tls;

/// Every listener; certificate and CA files are watched.
pub(super) fn compile(cx: &mut Cx<'_>) -> Vec<ListenerSettings> {
    let loaded = cx.loaded;
    let raw = &loaded.raw.listeners;
    if raw.is_empty() {
        cx.error("listeners", "at least one listener is required".into());
    }
    let mut listeners = Vec::with_capacity(raw.len());
    let mut names = HashMap::new();
    for (i, l) in raw.iter().enumerate() {
        if let Some(first) = names.insert(l.name.as_str(), i) {
            cx.error(
                &format!("listeners[{i}].name"),
                format!(
                    "duplicate listener name `{}` (also listeners[{first}])",
                    l.name
                ),
            );
        }
        let tls = match &l.tls {
            None => None,
            Some(t) => listener_tls(cx, i, &l.name, t, l.http2),
        };
        let door = compile_door(&l.door, &mut |field: &str, m: String| {
            cx.error(&format!("listeners[{i}].door.{field}"), m);
        });
        listeners.push(ListenerSettings {
            name: l.name.as_str().into(),
            address: l.address,
            tls,
            http2: l.http2,
            door,
        });
    }
    one_socket_per_address(cx);
    listeners
}

/// Two listeners (the admin ones included) on one address, or on one port where either is
/// the wildcard of the other's family, cannot both bind.
///
/// Why: `check` said `ok` to a config that `run` could not start ("Address already in
/// use"). Regression: tests (it) check::listeners_on_one_address_are_refused
fn one_socket_per_address(cx: &mut Cx<'_>) {
    let loaded = cx.loaded;
    let cfg = &loaded.raw;
    let mut bound: Vec<(String, std::net::SocketAddr)> = cfg
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("listeners[{i}].address"), l.address))
        .collect();
    bound.push(("admin.address".into(), cfg.admin.address));
    if let Some(public) = cfg.admin.public_address {
        bound.push(("admin.public_address".into(), public));
    }
    let clash = |a: &std::net::SocketAddr, b: &std::net::SocketAddr| {
        a.port() != 0
            && a.port() == b.port()
            && a.is_ipv4() == b.is_ipv4()
            && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
    };
    for (j, (field, addr)) in bound.iter().enumerate() {
        if let Some((first, _)) = bound[..j].iter().find(|(_, a)| clash(a, addr)) {
            cx.error(
                field,
                format!(
                    "`{addr}` is bound by {first} too: each listener needs an address of its own"
                ),
            );
        }
    }
}

/// A listener's TLS: its certificates and the client CAs each verifies against.
fn listener_tls(
    cx: &mut Cx<'_>,
    i: usize,
    name: &str,
    t: &crate::config::raw::RawListenerTls,
    http2: bool,
) -> Option<Arc<tls::server::ListenerTls>> {
    if t.certificates.is_empty() {
        cx.error(
            &format!("listeners[{i}].tls.certificates"),
            "at least one certificate is required".into(),
        );
        return None;
    }
    let entries: Vec<tls::server::CertEntry> = t
        .certificates
        .iter()
        .map(|c| tls::server::CertEntry {
            cert: cx.path(&c.cert),
            key: cx.path(&c.key),
            server_names: c.server_names.clone(),
        })
        .collect();
    for e in &entries {
        cx.watched.push(e.cert.clone());
        cx.watched.push(e.key.clone());
    }
    let verifier = |cx: &mut Cx<'_>, ca: &crate::config::raw::RawClientAuth, field: String| {
        let path = cx.path(&ca.ca_file);
        cx.watched.push(path.clone());
        match tls::server::client_verifier(&path, ca.required) {
            Ok(v) => {
                // Why: rustls takes any certificate here as a trust anchor, a CA or not, and
                // accepts every client certificate its key signs, whatever subject it names.
                // A leaf put here by mistake (the client's own, to pin it) lets its holder
                // sign itself any identity; a CA's certificate is what belongs here.
                // Regression: tests (it) credentials::client_auth_ca_file_that_is_not_a_ca_warns
                for a in tls::server::non_ca_anchors(&path) {
                    cx.warn(
                        &field,
                        format!(
                            "certificate {} in {} (`{}`) is not a CA certificate: clients are accepted with any certificate its key signs, whatever subject they name; give the CA that issues the client certificates",
                            a.place,
                            path.display(),
                            a.subject
                        ),
                    );
                }
                Some(v)
            }
            Err(e) => {
                cx.error(&field, e.to_string());
                None
            }
        }
    };
    let listener_auth = t
        .client_auth
        .as_ref()
        .and_then(|ca| verifier(cx, ca, format!("listeners[{i}].tls.client_auth.ca_file")));
    let mut per_entry = Vec::with_capacity(t.certificates.len());
    let required: Vec<bool> = t
        .certificates
        .iter()
        .map(|c| {
            c.client_auth
                .as_ref()
                .or(t.client_auth.as_ref())
                .is_some_and(|a| a.required)
        })
        .collect();
    for (j, c) in t.certificates.iter().enumerate() {
        per_entry.push(match &c.client_auth {
            Some(ca) => verifier(
                cx,
                ca,
                format!("listeners[{i}].tls.certificates[{j}].client_auth.ca_file"),
            ),
            None => listener_auth.clone(),
        });
    }
    // What verifies client certificates, as a digest: a reload that changes it ends the
    // authentication of connections verified under the old one (`proxy::service::facts`).
    let client_auth = {
        let mut parts: Vec<u8> = Vec::new();
        let mut any = false;
        let cas = std::iter::once(t.client_auth.as_ref())
            .chain(t.certificates.iter().map(|c| c.client_auth.as_ref()));
        for ca in cas {
            match ca {
                Some(ca) => {
                    any = true;
                    let bytes =
                        crate::config::files::read(cx.path(&ca.ca_file)).unwrap_or_default();
                    parts.push(u8::from(ca.required));
                    parts.extend_from_slice(&crate::secret::sha256(&bytes));
                }
                None => parts.push(2),
            }
        }
        // Which host selects which entry (its certificate's names, or its `server_names`):
        // a change re-checks the hosts of connections opened before it (`still_trusts`).
        for (c, e) in t.certificates.iter().zip(&entries) {
            let cert = crate::config::files::read(&e.cert).unwrap_or_default();
            parts.extend_from_slice(&crate::secret::sha256(&cert));
            for name in &c.server_names {
                parts.extend_from_slice(name.as_bytes());
                parts.push(0);
            }
            parts.push(1);
        }
        any.then(|| crate::secret::sha256(&parts))
    };
    // What verifies each entry's client certificates, as a digest (`moved_names`).
    let entry_auth: Vec<Option<[u8; 32]>> = t
        .certificates
        .iter()
        .map(|c| {
            let ca = c.client_auth.as_ref().or(t.client_auth.as_ref())?;
            let mut part = vec![u8::from(ca.required)];
            let bytes = crate::config::files::read(cx.path(&ca.ca_file)).unwrap_or_default();
            part.extend_from_slice(&crate::secret::sha256(&bytes));
            Some(crate::secret::sha256(&part))
        })
        .collect();
    match tls::server::listener_tls(&entries, http2, &per_entry) {
        Ok(c) => {
            // Why: a name the certificate does not cover loaded silently, and every client
            // that verifies the certificate refused the connections for it.
            // Regression: tls::server::tests::server_names_outside_the_certificate_are_reported
            for (j, name, sans) in c.uncovered_names() {
                cx.warn(
                    &format!("listeners[{i}].tls.certificates[{j}].server_names"),
                    format!(
                        "`{name}` is not among the certificate's subject alternative names ({}): clients that verify the certificate refuse connections for it",
                        if sans.is_empty() { "none" } else { sans }
                    ),
                );
            }
            // Why: an expired certificate, or one issued for clients only, loaded on a reload
            // with a plain "reloaded" line and replaced the working one: every new client then
            // refused the handshake. A reload that would put such a certificate in place of a
            // served one is refused, as a broken file is. The one served already (it expired
            // while running) only warns: refusing it would refuse every reload, an emergency
            // policy change included; so does a first load (`check`, the start), as a web
            // server starts with one.
            // Regression: tests (it) tls::a_certificate_clients_refuse_never_replaces_a_served_one
            let previous = cx
                .previous
                .and_then(|p| p.listeners.iter().find(|l| *l.name == *name))
                .and_then(|l| l.tls.clone());
            for (j, reason) in c.unusable_certificates() {
                let field = format!("listeners[{i}].tls.certificates[{j}].cert");
                // The same entry's: a certificate another entry served (expired there too)
                // is still new for the names this entry serves.
                let served = c
                    .leaf(*j)
                    .is_some_and(|leaf| previous.as_ref().and_then(|p| p.leaf(*j)) == Some(leaf));
                if cx.previous.is_some() && !served {
                    cx.error(
                        &field,
                        format!(
                            "{}: {reason}; the certificate served now is kept",
                            entries[*j].cert.display()
                        ),
                    );
                } else {
                    cx.warn(&field, format!("{}: {reason}", entries[*j].cert.display()));
                }
            }
            let c = c
                .with_client_auth(client_auth)
                .with_required(required)
                .with_entry_auth(entry_auth);
            // Regression: tests (it) credentials::a_renewed_certificate_never_moves_a_host_to_another_client_ca
            if let Some(previous) = &previous {
                for (host, _, now) in c.moved_names(previous) {
                    cx.error(
                        &format!("listeners[{i}].tls.certificates"),
                        format!(
                            "`{host}` would move to certificates[{now}] ({}), which verifies client certificates otherwise: the certificate that named it no longer does, or an earlier one now does. The running TLS config is kept; to move it on purpose, name it in that entry's `server_names`",
                            entries[now].cert.display()
                        ),
                    );
                }
            }
            Some(Arc::new(c))
        }
        Err((j, e)) => {
            cx.error(
                &format!("listeners[{i}].tls.certificates[{j}].{}", e.field()),
                e.to_string(),
            );
            None
        }
    }
}

/// A listener's door, its field errors reported through `error` (field relative to `door.`).
fn compile_door(
    raw: &crate::config::raw::RawDoor,
    error: &mut dyn FnMut(&str, String),
) -> crate::snapshot::DoorSettings {
    use crate::config::raw::RawDoor;
    use crate::snapshot::{DecisionDoor, DoorSettings};
    let common =
        |peers: &[crate::config::raw::Network], timeout: std::time::Duration| DecisionDoor {
            peers: peers.iter().map(|n| n.0).collect(),
            timeout,
            client_certificates: false,
        };
    // Why: a zero deadline passed `check` and answered every decision "cannot decide".
    // Regression: tests (it) check golden case zero-timeouts
    let (kind, timeout) = match raw {
        RawDoor::Proxy => ("", None),
        RawDoor::EnvoyGrpc(d) => ("envoy_grpc", Some(d.timeout)),
        RawDoor::EnvoyHttp(d) => ("envoy_http", Some(d.timeout)),
        RawDoor::ForwardAuth(d) => ("forward_auth", Some(d.timeout)),
    };
    if timeout.is_some_and(|t| t.is_zero()) {
        error(&format!("{kind}.timeout"), "must be more than 0".into());
    }
    match raw {
        RawDoor::Proxy => DoorSettings::Proxy,
        RawDoor::EnvoyGrpc(d) => DoorSettings::EnvoyGrpc(DecisionDoor {
            client_certificates: d.client_certificates,
            ..common(&d.peers, d.timeout)
        }),
        RawDoor::EnvoyHttp(d) => {
            // Why kept as written: Envoy puts the prefix before the path as it is, so with
            // `/authz/` every request came as `/authz//b/x`, and a prefix stored trimmed left
            // `//b/x`, refused as `non_canonical_path`: every request refused. The prefix less
            // its trailing slashes must still be canonical.
            // Regression: tests (it) doors::envoy_http_path_prefix
            let prefix = d.path_prefix.trim_end_matches('/');
            if !prefix.is_empty()
                && (!prefix.starts_with('/')
                    || crate::request::path::canonicalize(prefix).as_deref() != Ok(prefix))
            {
                error(
                    "envoy_http.path_prefix",
                    format!("`{}` is not a canonical path like `/authz`", d.path_prefix),
                );
            }
            DoorSettings::EnvoyHttp {
                common: common(&d.peers, d.timeout),
                path_prefix: d.path_prefix.as_str().into(),
            }
        }
        RawDoor::ForwardAuth(d) => {
            let mut map = Vec::with_capacity(d.status_map.len());
            for (&from, &to) in &d.status_map {
                match (
                    http::StatusCode::from_u16(from),
                    http::StatusCode::from_u16(to),
                ) {
                    // Why: the peer allows on 2xx (and nginx follows 3xx as its own): a refusal
                    // mapped to one of them is an allow. Regression: tests (it)
                    // doors::status_map_targets_are_refusals
                    (Ok(f), Ok(t)) if (300..600).contains(&from) && (400..600).contains(&to) => {
                        map.push((f, t));
                    }
                    _ => error(
                        &format!("forward_auth.status_map.{from}"),
                        "maps a refusal status (300 to 599) to one the peer passes on (400 to 599): a 2xx or 3xx would let the request through".into(),
                    ),
                }
            }
            let headers = crate::forward_auth::DescriptionHeaders::configured(&d.headers)
                .unwrap_or_else(|errors| {
                    for (part, message) in errors {
                        error(&format!("forward_auth.headers.{part}"), message);
                    }
                    crate::forward_auth::DescriptionHeaders::default()
                });
            DoorSettings::ForwardAuth {
                common: common(&d.peers, d.timeout),
                status_map: map.into(),
                headers: Arc::new(headers),
            }
        }
    }
}
