//! What the hardened server shares with any server (graceful shutdown, bind errors), kept
//! apart from `limits.rs` because these pass on a plain `axum::serve` too.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use common::{SOON, TestServer, read_answer, read_until_closed};
use tokio::io::AsyncWriteExt;
use tributary_http::HttpLimits;

#[tokio::test]
async fn shutdown_stops_accepting_and_lets_a_request_in_flight_finish() -> anyhow::Result<()> {
    let mut server = TestServer::start(HttpLimits::default()).await?;
    let mut slow = server.connect().await?;
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
        .await?;
    let deadline = Instant::now() + SOON;
    while server.entered.load(std::sync::atomic::Ordering::SeqCst) < 1 {
        ensure!(Instant::now() < deadline, "the slow request never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut idle = server.connect().await?;
    server.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.gate.add_permits(1);
    let answer = read_answer(&mut slow, SOON).await?;
    ensure!(answer.status == 200, "{answer:?}");
    server.finished(SOON).await?;
    let ending = read_until_closed(&mut idle, SOON).await;
    ensure!(
        ending.closed,
        "a connection without a request outlived the shutdown"
    );
    ensure!(
        tokio::net::TcpStream::connect(server.addr).await.is_err(),
        "still accepting after shutdown"
    );
    Ok(())
}

#[tokio::test]
async fn a_port_in_use_is_reported_with_its_address() -> anyhow::Result<()> {
    let first = tributary_http::bind("127.0.0.1:0".parse()?).await?;
    let addr = first.local_addr()?;
    let err = tributary_http::bind(addr)
        .await
        .err()
        .context("a second bind of the same port succeeded")?;
    ensure!(
        matches!(err, tributary_http::Error::Bind { addr: a, .. } if a == addr),
        "{err:?}"
    );
    ensure!(err.to_string().contains(&addr.to_string()), "{err}");
    Ok(())
}

#[tokio::test]
async fn pipelined_requests_with_bodies_and_a_chunked_one_are_answered_in_order()
-> anyhow::Result<()> {
    let server = TestServer::start(HttpLimits::default()).await?;
    let mut stream = server.connect().await?;
    // Three requests in one write: the guard must find each head after the previous body.
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc\
              POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
              POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n0\r\n\r\n",
        )
        .await?;
    let ending = read_until_closed(&mut stream, SOON).await;
    ensure!(
        ending.closed,
        "a chunked request closes its connection after the response"
    );
    let mut rest = &ending.received[..];
    for want in [3, 5, 4] {
        let (answer, len) = common::parse_answer(rest)?
            .with_context(|| format!("missing answer: {:?}", String::from_utf8_lossy(rest)))?;
        ensure!(answer.status == 200, "{answer:?}");
        ensure!(answer.json()?["received"] == want, "{answer:?}");
        rest = &rest[len..];
    }
    ensure!(rest.is_empty(), "{:?}", String::from_utf8_lossy(rest));
    Ok(())
}

#[tokio::test]
async fn a_kept_alive_connection_serves_requests_after_pauses() -> anyhow::Result<()> {
    // Between requests hyper lets go of the connection and the guard waits for the next head
    // alone: the client must not notice.
    let server = TestServer::start(HttpLimits::default()).await?;
    let mut stream = server.connect().await?;
    for i in 0..3 {
        stream
            .write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
            .await?;
        let answer = read_answer(&mut stream, SOON).await?;
        ensure!(answer.status == 200, "request {i}: {answer:?}");
        ensure!(answer.json()?["received"] == 2, "{answer:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A head sent in two parts across a pause is collected whole.
    stream.write_all(b"GET /health HTTP/1.1\r\n").await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream.write_all(b"Host: t\r\n\r\n").await?;
    let answer = read_answer(&mut stream, SOON).await?;
    ensure!(answer.status == 200, "{answer:?}");
    Ok(())
}
