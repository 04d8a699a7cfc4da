//! The HTTP server: routes, layers, TLS and graceful shutdown.

pub mod auth;
pub mod body;
pub mod connections;
pub mod dsdl;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod refusal;
pub mod request_id;
pub mod stages;
pub mod state;
pub mod tls;
pub mod v1;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use axum_server::accept::DefaultAcceptor;
use tower_http::trace::TraceLayer;

use auth::require_token;
use connections::{with_header_timeout, Admission, ConnectionSettings};
use refusal::Flavor;
use state::{AppState, STOPPING};

/// The whole application, for a listener or for in-process tests.
pub fn app(state: AppState) -> Router {
    let dsdl_timed = Router::new()
        .route("/", get(dsdl::summary::summary))
        .route("/summary", get(dsdl::summary::summary))
        .route("/apply", post(dsdl::apply))
        .route("/compute", post(dsdl::summary::compute));
    // Training can take long and has its own limit: no request timeout on /fit (its handler
    // times the body upload itself).
    let dsdl_fit = Router::new().route("/fit", post(dsdl::fit));
    let dsdl = state
        .limited(dsdl_timed, Flavor::Dsdl, true)
        .merge(state.limited(dsdl_fit, Flavor::Dsdl, false))
        .route_layer(middleware::from_fn_with_state(
            state.config.token.clone(),
            require_token,
        ));
    Router::new()
        .merge(dsdl)
        .merge(v1::routes(&state))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::openapi))
        .fallback(|uri: Uri| async move {
            if v1::is_v1_path(uri.path()) {
                return v1::not_found(uri.path());
            }
            (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({"detail": "Not Found"})),
            )
                .into_response()
        })
        .method_not_allowed_fallback(|uri: Uri| async move {
            if v1::is_v1_path(uri.path()) {
                return v1::method_not_allowed(uri.path());
            }
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(serde_json::json!({"detail": "Method Not Allowed"})),
            )
                .into_response()
        })
        // Outermost last: the request id first, then the span that carries it, then the counts.
        .layer(middleware::from_fn(metrics::track))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<Body>| {
                // Never the headers: the token travels in one.
                tracing::info_span!(
                    "request",
                    method = %req.method(),
                    path = %req.uri().path(),
                    request_id = %request_id::of(req),
                )
            }),
        )
        .layer(middleware::from_fn(request_id::assign))
        .with_state(state)
}

/// How the listener speaks.
pub enum Transport {
    Http,
    Https(axum_server::tls_rustls::RustlsConfig),
}

/// Serves `app` on an already bound listener until SIGTERM or Ctrl-C, then lets in-flight
/// requests finish (up to `grace`). At most `connections.max_open` connections are open at
/// once, and each request's headers must arrive within `connections.header_read_timeout`.
pub async fn serve(
    listener: std::net::TcpListener,
    transport: Transport,
    app: Router,
    grace: Duration,
    connections: ConnectionSettings,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        STOPPING.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!("shutting down: finishing requests in flight (fits in training stop)");
        shutdown.graceful_shutdown(Some(grace));
    });
    let ConnectionSettings {
        max_open,
        header_read_timeout,
        write_timeout,
    } = connections;
    // Requests mark their connection busy, so that at the connection limit a new connection
    // closes an idle one rather than being refused.
    let open = crate::http::connections::Connections::default();
    let app = app.layer(middleware::from_fn_with_state(
        open.clone(),
        crate::http::connections::mark_busy,
    ));
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    match transport {
        Transport::Http => {
            let admission = Admission::new(DefaultAcceptor::new(), max_open, header_read_timeout)
                .with_write_timeout(write_timeout)
                .with_connections(open);
            let mut server = axum_server::from_tcp(listener).acceptor(admission);
            with_header_timeout(server.http_builder(), header_read_timeout);
            server.handle(handle).serve(service).await
        }
        Transport::Https(config) => {
            // Admission before the handshake: a connection over the limit costs no TLS work.
            let tls = axum_server::tls_rustls::RustlsAcceptor::new(config);
            let admission = Admission::new(tls, max_open, header_read_timeout)
                .with_write_timeout(write_timeout)
                .with_connections(open);
            let mut server = axum_server::from_tcp(listener).acceptor(admission);
            with_header_timeout(server.http_builder(), header_read_timeout);
            server.handle(handle).serve(service).await
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
