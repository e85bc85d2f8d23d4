//! The server's lifecycle and its connections: bind, accept under a connection cap, serve each
//! connection with hyper's HTTP/1 under a header-read timeout (which also bounds idle keep-alive)
//! and a head-size cap, and shut down gracefully.
//!
//! `axum::serve` is not used: in axum 0.8 it installs no timer, and hyper silently drops its
//! default header-read timeout without one, leaving slowloris open; it also has no connection cap.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;

use super::config::{ApiConfig, HttpLimits, InvalidLimits, MAX_HEADERS};
use super::edge::Edge;
use super::scores::{ReadEvidence, refresh_scores, score};
use super::{ApiState, Metrics, routes};
use crate::node::Node;

/// Longest shutdown waits for requests in flight before it drops their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long to pause accepting after the process runs out of file descriptors (or another
/// resource), so that the accept loop does not spin while connections close.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configured bounds cannot be served.
    #[error(transparent)]
    Limits(#[from] InvalidLimits),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address tried.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The first scores could not be computed from the registry.
    #[error("cannot compute the first scores: {0}")]
    Scores(String),
}

/// A running API server.
pub struct ApiServer {
    addr: SocketAddr,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    refresher: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// Checks the limits, computes the first scores, binds and starts serving `node`.
    pub async fn start(node: Node, config: ApiConfig) -> Result<ApiServer, StartError> {
        config.limits.validate()?;
        let bind = |source| StartError::Bind {
            addr: config.listen,
            source,
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let mut anchors = vec![node.public_key()];
        anchors.extend(config.extra_anchors.iter().copied());
        anchors.sort();
        anchors.dedup();
        node.registry().trust(anchors.iter().copied());
        let (first, read) = score(node.clone(), anchors.clone(), ReadEvidence::none())
            .await
            .map_err(StartError::Scores)?;
        let state = Arc::new(ApiState {
            node,
            anchors,
            scores: RwLock::new(Arc::new(first)),
            evidence_arrived: tokio::sync::Notify::new(),
            metrics: Metrics::default(),
            gossip: config.gossip.clone(),
            audit: config.audit.clone(),
            edge: Arc::new(Edge::new(&config, addr)),
            admission: config
                .admission
                .clone()
                .unwrap_or_else(|| crate::invoke::Admission::new(&config.limits)),
        });
        let refresher = tokio::spawn(refresh_scores(Arc::downgrade(&state), read));
        let app = routes::router(state, &config.limits);
        let (shutdown, signal) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(serve(listener, app, config.limits, signal));
        tracing::info!(%addr, "serving the http api");
        Ok(ApiServer {
            addr,
            shutdown,
            task,
            refresher,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, finishes requests in flight (for up to 5 s), and returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
        self.refresher.abort();
        let _ = self.refresher.await;
    }
}

/// Accepts connections until `stop` fires, each holding one of `max_connections` permits.
async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_headers(MAX_HEADERS);
    loop {
        // At the cap, wait for a connection to close before accepting: the next waits in the
        // kernel's backlog rather than in our memory.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = &mut stop => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    if !is_per_connection(&error) {
                        tracing::warn!(%error, "http api cannot accept; pausing");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        // Handlers that tell clients apart by address (MCP's per-client budget) read it here.
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            app.clone(),
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                request
            },
        ));
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "http connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("http api: requests still in flight after {SHUTDOWN_GRACE:?}; dropped");
    }
}

/// Errors of one incoming connection (the client gave up during the handshake), as opposed to
/// the listener's (out of file descriptors).
fn is_per_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
