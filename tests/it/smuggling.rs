//! Request smuggling: raw bytes on a `TcpStream` (as hyper's `tests/server.rs` does), each
//! framing trick asserting one interpretation end to end. Either the gateway refuses it (400,
//! or 501 for a transfer coding it does not implement) and the upstream sees nothing, or
//! exactly the requests and bodies of the one reading RFC 9112 gives reach the upstream: never
//! a request hidden in a body, never a body cut elsewhere.
//!
//! Each exchange writes everything at once and the last request asks to close, so reading to
//! the end returns as soon as the gateway is done. (Malformed chunk sizes are in
//! `proxy::malformed_chunked_body_is_400_and_never_reaches_the_upstream`.)

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Setup, TestGateway};

/// The next request on the connection: its target is what the upstream must see after the
/// first body, if the connection is still read at all.
const NEXT: &str = "GET /second HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n";

/// Writes `request` and reads until the gateway closes (at most 5 s); the status of every
/// response on the connection, in order.
async fn exchange(addr: SocketAddr, request: &[u8]) -> (Vec<u16>, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the gateway left the connection open");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let statuses = text
        .match_indices("HTTP/1.1 ")
        .filter(|(i, _)| *i == 0 || text.as_bytes()[i - 1] == b'\n')
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect();
    (statuses, text)
}

/// What the upstream received, in order: target and body length.
fn seen(gw: &TestGateway) -> Vec<(String, u64)> {
    gw.echo
        .records()
        .into_iter()
        .map(|r| (r.target, r.body_len))
        .collect()
}

/// Sends each request on its own connection and asserts it is refused with `status` and the
/// upstream sees nothing.
async fn assert_refused(gw: &TestGateway, status: u16, cases: &[&str]) {
    for case in cases {
        let (statuses, text) = exchange(gw.addr(), case.as_bytes()).await;
        assert_eq!(statuses, [status], "{case:?}: {text}");
    }
    assert_eq!(seen(gw), [], "nothing reached the upstream");
}

/// RFC 9112 §6.3: with both `Transfer-Encoding: chunked` and `Content-Length`, the chunked
/// framing wins, `Content-Length` is not forwarded, and the connection is closed after the
/// response, so what a front end reading `Content-Length` took for body bytes is never read
/// as a request here, in either header order.
#[tokio::test]
async fn content_length_with_chunked_reads_chunked_and_closes() {
    let gw = Setup::default().start().await;
    let chunked = "5\r\nhello\r\n0\r\n\r\n";
    // The length a CL-reading front end would use: the chunked body plus the next request.
    let cl = chunked.len() + NEXT.len();
    for headers in [
        format!("Content-Length: {cl}\r\nTransfer-Encoding: chunked\r\n"),
        format!("Transfer-Encoding: chunked\r\nContent-Length: {cl}\r\n"),
        "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n".to_owned(),
    ] {
        let before = gw.echo.count();
        let request =
            format!("POST /upload HTTP/1.1\r\nHost: app.test\r\n{headers}\r\n{chunked}{NEXT}");
        let (statuses, text) = exchange(gw.addr(), request.as_bytes()).await;
        assert_eq!(statuses, [200], "{headers:?}: {text}");
        let records = gw.echo.records();
        assert_eq!(
            records.len(),
            before + 1,
            "{headers:?}: one request upstream"
        );
        let last = &records[before];
        assert_eq!((last.target.as_str(), last.body_len), ("/upload", 5));
        assert!(
            last.headers
                .get("content-length")
                .is_none_or(|v| v.as_bytes() == b"5"),
            "{headers:?}: the client's Content-Length was forwarded: {:?}",
            last.headers
        );
    }
    assert!(seen(&gw).iter().all(|(t, _)| t != "/second"));
}

/// The same `Content-Length` twice is one length (RFC 9110 §8.6): the body ends where it says
/// and the next request starts right after it.
#[tokio::test]
async fn repeated_identical_content_length_is_one_length() {
    let gw = Setup::default().start().await;
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello{NEXT}"
    );
    let (statuses, text) = exchange(gw.addr(), request.as_bytes()).await;
    assert_eq!(statuses, [200, 200], "{text}");
    assert_eq!(
        seen(&gw),
        [("/upload".to_owned(), 5), ("/second".to_owned(), 0)]
    );
}

/// Two lengths, a list, a sign, hex, or no digits: no body length can be trusted, 400.
#[tokio::test]
async fn conflicting_or_malformed_content_length_is_400() {
    let gw = Setup::default().start().await;
    let cases: Vec<String> = [
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 6\r\nContent-Length: 5\r\n",
        "Content-Length: 5, 6\r\n",
        "Content-Length: 5, 5\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: -5\r\n",
        "Content-Length: 0x5\r\n",
        "Content-Length: 5 5\r\n",
        "Content-Length: \r\n",
        "Content-Length: 99999999999999999999999\r\n",
    ]
    .iter()
    .map(|h| format!("POST /upload HTTP/1.1\r\nHost: app.test\r\n{h}\r\nhello{NEXT}"))
    .collect();
    let cases: Vec<&str> = cases.iter().map(String::as_str).collect();
    assert_refused(&gw, 400, &cases).await;
}

/// Line folding (obs-fold, RFC 9112 §5.2) in a request is refused, whichever header it
/// continues: a front end that unfolds and one that does not read different headers.
#[tokio::test]
async fn obs_fold_is_400() {
    let gw = Setup::default().start().await;
    assert_refused(
        &gw,
        400,
        &[
            "GET /x HTTP/1.1\r\nHost: app.test\r\nX-Note: a\r\n  folded\r\nConnection: close\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: identity\r\n\tchunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: app.test\r\nContent-Length:\r\n 5\r\nConnection: close\r\n\r\nhello",
            "GET /x HTTP/1.1\r\n Host: app.test\r\nConnection: close\r\n\r\n",
        ],
    )
    .await;
}

/// A bare CR inside a header line, or ending one, is refused (RFC 9112 §2.2): it is where one
/// parser sees one header and another sees two.
#[tokio::test]
async fn bare_cr_in_head_is_400() {
    let gw = Setup::default().start().await;
    assert_refused(
        &gw,
        400,
        &[
            "GET /x HTTP/1.1\r\nHost: app.test\r\nX-Note: a\rb\r\nConnection: close\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: app.test\r\nX-Note: a\rContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            "POST /x HTTP/1.1\r\nHost: app.test\r\nX-Note: a\rTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "GET /x HTTP/1.1\rHost: app.test\r\nConnection: close\r\n\r\n",
        ],
    )
    .await;
}

/// A bare LF ends a line (RFC 9112 §2.2 allows it), consistently: the header after it is a
/// header of its own, here the `Content-Length` the body is read by. The upstream gets the
/// head rewritten with CRLF and the body cut exactly there.
#[tokio::test]
async fn bare_lf_ends_a_line_in_one_reading() {
    let gw = Setup::default().start().await;
    let requests = [
        format!("POST /upload HTTP/1.1\nHost: app.test\nContent-Length: 5\n\nhello{NEXT}"),
        format!(
            "POST /upload HTTP/1.1\r\nHost: app.test\r\nX-Note: a\nContent-Length: 5\r\n\r\nhello{NEXT}"
        ),
    ];
    for request in &requests {
        let before = gw.echo.count();
        let (statuses, text) = exchange(gw.addr(), request.as_bytes()).await;
        assert_eq!(statuses, [200, 200], "{request:?}: {text}");
        assert_eq!(
            seen(&gw)[before..],
            [("/upload".to_owned(), 5), ("/second".to_owned(), 0)],
            "{request:?}"
        );
    }
    let note = &gw.echo.records()[2].headers["x-note"];
    assert_eq!(note, "a", "the LF ended the header's value");
}

/// Chunk extensions (RFC 9112 §7.1.1) are read past and never change the body; one holding a
/// bare LF or CR is refused with nothing sent upstream.
#[tokio::test]
async fn chunk_extensions_do_not_change_the_body() {
    let gw = Setup::default().start().await;
    let head = "POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (body, len) in [
        ("5;name=value\r\nhello\r\n0\r\n\r\n", 5),
        (
            "5;a=\"quoted;value\";b\r\nhello\r\n3 ; c\r\n!!!\r\n0;last\r\n\r\n",
            8,
        ),
    ] {
        let before = gw.echo.count();
        let (statuses, text) = exchange(gw.addr(), format!("{head}{body}{NEXT}").as_bytes()).await;
        assert_eq!(statuses, [200, 200], "{body:?}: {text}");
        assert_eq!(
            seen(&gw)[before..],
            [("/upload".to_owned(), len), ("/second".to_owned(), 0)],
            "{body:?}"
        );
    }
    let before = gw.echo.count();
    for body in [
        "5;a\nb\r\nhello\r\n0\r\n\r\n",
        "5;a\rb\r\nhello\r\n0\r\n\r\n",
        "5;a\r\rhello\r\n0\r\n\r\n",
    ] {
        let (statuses, text) = exchange(gw.addr(), format!("{head}{body}{NEXT}").as_bytes()).await;
        assert_eq!(statuses, [400], "{body:?}: {text}");
        assert!(text.contains("invalid_body"), "{body:?}: {text}");
    }
    assert_eq!(gw.echo.count(), before, "nothing reached the upstream");
}

/// `Transfer-Encoding` other than exactly one `chunked`: a coding the gateway does not
/// implement (`gzip, chunked`, `identity, chunked`) is 501 (RFC 9112 §6.1) rather than
/// forwarded with the coding silently dropped; `chunked` applied twice is refused too (it is
/// never applied more than once, §7); one not ending in `chunked` gives no body length (400),
/// nor does one in HTTP/1.0. The upstream sees none of them. `Chunked` in any case is fine.
#[tokio::test]
async fn transfer_codings_other_than_chunked_refused() {
    let gw = Setup::default().start().await;
    let body = "5\r\nhello\r\n0\r\n\r\n";
    let with = |te: &str| {
        format!("POST /upload HTTP/1.1\r\nHost: app.test\r\n{te}Connection: close\r\n\r\n{body}")
    };
    let not_implemented: Vec<String> = [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: identity, chunked\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: ,chunked\r\n",
    ]
    .iter()
    .map(|te| with(te))
    .collect();
    for case in &not_implemented {
        let (statuses, text) = exchange(gw.addr(), case.as_bytes()).await;
        assert_eq!(statuses, [501], "{case:?}: {text}");
        assert!(
            text.contains("\"error\":\"unsupported_transfer_coding\""),
            "{case:?}: {text}"
        );
    }
    let bad: Vec<String> = [
        "Transfer-Encoding: gzip\r\n",
        "Transfer-Encoding: chunked, gzip\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
        "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding: chunked;q=1\r\n",
        "Transfer-Encoding: \x0bchunked\r\n",
    ]
    .iter()
    .map(|te| with(te))
    .chain([format!(
        "POST /upload HTTP/1.0\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
    )])
    .collect();
    let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
    assert_refused(&gw, 400, &bad).await;

    for te in ["Chunked", "CHUNKED", " chunked "] {
        let request = format!(
            "POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: {te}\r\n\r\n{body}{NEXT}"
        );
        let before = gw.echo.count();
        let (statuses, text) = exchange(gw.addr(), request.as_bytes()).await;
        assert_eq!(statuses, [200, 200], "{te:?}: {text}");
        assert_eq!(
            seen(&gw)[before..],
            [("/upload".to_owned(), 5), ("/second".to_owned(), 0)]
        );
    }
}

/// Whitespace between a field name and the colon is refused (RFC 9112 §5.1: MUST be 400):
/// some servers read `Transfer-Encoding : chunked` as the header, others as an unknown one.
#[tokio::test]
async fn whitespace_before_colon_is_400() {
    let gw = Setup::default().start().await;
    assert_refused(
        &gw,
        400,
        &[
            "POST /x HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding : chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: app.test\r\nContent-Length\t: 5\r\nConnection: close\r\n\r\nhello",
            "GET /x HTTP/1.1\r\nHost : app.test\r\nConnection: close\r\n\r\n",
        ],
    )
    .await;
}

/// A framing field in another spelling (`Transfer_Encoding`, `Content_Length`) is no framing
/// to the gateway, which frames by `Content-Length`, but one to an upstream that reads `_` as
/// `-`: there the body `0\r\n\r\n` ended a chunked message and `GET /admin/secret` ran with no
/// decision. Such fields never reach the upstream; the body arrives as one, by its length.
#[tokio::test]
async fn framing_fields_in_another_spelling_never_reach_the_upstream() {
    let gw = Setup::with_policy(crate::support::ALLOW_ALL_BUT_ADMIN)
        .start()
        .await;
    let body = "0\r\n\r\nGET /admin/secret HTTP/1.1\r\nHost: app.test\r\n\r\n";
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer_Encoding: chunked\r\nContent_Length: 5\r\nKeep_Alive: 1\r\nContent-Length: {}\r\n\r\n{body}{NEXT}",
        body.len()
    );
    let (statuses, text) = exchange(gw.addr(), request.as_bytes()).await;
    assert_eq!(statuses, [200, 200], "{text}");
    let records = gw.echo.records();
    assert_eq!(
        seen(&gw),
        [
            ("/upload".to_owned(), body.len() as u64),
            ("/second".to_owned(), 0)
        ]
    );
    for name in [
        "transfer_encoding",
        "content_length",
        "keep_alive",
        "transfer-encoding",
    ] {
        assert!(
            !records[0].headers.contains_key(name),
            "{name} reached the upstream: {:?}",
            records[0].headers
        );
    }
    // A length with leading zeros goes upstream in plain decimal (an upstream reading
    // `056` as octal would take 46 bytes).
    let request = format!(
        "POST /zeros HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0{}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (statuses, text) = exchange(gw.addr(), request.as_bytes()).await;
    assert_eq!(statuses, [200], "{text}");
    let last = gw.echo.last().expect("forwarded");
    assert_eq!(
        last.headers["content-length"],
        body.len().to_string().as_str()
    );
    assert_eq!(last.body_len, body.len() as u64);
}

/// `Expect: 100-continue` is the gateway's to answer: it sends the client its 100 and the
/// body upstream at once, without the field (an upstream told to expect it may answer before
/// reading the body and leave the body on a pooled connection).
#[tokio::test]
async fn expect_is_answered_by_the_gateway_and_not_forwarded() {
    let gw = Setup::default().start().await;
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: app.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello{NEXT}"
    );
    let (statuses, text) = exchange(gw.addr(), request.as_bytes()).await;
    assert!(statuses.ends_with(&[200, 200]), "{text}");
    let records = gw.echo.records();
    assert_eq!(
        seen(&gw),
        [("/upload".to_owned(), 5), ("/second".to_owned(), 0)]
    );
    assert!(
        !records[0].headers.contains_key("expect"),
        "{:?}",
        records[0].headers
    );
}

/// A denied request's body never becomes a request. One that came with the head is dropped,
/// and the connection serves the next request; a large one ends the connection after the
/// refusal; a client waiting to be asked for its body (`Expect: 100-continue`) is told the
/// connection ends (`Connection: close`, RFC 9112 §9.6) and never asked.
#[tokio::test]
async fn a_refused_body_ends_the_connection_and_the_refusal_says_so() {
    let gw = Setup::with_policy(crate::support::ALLOW_ALL_BUT_ADMIN)
        .start()
        .await;
    let head_of = |text: &str| text.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    // A request hidden in the body is read as body, never as a request.
    let hidden = "GET /admin/secret HTTP/1.1\r\nHost: app.test\r\n\r\n";
    for framing in [
        format!("Content-Length: {}\r\n\r\n{hidden}", hidden.len()),
        format!(
            "Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n",
            hidden.len()
        ),
    ] {
        let request = format!("POST /admin/x HTTP/1.1\r\nHost: app.test\r\n{framing}{NEXT}");
        let (statuses, text) = exchange(gw.addr(), request.as_bytes()).await;
        assert_eq!(
            statuses.len(),
            2,
            "{framing:?}: the refusal and the next: {text}"
        );
        assert!(matches!(statuses[0], 401 | 403), "{text}");
        assert_eq!(statuses[1], 200, "{text}");
        assert!(
            !head_of(&text).contains("\r\nconnection: close"),
            "{framing:?}: {text}"
        );
    }
    // A large body: the refusal alone, and the connection ends.
    let large = "a".repeat(100 * 1024);
    let request = format!(
        "POST /admin/x HTTP/1.1\r\nHost: app.test\r\nContent-Length: {}\r\n\r\n{large}{NEXT}",
        large.len()
    );
    let (statuses, text) = exchange(gw.addr(), request.as_bytes()).await;
    assert_eq!(statuses.len(), 1, "one answer only: {text}");
    assert!(matches!(statuses[0], 401 | 403), "{text}");
    // One awaiting the 100: told, and never asked.
    let request = "POST /admin/x HTTP/1.1\r\nHost: app.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
    let (statuses, text) = exchange(gw.addr(), request.as_bytes()).await;
    assert_eq!(statuses.len(), 1, "one answer only: {text}");
    assert!(matches!(statuses[0], 401 | 403), "{text}");
    assert!(head_of(&text).contains("\r\nconnection: close"), "{text}");
    assert!(!text.contains("HTTP/1.1 100"), "{text}");
    assert_eq!(
        seen(&gw),
        [("/second".to_owned(), 0), ("/second".to_owned(), 0)],
        "only the requests after the small bodies"
    );
}
