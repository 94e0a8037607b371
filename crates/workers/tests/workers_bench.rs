//! Throughput through marina vs straight to the app server (ignored by default; run with
//! `cargo test --release -p marina-workers --test workers_bench -- --ignored --nocapture`).

mod common;

use common::*;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use marina_apps::{App, WorkerKind};
use marina_core::body;
use marina_proxy::{Target, Upstream};

/// The same front server with a bare `Upstream` instead of the pool: the cost of the hop alone.
async fn bare_proxy(to: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let up = Arc::new(Upstream::new(Target::Tcp(to)));
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { return };
            let _ = s.set_nodelay(true);
            let up = up.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                let up = up.clone();
                async move { Ok::<_, Infallible>(up.forward(req.map(body::boxed)).await.unwrap()) }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc));
        }
    });
    addr
}

/// Requests per second with `conc` concurrent keep-alive clients for `secs`.
async fn load(addr: SocketAddr, conc: usize, secs: u64) -> f64 {
    let up = Arc::new(Upstream::new(Target::Tcp(addr)));
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (up, done) = (up.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let req = Request::get("/").body(body::empty()).unwrap();
                let resp = up.forward(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                resp.into_body().collect().await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / secs as f64
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, not a check; run by hand"]
async fn throughput_through_marina_vs_direct() {
    let engine = if runtimes().contains(&"bun") { "bun" } else { "node" };
    let work_us: u64 = std::env::var("WORK_US").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let dir = fixture("bun-http");
    // Direct: the same server, started by hand.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut direct = tokio::process::Command::new(engine)
        .arg("server.js")
        .current_dir(&dir)
        .env("PORT", port.to_string())
        .env("WORK_US", work_us.to_string())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let direct_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(eventually(Duration::from_secs(10), || std::net::TcpStream::connect(direct_addr).is_ok()).await);

    let state = tempfile::tempdir().unwrap();
    let pool = pool(state.path(), None, |_| {});
    let config = marina_apps::manifest::AppConfig {
        ttl: Duration::from_secs(600),
        max_requests: u64::MAX,
        command: Some(vec![engine.into(), "server.js".into()]),
        env: [("WORK_US".to_string(), work_us.to_string())].into(),
        ..Default::default()
    };
    let app = Arc::new(App {
        name: "bench".into(),
        version: "1.0.0".into(),
        entrypoint: dir.join("server.js"),
        dir,
        kind: WorkerKind::Process,
        config: Arc::new(config),
        proxy: Default::default(),
        key: App::key_of("bench", "1.0.0"),
        migrated: Default::default(),
    });
    let via = front(pool.clone(), app.clone()).await;
    load(via, 8, 1).await; // warm up
    load(direct_addr, 8, 1).await;
    let bare = bare_proxy(direct_addr).await;
    let concs: Vec<usize> =
        std::env::var("BENCH_CONC").map_or(vec![1, 16, 64], |v| v.split(',').filter_map(|c| c.parse().ok()).collect());
    for conc in concs {
        let d = load(direct_addr, conc, 2).await;
        let b = load(bare, conc, 2).await;
        let m = load(via, conc, 2).await;
        eprintln!(
            "{engine} work={work_us}us c={conc}: direct {d:.0} req/s, bare hyper proxy {b:.0} req/s ({:+.1}%), through marina {m:.0} req/s ({:+.1}%, {:+.1}% vs the bare proxy)",
            (b / d - 1.0) * 100.0,
            (m / d - 1.0) * 100.0,
            (m / b - 1.0) * 100.0
        );
    }
    let w = pool.workers();
    eprintln!("worker p99 {:.2} ms avg {:.2} ms", w[0].p99_latency_ms, w[0].avg_latency_ms);
    direct.kill().await.unwrap();
    pool.shutdown(Duration::from_secs(2)).await;
}
