//! What HTTP alone costs a large request, for `benches/http_roundtrip.py`: a server on the
//! service's stack (tokio's multi-thread runtime, axum served by axum-server, plain HTTP/1.1)
//! that reads the whole body of any POST and answers a fixed body of the given size, doing no
//! other work. curl's time for the same request against it is the floor under every request of
//! that size: no server can answer in less without sending fewer bytes.
//!
//! `http_floor <port> <answer-bytes>`: prints `ready` once it listens on 127.0.0.1:<port>, and
//! serves until killed. Under `cargo bench` (no arguments) it serves one request to itself as a
//! smoke test.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The answer: JSON text of the given size, made once; each response shares it (no copy).
fn answer(bytes: usize) -> Bytes {
    let head = b"{\"results\":\"";
    let tail = b"\"}";
    let mut body = Vec::with_capacity(bytes.max(head.len() + tail.len()));
    body.extend_from_slice(head);
    body.resize(bytes.saturating_sub(tail.len()).max(head.len()), b'x');
    body.extend_from_slice(tail);
    Bytes::from(body)
}

/// Reads the whole body (axum collects it into one buffer, as the service's handlers do) and
/// answers the fixed body.
async fn swallow(State(answer): State<Bytes>, body: Bytes) -> Bytes {
    std::hint::black_box(body.len());
    answer
}

fn app(answer_bytes: usize) -> Router {
    Router::new()
        .fallback(post(swallow))
        .with_state(answer(answer_bytes))
        // The service takes bodies far larger than axum's 2 MB default too.
        .layer(axum::extract::DefaultBodyLimit::disable())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args[0].starts_with('-') {
        // `cargo bench` runs every bench binary, with `--bench`: one request as a smoke test.
        return smoke_test();
    }
    let port: u16 = args[0].parse().expect("a port number");
    let answer_bytes: usize = args[1].parse().expect("the answer's size in bytes");
    runtime().block_on(async move {
        let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .unwrap_or_else(|e| panic!("cannot listen on 127.0.0.1:{port}: {e}"));
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        println!("ready");
        axum_server::from_tcp(listener)
            .serve(app(answer_bytes).into_make_service())
            .await
            .expect("the floor server runs");
    });
}

fn smoke_test() {
    runtime().block_on(async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("its address");
        tokio::spawn(axum_server::from_tcp(listener).serve(app(1000).into_make_service()));
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("a connection");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = vec![b'a'; 100_000];
        let head = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.expect("sent");
        stream.write_all(&body).await.expect("sent");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("an answer");
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("\"}"), "the answer's 1,000 bytes: {text}");
        println!("http_floor: smoke test passed");
    });
}
