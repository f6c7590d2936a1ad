//! Time to first body byte of a streamed (SSE) response, for the load bench:
//! `ttfb URL REQUESTS CONCURRENCY` prints `{"n":..,"p50_ms":..,"p99_ms":..}`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url: hyper::Uri = args.next().unwrap_or_default().parse()?;
    let requests: usize = args.next().unwrap_or_else(|| "400".into()).parse()?;
    let concurrency: usize = args.next().unwrap_or_else(|| "20".into()).parse()?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let samples = Arc::new(Mutex::new(Vec::with_capacity(requests)));
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (client, url, samples) = (client.clone(), url.clone(), samples.clone());
        let share = requests / concurrency + usize::from(w < requests % concurrency);
        workers.push(tokio::spawn(async move {
            for _ in 0..share {
                let start = Instant::now();
                let Ok(resp) = client.get(url.clone()).await else {
                    continue;
                };
                let mut body = resp.into_body();
                let mut first = None;
                while let Some(Ok(frame)) = body.frame().await {
                    if first.is_none() && frame.is_data() {
                        first = Some(start.elapsed());
                    }
                }
                if let Some(t) = first {
                    samples
                        .lock()
                        .map(|mut s| s.push(t.as_secs_f64() * 1000.0))
                        .ok();
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let mut s = samples.lock().map(|s| s.clone()).unwrap_or_default();
    s.sort_by(f64::total_cmp);
    let q = |p: f64| {
        if s.is_empty() {
            f64::NAN
        } else {
            s[((s.len() as f64 * p).ceil() as usize).clamp(1, s.len()) - 1]
        }
    };
    println!(
        "{{\"n\":{},\"p50_ms\":{:.4},\"p99_ms\":{:.4}}}",
        s.len(),
        q(0.5),
        q(0.99)
    );
    Ok(())
}
