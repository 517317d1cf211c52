use std::fs;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, client::TlsStream};

use super::*;
use crate::tls::certs::{ca_and_leaf, self_signed};

/// Writes a fresh self-signed certificate for `names` and returns its entry.
fn entry(dir: &Path, file: &str, names: &[&str], server_names: &[&str]) -> CertEntry {
    let (cert, key) = self_signed(names).unwrap();
    let cert_path = dir.join(format!("{file}.crt"));
    let key_path = dir.join(format!("{file}.key"));
    fs::write(&cert_path, cert).unwrap();
    fs::write(&key_path, key).unwrap();
    CertEntry {
        cert: cert_path,
        key: key_path,
        server_names: server_names.iter().map(|&n| n.to_owned()).collect(),
    }
}

fn leaf(entry: &CertEntry) -> CertificateDer<'static> {
    load_cert(&entry.cert, &entry.key).unwrap().key.cert[0].clone()
}

#[test]
fn sni_selection_table() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let entries = [
        entry(d, "default", &["default.test"], &[]),
        entry(d, "a", &["a.test", "*.wild.test"], &[]),
        // Explicit names replace the certificate's own SANs.
        entry(
            d,
            "over",
            &["ignored.test"],
            &["Override.test.", "*.o.test"],
        ),
        // Exact beats wildcard, whatever the entry order.
        entry(d, "exact", &["x.wild.test"], &[]),
        // Duplicate of entry 1's name: the first entry wins.
        entry(d, "dup", &["a.test", "dup.test"], &[]),
    ];
    let leaves: Vec<_> = entries.iter().map(leaf).collect();
    let resolver = SniResolver::from_entries(&entries).unwrap();
    let cases: &[(Option<&str>, usize)] = &[
        (None, 0),
        (Some("unknown.test"), 0),
        (Some("default.test"), 0),
        (Some("a.test"), 1),
        (Some("A.TEST"), 1),
        (Some("a.test."), 1),
        (Some("y.wild.test"), 1),
        (Some("Y.Wild.Test."), 1),
        (Some("wild.test"), 0),
        (Some("a.b.wild.test"), 0),
        (Some(".wild.test"), 0),
        (Some("x.wild.test"), 3),
        (Some("override.test"), 2),
        (Some("q.o.test"), 2),
        (Some("ignored.test"), 0),
        (Some("dup.test"), 4),
        (Some(""), 0),
    ];
    for &(sni, want) in cases {
        assert_eq!(resolver.select(sni), want, "sni {sni:?}");
        let got = resolver.select_key(sni).unwrap();
        assert_eq!(
            got.cert[0], leaves[want],
            "sni {sni:?} should select entry {want}"
        );
    }
}

#[test]
fn ipv6_hosts_bind_like_ipv4() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The default entry names both addresses; the other a DNS name.
    let entries = [
        entry(
            d,
            "default",
            &["default.test"],
            &["127.0.0.1", "::1", "default.test"],
        ),
        entry(d, "other", &["other.test"], &[]),
    ];
    let names = Arc::new(SniResolver::from_entries(&entries).unwrap());
    let default = HostBinding {
        names: Arc::clone(&names),
        entry: 0,
    };
    let other = HostBinding { names, entry: 1 };
    for host in ["127.0.0.1", "[::1]", "default.test"] {
        assert!(default.allows(host), "{host} on the default entry");
        assert!(!other.allows(host), "{host} is not the other entry's");
    }
    assert!(other.allows("other.test"));

    // Addresses from a certificate's own SANs on another entry: IPv6 as IPv4, refused on the
    // default connection (they were once read as the default's).
    let entries = [
        entry(d, "default", &["default.test"], &[]),
        entry(d, "addrs", &["127.0.0.2", "::2"], &[]),
    ];
    let names = Arc::new(SniResolver::from_entries(&entries).unwrap());
    let default = HostBinding { names, entry: 0 };
    assert!(!default.allows("127.0.0.2"));
    assert!(!default.allows("[::2]"));
}

#[test]
fn config_errors_name_the_entry_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = entry(d, "good", &["good.test"], &[]);

    let (index, err) = server_config(&[], true, None).unwrap_err();
    assert_eq!((index, err.field()), (0, "cert"));

    for bad_name in ["a.*.test", "*", "bad name.test", "", "*.", "a..test"] {
        let bad = entry(d, "bad", &["bad.test"], &[bad_name]);
        let (index, err) = server_config(&[good.clone(), bad], true, None).unwrap_err();
        assert_eq!(
            (index, err.field()),
            (1, "server_names"),
            "{bad_name:?}: {err}"
        );
    }

    // An address is never SNI: only the default entry may name one.
    for address in ["10.0.0.1", "::1"] {
        let bad = entry(d, "addr", &["addr.test"], &[address]);
        let (index, err) = server_config(&[good.clone(), bad], true, None).unwrap_err();
        assert_eq!(
            (index, err.field()),
            (1, "server_names"),
            "{address}: {err}"
        );
        assert!(err.to_string().contains("never sent as SNI"), "{err}");
        let first = entry(d, "addr", &["addr.test"], &[address, "addr.test"]);
        server_config(&[first, good.clone()], true, None).unwrap();
    }

    // A nameless certificate may only be the default.
    let nameless = entry(d, "nameless", &[], &[]);
    server_config(std::slice::from_ref(&nameless), true, None).unwrap();
    let (index, err) = server_config(&[good.clone(), nameless], true, None).unwrap_err();
    assert_eq!((index, err.field()), (1, "server_names"), "{err}");

    let mut swapped = good.clone();
    swapped.key = good.cert.clone();
    let (index, err) = server_config(&[good, swapped], true, None).unwrap_err();
    assert_eq!((index, err.field()), (1, "key"), "{err}");
}

#[test]
fn client_config_ca_file_errors() {
    let dir = tempfile::tempdir().unwrap();
    client_config(None, true).unwrap();
    let garbage = dir.path().join("ca.pem");
    fs::write(&garbage, "not a certificate").unwrap();
    let err = client_config(Some(&garbage), false).unwrap_err();
    assert_eq!(err.field(), "ca_file");
    assert!(err.to_string().contains("ca.pem"), "{err}");
}

/// Serves one TLS connection (writing "ok") and returns the client side after reading it.
async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    sni: &str,
) -> TlsStream<TcpStream> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = TlsAcceptor::from(server).accept(tcp).await.unwrap();
        tls.write_all(b"ok").await.unwrap();
        tls.shutdown().await.unwrap();
    });
    let client_side = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(sni.to_owned()).unwrap();
        let mut tls = TlsConnector::from(client).connect(name, tcp).await.unwrap();
        let mut buf = [0; 2];
        tls.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ok");
        tls
    };
    let tls = tokio::time::timeout(Duration::from_secs(10), client_side)
        .await
        .unwrap();
    server_task.await.unwrap();
    tls
}

#[tokio::test]
async fn handshake_selects_cert_by_sni_and_negotiates_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let entries = [
        entry(d, "a", &["a.test"], &[]),
        entry(d, "b", &["b.test"], &[]),
    ];
    // The client trusts both self-signed certificates.
    let bundle = d.join("trusted.pem");
    let pems: Vec<_> = entries
        .iter()
        .map(|e| fs::read_to_string(&e.cert).unwrap())
        .collect();
    fs::write(&bundle, pems.concat()).unwrap();

    let server = server_config(&entries, true, None).unwrap();
    let tls = handshake(
        server,
        client_config(Some(&bundle), true).unwrap(),
        "b.test",
    )
    .await;
    let (_, conn) = tls.get_ref();
    let peer = conn.peer_certificates().unwrap();
    assert_eq!(peer[0], leaf(&entries[1]));
    assert_eq!(conn.alpn_protocol(), Some(ALPN_H2));

    // HTTP/1.1-only server: ALPN falls back even when the client offers h2.
    let server = server_config(&entries, false, None).unwrap();
    let tls = handshake(
        server,
        client_config(Some(&bundle), true).unwrap(),
        "a.test",
    )
    .await;
    let (_, conn) = tls.get_ref();
    assert_eq!(conn.peer_certificates().unwrap()[0], leaf(&entries[0]));
    assert_eq!(conn.alpn_protocol(), Some(ALPN_HTTP11));
}

#[tokio::test]
async fn client_trusts_ca_file_for_upstream_leaf() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca, leaf_pem, key) = ca_and_leaf(&["upstream.test"]).unwrap();
    let ca_path = d.join("ca.pem");
    fs::write(&ca_path, ca).unwrap();
    let upstream = CertEntry {
        cert: d.join("leaf.pem"),
        key: d.join("leaf.key"),
        server_names: Vec::new(),
    };
    fs::write(&upstream.cert, leaf_pem).unwrap();
    fs::write(&upstream.key, key).unwrap();

    let server = server_config(std::slice::from_ref(&upstream), true, None).unwrap();
    let client = client_config(Some(&ca_path), false).unwrap();
    let tls = handshake(server, client, "upstream.test").await;
    let (_, conn) = tls.get_ref();
    assert_eq!(conn.peer_certificates().unwrap()[0], leaf(&upstream));
    assert_eq!(conn.alpn_protocol(), Some(ALPN_HTTP11));
}

/// A self-signed upstream leaf given as its own `ca_file` is a pin rustls accepts (so `check`
/// does not warn about it; it does about a leaf that is not self-signed).
#[tokio::test]
async fn client_trusts_a_pinned_self_signed_upstream_leaf() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["upstream.test".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let upstream = CertEntry {
        cert: d.join("leaf.pem"),
        key: d.join("leaf.key"),
        server_names: Vec::new(),
    };
    fs::write(&upstream.cert, cert.pem()).unwrap();
    fs::write(&upstream.key, key.serialize_pem()).unwrap();
    let server = server_config(std::slice::from_ref(&upstream), false, None).unwrap();
    let client = client_config(Some(&upstream.cert), false).unwrap();
    let tls = handshake(server, client, "upstream.test").await;
    assert_eq!(
        tls.get_ref().1.peer_certificates().unwrap()[0],
        leaf(&upstream)
    );
}

#[test]
fn server_names_outside_the_certificate_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let entries = [
        entry(
            d,
            "default",
            &["default.test", "10.0.0.1"],
            &["10.0.0.1", "Default.Test.", "10.0.0.2"],
        ),
        entry(
            d,
            "wild",
            &["*.wild.test"],
            &["x.wild.test", "*.wild.test", "a.b.wild.test", "wild.test"],
        ),
        entry(d, "over", &["ignored.test"], &["*.o.test"]),
        entry(d, "own", &["own.test"], &[]),
    ];
    let tls = listener_tls(&entries, true, &[None, None, None, None]).unwrap();
    let uncovered: Vec<_> = tls
        .uncovered_names()
        .iter()
        .map(|(i, name, _)| (*i, name.as_str()))
        .collect();
    assert_eq!(
        uncovered,
        [
            (0, "10.0.0.2"),
            (1, "a.b.wild.test"),
            (1, "wild.test"),
            (2, "*.o.test")
        ]
    );
    assert_eq!(tls.uncovered_names()[3].2, "ignored.test");
}

#[test]
fn a_renewed_certificate_moving_a_host_to_another_client_ca_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca_a, ca_b) = (Some([1u8; 32]), Some([2u8; 32]));
    let build = |entries: &[CertEntry], auth: Vec<Option<[u8; 32]>>| {
        listener_tls(entries, true, &vec![None; entries.len()])
            .unwrap()
            .with_entry_auth(auth)
    };
    let a = entry(d, "a", &["a.example"], &[]);
    let b = entry(d, "b", &["b.example", "*.b.example"], &[]);
    let before = build(&[a.clone(), b.clone()], vec![ca_a, ca_b]);
    assert!(
        build(&[a.clone(), b.clone()], vec![ca_a, ca_b])
            .moved_names(&before)
            .is_empty()
    );
    // b's certificate renewed without its names: both fall to the default entry (CA-A).
    let b2 = entry(d, "b-renewed", &["b2.example"], &[]);
    let after = build(&[a.clone(), b2.clone()], vec![ca_a, ca_b]);
    assert_eq!(
        after.moved_names(&before),
        [
            ("*.b.example".to_owned(), 1, 0),
            ("b.example".to_owned(), 1, 0)
        ]
    );
    // The default entry's renewed certificate now names b.example: it would win.
    let a2 = entry(d, "a-renewed", &["a.example", "b.example"], &[]);
    let after = build(&[a2, b.clone()], vec![ca_a, ca_b]);
    assert_eq!(after.moved_names(&before), [("b.example".to_owned(), 1, 0)]);
    // Moved on purpose: named in `server_names` (`*.b.example`, named nowhere, still falls).
    let a3 = entry(
        d,
        "a-named",
        &["a.example", "b.example"],
        &["a.example", "b.example"],
    );
    let after = build(&[a3, b2.clone()], vec![ca_a, ca_b]);
    assert_eq!(
        after.moved_names(&before),
        [("*.b.example".to_owned(), 1, 0)]
    );
    // The same client CA where it lands: nothing changes for client certificates.
    let after = build(&[a.clone(), b2], vec![ca_b, ca_b]);
    assert!(after.moved_names(&before).is_empty());
    // A CA changed in place is not a move.
    let after = build(&[a, b], vec![ca_a, Some([3u8; 32])]);
    assert!(after.moved_names(&before).is_empty());
}

#[test]
fn listed_names_beat_names_from_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The default entry's certificate also names b.example; the second entry lists it.
    let a = entry(d, "a", &["a.example", "b.example"], &[]);
    let b = entry(d, "b", &["b.example"], &["b.example"]);
    let tls = listener_tls(&[a.clone(), b], true, &[None, None]).unwrap();
    assert_eq!(tls.names.select(Some("b.example")), 1);
    assert_eq!(tls.names.select(Some("a.example")), 0);
    // Among names from certificates (or among listed ones), the first entry still wins.
    let c = entry(d, "c", &["b.example"], &[]);
    let tls = listener_tls(&[a, c], true, &[None, None]).unwrap();
    assert_eq!(tls.names.select(Some("b.example")), 0);
}

#[test]
fn a_host_under_a_wildcard_taken_by_a_renewal_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca_a, ca_b) = (Some([1u8; 32]), Some([2u8; 32]));
    let a = entry(d, "a", &["a.example"], &[]);
    let w = entry(d, "w", &["*.b.example"], &[]);
    let before = listener_tls(&[a, w.clone()], true, &[None, None])
        .unwrap()
        .with_entry_auth(vec![ca_a, ca_b]);
    let renewed = entry(d, "a-renewed", &["a.example", "x.b.example"], &[]);
    let after = listener_tls(&[renewed, w], true, &[None, None])
        .unwrap()
        .with_entry_auth(vec![ca_a, ca_b]);
    assert_eq!(
        after.moved_names(&before),
        [("x.b.example".to_owned(), 1, 0)]
    );
}

#[test]
fn a_host_under_a_listed_wildcard_taken_by_a_renewal_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (open, ca_b) = (None, Some([2u8; 32]));
    let a = entry(d, "a", &["a.example"], &[]);
    let w = entry(
        d,
        "w",
        &["*.b.example", "b.example"],
        &["*.b.example", "b.example"],
    );
    let before = listener_tls(&[a, w.clone()], true, &[None, None])
        .unwrap()
        .with_entry_auth(vec![open, ca_b]);
    let renewed = entry(d, "a-renewed", &["a.example", "x.b.example"], &[]);
    let after = listener_tls(&[renewed, w], true, &[None, None])
        .unwrap()
        .with_entry_auth(vec![open, ca_b]);
    assert_eq!(
        after.moved_names(&before),
        [("x.b.example".to_owned(), 1, 0)]
    );
}
