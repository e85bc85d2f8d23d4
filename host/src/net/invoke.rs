//! Invocation over iroh ([`crate::invoke::ALPN`]): the host's side, which runs each call a peer
//! sends exactly as `POST /v1/invoke` would, and the caller's, from an endpoint of its own.
//!
//! One bidirectional stream per call: the caller writes its [`InvokeMessage`] as JSON and
//! finishes; the host answers a [`Reply`] as JSON and finishes. Calls on one connection are
//! served one after another; how many run at once, host-wide, is the [`Admission`]'s business.

use std::sync::Arc;
use std::time::Duration;

use agora_registry::PublicKey;
use iroh::EndpointAddr;
use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler};

use crate::invoke::{self, Admission, Ask, CallError, InvokeAnswer, InvokeMessage, Reply};
use crate::node::Node;

use super::{CONNECT_TIMEOUT, NetConfig};

/// Longest a caller may take to send its message once it opened the stream.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest reply a caller reads: the output (at most the host's output limit) and a receipt.
const MAX_REPLY_BYTES: usize = 8 << 20;
/// Longest a caller waits for a reply: the host's own wall-clock limit and then some.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Most connections served at once: each may hold a stream open for `MESSAGE_TIMEOUT` before
/// sending anything, so without a cap a peer could hold any number. Beyond it a connection is
/// closed at once, saying why; calls that run are bounded by the [`Admission`] besides.
pub const MAX_INVOKE_CONNECTIONS: usize = 256;

/// Serves calls from peers.
#[derive(Debug, Clone)]
pub(crate) struct InvokeProtocol {
    pub node: Node,
    pub admission: Arc<Admission>,
    /// The largest message read, as for an HTTP body.
    pub max_message_bytes: usize,
    /// One permit per connection served ([`MAX_INVOKE_CONNECTIONS`]).
    pub connections: Arc<tokio::sync::Semaphore>,
}

impl ProtocolHandler for InvokeProtocol {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let Ok(_permit) = self.connections.clone().try_acquire_owned() else {
            connection.close(
                1u32.into(),
                b"too many invoke connections; try again shortly",
            );
            return Ok(());
        };
        while let Ok((mut send, mut recv)) = connection.accept_bi().await {
            let read =
                tokio::time::timeout(MESSAGE_TIMEOUT, recv.read_to_end(self.max_message_bytes))
                    .await;
            let reply = match read {
                Err(_) => refused(408, format!("no call arrived within {MESSAGE_TIMEOUT:?}")),
                Ok(Err(error)) => refused(
                    400,
                    format!(
                        "reading the call (at most {} bytes): {error}",
                        self.max_message_bytes
                    ),
                ),
                Ok(Ok(body)) => self.answer(&body).await,
            };
            let bytes = serde_json::to_vec(&reply).map_err(AcceptError::from_err)?;
            send.write_all(&bytes)
                .await
                .map_err(AcceptError::from_err)?;
            send.finish().map_err(AcceptError::from_err)?;
        }
        Ok(())
    }
}

impl InvokeProtocol {
    async fn answer(&self, body: &[u8]) -> Reply {
        let ask = match serde_json::from_slice::<Ask>(body) {
            Ok(ask) => ask,
            Err(e) => return refused(400, format!("not an invoke or feedback message: {e}")),
        };
        let done = match ask {
            Ask::Invoke(message) => invoke::serve(&self.node, &self.admission, &message)
                .await
                .map(Reply::Answer),
            Ask::Feedback(feedback) => invoke::receive_feedback(&self.node, feedback)
                .await
                .map(Reply::Stored),
        };
        done.unwrap_or_else(|refusal| Reply::Refused {
            status: refusal.status(),
            error: refusal.to_string(),
            retry_after_ms: refusal.retry_after().map(|d| d.as_millis() as u64),
        })
    }
}

fn refused(status: u16, error: String) -> Reply {
    Reply::Refused {
        status,
        error,
        retry_after_ms: None,
    }
}

/// The key of the host at `addr`: its endpoint id, which is its signing key, authenticated by
/// the connection itself.
pub fn host_key(addr: &EndpointAddr) -> Result<PublicKey, agora_registry::Error> {
    PublicKey::from_bytes(*addr.id.as_bytes())
}

/// Sends `message` to the host at `host` over iroh from a fresh endpoint bound as `config` says,
/// and reads its answer. The caller's identity is its signature on the request, so the endpoint
/// needs none of its own.
pub async fn call(
    config: &NetConfig,
    host: &EndpointAddr,
    message: &InvokeMessage,
) -> Result<InvokeAnswer, CallError> {
    match exchange(config, host, &Ask::Invoke(message.clone())).await? {
        Reply::Answer(answer) => Ok(answer),
        _ => Err(CallError::BadAnswer(
            "the host answered a call with no answer".into(),
        )),
    }
}

/// Sends signed `feedback` on a call to the host at `host` over iroh; returns its hash.
pub async fn send_feedback(
    config: &NetConfig,
    host: &EndpointAddr,
    feedback: &agora_registry::SignedFeedback,
) -> Result<agora_registry::Hash, CallError> {
    let text = String::from_utf8_lossy(feedback.as_bytes()).into_owned();
    match exchange(config, host, &Ask::Feedback(text)).await? {
        Reply::Stored(hash) => Ok(hash),
        _ => Err(CallError::BadAnswer(
            "the host answered feedback with no receipt of it".into(),
        )),
    }
}

/// One ask and its reply, on a fresh connection; a refusal is an error.
async fn exchange(config: &NetConfig, host: &EndpointAddr, ask: &Ask) -> Result<Reply, CallError> {
    let name = host.id.fmt_short().to_string();
    let network = |reason: String| CallError::Network {
        host: name.clone(),
        reason,
    };
    let secret = iroh::SecretKey::generate();
    let endpoint = super::bind(config, secret, std::slice::from_ref(host))
        .await
        .map_err(|e| network(e.to_string()))?;
    let addrs: Vec<String> = host.ip_addrs().map(|a| a.to_string()).collect();
    let exchange = async {
        let connection = tokio::time::timeout(
            CONNECT_TIMEOUT,
            endpoint.connect(host.clone(), invoke::ALPN),
        )
        .await
        .map_err(|_| {
            network(format!(
                "could not be reached at {} within {CONNECT_TIMEOUT:?}",
                addrs.join(", ")
            ))
        })?
        .map_err(|e| network(format!("could not be reached at {}: {e}", addrs.join(", "))))?;
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|e| network(format!("opening a stream: {e}")))?;
        let body = serde_json::to_vec(ask).map_err(|e| network(e.to_string()))?;
        send.write_all(&body)
            .await
            .map_err(|e| network(format!("sending the call: {e}")))?;
        send.finish()
            .map_err(|e| network(format!("sending the call: {e}")))?;
        let reply = tokio::time::timeout(REPLY_TIMEOUT, recv.read_to_end(MAX_REPLY_BYTES))
            .await
            .map_err(|_| network(format!("no reply within {REPLY_TIMEOUT:?}")))?
            .map_err(|e| network(format!("reading the reply: {e}")))?;
        connection.close(0u32.into(), b"done");
        Ok::<_, CallError>(reply)
    };
    let reply = exchange.await;
    endpoint.close().await;
    let reply: Reply = serde_json::from_slice(&reply?)
        .map_err(|e| CallError::BadAnswer(format!("not a reply: {e}")))?;
    match reply {
        Reply::Refused { status, error, .. } => Err(CallError::Refused {
            host: name,
            status,
            error,
        }),
        reply => Ok(reply),
    }
}
