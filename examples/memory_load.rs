//! Load for `benches/memory_load.sh`: a slow upstream (it reads each request body, drops it,
//! and answers `HOLD_MS` later) and `N` concurrent POSTs of `SIZE` bytes each through the
//! sidecar at `PROXY`, so that every request is in flight at once. Prints how the requests were
//! answered; the script reads the sidecar's peak memory.
//!
//! `cargo run --release --example memory_load -- PROXY_URL UPSTREAM_BIND N SIZE HOLD_MS`
#![allow(
    clippy::expect_used,
    reason = "a load tool: a poisoned lock or a bad URL ends it"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let proxy = arg(1, "http://127.0.0.1:18381/v1/chat/completions");
    let bind: SocketAddr = arg(2, "127.0.0.1:18380").parse()?;
    let n: usize = arg(3, "1000").parse()?;
    let size: usize = arg(4, "1048576").parse()?;
    let hold = Duration::from_millis(arg(5, "3000").parse()?);

    let _upstream = sloguard::sim::serve(bind, move |req: Request<hyper::body::Incoming>| {
        async move {
            // Read and drop: the upstream keeps nothing, so what grows is the sidecar.
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    break;
                }
            }
            tokio::time::sleep(hold).await;
            Response::new(sloguard::sim::full("{\"ok\":true}"))
        }
    })
    .await?;

    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(http);
    // One buffer, shared by every request (a reference count each).
    let body = Bytes::from(vec![b'x'; size]);
    let started = Instant::now();
    let statuses = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (client, proxy, body, statuses) = (
            client.clone(),
            proxy.clone(),
            body.clone(),
            statuses.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let req = Request::post(proxy)
                .header("content-type", "application/json")
                .body(Full::new(body))
                .expect("request");
            let label =
                match tokio::time::timeout(Duration::from_secs(60), client.request(req)).await {
                    Ok(Ok(resp)) => {
                        let status = resp.status().as_u16();
                        let kind = resp
                            .headers()
                            .get("x-sloguard-error")
                            .and_then(|v| v.to_str().ok())
                            .map(|e| format!("{status} {e}"))
                            .unwrap_or_else(|| status.to_string());
                        let _ = resp.into_body().collect().await;
                        kind
                    }
                    Ok(Err(e)) => format!("client error: {e}"),
                    Err(_) => "no answer in 60s".into(),
                };
            *statuses
                .lock()
                .expect("lock")
                .entry(label)
                .or_insert(0usize) += 1;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let statuses = statuses.lock().expect("lock").clone();
    println!(
        "{n} requests of {size} bytes in {:.1}s: {statuses:?}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
