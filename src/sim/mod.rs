//! Simulated upstreams: an OpenAI-style LLM provider that streams SSE (with latency and injected
//! failures), a simple agent API and an MCP tool server. The demo runs them; the tests and the load bench use them as
//! real HTTP servers on loopback.

mod agent;
mod judge;
mod mcp;
mod provider;
mod text;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use agent::{spawn_agent, AgentSim};
pub(crate) use judge::{spawn_judge, JudgeSim};
pub use mcp::{spawn_mcp, McpSim, SIM_TOOLS};
pub use provider::{spawn_provider, ProviderSim, SeenRequest};

pub type SimBody = BoxBody<Bytes, Infallible>;

pub fn full(bytes: impl Into<Bytes>) -> SimBody {
    Full::new(bytes.into()).boxed()
}

/// A body fed from a channel: each message is one frame, sent when the producer sends it.
#[derive(Debug)]
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// A running simulated server.
#[derive(Debug)]
pub struct SimServer {
    pub addr: SocketAddr,
    pub task: JoinHandle<()>,
}

impl SimServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Handler = dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<SimBody>> + Send>>
    + Send
    + Sync;

/// Serves `handler` on `bind` (HTTP/1.1 and h2c) until the returned server is dropped.
pub async fn serve<F, Fut>(bind: SocketAddr, handler: F) -> std::io::Result<SimServer>
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<SimBody>> + Send + 'static,
{
    let tcp = TcpListener::bind(bind).await?;
    let addr = tcp.local_addr()?;
    let handler: Arc<Handler> = Arc::new(move |req| Box::pin(handler(req)));
    let task = tokio::spawn(async move {
        let builder = auto::Builder::new(TokioExecutor::new());
        loop {
            let Ok((stream, _)) = tcp.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            let svc = service_fn(move |req| {
                let fut = handler(req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), svc)
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    Ok(SimServer { addr, task })
}

/// A small, fast, thread-safe pseudo-random source (xorshift); simulations need variety, not
/// cryptographic quality.
#[derive(Debug)]
pub struct SimRng(AtomicU64);

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng(AtomicU64::new(seed | 1))
    }

    /// A number in [0, 1).
    pub fn next_f64(&self) -> f64 {
        let mut x = self.0.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0.store(x, Ordering::Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Events at a rate spread evenly over their chances rather than rolled: with rate `r`, the
/// n-th chance hits when `floor(n * r)` steps up, so 25 chances at 0.04 hold exactly one hit.
/// For what a demo must show within seconds whatever the interleaving of its requests.
#[derive(Debug, Default)]
pub struct Spread(AtomicU64);

impl Spread {
    pub fn hit(&self, rate: f64) -> bool {
        let n = self.0.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * rate).floor() > (n * rate).floor()
    }
}

/// A simulator's chances: rolled, and spread evenly where a demo must see them.
#[derive(Debug)]
pub(crate) struct Dice {
    pub(crate) rng: SimRng,
    pub(crate) breaks: Spread,
}

impl Dice {
    pub(crate) fn new(seed: u64) -> Dice {
        Dice {
            rng: SimRng::new(seed),
            breaks: Spread::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{SimRng, Spread};

    #[test]
    fn spread_hits_exactly_its_share() {
        for (rate, chances, hits) in [(0.04, 100, 4), (0.04, 24, 0), (0.0, 50, 0), (1.0, 7, 7)] {
            let s = Spread::default();
            let got = (0..chances).filter(|_| s.hit(rate)).count();
            assert_eq!(got, hits, "rate {rate} over {chances}");
        }
    }

    #[test]
    fn rng_covers_the_unit_interval_evenly() {
        let rng = SimRng::new(0x5eed);
        let mut buckets = [0u32; 20];
        for _ in 0..20_000 {
            let x = rng.next_f64();
            assert!((0.0..1.0).contains(&x));
            buckets[(x * 20.0) as usize] += 1;
        }
        // 1,000 expected per bucket; a share like 2% must come out near 2%.
        assert!(
            buckets.iter().all(|n| (800..1200).contains(n)),
            "{buckets:?}"
        );
    }
}
