//! Each client's share of the requests whose bodies are still arriving
//! (`server.max_uploads_per_client`), and their share of all requests in flight.
//!
//! Contract:
//! - A request whose body is still to come once what arrived with its head is read takes a
//!   share of its client (the address `trusted_proxies` resolve; IPv6 by its /64, loopback as
//!   one client) before its body is awaited, on every path that reads a body (`RequestBody::
//!   prefetch`), and holds it while it holds its
//!   `max_in_flight` permit and its body is still arriving: it is given back when the body has
//!   all arrived (or ended otherwise, or was dropped) or when the answer begins, whichever
//!   comes first. A body that came whole (a unary gRPC call whose message followed its
//!   head) takes none; a long gRPC stream answered at once gives it back then.
//! - Past the client's share, or with half of `server.max_in_flight` held by uploads (so that
//!   many clients' stalled uploads, a /56 of /64s, still leave the rest to everyone else), the
//!   request is refused with 503 `overloaded` and `Retry-After: 1`, as a shed request is, and
//!   counted in `portcullis_connection_limits_total{limit="uploads_per_client"}` or
//!   `{limit="uploads"}`.
//! - Requests whose body came whole with the head (every GET, a small POST) never count, and
//!   never touch the lock.
//!
//! Why: a stalled upload holds one of `server.max_in_flight` for as long as its deadlines
//! allow (the first body byte within `header_read_timeout`, then a minimum rate). Over HTTP/2
//! a connection carries 128 of them: 90 connections of unfinished POSTs (about 1 MB sent) kept
//! the proxy shedding every other client's requests. Regression: tests (it)
//! abuse::one_clients_stalled_uploads_cannot_shed_everyone

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Requests with bodies still arriving, counted per client site and in all.
#[derive(Debug, Default)]
pub struct Uploads {
    held: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    by_site: HashMap<u128, usize>,
    /// By IPv6 /56, each at most [`WIDE_SHARES`] clients' shares.
    by_wide: HashMap<u128, usize>,
    total: usize,
}

/// How many clients' shares one IPv6 /56 holds at most.
///
/// Why: a client is a /64, and a /56 (a home's allocation) holds 256 of them: 20 of its /64s
/// took every upload slot of the gateway (half of `max_in_flight`), and every other client's
/// uploads and gRPC calls got 503. Regression: tests::a_wide_network_shares_a_few_clients_shares
const WIDE_SHARES: usize = 4;

/// Which bound refused an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// The client's own share (`server.max_uploads_per_client`).
    Client,
    /// Uploads' share of all requests in flight.
    All,
}

impl Over {
    /// The `limit` label it is counted under.
    pub fn label(self) -> &'static str {
        match self {
            Self::Client => "uploads_per_client",
            Self::All => "uploads",
        }
    }
}

/// One request's share of its client's uploads, given back when dropped.
#[derive(Debug)]
pub struct Upload {
    of: Arc<Uploads>,
    site: u128,
    wide: Option<u128>,
}

impl Uploads {
    /// A share for `client`, unless it already holds `max`, or uploads hold `max_total` in
    /// all.
    pub fn take(
        self: &Arc<Self>,
        client: IpAddr,
        max: usize,
        max_total: usize,
    ) -> Result<Upload, Over> {
        let site = site(client);
        let wide = wide(client);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.total >= max_total {
            return Err(Over::All);
        }
        let n = held.by_site.get(&site).copied().unwrap_or(0);
        if n >= max {
            return Err(Over::Client);
        }
        if let Some(w) = wide {
            let in_wide = held.by_wide.get(&w).copied().unwrap_or(0);
            if in_wide >= max.saturating_mul(WIDE_SHARES) {
                return Err(Over::Client);
            }
            held.by_wide.insert(w, in_wide + 1);
        }
        held.by_site.insert(site, n + 1);
        held.total += 1;
        Ok(Upload {
            of: Arc::clone(self),
            site,
            wide,
        })
    }

    /// Shares held by `client` now.
    #[cfg(test)]
    fn held(&self, client: IpAddr) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.by_site.get(&site(client)).copied().unwrap_or(0)
    }
}

/// A share held by a request's body and by the request together ([`Held::release`]).
#[derive(Debug)]
pub struct Held(Mutex<Option<Upload>>);

impl Held {
    /// Holds `share`.
    pub fn new(share: Upload) -> Arc<Self> {
        Arc::new(Self(Mutex::new(Some(share))))
    }

    /// Gives the share back (once, whoever calls first: the body at its end, the request at
    /// its answer's start).
    pub fn release(&self) {
        let share = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        drop(share);
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let mut held = self.of.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.by_site.get_mut(&self.site) {
            *n -= 1;
            if *n == 0 {
                held.by_site.remove(&self.site);
            }
        }
        if let Some(w) = self.wide
            && let Some(n) = held.by_wide.get_mut(&w)
        {
            *n -= 1;
            if *n == 0 {
                held.by_wide.remove(&w);
            }
        }
    }
}

/// The wider network an IPv6 client's /64 belongs to (its /56); `None` for IPv4 and loopback.
fn wide(ip: IpAddr) -> Option<u128> {
    match ip.to_canonical() {
        IpAddr::V6(v6) if !v6.is_loopback() => Some(u128::from(v6) >> 72 << 72),
        _ => None,
    }
}

/// The unit counted: every local process shares loopback (any 127.x address), and one host
/// holds a whole IPv6 /64.
fn site(ip: IpAddr) -> u128 {
    crate::request::facts::loopback_as_one_site(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_client_holds_at_most_its_share() {
        let uploads = Arc::new(Uploads::default());
        let a: Vec<_> = (0..3)
            .map(|_| {
                uploads
                    .take(ip("192.0.2.1"), 3, 5)
                    .expect("within the share")
            })
            .collect();
        assert_eq!(
            uploads.take(ip("192.0.2.1"), 3, 5).unwrap_err(),
            Over::Client,
            "past the share"
        );
        // Another client has its own, within uploads' share of all.
        let b: Vec<_> = (0..2)
            .map(|_| uploads.take(ip("192.0.2.2"), 3, 5).expect("another client"))
            .collect();
        assert_eq!(
            uploads.take(ip("192.0.2.3"), 3, 5).unwrap_err(),
            Over::All,
            "past the share of all"
        );
        drop(a);
        assert_eq!(uploads.held(ip("192.0.2.1")), 0, "given back when dropped");
        let c = uploads.take(ip("192.0.2.3"), 3, 5).expect("room again");
        drop((b, c));
        let held = uploads.held.lock().unwrap();
        assert!(held.by_site.is_empty(), "no entry left behind");
        assert_eq!(held.total, 0);
    }

    #[test]
    fn a_wide_network_shares_a_few_clients_shares() {
        let uploads = Arc::new(Uploads::default());
        // A /56's /64s: each a client with its share of 2, the /56 at most 4 clients' (8).
        let held: Vec<_> = (0..4)
            .flat_map(|n| (0..2).map(move |_| n))
            .map(|n| {
                let ip = ip(&format!("2001:db8:0:{n:x}::1"));
                uploads.take(ip, 2, 100).expect("within the /56's")
            })
            .collect();
        assert_eq!(
            uploads.take(ip("2001:db8:0:ff::1"), 2, 100).unwrap_err(),
            Over::Client,
            "a fifth /64 of the /56"
        );
        assert!(
            uploads.take(ip("2001:db8:0:100::1"), 2, 100).is_ok(),
            "the next /56"
        );
        assert!(
            uploads.take(ip("192.0.2.1"), 2, 100).is_ok(),
            "IPv4 has no wider network"
        );
        drop(held);
        assert!(
            uploads.take(ip("2001:db8:0:ff::1"), 2, 100).is_ok(),
            "given back"
        );
        assert!(uploads.held.lock().unwrap().by_wide.len() <= 2);
    }

    #[test]
    fn a_site_shares_one_count() {
        // (address taking a share, address of the same client, address of another)
        let table = [
            ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:3::1"),
            ("127.0.0.1", "127.0.0.9", "192.0.2.1"),
            ("::1", "127.0.0.1", "::2"),
            ("::ffff:192.0.2.7", "192.0.2.7", "192.0.2.8"),
        ];
        for (first, same, other) in table {
            let uploads = Arc::new(Uploads::default());
            let _held = uploads.take(ip(first), 1, 10).unwrap();
            assert!(uploads.take(ip(same), 1, 10).is_err(), "{same} is {first}");
            assert!(
                uploads.take(ip(other), 1, 10).is_ok(),
                "{other} is not {first}"
            );
        }
    }
}
