//! Calling an agent on another host: one caller-signed request, the same over HTTP
//! (`POST /v1/invoke`) and over iroh ([`ALPN`]); the host's side, which admits and runs it; and
//! the caller's side, which checks the signed receipt it gets back before keeping it.
//!
//! The caller sends an [`InvokeMessage`] as JSON: its signed request (`agora/request/v1`, naming
//! this host, the agent's manifest, the input's hash, a fuel budget, a nonce and an expiry) with
//! the action and payload it hashed. The host admits it ([`Admission`]: the caller's rate, then
//! one of the invocation slots), runs it under the same limits and replay protection as any
//! call, and answers an [`InvokeAnswer`] carrying the signed receipt — or a [`Refusal`]. Over
//! HTTP a refusal is its status with `{"error"}`; over iroh it is [`Reply::Refused`].
//!
//! ```no_run
//! # async fn example(agent: agora_registry::Hash, host: agora_registry::PublicKey) -> anyhow::Result<()> {
//! use agora_host::client::ApiClient;
//! use agora_host::invoke::{self, InvokeMessage};
//!
//! let caller = agora_registry::SecretKey::generate();
//! let (request, message) = InvokeMessage::sign(&caller, host, agent, "quote", "{}", 50_000_000)?;
//! let answer = invoke::over_http(&ApiClient::new("http://127.0.0.1:7070")?, &message).await?;
//! let called = invoke::check(&request, answer)?;
//! println!("{}", called.output.unwrap_or_default());
//! # Ok(()) }
//! ```

mod admission;

pub use admission::Admission;
pub(crate) use admission::CallerRates;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agora_registry::{Hash, PublicKey, SecretKey, SignedReceipt, SignedRequest, request_hash};
use serde::{Deserialize, Serialize};

use crate::client::{ApiClient, ClientError};
use crate::error::RunError;
use crate::node::Node;

/// The ALPN of invocation over iroh: one bidirectional stream per call, the caller's
/// [`InvokeMessage`] one way and a [`Reply`] the other, each JSON, the sender finishing its side.
pub const ALPN: &[u8] = b"agora/invoke/1";

/// How long a signed request stays valid when the caller does not say.
pub const REQUEST_LIFETIME: Duration = Duration::from_secs(60);

/// A caller-signed request to run an agent, with the input it hashed. The request and the
/// payload travel as strings so that their bytes are exactly those the caller signed and hashed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvokeMessage {
    /// The signed request envelope (`agora/request/v1`).
    pub request: String,
    /// The action.
    pub action: String,
    /// The payload, exactly as hashed into the request's input hash.
    pub payload: String,
}

impl InvokeMessage {
    /// Signs a request by `caller` for `host` to run `action` of the agent with manifest
    /// `agent` on `payload`, paying for at most `fuel_limit`, valid for [`REQUEST_LIFETIME`].
    pub fn sign(
        caller: &SecretKey,
        host: PublicKey,
        agent: Hash,
        action: &str,
        payload: &str,
        fuel_limit: u64,
    ) -> Result<(SignedRequest, InvokeMessage), agora_registry::Error> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let request = agora_registry::Signed::sign(
            agora_registry::CallRequest {
                caller: caller.public(),
                host,
                agent,
                input_hash: request_hash(action, payload.as_bytes()),
                fuel_limit,
                nonce: agora_registry::CallRequest::new_nonce(),
                expires_at_ms: now_ms + REQUEST_LIFETIME.as_millis() as u64,
            },
            caller,
        )?;
        let message = InvokeMessage {
            request: String::from_utf8_lossy(request.as_bytes()).into_owned(),
            action: action.to_owned(),
            payload: payload.to_owned(),
        };
        Ok((request, message))
    }
}

/// What a host answers a call it ran, whatever the outcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InvokeAnswer {
    /// How the call ended (`ok`, `trap`, `fuel-exhausted`, …).
    pub outcome: String,
    /// Why there is no output, when there is none.
    pub error: Option<String>,
    /// The output, when the outcome is `ok`.
    pub output: Option<String>,
    /// Fuel used, nested calls included.
    pub fuel_used: u64,
    /// The charge, nested calls included.
    pub charge: u64,
    /// The host's signed receipt (`agora/receipt/v2`), as its JSON text.
    pub receipt: String,
    /// The agent's signed manifest (`agora/manifest/v1`), as its JSON text, so the caller can
    /// keep the receipt with what it is about.
    pub manifest: String,
}

/// What a caller sends a host over iroh, one per stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Ask {
    /// Run this call.
    Invoke(InvokeMessage),
    /// Store this signed feedback (`agora/feedback/v1`, as its JSON text) on a call it ran.
    Feedback(String),
}

/// A host's answer over iroh.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The call ran.
    Answer(InvokeAnswer),
    /// The feedback is stored (or already was): its hash.
    Stored(Hash),
    /// The call was not run.
    Refused {
        /// The HTTP status the same refusal has over HTTP.
        status: u16,
        /// What was wrong.
        error: String,
        /// When to try again, for refusals that pass.
        retry_after_ms: Option<u64>,
    },
}

/// Why a host did not run a call. Each has the HTTP status it is answered with.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The message or its request is not well formed, or the payload does not match the
    /// request's input hash (400).
    #[error("{0}")]
    Malformed(String),
    /// The agent is not on this host (404).
    #[error("{0}")]
    UnknownAgent(String),
    /// The request was already used: a replay (409).
    #[error("{0}")]
    Replayed(String),
    /// The request names another host, has expired or is valid for too long (422).
    #[error("{0}")]
    Unacceptable(String),
    /// The caller is over its rate (429).
    #[error("caller {caller} is invoking faster than this host admits")]
    RateLimited {
        /// The caller.
        caller: PublicKey,
        /// When its next call would be admitted.
        retry_after: Duration,
    },
    /// Every invocation slot is busy, or the host has no memory to start the call (503).
    #[error("{0}")]
    Busy(String),
    /// The host failed (500); logged, its details not shown.
    #[error("internal error")]
    Internal,
}

impl Refusal {
    /// The HTTP status this refusal is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Malformed(_) => 400,
            Refusal::UnknownAgent(_) => 404,
            Refusal::Replayed(_) => 409,
            Refusal::Unacceptable(_) => 422,
            Refusal::RateLimited { .. } => 429,
            Refusal::Busy(_) => 503,
            Refusal::Internal => 500,
        }
    }

    /// When to try again, for refusals that pass.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::RateLimited { retry_after, .. } => Some(*retry_after),
            Refusal::Busy(_) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

/// Runs one caller-signed call on `node`: parses and verifies the message, admits the caller
/// (its rate, then a slot held until the receipt is stored) and runs it. Guest failures are
/// outcomes in the answer; only a call that was not run is a [`Refusal`].
pub(crate) async fn serve(
    node: &Node,
    admission: &Admission,
    call: &InvokeMessage,
) -> Result<InvokeAnswer, Refusal> {
    use agora_registry::Error as E;
    let request = SignedRequest::from_bytes(call.request.as_bytes())
        .map_err(|e| Refusal::Malformed(e.to_string()))?;
    // Only a verified caller is charged against its rate.
    let caller = request.body().caller;
    admission
        .admit_caller(&caller)
        .map_err(|retry_after| Refusal::RateLimited {
            caller,
            retry_after,
        })?;
    let _slot = admission
        .slot()
        .ok_or_else(|| Refusal::Busy("every invocation slot is busy; try again shortly".into()))?;
    let execution = match node
        .run_request(&request, &call.action, call.payload.as_bytes())
        .await
    {
        Ok(execution) => execution,
        Err(e @ RunError::InputMismatch { .. }) => return Err(Refusal::Malformed(e.to_string())),
        Err(e @ RunError::Registry(E::Replayed { .. })) => {
            return Err(Refusal::Replayed(e.to_string()));
        }
        Err(
            e @ RunError::Registry(
                E::WrongHost { .. }
                | E::RequestExpired { .. }
                | E::RequestTooLongLived { .. }
                | E::Malformed { .. },
            ),
        ) => return Err(Refusal::Unacceptable(e.to_string())),
        Err(e @ RunError::HostBusy { .. }) => return Err(Refusal::Busy(e.to_string())),
        Err(e @ RunError::Registry(E::UnknownAgent { .. })) => {
            return Err(Refusal::UnknownAgent(e.to_string()));
        }
        Err(error) => {
            tracing::error!(%error, "running an invocation");
            return Err(Refusal::Internal);
        }
    };
    // Cached by the run that just used it.
    let manifest = match node.manifest_async(&request.body().agent).await {
        Ok(Some(manifest)) => String::from_utf8_lossy(manifest.as_bytes()).into_owned(),
        Ok(None) | Err(_) => {
            tracing::error!(manifest = %request.body().agent, "a manifest vanished after its call");
            return Err(Refusal::Internal);
        }
    };
    Ok(InvokeAnswer {
        manifest,
        outcome: execution.outcome.name().to_owned(),
        error: execution.error().map(|e| e.to_string()),
        output: execution
            .output
            .as_deref()
            .map(|o| String::from_utf8_lossy(o).into_owned()),
        fuel_used: execution.fuel_used,
        charge: execution.charge,
        receipt: String::from_utf8_lossy(execution.receipt.as_bytes()).into_owned(),
    })
}

/// Stores signed feedback a caller sent (over iroh; `POST /v1/feedback` is the HTTP way), after
/// the same checks: it verifies, rates a receipt this host holds, and its rater is that
/// receipt's caller.
pub(crate) async fn receive_feedback(node: &Node, feedback: String) -> Result<Hash, Refusal> {
    use agora_registry::Error as E;
    let node = node.clone();
    let stored = tokio::task::spawn_blocking(move || {
        let feedback = agora_registry::SignedFeedback::from_bytes(feedback.as_bytes())
            .map_err(|e| Refusal::Malformed(e.to_string()))?;
        match node.registry().insert_feedback(&feedback) {
            Ok(_) => Ok(feedback.hash()),
            Err(e @ (E::UnknownReceipt(_) | E::UnknownAgent { .. })) => {
                Err(Refusal::UnknownAgent(e.to_string()))
            }
            Err(e @ E::DuplicateFeedback(_)) => Err(Refusal::Replayed(e.to_string())),
            Err(e @ (E::Feedback(_) | E::Invalid { .. })) => {
                Err(Refusal::Unacceptable(e.to_string()))
            }
            Err(e @ E::Quota { .. }) => Err(Refusal::Busy(e.to_string())),
            Err(error) => {
                tracing::error!(%error, "storing feedback from a peer");
                Err(Refusal::Internal)
            }
        }
    })
    .await;
    stored.unwrap_or(Err(Refusal::Internal))
}

/// Why a call to another host gave no checked answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The host's HTTP API could not be asked, or refused the call.
    #[error(transparent)]
    Http(#[from] ClientError),
    /// The host refused the call over iroh.
    #[error("host {host} refused the call ({status}): {error}")]
    Refused {
        /// The host.
        host: String,
        /// The refusal's HTTP status.
        status: u16,
        /// What it said.
        error: String,
    },
    /// The host could not be reached over iroh, or the exchange broke off.
    #[error("host {host}: {reason}")]
    Network {
        /// The host.
        host: String,
        /// What went wrong.
        reason: String,
    },
    /// The answer is not an answer to this request: an invalid or foreign receipt.
    #[error("the host's answer does not hold: {0}")]
    BadAnswer(String),
    /// The request could not be signed.
    #[error(transparent)]
    Sign(#[from] agora_registry::Error),
}

/// A call that ran on another host, its answer checked against the request.
#[derive(Clone, Debug)]
pub struct Called {
    /// The agent's manifest, verified, the one the request named.
    pub manifest: agora_registry::SignedManifest,
    /// The host's receipt, verified: signed by the host the request named, for this request.
    pub receipt: SignedReceipt,
    /// The output, matching the receipt's output hash.
    pub output: Option<String>,
    /// Why there is no output, as the host said.
    pub error: Option<String>,
}

/// POSTs `message` to the host's `/v1/invoke`.
pub async fn over_http(
    client: &ApiClient,
    message: &InvokeMessage,
) -> Result<InvokeAnswer, CallError> {
    let body = serde_json::to_vec(message).map_err(|e| CallError::BadAnswer(e.to_string()))?;
    let answer = client.post_json("/v1/invoke", body).await?;
    serde_json::from_value(answer)
        .map_err(|e| CallError::BadAnswer(format!("not an invoke answer: {e}")))
}

/// Checks a host's answer to `request`: the receipt verifies, is signed by the host the request
/// named, answers this request by this caller for this agent and input, and its output hash
/// matches the output. Only then is it the caller's evidence of the call.
pub fn check(request: &SignedRequest, answer: InvokeAnswer) -> Result<Called, CallError> {
    let bad = |what: String| CallError::BadAnswer(what);
    let receipt = SignedReceipt::from_bytes(answer.receipt.as_bytes())
        .map_err(|e| bad(format!("the receipt: {e}")))?;
    let asked = request.body();
    let got = receipt.body();
    if got.host != asked.host || *receipt.signer() != asked.host {
        return Err(bad(format!(
            "the receipt is signed by {}, not by the host called, {}",
            receipt.signer(),
            asked.host
        )));
    }
    if got.request != Some(request.hash()) || got.caller != Some(asked.caller) {
        return Err(bad("the receipt answers another request".into()));
    }
    if got.agent.manifest != asked.agent || got.input_hash != asked.input_hash {
        return Err(bad("the receipt names another agent or input".into()));
    }
    if got.fuel_used > asked.fuel_limit {
        return Err(bad(format!(
            "the receipt charges {} fuel, over the request's {}",
            got.fuel_used, asked.fuel_limit
        )));
    }
    let manifest = agora_registry::SignedManifest::from_bytes(answer.manifest.as_bytes())
        .map_err(|e| bad(format!("the manifest: {e}")))?;
    if manifest.hash() != asked.agent {
        return Err(bad("the manifest is not the agent called".into()));
    }
    let output_hash = answer.output.as_deref().map(|o| Hash::of(o.as_bytes()));
    if output_hash != got.output_hash {
        return Err(bad(
            "the output does not match the receipt's output hash".into()
        ));
    }
    Ok(Called {
        manifest,
        receipt,
        output: answer.output,
        error: answer.error,
    })
}
