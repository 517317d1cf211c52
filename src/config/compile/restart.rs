//! Settings a running gateway cannot change. A reload that changes where it listens (the
//! listeners, the admin addresses) fails, naming the field, and the running config stays:
//! rules may name listeners (a deny rule for a listener not running yet would never match),
//! and an operator moving the unauthenticated admin listener off the network must not be told
//! "applied" while it stays there. A reload that changes any other applies the rest and warns
//! that the field waits for a restart. Kept as their own typed values in the snapshot.

use std::net::SocketAddr;

use crate::config::raw::{LogFormat, RawConfig};
use crate::snapshot::Snapshot;

/// The restart-only settings of one config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartOnly {
    /// Per listener: name, address, TLS on or off, door kind.
    pub listeners: Vec<(String, SocketAddr, bool, crate::request::facts::Door)>,
    /// The admin listener.
    pub admin_address: SocketAddr,
    /// The read-only admin listener.
    pub public_address: Option<SocketAddr>,
    /// Open connections over all listeners.
    pub max_connections: usize,
    /// Requests in flight over all doors.
    pub max_in_flight: usize,
    /// Runtime worker threads.
    pub worker_threads: usize,
    /// Log format and level.
    pub logging: (LogFormat, String),
}

impl RestartOnly {
    /// The restart-only settings of `cfg`.
    pub fn of(cfg: &RawConfig) -> Self {
        Self {
            listeners: cfg
                .listeners
                .iter()
                .map(|l| {
                    let door = match &l.door {
                        crate::config::raw::RawDoor::Proxy => crate::request::facts::Door::Proxy,
                        crate::config::raw::RawDoor::EnvoyGrpc(_) => {
                            crate::request::facts::Door::EnvoyGrpc
                        }
                        crate::config::raw::RawDoor::EnvoyHttp(_) => {
                            crate::request::facts::Door::EnvoyHttp
                        }
                        crate::config::raw::RawDoor::ForwardAuth(_) => {
                            crate::request::facts::Door::ForwardAuth
                        }
                    };
                    (l.name.clone(), l.address, l.tls.is_some(), door)
                })
                .collect(),
            admin_address: cfg.admin.address,
            public_address: cfg.admin.public_address,
            max_connections: cfg.server.max_connections,
            max_in_flight: cfg.server.max_in_flight,
            worker_threads: cfg.server.worker_threads,
            logging: (cfg.logging.format, cfg.logging.level.clone()),
        }
    }
}

/// Settings that a running gateway cannot change, as (field path, message): a reload that
/// changes the listeners fails with theirs; one that changes others applies, and warns with
/// theirs (see [`refuses_the_reload`]).
pub fn restart_only_changes(old: &Snapshot, new: &Snapshot) -> Vec<(String, &'static str)> {
    let (o, n) = (&old.restart, &new.restart);
    let mut out = Vec::new();
    if o.listeners != n.listeners {
        out.push(listener_change(&o.listeners, &n.listeners));
    }
    const CHANGED: &str = "changed: restart required";
    for (differs, field, message) in [
        (o.admin_address != n.admin_address, "admin.address", CHANGED),
        (
            o.public_address != n.public_address,
            "admin.public_address",
            CHANGED,
        ),
        (
            o.max_connections != n.max_connections,
            "server.max_connections",
            CHANGED,
        ),
        (
            o.max_in_flight != n.max_in_flight,
            "server.max_in_flight",
            CHANGED,
        ),
        (
            o.worker_threads != n.worker_threads,
            "server.worker_threads",
            CHANGED,
        ),
        (
            o.logging != n.logging,
            "logging",
            "format or level changed: restart required",
        ),
    ] {
        if differs {
            out.push((field.to_owned(), message));
        }
    }
    out
}

/// Where the listeners changed: the field of the first one that did, when only its settings
/// changed (the reload's error then points at its line), else the list.
///
/// Why: the refusal named `listeners`, placed at the list's first line (1:1 in a file that
/// starts with it), whichever of ten listeners moved. Regression: tests::the_listener_that_changed_is_named
fn listener_change(
    old: &[(String, SocketAddr, bool, crate::request::facts::Door)],
    new: &[(String, SocketAddr, bool, crate::request::facts::Door)],
) -> (String, &'static str) {
    const ANY: &str = "listener names, addresses, doors or TLS on/off changed: restart required";
    if old.len() != new.len() {
        return ("listeners".to_owned(), ANY);
    }
    let Some((i, (o, n))) = old.iter().zip(new).enumerate().find(|(_, (o, n))| o != n) else {
        return ("listeners".to_owned(), ANY);
    };
    let (field, message) = if o.0 != n.0 {
        ("name", "changed: restart required")
    } else if o.1 != n.1 {
        ("address", "changed: restart required")
    } else if o.2 != n.2 {
        ("tls", "TLS turned on or off: restart required")
    } else {
        ("door", "changed: restart required")
    };
    (format!("listeners[{i}].{field}"), message)
}

/// Whether a restart-only change of `field` refuses the whole reload: only where the gateway
/// listens.
///
/// Why: any restart-only change refused every reload while it stayed, so an operator who
/// raised the log level to troubleshoot froze every policy edit, an emergency deny rule
/// included, while `check` and `explain` said the rule was in force.
/// Regression: tests (it) reload::a_restart_only_setting_waits_while_the_rest_applies
pub fn refuses_the_reload(field: &str) -> bool {
    field == "listeners"
        || field.starts_with("listeners[")
        || matches!(field, "admin.address" | "admin.public_address")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::facts::Door;

    #[test]
    fn the_listener_that_changed_is_named() {
        let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let old = vec![
            ("http".to_owned(), a(80), false, Door::Proxy),
            ("auth".to_owned(), a(81), false, Door::ForwardAuth),
        ];
        let mut new = old.clone();
        new[1].1 = a(82);
        assert_eq!(listener_change(&old, &new).0, "listeners[1].address");
        new[1] = ("auth".to_owned(), a(81), true, Door::ForwardAuth);
        assert_eq!(listener_change(&old, &new).0, "listeners[1].tls");
        new[1] = ("gate".to_owned(), a(81), false, Door::ForwardAuth);
        assert_eq!(listener_change(&old, &new).0, "listeners[1].name");
        new[1] = ("auth".to_owned(), a(81), false, Door::EnvoyHttp);
        assert_eq!(listener_change(&old, &new).0, "listeners[1].door");
        new.pop();
        assert_eq!(listener_change(&old, &new).0, "listeners");
        for field in ["listeners", "listeners[1].address", "admin.address"] {
            assert!(refuses_the_reload(field), "{field}");
        }
        assert!(!refuses_the_reload("logging"));
    }
}
