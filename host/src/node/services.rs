//! The host services a node gives the agents it runs: their memory in its registry, the other
//! agents it can run, its language models and granted outbound HTTP.

use agora_registry::{CallAnswer, Hash, KvNamespace, Outcome};

use super::Node;
use crate::sandbox::{
    AgentAnswer, AgentCall, Divergence, HostServices, HttpExchange, HttpRequest, MAX_MESSAGE_BYTES,
    ModelRequest, ServiceFuture, truncate,
};

/// The live answers to one call's host calls.
pub(crate) struct LiveServices {
    pub node: Node,
    /// The agent's memory.
    pub kv: KvNamespace,
    /// The calling agent's manifest, which its callees' receipts name as their parent.
    pub manifest: Hash,
    /// The host's models, as far as this agent's manifest declares them.
    pub models: crate::model::ModelSession,
    /// Where the agent's outbound HTTP may go.
    pub egress: crate::egress::EgressSession,
}

impl HostServices for LiveServices {
    fn kv_get(&self, key: String) -> ServiceFuture<'_, Result<Option<Vec<u8>>, Divergence>> {
        // On this thread: a point lookup on a pooled read connection, which in WAL mode never
        // waits for the writer, costs less than handing it to the blocking pool and back.
        let read = self.node.registry().kv_get(&self.kv, &key);
        Box::pin(async move {
            match read {
                Ok(value) => Ok(value),
                // A storage failure is the host's problem; the agent sees an absent key and the
                // operator sees the error.
                Err(error) => {
                    tracing::error!(%error, "agent kv read failed");
                    Ok(None)
                }
            }
        })
    }

    fn kv_set(
        &self,
        key: String,
        value: Vec<u8>,
    ) -> ServiceFuture<'_, Result<Result<(), String>, Divergence>> {
        let quota = self.node.sandbox().limits().kv;
        let written = self
            .node
            .registry()
            .kv_set_async(&self.kv, &key, &value, &quota);
        Box::pin(async move { Ok(written.await.map_err(|e| e.to_string())) })
    }

    fn call_agent(&self, call: AgentCall) -> ServiceFuture<'_, Result<AgentAnswer, Divergence>> {
        Box::pin(async move {
            if call.depth > call.max_depth {
                return Ok(AgentAnswer::refused(format!(
                    "call depth limit of {} reached",
                    call.max_depth
                )));
            }
            let nested = self
                .node
                .run_nested(
                    call.agent,
                    call.request,
                    call.fuel,
                    call.deadline,
                    self.manifest,
                    call.depth,
                )
                .await;
            let execution = match nested {
                Ok(execution) => execution,
                Err(error) => {
                    return Ok(AgentAnswer {
                        receipt: None,
                        fuel_used: 0,
                        charge: 0,
                        answer: CallAnswer::BadRequest(truncate(
                            &error.to_string(),
                            MAX_MESSAGE_BYTES,
                        )),
                    });
                }
            };
            let answer = match (execution.outcome, execution.output) {
                (Outcome::Ok, Some(output)) => CallAnswer::Output(output),
                (Outcome::AgentError { error, message }, _) => match error.as_str() {
                    "bad-request" => CallAnswer::BadRequest(message),
                    "refused" => CallAnswer::Refused(message),
                    _ => CallAnswer::Internal(message),
                },
                (outcome, _) => {
                    CallAnswer::Internal(format!("agent {} failed: {outcome}", execution.agent))
                }
            };
            Ok(AgentAnswer {
                receipt: Some(execution.receipt.hash()),
                fuel_used: execution.fuel_used,
                charge: execution.charge,
                answer,
            })
        })
    }

    fn model(
        &self,
        request: ModelRequest,
    ) -> ServiceFuture<'_, Result<agora_registry::ModelAnswer, Divergence>> {
        Box::pin(async move { Ok(self.models.answer(request).await) })
    }

    fn http(&self, request: HttpRequest) -> ServiceFuture<'_, Result<HttpExchange, Divergence>> {
        Box::pin(async move { Ok(self.egress.send(request).await) })
    }
}
