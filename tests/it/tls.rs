//! TLS termination: ALPN, SNI certificate selection, protocol versions, certificate reload
//! (file watch and failed reload), and plaintext sent to a TLS port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::tls::certs::self_signed;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, ProtocolVersion, SignatureScheme, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::support::{Setup, TestGateway, eventually, tls_client};

/// Bound on every handshake and request, so a hung gateway fails the test instead of nextest.
const STEP: Duration = Duration::from_secs(10);

/// A listener named `https` serving the given `(cert, key)` files, first entry the default.
fn tls_listener(files: &[(&str, &str)]) -> String {
    let mut yaml =
        "  - name: https\n    address: 127.0.0.1:0\n    tls:\n      certificates:\n".to_owned();
    for (cert, key) in files {
        yaml.push_str(&format!("        - cert: {cert}\n          key: {key}\n"));
    }
    yaml
}

/// Starts a gateway whose `https` listener serves `certs` as `(stem, cert_pem, key_pem)`, written
/// to `{stem}.crt` and `{stem}.key`.
async fn start_tls(certs: &[(&str, &str, &str)], watch: bool) -> TestGateway {
    let names: Vec<(String, String)> = certs
        .iter()
        .map(|(stem, _, _)| (format!("{stem}.crt"), format!("{stem}.key")))
        .collect();
    let refs: Vec<(&str, &str)> = names.iter().map(|(c, k)| (&**c, &**k)).collect();
    let mut files = Vec::new();
    for ((cert_file, key_file), (_, cert, key)) in names.iter().zip(certs) {
        files.push((cert_file.clone(), cert.as_bytes().to_vec()));
        files.push((key_file.clone(), key.as_bytes().to_vec()));
    }
    Setup {
        listeners: tls_listener(&refs),
        files,
        watch,
        ..Setup::default()
    }
    .start()
    .await
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("certificate PEM")
        .to_vec()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client trusting `trusted` and speaking only `version`, ALPN `http/1.1`.
fn client_with_version(
    trusted: &[&str],
    version: &'static SupportedProtocolVersion,
) -> Arc<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])
        .expect("protocol version supported")
        .with_root_certificates(roots(trusted))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

fn roots(trusted: &[&str]) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for pem in trusted {
        roots
            .add(CertificateDer::from_pem_slice(pem.as_bytes()).expect("certificate PEM"))
            .expect("trust anchor");
    }
    roots
}

/// Accepts any server certificate (signatures are still checked), for looking at which
/// certificate a name that matches none of them gets.
#[derive(Debug)]
struct AcceptAnyCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

fn accept_any_client() -> Arc<rustls::ClientConfig> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(algorithms)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// A completed TLS handshake to `addr` with SNI `sni`.
async fn connect(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    sni: &str,
) -> TlsStream<TcpStream> {
    let name = ServerName::try_from(sni.to_owned()).expect("server name");
    let handshake = async {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        TlsConnector::from(Arc::clone(cfg))
            .connect(name, tcp)
            .await
            .unwrap_or_else(|e| panic!("TLS handshake with SNI {sni}: {e}"))
    };
    tokio::time::timeout(STEP, handshake)
        .await
        .expect("handshake in time")
}

/// The DER of the end-entity certificate the server presented.
fn peer_leaf(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(<[_]>::first)
        .expect("server sent a certificate")
        .to_vec()
}

/// The certificate served to a fresh connection with SNI `sni`.
async fn served_leaf(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>, sni: &str) -> Vec<u8> {
    peer_leaf(&connect(addr, cfg, sni).await)
}

/// An HTTP/1.1 client connection over an established TLS stream.
async fn http1(tls: TlsStream<TcpStream>) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 client handshake");
    tokio::spawn(conn);
    sender
}

/// Sends one request and reads the response body (at most 1 MiB).
async fn exchange<F>(send: F) -> (StatusCode, Bytes)
where
    F: Future<Output = hyper::Result<Response<Incoming>>>,
{
    let read = async {
        let resp = send.await.expect("response");
        let status = resp.status();
        let mut body = resp.into_body();
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("body frame").into_data() {
                bytes.extend_from_slice(&data);
                assert!(bytes.len() <= 1 << 20, "response body over 1 MiB");
            }
        }
        (status, Bytes::from(bytes))
    };
    tokio::time::timeout(STEP, read)
        .await
        .expect("response in time")
}

/// `GET path` on an HTTP/1.1 connection, keeping it open.
async fn get1(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> (StatusCode, Bytes) {
    tokio::time::timeout(STEP, sender.ready())
        .await
        .expect("connection ready in time")
        .expect("connection still open");
    let req = Request::get(path)
        .header(http::header::HOST, "a.test")
        .body(Empty::new())
        .expect("request");
    exchange(sender.send_request(req)).await
}

/// One HTTP/1.1 `GET path` over a fresh TLS connection with SNI `a.test`.
async fn get_once(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    path: &str,
) -> (StatusCode, Bytes) {
    let mut sender = http1(connect(addr, cfg, "a.test").await).await;
    get1(&mut sender, path).await
}

#[tokio::test]
async fn alpn_h2_negotiated_and_served() {
    let (cert, key) = self_signed(&["a.test"]).expect("certificate");
    let gw = start_tls(&[("a", &cert, &key)], false).await;
    let cfg = tls_client(&[&cert], &[b"h2", b"http/1.1"]);
    let tls = connect(gw.addr_of("https"), &cfg, "a.test").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("HTTP/2 client handshake");
    tokio::spawn(conn);
    let req = Request::get("https://a.test/h2/path?x=1")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let (status, body) = exchange(sender.send_request(req)).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let seen = gw.echo.last().expect("request reached the upstream");
    assert_eq!(seen.target, "/h2/path?x=1");
    assert_eq!(seen.headers.get("x-forwarded-proto").unwrap(), "https");
}

#[tokio::test]
async fn alpn_http11_negotiated_and_served() {
    let (cert, key) = self_signed(&["a.test"]).expect("certificate");
    let gw = start_tls(&[("a", &cert, &key)], false).await;
    let cfg = tls_client(&[&cert], &[b"http/1.1"]);
    let tls = connect(gw.addr_of("https"), &cfg, "a.test").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

    let mut sender = http1(tls).await;
    let (status, body) = get1(&mut sender, "/h1/path?y=2").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let seen = gw.echo.last().expect("request reached the upstream");
    assert_eq!(seen.target, "/h1/path?y=2");
    assert_eq!(seen.headers.get("x-forwarded-proto").unwrap(), "https");
}

#[tokio::test]
async fn sni_selects_certificate() {
    let (a_cert, a_key) = self_signed(&["a.test"]).expect("certificate");
    let (b_cert, b_key) = self_signed(&["b.test"]).expect("certificate");
    let gw = start_tls(&[("a", &a_cert, &a_key), ("b", &b_cert, &b_key)], false).await;
    let addr = gw.addr_of("https");
    let both = tls_client(&[&a_cert, &b_cert], &[b"http/1.1"]);

    // The handshakes also verify the name against the presented certificate.
    assert_eq!(served_leaf(addr, &both, "b.test").await, der(&b_cert));
    assert_eq!(served_leaf(addr, &both, "a.test").await, der(&a_cert));
    // No entry for c.test: the first certificate, which is not valid for c.test.
    assert_eq!(
        served_leaf(addr, &accept_any_client(), "c.test").await,
        der(&a_cert)
    );
}

/// Each listener certificate's expiry is a gauge, by listener and entry, for alerts.
#[tokio::test]
async fn certificate_expiry_is_a_metric() {
    let (a_cert, a_key) = self_signed(&["a.test"]).expect("certificate");
    let (b_cert, b_key) = self_signed(&["b.test"]).expect("certificate");
    let gw = start_tls(&[("a", &a_cert, &a_key), ("b", &b_cert, &b_key)], false).await;
    let (_, metrics) = gw.admin_get("/metrics").await;
    let expected = |pem: &str| {
        portcullis::tls::x509::Certificate::from_der(&der(pem))
            .unwrap()
            .not_after()
    };
    for (entry, pem) in [("0", &a_cert), ("1", &b_cert)] {
        let line = format!(
            "portcullis_tls_certificate_expiry_timestamp_seconds{{listener=\"https\",entry=\"{entry}\"}} {}",
            expected(pem)
        );
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }
}

#[tokio::test]
async fn tls12_and_tls13_both_accepted() {
    let (cert, key) = self_signed(&["a.test"]).expect("certificate");
    let gw = start_tls(&[("a", &cert, &key)], false).await;
    let addr = gw.addr_of("https");
    for (version, expected) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        let cfg = client_with_version(&[&cert], version);
        let tls = connect(addr, &cfg, "a.test").await;
        assert_eq!(tls.get_ref().1.protocol_version(), Some(expected));
        let (status, body) = get1(&mut http1(tls).await, "/v").await;
        assert_eq!(status, StatusCode::OK, "{expected:?}: {body:?}");
    }
}

#[tokio::test]
async fn certificate_reload_on_file_change() {
    let (v1_cert, v1_key) = self_signed(&["a.test"]).expect("certificate");
    let (v2_cert, v2_key) = self_signed(&["a.test"]).expect("certificate");
    let gw = start_tls(&[("a", &v1_cert, &v1_key)], true).await;
    let addr = gw.addr_of("https");
    let cfg = tls_client(&[&v1_cert, &v2_cert], &[b"http/1.1"]);

    let old = connect(addr, &cfg, "a.test").await;
    assert_eq!(peer_leaf(&old), der(&v1_cert));
    let mut old = http1(old).await;
    assert_eq!(get1(&mut old, "/before").await.0, StatusCode::OK);

    gw.write("a.key", &v2_key);
    gw.write("a.crt", &v2_cert);
    let v2 = der(&v2_cert);
    let reloaded = eventually(Duration::from_secs(5), || async {
        served_leaf(addr, &cfg, "a.test").await == v2
    })
    .await;
    assert!(reloaded, "new connections still get v1 after 5 s");

    // The connection opened before the reload is still served.
    let (status, body) = get1(&mut old, "/after").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(gw.echo.last().expect("request").target, "/after");
    assert_eq!(get_once(addr, &cfg, "/new").await.0, StatusCode::OK);
}

#[tokio::test]
async fn certificate_reload_failure_keeps_old_cert() {
    let (cert, key) = self_signed(&["a.test"]).expect("certificate");
    let gw = start_tls(&[("a", &cert, &key)], false).await;
    let addr = gw.addr_of("https");
    let cfg = tls_client(&[&cert], &[b"http/1.1"]);

    gw.write("a.key", "not a key\n");
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body.contains("listeners[0].tls.certificates[0].key"),
        "{body}"
    );

    assert_eq!(served_leaf(addr, &cfg, "a.test").await, der(&cert));
    let (status, body) = get_once(addr, &cfg, "/still").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");

    let (status, body) = gw.admin_get("/config").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let config: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let error = config["last_reload_error"]
        .as_str()
        .unwrap_or_else(|| panic!("no last_reload_error: {body}"));
    assert!(
        error.contains("listeners[0].tls.certificates[0].key"),
        "{error}"
    );
}

/// A self-signed certificate for `name` that expired in 2021.
fn expired(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 3, 4);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A reload never puts a certificate clients refuse (here an expired one) in place of the one
/// served; the one served, once expired, refuses no reload (a policy change still applies) and
/// only warns, as it does at the start.
#[tokio::test]
async fn a_certificate_clients_refuse_never_replaces_a_served_one() {
    let (cert, key) = self_signed(&["a.test"]).expect("certificate");
    let gw = start_tls(&[("a", &cert, &key)], false).await;
    let addr = gw.addr_of("https");
    let cfg = tls_client(&[&cert], &[b"http/1.1"]);
    let (old_cert, old_key) = expired("a.test");
    gw.write("a.crt", &old_cert);
    gw.write("a.key", &old_key);
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body.contains("listeners[0].tls.certificates[0].cert")
            && body.contains("expired at 2021-03-04"),
        "{body}"
    );
    assert_eq!(served_leaf(addr, &cfg, "a.test").await, der(&cert));

    // Started with it (it expired while served): it starts, says so, and reloads go on.
    let gw = start_tls(&[("a", &old_cert, &old_key)], false).await;
    gw.write(
        "policies/20-more.yaml",
        "rules:\n  - {name: more, match: {paths: [\"/more/**\"]}, effect: allow, anonymous: true, upstream: echo}\n",
    );
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("expired at 2021-03-04"), "a warning: {body}");
    assert_eq!(
        served_leaf(gw.addr_of("https"), &accept_any_client(), "a.test").await,
        der(&old_cert)
    );
}

#[tokio::test]
async fn plain_http_to_tls_listener_fails_cleanly() {
    let (cert, key) = self_signed(&["a.test"]).expect("certificate");
    let gw = start_tls(&[("a", &cert, &key)], false).await;
    let addr = gw.addr_of("https");

    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .expect("write");
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut received)).await;
    // EOF or a reset both mean closed; at most a TLS alert record came back, never HTTP.
    assert!(read.is_ok(), "connection still open after 3 s");
    assert!(
        received.is_empty() || received[0] == 0x15,
        "not a TLS alert: {:?}",
        String::from_utf8_lossy(&received)
    );

    let cfg = tls_client(&[&cert], &[b"http/1.1"]);
    let (status, body) = get_once(addr, &cfg, "/after-plaintext").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
}
