//! Test harness: the real gateway (`App`) on 127.0.0.1:0 with files in a temp dir, the echo
//! upstream recording what it received, and clients (hyper over plain or TLS, raw TCP).

#![allow(
    clippy::allow_attributes,
    dead_code,
    reason = "each test module uses a different part of the harness"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis::app::{App, Options};
use portcullis::echo::Echo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A policy that allows everything to the `echo` upstream.
pub const ALLOW_ALL: &str = "\
rules:
  - name: all
    match:
      paths: [\"/**\"]
    effect: allow
    anonymous: true
    upstream: echo
";

/// A policy that allows everything except `/admin/**`.
pub const ALLOW_ALL_BUT_ADMIN: &str = "\
rules:
  - name: admin
    match:
      paths: [\"/admin/**\"]
    effect: deny
  - name: all
    match:
      paths: [\"/**\"]
    effect: allow
    anonymous: true
    upstream: echo
";

/// A decision-only policy: `/api/**` for `users` tokens, with CORS for one origin (GET and
/// PUT, the `authorization` header, credentials).
pub const CORS_API: &str = "\
rules:
  - name: api
    match: {paths: [\"/api/**\"]}
    effect: allow
    authenticators: [users]
    cors:
      allowed_origins: [\"https://app.example.com\"]
      allowed_methods: [GET, PUT]
      allowed_headers: [authorization]
      allow_credentials: true
";

/// The requests in flight on `upstream`'s endpoints, summed, from a Prometheus scrape.
pub fn in_flight(metrics: &str, upstream: &str) -> u32 {
    let prefix = format!("portcullis_upstream_endpoint_in_flight{{upstream=\"{upstream}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u32>().ok())
        .sum()
}

/// One policy file sending every request to `upstream`.
pub fn route_all_to(upstream: &str) -> Vec<(String, String)> {
    vec![(
        "p.yaml".into(),
        format!(
            "rules:\n  - name: all\n    match: {{paths: [\"/**\"]}}\n    effect: allow\n    anonymous: true\n    upstream: {upstream}\n"
        ),
    )]
}

/// A gateway started from files in its own temp dir.
pub struct TestGateway {
    pub app: Option<App>,
    pub dir: tempfile::TempDir,
    pub echo: Echo,
}

/// Builder for a gateway config.
pub struct Setup {
    pub listeners: String,
    pub server: String,
    pub upstreams: String,
    pub policies: Vec<(String, String)>,
    pub files: Vec<(String, Vec<u8>)>,
    pub watch: bool,
    /// Appended to the config as is (authenticators, authn).
    pub extra: String,
    /// More `admin:` settings, each line indented two spaces.
    pub admin: String,
    /// The gateway's clock: the system's unless a test moves a manual one.
    pub clock: portcullis::clock::Clock,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            listeners: "  - name: http\n    address: 127.0.0.1:0\n".into(),
            server: String::new(),
            upstreams: String::new(),
            policies: vec![("10-all.yaml".into(), ALLOW_ALL.into())],
            files: Vec::new(),
            watch: false,
            extra: String::new(),
            admin: String::new(),
            clock: portcullis::clock::Clock::system(),
        }
    }
}

impl Setup {
    /// Plain HTTP listener named `http`, policy `policy`.
    pub fn with_policy(policy: &str) -> Self {
        Self {
            policies: vec![("10-all.yaml".into(), policy.into())],
            ..Self::default()
        }
    }

    /// Adds an extra server: block (indented two spaces per line).
    pub fn server(mut self, yaml: &str) -> Self {
        self.server = yaml.into();
        self
    }

    pub async fn start(self) -> TestGateway {
        self.start_while(|_| {}).await
    }

    /// [`Self::start`], running `during` on a thread of its own, given the gateway's
    /// directory, as the gateway starts (its files written, its config being read).
    pub async fn start_while(
        self,
        during: impl FnOnce(std::path::PathBuf) + Send + 'static,
    ) -> TestGateway {
        let echo = Echo::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("echo starts");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        for (name, bytes) in &self.files {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        for (name, text) in &self.policies {
            std::fs::write(dir.path().join("policies").join(name), text).unwrap();
        }
        let config = render_config(&self, echo.addr);
        std::fs::write(dir.path().join("portcullis.yaml"), config).unwrap();
        let options = Options {
            watch: self.watch,
            watch_debounce: Duration::from_millis(50),
            clock: self.clock.clone(),
        };
        let root = dir.path().to_path_buf();
        let during = std::thread::spawn(move || during(root));
        let app = App::start(&dir.path().join("portcullis.yaml"), options)
            .await
            .unwrap_or_else(|e| panic!("gateway starts: {e}"));
        during.join().expect("the start's companion ran");
        TestGateway {
            app: Some(app),
            dir,
            echo,
        }
    }
}

/// Renders the config file; `upstreams` may refer to `{echo}`.
pub fn render_config(s: &Setup, echo: SocketAddr) -> String {
    let mut c = format!(
        "listeners:\n{}admin:\n  address: 127.0.0.1:0\n{}upstreams:\n  echo:\n    url: http://{echo}\n    response_timeout: 2s\n    connect_timeout: 1s\n",
        s.listeners, s.admin
    );
    c.push_str(&s.upstreams.replace("{echo}", &echo.to_string()));
    c.push_str("policies:\n  dir: policies\nlogging:\n  access_log: false\n");
    if !s.server.is_empty() {
        c.push_str("server:\n");
        c.push_str(&s.server);
    }
    c.push_str(&s.extra);
    c
}

impl TestGateway {
    /// Response bodies cut at their idle timeout, as `/metrics` counts them (every upstream's).
    pub async fn idle_cuts(&self) -> u64 {
        let (_, metrics) = self.admin_get("/metrics").await;
        metrics
            .lines()
            .filter(|l| l.starts_with("portcullis_upstream_errors_total{"))
            .filter_map(|l| l.split_once(",kind=\"idle_timeout\"} "))
            .map(|(_, v)| v.trim().parse::<u64>().expect("a count"))
            .sum()
    }

    pub fn app(&self) -> &App {
        self.app.as_ref().expect("running")
    }

    /// Address of the listener named `http` (or `name`).
    pub fn addr(&self) -> SocketAddr {
        self.app().listener_addr("http").expect("http listener")
    }

    pub fn addr_of(&self, name: &str) -> SocketAddr {
        self.app().listener_addr(name).expect("listener")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file atomically (temp + rename), as editors and config managers do.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) {
        write_atomic(&self.path(rel), contents.as_ref());
    }

    pub async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        let (s, _, b) = send(
            self.app().admin_addr(),
            Request::get(path).body(Full::default()).unwrap(),
        )
        .await;
        (s, String::from_utf8_lossy(&b).into_owned())
    }

    pub async fn admin_post(&self, path: &str) -> (StatusCode, String) {
        let (s, _, b) = send(
            self.app().admin_addr(),
            Request::post(path).body(Full::default()).unwrap(),
        )
        .await;
        (s, String::from_utf8_lossy(&b).into_owned())
    }
}

pub fn write_atomic(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// One request over a fresh plain-HTTP/1.1 client.
pub async fn send(
    addr: SocketAddr,
    mut req: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, Bytes) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    *req.uri_mut() = format!("http://{addr}{pq}").parse().unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("response in time")
        .expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

pub async fn get(addr: SocketAddr, path: &str) -> (StatusCode, HeaderMap, Bytes) {
    send(addr, Request::get(path).body(Full::default()).unwrap()).await
}

/// A raw HTTP/1.1 exchange: writes `request` verbatim, reads until the server closes (or 5 s).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    RawResponse::parse(&buf)
}

/// A connection whose `POST /up` declared `len` bytes of body, sent `abc` and stalled, once
/// the gateway's `408` to it has been read (the gateway's `header_read_timeout` bounds it).
pub async fn stalled_upload_answered_408(addr: SocketAddr, len: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!("POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: {len}\r\n\r\nabc");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer to the stalled body")
            .unwrap();
        assert!(n > 0, "closed with no answer");
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    s
}

/// `GET {target}` with `Connection: close`, raw.
pub async fn raw_get(addr: SocketAddr, target: &str) -> RawResponse {
    raw(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
}

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawResponse {
    pub fn parse(buf: &[u8]) -> Self {
        let text = String::from_utf8_lossy(buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Self {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
        }
    }
}

/// A rustls client config trusting exactly the given PEM certificates.
pub fn tls_client(trusted_pems: &[&str], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for pem in trusted_pems {
        for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// A loopback address nobody listens on (bound, then closed): connects to it are refused.
pub fn closed_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// An HTTP/2 connection to `addr` with prior knowledge (cleartext), driven in the background.
pub async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

/// A loopback address on which connects are refused for the rest of the test: a socket is
/// bound there and never listens (nor lets go), so no other test's server can take the port
/// meanwhile, as one did a [`closed_port`]'s (a "dead" upstream answered 200).
pub fn refused_port() -> std::net::SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.1:0".parse().unwrap())
        .expect("a loopback port");
    let addr = socket.local_addr().unwrap();
    // Held until the test's process ends (nextest runs each test in a process of its own).
    std::mem::forget(socket);
    addr
}

/// Polls `f` every 20 ms for at most `within`; for reloads, the one thing we wait on.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The echo server's JSON view of a header it received, if any.
pub fn echoed_header(echo: &Echo, name: &str) -> Option<String> {
    echo.last().and_then(|r| {
        r.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("").to_owned())
    })
}

/// What the key server answers.
#[derive(Debug, Clone)]
pub enum KeyMode {
    /// The current documents.
    Serve,
    /// 200 with a body that is not JSON.
    Garbage,
    /// A JWKS with no keys.
    Empty,
    /// Waits this long before answering.
    Slow(Duration),
    /// This status.
    Status(u16),
}

#[derive(Debug)]
struct KeyState {
    mode: KeyMode,
    jwks: String,
    discovery: String,
    cache_control: Option<String>,
    hits: usize,
}

/// A loopback JWKS and OIDC discovery server the tests control: `/jwks.json` and
/// `/.well-known/openid-configuration`.
pub struct KeyServer {
    pub addr: SocketAddr,
    state: Arc<std::sync::Mutex<KeyState>>,
    task: tokio::task::JoinHandle<()>,
}

impl KeyServer {
    pub async fn start(jwks: &serde_json::Value) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(std::sync::Mutex::new(KeyState {
            mode: KeyMode::Serve,
            jwks: jwks.to_string(),
            discovery: String::new(),
            cache_control: None,
            hits: 0,
        }));
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let st = Arc::clone(&st);
                            async move {
                                let (mode, body, cc) = {
                                    let mut s = st.lock().unwrap();
                                    s.hits += 1;
                                    let body = if req.uri().path().ends_with("openid-configuration")
                                    {
                                        s.discovery.clone()
                                    } else {
                                        s.jwks.clone()
                                    };
                                    (s.mode.clone(), body, s.cache_control.clone())
                                };
                                let (status, body) = match mode {
                                    KeyMode::Serve => (200, body),
                                    KeyMode::Garbage => (200, "<html>oops</html>".to_owned()),
                                    KeyMode::Empty => (200, "{\"keys\": []}".to_owned()),
                                    KeyMode::Slow(d) => {
                                        tokio::time::sleep(d).await;
                                        (200, body)
                                    }
                                    KeyMode::Status(s) => (s, String::new()),
                                };
                                let mut resp = http::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json");
                                if let Some(cc) = cc {
                                    resp = resp.header("cache-control", cc);
                                }
                                Ok::<_, std::convert::Infallible>(
                                    resp.body(Full::new(Bytes::from(body))).unwrap(),
                                )
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Serves a discovery document naming `issuer` and this server's JWKS.
    pub fn set_discovery(&self, issuer: &str) {
        self.state.lock().unwrap().discovery =
            serde_json::json!({"issuer": issuer, "jwks_uri": self.url("/jwks.json")}).to_string();
    }

    pub fn set_jwks(&self, jwks: &serde_json::Value) {
        self.state.lock().unwrap().jwks = jwks.to_string();
    }

    pub fn set_mode(&self, mode: KeyMode) {
        self.state.lock().unwrap().mode = mode;
    }

    pub fn set_cache_control(&self, cc: &str) {
        self.state.lock().unwrap().cache_control = Some(cc.into());
    }

    pub fn hits(&self) -> usize {
        self.state.lock().unwrap().hits
    }

    /// Stops accepting: later connections are refused.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A listener that only counts the connections it receives (an attacker's server).
pub struct ConnectionCounter {
    pub addr: SocketAddr,
    count: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectionCounter {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = Arc::clone(&count);
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(s);
            }
        });
        Self { addr, count, task }
    }

    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for ConnectionCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A config in a temp dir, for the CLI: `portcullis.yaml` (a listener, an `echo` upstream, the
/// `policies` directory, then `extra`) and whatever files a test writes next to it.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
}

impl ConfigDir {
    pub fn new(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        std::fs::write(
            dir.path().join("portcullis.yaml"),
            format!(
                "listeners: [{{name: http, address: \"127.0.0.1:0\"}}]\nupstreams: {{echo: {{url: \"http://127.0.0.1:9\"}}}}\npolicies: {{dir: policies}}\n{extra}"
            ),
        )
        .unwrap();
        Self { dir }
    }

    /// Adds listeners (YAML flow mappings, `, `-separated) after the `http` one.
    pub fn add_listeners(&self, more: &str) -> &Self {
        let path = self.dir.path().join("portcullis.yaml");
        let yaml = std::fs::read_to_string(&path).unwrap();
        let first = "listeners: [{name: http, address: \"127.0.0.1:0\"}";
        assert!(yaml.contains(first), "{yaml}");
        std::fs::write(&path, yaml.replace(first, &format!("{first}, {more}"))).unwrap();
        self
    }

    /// Writes a file relative to the config.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> &Self {
        std::fs::write(self.dir.path().join(rel), contents).unwrap();
        self
    }

    /// `portcullis <command> -c <config> <args…>`: the exit code and stdout.
    pub fn run(&self, command: &str, args: &[&str]) -> (Option<i32>, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg(command)
            .arg("-c")
            .arg(self.dir.path().join("portcullis.yaml"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

/// An HS256 token from `https://iss.test` for audience `api`, subject `alice`, valid five
/// minutes, with `claims` merged over (`null` removes a claim).
pub fn hs256_token(secret: &[u8], claims: &serde_json::Value) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut c = serde_json::json!({"iss": "https://iss.test", "aud": "api", "sub": "alice", "exp": now + 300});
    for (k, v) in claims.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    portcullis::authn::jwt::mint::SigningKey::hmac(secret, jsonwebtoken::Algorithm::HS256, "k")
        .unwrap()
        .sign(&c)
        .unwrap()
}

/// An `authenticators:` block with one JWT authenticator, `users`, trusting the tokens of
/// [`hs256_token`] (secret from the file `hs.secret`); `principal` is its `principal:`
/// mapping (`{}` for the defaults). More authenticators may be appended, indented two spaces.
pub fn hs256_users(principal: &str) -> String {
    format!(
        "authenticators:
  users:
    jwt:
      providers:
        - issuer: https://iss.test
          audiences: [api]
          keys: [{{hmac: {{secret: {{file: hs.secret}}, kid: k, algorithms: [HS256]}}}}]
          principal: {principal}
"
    )
}

/// The status of a `GET path` sent raw, with extra header lines (each ending in CRLF).
pub async fn raw_status(addr: SocketAddr, path: &str, headers: &str) -> u16 {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .status
}

/// A private certificate authority named `name` (a self-signed CA that signs certificates,
/// with a new key), for the tests' TLS peers and client certificates.
pub fn private_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    rcgen::CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

/// A private CA's PEM and a TLS server config holding a certificate it signed for `names`
/// (`portcullis::tls::certs::ca_and_leaf`); `http2`: ALPN offers `h2`.
pub fn tls_peer(names: &[&str], http2: bool) -> (String, Arc<rustls::ServerConfig>) {
    use portcullis::tls::{certs, server};
    let (ca, leaf, key) = certs::ca_and_leaf(names).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("leaf.crt"), &leaf).unwrap();
    std::fs::write(dir.path().join("leaf.key"), &key).unwrap();
    let tls = server::server_config(
        &[server::CertEntry {
            cert: dir.path().join("leaf.crt"),
            key: dir.path().join("leaf.key"),
            server_names: vec![],
        }],
        http2,
        None,
    )
    .unwrap();
    (ca, tls)
}

/// A server on 127.0.0.1 that accepts connections and never says a word (a hung delegate,
/// key server or peer), holding them open; and the task holding them.
pub async fn silent_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            open.push(s);
        }
    });
    (addr, held)
}
