//! Resource bounds under abuse (issue 15): HTTP/2 rapid reset, slow readers, control-frame
//! floods, idle and header deadlines, memory per connection. Every test is bounded in count
//! and time and talks to 127.0.0.1 only.

use std::time::Duration;

use bytes::Bytes;
use http::Request;

use crate::support::*;

/// An HTTP/2 client over plain TCP (prior knowledge) with frame-level control.
async fn h2_client(
    addr: std::net::SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    (send, tokio::spawn(conn))
}

/// Opens `batch` streams (HEADERS with END_STREAM), lets the gateway accept them, resets them
/// all, pauses, `batches` times: the paced rapid reset of CVE-2023-44487 that h2's own
/// pending-accept limit does not see.
async fn paced_rapid_reset(
    send: &mut h2::client::SendRequest<Bytes>,
    addr: std::net::SocketAddr,
    batches: usize,
    batch: usize,
) -> Result<(), h2::Error> {
    for _ in 0..batches {
        let mut streams = Vec::with_capacity(batch);
        for _ in 0..batch {
            *send = send.clone().ready().await?;
            let req = Request::get(format!("http://{addr}/reset"))
                .body(())
                .unwrap();
            let (_resp, stream) = send.send_request(req, true)?;
            streams.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        for mut s in streams {
            s.send_reset(h2::Reason::CANCEL);
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    Ok(())
}

/// A stream the client resets must not cost an upstream connection: a connect under way
/// finishes into the pool, an exchange under way finishes in the background and keeps its
/// connection.
#[tokio::test]
async fn paced_rapid_reset_reuses_upstream_connections() {
    let gw = Setup::default().start().await;
    let addr = gw.addr();
    let (mut send, _conn) = h2_client(addr).await;
    paced_rapid_reset(&mut send, addr, 40, 10).await.unwrap();
    // The connection still serves.
    let req = Request::get(format!("http://{addr}/after"))
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Connections follow the concurrency of abandoned exchanges (10 per batch here, more
    // while a batch's connects are still finishing), not the 400 resets.
    let connections = gw.echo.connections();
    assert!(
        connections <= 100,
        "400 reset streams opened {connections} upstream connections"
    );
}
