//! Request bodies against a live host's HTTP API on loopback: the first byte picks the endpoint
//! (`/v1/invoke`, `/v1/receipts`, `/v1/feedback`), the rest is the JSON body. Every answer must be
//! one the OpenAPI document lists for a client's fault (a 4xx) or a success, never a 5xx, and the
//! server must keep answering.
#![no_main]

use std::sync::{Mutex, OnceLock};

use agora_host::api::{ApiConfig, ApiServer, HttpLimits};
use agora_host::{DataDir, Limits, Node, NodeConfig, PublishOptions, examples};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;

struct Api {
    runtime: tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    /// One kept-alive connection, reopened when the server closes it.
    connection: Mutex<Option<SendRequest<Full<Bytes>>>>,
    _server: ApiServer,
    _dir: tempfile::TempDir,
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let data = DataDir::new(dir.path());
        data.keygen().expect("keygen");
        let limits = Limits {
            pooled_instances: 0,
            ..Limits::default()
        };
        let server = runtime.block_on(async {
            let node = Node::open(NodeConfig::new(data).limits(limits))
                .await
                .expect("open a host");
            node.publish(examples::RIDE_DRIVER, PublishOptions::default())
                .await
                .expect("publish");
            let config = ApiConfig {
                limits: HttpLimits {
                    // The fuzzer is one caller sending as fast as it can.
                    invocations_per_caller_per_second: 1_000_000,
                    invocation_burst_per_caller: 1_000_000,
                    records_per_client_per_second: 1_000_000,
                    record_burst_per_client: 1_000_000,
                    ..HttpLimits::default()
                },
                ..ApiConfig::default()
            };
            ApiServer::start(node, config).await.expect("start the api")
        });
        Api {
            addr: server.addr(),
            runtime,
            connection: Mutex::new(None),
            _server: server,
            _dir: dir,
        }
    })
}

async fn connect(addr: std::net::SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&selector, body)) = bytes.split_first() else {
        return;
    };
    let path = ["/v1/invoke", "/v1/receipts", "/v1/feedback"][usize::from(selector % 3)];
    let api = api();
    let mut slot = api.connection.lock().expect("connection");
    let status = api.runtime.block_on(async {
        for _ in 0..2 {
            let mut sender = match slot.take() {
                Some(sender) if sender.is_ready() => sender,
                _ => connect(api.addr).await,
            };
            let request = hyper::Request::post(path)
                .header(hyper::header::HOST, "localhost")
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::copy_from_slice(body)))
                .expect("request");
            if let Ok(response) = sender.send_request(request).await {
                let status = response.status();
                let _ = response.into_body().collect().await;
                *slot = Some(sender);
                return status;
            }
        }
        panic!("the server stopped answering");
    });
    assert!(
        !status.is_server_error(),
        "{path} answered {status} to {:?}",
        String::from_utf8_lossy(body)
    );
});
