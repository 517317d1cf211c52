//! The baseline of the gRPC door benchmark (`bench/doors.sh`), and its request.
//!
//!   trivial-check serve 127.0.0.1:9000      # an Authorization/Check server that always allows
//!   trivial-check encode TOKEN > check.bin  # one framed CheckRequest (GET /api/x, the token)
//!   trivial-check ask http://127.0.0.1:9000 TOKEN   # one Check; exits 0 when it is OK
//!
//! The server is what any ext_authz service must at least do: tonic on one worker thread,
//! decode the request, answer OK. Portcullis's door does that and decides.

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse,
};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::google::rpc;
use prost::Message;

struct AlwaysOk;

#[tonic::async_trait]
impl Authorization for AlwaysOk {
    async fn check(
        &self,
        _: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(rpc::Status::default()),
            ..CheckResponse::default()
        }))
    }
}

/// The request every benchmark call sends: what Envoy sends for `GET /api/x` with a bearer
/// token from 127.0.0.1.
fn request(token: &str) -> CheckRequest {
    let headers = [
        (":authority", "app.test"),
        (":path", "/api/x"),
        (":method", "GET"),
        ("user-agent", "bench"),
        ("authorization", &format!("Bearer {token}")),
        ("x-forwarded-proto", "http"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "127.0.0.1".into(),
                        ..SocketAddress::default()
                    })),
                }),
                ..Peer::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    host: "app.test".into(),
                    path: "/api/x".into(),
                    scheme: "http".into(),
                    headers,
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            ..AttributeContext::default()
        }),
    }
}

/// HTTP/2 over plain TCP (what Envoy's gRPC client speaks to a cleartext cluster), one task
/// per connection, the tonic service as hyper's.
async fn serve(addr: std::net::SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let svc = AuthorizationServer::new(AlwaysOk);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let svc = svc.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| tower::ServiceExt::oneshot(svc.clone(), req));
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", addr] => {
            let addr = addr.parse()?;
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?
                .block_on(serve(addr))?;
        }
        ["encode", token] => {
            // The gRPC message framing: uncompressed flag, big-endian length, the message.
            let body = request(token).encode_to_vec();
            let mut framed = Vec::with_capacity(5 + body.len());
            framed.push(0);
            framed.extend_from_slice(&u32::try_from(body.len())?.to_be_bytes());
            framed.extend_from_slice(&body);
            std::io::Write::write_all(&mut std::io::stdout(), &framed)?;
        }
        ["ask", url, token] => {
            let code = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async move {
                    let mut client = AuthorizationClient::connect(url.to_owned()).await?;
                    let resp = client.check(request(token)).await?.into_inner();
                    Ok::<_, Box<dyn std::error::Error>>(resp.status.map_or(0, |s| s.code))
                })?;
            if code != 0 {
                return Err(format!("Check answered code {code}").into());
            }
        }
        _ => {
            return Err("usage: trivial-check serve ADDR | encode TOKEN | ask URL TOKEN".into());
        }
    }
    Ok(())
}
