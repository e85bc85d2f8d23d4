//! MCP (Model Context Protocol) at `POST /mcp`: every agent this host serves is a tool an AI
//! client can list and call.
//!
//! Served by the official Rust SDK (rmcp, pinned exactly) over streamable HTTP, statelessly:
//! no sessions, JSON answers, one `tools/call` is one fresh instance and one signed receipt.
//! Both protocol eras are answered — the 2026-07-28 revision (`server/discover`, the version
//! in every request's `_meta`) and the `initialize` handshake of 2025-11-25 and before — since
//! clients lag behind the specification.
//!
//! - **Tools**: the newest release of each agent by this host's own key or a publisher the
//!   node trusts ([`crate::NodeConfig::trust_publishers`]; agents gossiped by strangers are never offered: a tool's description is read by a
//!   model, and a stranger's is untrusted text). A tool is named `<agent>.<8 hex of the manifest
//!   hash>`, described by the manifest, and takes `{action, payload}` with the manifest's actions.
//! - **Admission**: an MCP client signs nothing, so it is told apart by its address and held to
//!   the same per-caller rate as signed invocations, then to one of the invocation slots. The
//!   host runs the call on its own behalf: the receipt names no outside caller, like `agora run`.
//!   Nothing can be replayed, as nothing the client sends is signed.
//! - **Results**: the agent's output as text; the outcome, fuel, charge and the signed receipt
//!   under `_meta["market.agora/…"]`. Whatever the agent or the host's limits made of the call
//!   (a trap, a limit, an agent error, a busy host) is a tool error (`isError`), which a model
//!   can read; an unknown tool is a protocol error.
//!
//! The edge in front of every route applies here too: `Origin`, `Host`, the body limit, the
//! request timeout and load shedding.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use agora_registry::{Hash, SignedManifest};
use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock,
    Implementation, JsonObject, ListToolsResult, MetaObject, PaginatedRequestParams,
    ServerCapabilities, ServerInfo, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};

use super::Shared;
use super::config::HttpLimits;
use super::error::ApiError;

/// Tools per `tools/list` page.
const TOOLS_PER_PAGE: usize = 100;

/// How long a client may keep a tool list: agents are published rarely, and a list a minute old
/// only misses the newest.
const TOOL_LIST_TTL_MS: u64 = 60_000;

/// The `_meta` prefix of what agora adds to MCP results (reverse DNS of agora.market).
const META: &str = "market.agora";

/// The routes: MCP at `/mcp`, to be served behind the edge.
pub(crate) fn router<S: Clone + Send + Sync + 'static>(
    state: Shared,
    limits: &HttpLimits,
) -> Router<S> {
    Router::new().nest_service(
        "/mcp",
        tower::ServiceBuilder::new()
            .layer(axum::middleware::map_response(json_errors))
            .service(service(state, limits)),
    )
}

fn service(
    state: Shared,
    limits: &HttpLimits,
) -> StreamableHttpService<AgentTools, LocalSessionManager> {
    // `Host` and `Origin` are checked by the edge, in one place for every route.
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_max_request_body_bytes(limits.max_body_bytes)
        .disable_allowed_hosts()
        .disable_allowed_origins();
    StreamableHttpService::new(
        move || {
            Ok(AgentTools {
                state: state.clone(),
            })
        },
        Arc::new(LocalSessionManager::default()),
        config,
    )
}

/// The agents of one host as MCP tools. One per request: it holds only the shared state.
#[derive(Clone)]
pub(crate) struct AgentTools {
    state: Shared,
}

/// An agent offered as a tool.
struct Offered {
    tool_name: String,
    manifest: SignedManifest,
}

impl AgentTools {
    /// The agents offered, sorted by tool name, so every page and every host lists alike.
    async fn offered(&self) -> Result<Vec<Offered>, ErrorData> {
        let publishers = self.state.node.trusted_publishers().to_vec();
        let manifests = self
            .state
            .read(move |registry| {
                let mut all = Vec::new();
                for publisher in &publishers {
                    all.extend(registry.manifests_by(publisher)?);
                }
                Ok(all)
            })
            .await
            // Already logged by `read`; the client learns only that the host failed.
            .map_err(|_| ErrorData::internal_error("the host could not read its registry", None))?;
        // The newest release of each (publisher, name); ties by hash, so the choice is stable.
        let mut newest: BTreeMap<(agora_registry::PublicKey, String), SignedManifest> =
            BTreeMap::new();
        for manifest in manifests {
            let body = manifest.body();
            let key = (body.publisher, body.name.clone());
            let newer = newest.get(&key).is_none_or(|kept| {
                (kept.body().created_at, kept.hash()) < (body.created_at, manifest.hash())
            });
            if newer {
                newest.insert(key, manifest);
            }
        }
        let mut offered: Vec<Offered> = newest
            .into_values()
            .map(|manifest| Offered {
                tool_name: tool_name(&manifest.body().name, &manifest.hash()),
                manifest,
            })
            .collect();
        offered.sort_by(|a, b| a.tool_name.cmp(&b.tool_name));
        Ok(offered)
    }

    /// Runs one call of an offered agent, or says why it was not run.
    async fn call(
        &self,
        manifest: &SignedManifest,
        arguments: Option<JsonObject>,
        client: IpAddr,
    ) -> Result<CallToolResult, ErrorData> {
        let body = manifest.body();
        let arguments = arguments.unwrap_or_default();
        let action = match arguments.get("action") {
            Some(Value::String(action)) if body.actions.contains(action) => action.clone(),
            Some(Value::String(action)) => {
                return Ok(tool_error(format!(
                    "`{}` is not an action of {}; it has {}",
                    super::edge::printable(action),
                    body.name,
                    body.actions.join(", ")
                )));
            }
            _ => {
                return Ok(tool_error(format!(
                    "name the action to run in `action`: one of {}",
                    body.actions.join(", ")
                )));
            }
        };
        if let Some(unknown) = arguments
            .keys()
            .find(|key| *key != "action" && *key != "payload")
        {
            return Ok(tool_error(format!(
                "unknown argument `{}`: a call takes `action` and `payload`",
                super::edge::printable(unknown)
            )));
        }
        // A string is the payload itself; any other value is sent as its JSON text.
        let payload = match arguments.get("payload") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(text)) => text.clone().into_bytes(),
            Some(other) => other.to_string().into_bytes(),
        };
        if let Err(wait) = self.state.admission.admit_client(client) {
            return Ok(tool_error(format!(
                "this client is calling faster than the host admits; try again in {} ms",
                wait.as_millis().max(1)
            )));
        }
        let Some(_slot) = self.state.admission.slot() else {
            return Ok(tool_error(
                "every invocation slot of this host is busy; try again shortly".into(),
            ));
        };
        self.state.count();
        let execution = match self
            .state
            .node
            .run(&manifest.hash().to_hex(), &action, &payload, None)
            .await
        {
            Ok(execution) => execution,
            // The host could not run it (busy, its component unavailable, …): the client's
            // model should hear why, as for any failed call.
            Err(e) => return Ok(tool_error(e.to_string())),
        };
        self.state.evidence_arrived();
        let receipt = &execution.receipt;
        let meta = MetaObject(
            [
                ("outcome", json!(execution.outcome.name())),
                ("fuel_used", json!(execution.fuel_used)),
                ("charge", json!(execution.charge)),
                ("manifest", json!(execution.manifest)),
                ("receipt_hash", json!(receipt.hash())),
                (
                    "receipt",
                    json!(String::from_utf8_lossy(receipt.as_bytes())),
                ),
            ]
            .into_iter()
            .map(|(key, value)| (format!("{META}/{key}"), value))
            .collect(),
        );
        let mut result = match (execution.error(), &execution.output) {
            (None, Some(output)) => {
                let mut result = CallToolResult::success(vec![ContentBlock::text(
                    String::from_utf8_lossy(output).into_owned(),
                )]);
                // Output that is a JSON object is also given structured, for clients that read it.
                result.structured_content = serde_json::from_slice::<Value>(output)
                    .ok()
                    .filter(Value::is_object);
                result
            }
            (Some(error), _) => tool_error(error.to_string()),
            (None, None) => tool_error(format!("{} returned no output", execution.agent)),
        };
        result.meta = Some(meta);
        Ok(result)
    }
}

impl ServerHandler for AgentTools {
    fn get_info(&self) -> ServerInfo {
        ServerInfo::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("agora", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Each tool is an agent of the agora marketplace, run in a sandbox with metered \
                 fuel and memory. Call it with an `action` it lists and a `payload` (JSON). \
                 Every call's signed receipt is in the result's _meta under market.agora/receipt.",
            )
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let skip = match request.and_then(|r| r.cursor) {
            None => 0,
            Some(cursor) => cursor
                .parse::<usize>()
                .map_err(|_| ErrorData::invalid_params("not a cursor this host gave", None))?,
        };
        let offered = self.offered().await?;
        let tools: Vec<Tool> = offered
            .iter()
            .skip(skip)
            .take(TOOLS_PER_PAGE)
            .map(describe)
            .collect();
        let shown = skip.saturating_add(tools.len());
        let mut result = ListToolsResult::with_all_items(tools);
        result.next_cursor = (shown < offered.len()).then(|| shown.to_string());
        // Required at 2026-07-28. The list is the same for every client: anyone may cache it.
        result.ttl_ms = Some(TOOL_LIST_TTL_MS);
        result.cache_scope = Some(CacheScope::Public);
        Ok(result)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let offered = self.offered().await?;
        let Some(agent) = offered.iter().find(|o| o.tool_name == request.name) else {
            return Err(ErrorData::invalid_params(
                format!(
                    "no tool named `{}` on this host",
                    super::edge::printable(&request.name)
                ),
                None,
            ));
        };
        let client = context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<ConnectInfo<SocketAddr>>())
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
        Ok(self
            .call(&agent.manifest, request.arguments, client)
            .await?
            .into())
    }
}

/// A tool's name: the agent's name (only the characters MCP allows) and the first 8 hex digits
/// of its manifest hash, which tell apart releases of the same name by different publishers.
fn tool_name(agent: &str, manifest: &Hash) -> String {
    let name: String = agent
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{name}.{}", &manifest.to_hex()[..8])
}

/// An offered agent as a tool: its manifest's description and actions, and the input schema.
fn describe(offered: &Offered) -> Tool {
    let body = offered.manifest.body();
    let schema = json!({
        "type": "object",
        "properties": {
            "action": {
                "type": "string",
                "enum": body.actions,
                "description": "The action to run.",
            },
            "payload": {
                "description": "The action's input. A string is passed as it is; any other \
                                JSON value as its JSON text.",
            },
        },
        "required": ["action"],
        "additionalProperties": false,
    });
    let schema = match schema {
        Value::Object(schema) => schema,
        _ => JsonObject::new(),
    };
    let meta = MetaObject(
        [
            ("manifest", json!(offered.manifest.hash())),
            ("publisher", json!(body.publisher)),
            ("version", json!(body.version)),
            ("price_per_mfuel", json!(body.price_per_mfuel)),
            ("egress", json!(body.egress)),
        ]
        .into_iter()
        .map(|(key, value)| (format!("{META}/{key}"), value))
        .collect(),
    );
    let mut annotations = ToolAnnotations::new();
    annotations.title = Some(format!("{} {}", body.name, body.version));
    // Outbound HTTP to the origins its manifest declares is the only way an agent reaches
    // anything outside the host (other imports are denied; models are the host's own).
    annotations.open_world_hint = Some(!body.egress.is_empty());
    Tool::new_with_raw(
        offered.tool_name.clone(),
        Some(Cow::Owned(body.description.clone())),
        schema,
    )
    .with_title(format!("{} {}", body.name, body.version))
    .with_annotations(annotations)
    .with_meta(meta)
}

/// rmcp refuses what it cannot serve in plain text; the API answers every error as JSON, so a
/// client (and the OpenAPI document) sees one error type. A body rmcp could not parse as
/// JSON-RPC is malformed, 400, though rmcp says 415.
async fn json_errors<B>(response: http::Response<B>) -> Response
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let response = response.map(axum::body::Body::new);
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, 4096).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => String::new(),
    };
    let unparsed = text.starts_with("fail to deserialize request body");
    let status = if unparsed {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    let text = if text.is_empty() {
        status.canonical_reason().unwrap_or("refused").to_owned()
    } else {
        text
    };
    let mut answer = ApiError::new(status, text).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().insert(name.clone(), value.clone());
        }
    }
    answer
}

fn tool_error(message: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}
