//! Running an agent: resolving the reference, loading the component, executing under the
//! call's limits, signing and storing the receipt.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_registry::{
    AgentRef, BlobRef, CallData, CallEnvironment, Hash, Input, KvNamespace, Outcome, ParentCall,
    PublicKey, Receipt, SignedManifest, SignedReceipt, SignedRequest, request_hash,
};

use crate::error::{ExecutionError, RunError};
use crate::sandbox::{CallWorld, LogLine, Request};

use super::services::LiveServices;
use super::{Node, blocking, unix_now};

/// The result of one call: the output or the typed reason there is none, and the signed receipt.
#[derive(Clone, Debug)]
pub struct Execution {
    /// The agent, `name@version`.
    pub agent: String,
    /// The agent's manifest.
    pub manifest: Hash,
    /// How the call ended.
    pub outcome: Outcome,
    /// The output, when the outcome is `ok`.
    pub output: Option<Vec<u8>>,
    /// The fuel budget.
    pub fuel_limit: u64,
    /// Fuel used, nested calls included.
    pub fuel_used: u64,
    /// The charge, nested calls included.
    pub charge: u64,
    /// Wall time.
    pub wall_time: Duration,
    /// Lines logged through `log`.
    pub logs: Vec<LogLine>,
    /// Captured stdout (bounded).
    pub stdout: Vec<u8>,
    /// Captured stderr (bounded).
    pub stderr: Vec<u8>,
    /// The host's signed receipt.
    pub receipt: SignedReceipt,
    error: Option<ExecutionError>,
}

impl Execution {
    /// Why there is no output, or `None` if the call succeeded.
    pub fn error(&self) -> Option<&ExecutionError> {
        self.error.as_ref()
    }

    /// The output, or the typed error naming the agent and the limit it hit.
    pub fn into_output(self) -> Result<Vec<u8>, ExecutionError> {
        match (self.error, self.output) {
            (None, Some(output)) => Ok(output),
            (Some(error), _) => Err(error),
            (None, None) => Err(ExecutionError::Trap {
                agent: self.agent,
                code: agora_registry::TrapCode::Other,
                message: "no output".into(),
            }),
        }
    }
}

impl Node {
    /// The manifest an agent reference names: a manifest hash, `<publisher>/<name>[@<version>]`,
    /// or a bare name or component hash of this host's own or a trusted publisher's release.
    pub fn resolve(&self, reference: &str) -> Result<SignedManifest, agora_registry::Error> {
        let by_hash = reference.parse::<Hash>().ok();
        if let Some(hash) = &by_hash
            && let Some(manifest) = self.cached_manifest(hash)
        {
            return Ok(manifest);
        }
        let manifest = self.0.registry.resolve(reference, &self.0.trusted)?;
        if by_hash == Some(manifest.hash()) {
            self.cache_manifest(&manifest);
        }
        Ok(manifest)
    }

    /// [`Node::resolve`] for the call paths: from memory when cached, otherwise from the
    /// registry on the blocking pool, so that a cold lookup never stalls the executor.
    async fn resolve_async(
        &self,
        reference: &str,
    ) -> Result<SignedManifest, agora_registry::Error> {
        if let Ok(hash) = reference.parse::<Hash>()
            && let Some(manifest) = self.cached_manifest(&hash)
        {
            return Ok(manifest);
        }
        let (node, reference) = (self.clone(), reference.to_owned());
        blocking(move || node.resolve(&reference)).await
    }

    /// [`Node::manifest`] on the blocking pool when not cached.
    pub(crate) async fn manifest_async(
        &self,
        hash: &Hash,
    ) -> Result<Option<SignedManifest>, agora_registry::Error> {
        if let Some(manifest) = self.cached_manifest(hash) {
            return Ok(Some(manifest));
        }
        let (node, hash) = (self.clone(), *hash);
        blocking(move || node.manifest(&hash)).await
    }

    /// The manifest with this hash, from memory or the registry.
    fn manifest(&self, hash: &Hash) -> Result<Option<SignedManifest>, agora_registry::Error> {
        if let Some(manifest) = self.cached_manifest(hash) {
            return Ok(Some(manifest));
        }
        let manifest = self.0.registry.manifest(hash)?;
        if let Some(manifest) = &manifest {
            self.cache_manifest(manifest);
        }
        Ok(manifest)
    }

    fn cached_manifest(&self, hash: &Hash) -> Option<SignedManifest> {
        let cache = self.0.manifests.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(hash).cloned()
    }

    fn cache_manifest(&self, manifest: &SignedManifest) {
        let mut cache = self.0.manifests.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.0.sandbox.limits().max_loaded_agents.max(1) {
            cache.clear();
        }
        cache.insert(manifest.hash(), manifest.clone());
    }

    /// Runs `action` on the agent named by `agent` (see [`Node::resolve`]) with a fuel budget (default: the host's default, capped by the
    /// manifest's limit), and signs a receipt. Guest failures are outcomes in the returned
    /// [`Execution`], not errors.
    pub async fn run(
        &self,
        agent: &str,
        action: &str,
        payload: &[u8],
        fuel: Option<u64>,
    ) -> Result<Execution, RunError> {
        let manifest = self.resolve_async(agent).await?;
        let request = Request {
            action: action.to_owned(),
            payload: payload.to_vec(),
        };
        let wall = self.0.sandbox.limits().max_wall;
        self.execute(manifest, request, fuel, Instant::now() + wall, None, None)
            .await
    }

    /// Runs a caller-signed request: the payload must match the request's input hash, and the
    /// request must be addressed to this host, unexpired and not seen before. The receipt names
    /// the request and its caller, so the caller can rate the call.
    pub async fn run_request(
        &self,
        request: &SignedRequest,
        action: &str,
        payload: &[u8],
    ) -> Result<Execution, RunError> {
        let body = request.body();
        if request_hash(action, payload) != body.input_hash {
            return Err(RunError::InputMismatch {
                request: request.hash(),
            });
        }
        // A request for an agent this host does not have is refused before anything is stored.
        let manifest = self.manifest_async(&body.agent).await?.ok_or_else(|| {
            RunError::Registry(agora_registry::Error::UnknownAgent {
                reference: body.agent.to_hex(),
            })
        })?;
        self.0
            .registry
            .admit_request_async(request, &self.public_key(), unix_now().as_millis() as u64)
            .await?;
        let call = Request {
            action: action.to_owned(),
            payload: payload.to_vec(),
        };
        let wall = self.0.sandbox.limits().max_wall;
        self.execute(
            manifest,
            call,
            Some(body.fuel_limit),
            Instant::now() + wall,
            None,
            Some((request.hash(), body.caller)),
        )
        .await
    }

    /// A nested call from `call-agent`. Boxed because it recurses through the sandbox.
    pub(crate) fn run_nested(
        &self,
        agent: String,
        request: Request,
        fuel_available: u64,
        deadline: Instant,
        parent_manifest: Hash,
        depth: u32,
    ) -> Pin<Box<dyn Future<Output = Result<Execution, RunError>> + Send + 'static>> {
        let node = self.clone();
        Box::pin(async move {
            let manifest = node.resolve_async(&agent).await?;
            let parent = ParentCall {
                manifest: parent_manifest,
                depth,
            };
            node.execute(
                manifest,
                request,
                Some(fuel_available),
                deadline,
                Some(parent),
                None,
            )
            .await
        })
    }

    async fn execute(
        &self,
        manifest: SignedManifest,
        request: Request,
        fuel: Option<u64>,
        deadline: Instant,
        parent: Option<ParentCall>,
        signed_request: Option<(Hash, PublicKey)>,
    ) -> Result<Execution, RunError> {
        let body = manifest.body();
        let agent = format!("{}@{}", body.name, body.version);
        let component = self.load_component(&agent, &manifest).await?;
        let limits = self.0.sandbox.limits().for_call(&body.limits);
        let fuel_limit = fuel
            .unwrap_or(self.0.sandbox.limits().default_fuel)
            .min(limits.max_fuel);
        let wall = limits
            .max_wall
            .min(deadline.saturating_duration_since(Instant::now()));
        let services = LiveServices {
            node: self.clone(),
            kv: KvNamespace {
                publisher: body.publisher,
                agent: body.name.clone(),
            },
            manifest: manifest.hash(),
            models: crate::model::ModelSession::new(self.0.models.clone(), body.models.clone()),
            egress: crate::egress::EgressSession::new(
                self.0.egress.clone(),
                body.egress.clone(),
                self.0.sandbox.limits(),
            ),
        };
        let depth = parent.map_or(0, |p| p.depth);
        let call = self
            .0
            .sandbox
            .call_state(agent.clone(), Arc::new(services), depth, wall);
        let input_hash = request_hash(&request.action, &request.payload);
        let environment = CallEnvironment {
            clock_ms: unix_now().as_millis() as u64,
            salt: Hash::from_bytes(rand::random()),
        };
        let world = CallWorld {
            seed: environment.seed(&input_hash, signed_request.map(|(hash, _)| hash).as_ref()),
            environment,
        };
        let invocation = self
            .0
            .sandbox
            .invoke(&component, call, &limits, fuel_limit, &request, &world)
            .await
            .map_err(|e| match e.downcast_ref::<crate::sandbox::HostBusy>() {
                Some(busy) => RunError::HostBusy {
                    agent: agent.clone(),
                    reason: busy.to_string(),
                },
                None => RunError::Sandbox {
                    agent: agent.clone(),
                    message: format!("{e:#}"),
                },
            })?;

        // Saturating: the figures come from nested receipts and must not overflow into a panic.
        let nested_fuel =
            (invocation.nested.iter()).fold(0u64, |sum, n| sum.saturating_add(n.fuel_used));
        let nested_charge =
            (invocation.nested.iter()).fold(0u64, |sum, n| sum.saturating_add(n.charge));
        let own_fuel = invocation.fuel_used.saturating_sub(nested_fuel);
        let model_usage = self.0.models.usage(&invocation.transcript);
        let model_charge = (model_usage.iter()).fold(0u64, |sum, u| sum.saturating_add(u.charge));
        let egress = self.0.egress.config().usage(&invocation.transcript);
        let charge = agora_registry::rules::charge_for(own_fuel, body.price_per_mfuel)
            .saturating_add(nested_charge)
            .saturating_add(model_charge)
            .saturating_add(egress.map_or(0, |e| e.charge));
        let output_hash = invocation.output.as_deref().map(Hash::of);
        let input = Input {
            action: request.action,
            payload: request.payload,
        }
        .to_bytes();
        let transcript = invocation.transcript.to_bytes();
        let receipt = Receipt {
            agent: AgentRef {
                manifest: manifest.hash(),
                component: body.component.hash,
            },
            request: signed_request.map(|(hash, _)| hash),
            caller: signed_request.map(|(_, caller)| caller),
            input_hash,
            output_hash,
            outcome: invocation.outcome.clone(),
            fuel_limit,
            fuel_used: invocation.fuel_used,
            charge,
            wall_time_us: invocation.wall_time.as_micros() as u64,
            nested: invocation.nested.iter().map(|n| n.receipt).collect(),
            parent_call: parent,
            host: self.0.key.public(),
            runtime: crate::RUNTIME_VERSION.into(),
            profile: Some(self.0.sandbox.profile_hash()),
            environment: Some(environment),
            input_size: Some(input.len() as u64),
            transcript: Some(BlobRef::of(&transcript)),
            // The registry sets these to follow the chain.
            seq: 0,
            prev: None,
            timestamp_ms: unix_now().as_millis() as u64,
            limits: Some(agora_registry::CallLimits {
                memory_bytes: limits.max_memory_bytes,
                wall_ms: u64::try_from(limits.max_wall.as_millis()).unwrap_or(u64::MAX),
                output_bytes: limits.max_output_bytes,
            }),
            model_usage,
            egress,
        };
        // Signed and committed in the registry's next transaction: on this thread if no other
        // is committing, otherwise by whichever is, which wakes this task.
        let receipt = self
            .0
            .registry
            .append_receipt_with(&self.0.key, receipt, CallData { input, transcript })
            .await?;
        tracing::debug!(
            agent = %agent,
            outcome = %invocation.outcome,
            fuel = invocation.fuel_used,
            receipt = %receipt.hash(),
            "executed"
        );
        let error = ExecutionError::from_outcome(
            &invocation.outcome,
            agent.clone(),
            fuel_limit,
            &limits,
            self.0.sandbox.limits().max_log_bytes,
        );
        Ok(Execution {
            agent,
            manifest: manifest.hash(),
            outcome: invocation.outcome,
            output: invocation.output,
            fuel_limit,
            fuel_used: invocation.fuel_used,
            charge,
            wall_time: invocation.wall_time,
            logs: invocation.logs,
            stdout: invocation.stdout,
            stderr: invocation.stderr,
            receipt,
            error,
        })
    }
}
