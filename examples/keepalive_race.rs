//! The upstream keep-alive race, reproduced as it happens in production, for
//! `benches/keepalive_race.sh`: an upstream that closes a connection once it has sat idle
//! `CLOSE_MS` (as gunicorn, uvicorn and Node.js do), optionally saying so in
//! `Keep-Alive: timeout=N`, and one keep-alive client sending `N` requests through the sidecar
//! at `PROXY_URL`, each `CLOSE_MS` ± 4 ms after the last answer: every request lands near the
//! moment the upstream closes the connection it would reuse. Prints how many failed.
//!
//! `cargo run --release --example keepalive_race -- UPSTREAM_BIND CLOSE_MS KEEP_ALIVE_S PROXY_URL N`
//! (`KEEP_ALIVE_S` 0: no `Keep-Alive` header).
#![allow(clippy::expect_used, reason = "a load tool: a bad argument ends it")]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Answers each request on `s`; closes the connection once it has been idle `close_after`.
async fn serve(mut s: TcpStream, close_after: Duration, answer: &'static [u8]) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut head = Vec::new();
    loop {
        // A request head within the idle limit, or the connection is closed (the race's other
        // side: the sidecar may be writing a request at this very moment).
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match tokio::time::timeout(close_after, s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                _ => return,
            }
        }
        head.clear();
        if s.write_all(answer).await.is_err() {
            return;
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| {
        args.get(i)
            .cloned()
            .expect("UPSTREAM_BIND CLOSE_MS KEEP_ALIVE_S PROXY_URL N")
    };
    let bind: SocketAddr = arg(1).parse()?;
    let close_after = Duration::from_millis(arg(2).parse()?);
    let keep_alive: u64 = arg(3).parse()?;
    let proxy = arg(4);
    let n: usize = arg(5).parse()?;

    let answer = match keep_alive {
        0 => "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_owned(),
        s => format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nkeep-alive: timeout={s}\r\n\r\nok"),
    };
    let answer: &'static [u8] = answer.leak().as_bytes();
    let tcp = TcpListener::bind(bind).await?;
    tokio::spawn(async move {
        while let Ok((s, _)) = tcp.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(serve(s, close_after, answer));
        }
    });

    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut failed = 0;
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..n {
        // xorshift: a pause of CLOSE_MS - 4 ms to CLOSE_MS + 4 ms.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let jitter = (rng % 8_001) as i64 - 4_000;
        let pause = close_after.as_micros() as i64 + jitter;
        tokio::time::sleep(Duration::from_micros(pause.max(0) as u64)).await;
        let ok = match client.get(proxy.parse()?).await {
            Ok(resp) => {
                let status = resp.status();
                resp.into_body().collect().await.is_ok() && status == http::StatusCode::OK
            }
            Err(_) => false,
        };
        if !ok {
            failed += 1;
        }
    }
    println!("{failed} of {n} failed");
    Ok(())
}
