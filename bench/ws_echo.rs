//! The WebSocket scenario of the stream benchmark (`bench/streams.sh`): an echo upstream and a
//! load client.
//!
//!   ws-echo serve 127.0.0.1:9000                          # echoes every message
//!   ws-echo load ws://127.0.0.1:8080/ws CONNS SECONDS     # prints `messages/s N`
//!
//! Each client connection opens one WebSocket, then sends a 32-byte text message and waits
//! for its echo, over and over, until the time is up: a round trip per message, as a chat
//! or a stream of RPCs over one socket would be. The count covers only the measured time,
//! after every connection is open; any failure (a refused upgrade, a wrong echo, a closed
//! socket) ends the run with an error.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

const PAYLOAD: &str = "0123456789abcdef0123456789abcdef";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", addr] => rt.block_on(serve(addr)),
        ["load", url, conns, secs] => {
            let rate = rt.block_on(load(url, conns.parse()?, secs.parse()?))?;
            let line = format!("messages/s {rate:.0}\n");
            std::io::Write::write_all(&mut std::io::stdout(), line.as_bytes())?;
            Ok(())
        }
        _ => Err("usage: ws-echo serve ADDR | ws-echo load URL CONNS SECONDS".into()),
    }
}

async fn serve(addr: &str) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn load(url: &str, conns: usize, secs: u64) -> Result<f64, Box<dyn std::error::Error>> {
    let authority = url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .ok_or("the URL must be ws://HOST:PORT/PATH")?
        .to_owned();
    let mut sockets = Vec::with_capacity(conns);
    for _ in 0..conns {
        let stream = TcpStream::connect(&authority).await?;
        stream.set_nodelay(true)?;
        let (ws, resp) = tokio_tungstenite::client_async(url, stream).await?;
        if resp.status() != 101 {
            return Err(format!("upgrade answered {}", resp.status()).into());
        }
        sockets.push(ws);
    }
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(conns);
    for mut ws in sockets {
        let (count, stop) = (Arc::clone(&count), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                ws.send(Message::text(PAYLOAD))
                    .await
                    .map_err(|e| e.to_string())?;
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.as_str() == PAYLOAD => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    other => return Err(format!("expected the echo, got {other:?}")),
                }
            }
            Ok::<_, String>(())
        }));
    }
    // Warm-up, then the measured window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (start, before) = (Instant::now(), count.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (elapsed, after) = (start.elapsed(), count.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(5), t).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e.into()),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err("a connection hung".into()),
        }
    }
    Ok((after - before) as f64 / elapsed.as_secs_f64())
}
