//! The routes and the read endpoints: agents, their manifests, reputation and receipts, hosts and
//! publishers, and the OpenAPI document. Every registry read runs on the blocking pool (see
//! [`ApiState::read`]); scores come from the latest snapshot without waiting.

use agora_registry::reputation::{Reputation, Scores};
use agora_registry::{Hash, ReceiptCursor};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceBuilder;
use tower_http::timeout::TimeoutLayer;

use super::config::HttpLimits;
use super::edge;
use super::error::{ApiError, parse_key};
use super::extract::{ApiPath, ApiQuery};
use super::metrics::metrics;
use super::writes::{invoke, post_feedback, post_fraud_proof, post_receipt};
use super::{OPENAPI, Shared, verify};

/// Most items in one page.
const MAX_PAGE: usize = 500;
/// Items in a page when the client does not say.
const DEFAULT_PAGE: usize = 50;

/// A cursor as this host writes them: 1 to 18 decimal digits, no sign, at least `min`, no
/// leading zero. Anything else is refused rather than read leniently (`+5`), as the OpenAPI
/// document's pattern says.
fn cursor_digits(text: &str, min: u64) -> Option<&str> {
    let digits = (1..=18).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
    let canonical = text == "0" || !text.starts_with('0');
    (digits && canonical && text.parse::<u64>().is_ok_and(|n| n >= min)).then_some(text)
}

fn not_a_cursor(cursor: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        format!(
            "`{}` is not a cursor this host returned",
            cursor.chars().take(32).collect::<String>()
        ),
    )
}

/// The page size a client asked for: 1 to [`MAX_PAGE`], or 400 naming the bounds (a silently
/// smaller page would look like the end of the list).
fn page_size(asked: Option<usize>) -> Result<usize, ApiError> {
    match asked {
        None => Ok(DEFAULT_PAGE),
        Some(limit @ 1..=MAX_PAGE) => Ok(limit),
        Some(limit) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit {limit} is outside 1..={MAX_PAGE}"),
        )),
    }
}

/// The routes, behind the edge: the request checks and load shedding first, then the body limit
/// and the timeout.
pub(crate) fn router(state: Shared, limits: &HttpLimits) -> Router {
    let edge = state.edge.clone();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/v1/agents", get(list_agents))
        .route("/v1/agents/{hash}", get(agent_manifest))
        .route("/v1/agents/{hash}/reputation", get(agent_reputation))
        .route("/v1/agents/{hash}/receipts", get(agent_receipts))
        .route("/v1/hosts/{key}", get(host_record))
        .route("/v1/publishers/{key}", get(publisher_record))
        .route("/v1/host", get(this_host))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/invoke", post(invoke))
        .route("/v1/receipts", post(post_receipt))
        .route("/v1/receipts/{hash}", get(verify::get_receipt))
        .route("/v1/call-data/{hash}", get(verify::get_call_data))
        .route("/v1/components/{hash}", get(verify::get_component))
        .route("/v1/feedback", post(post_feedback))
        .route("/v1/fraud-proofs", post(post_fraud_proof))
        .merge(super::mcp::router(state.clone(), limits))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(
            ServiceBuilder::new()
                .layer(axum::middleware::from_fn_with_state(edge, edge::guard))
                .layer(DefaultBodyLimit::max(limits.max_body_bytes))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    limits.request_timeout,
                )),
        )
        .with_state(state)
}

fn reputation_json(reputation: &Reputation, lower_bound: f64) -> Value {
    json!({
        "quality": reputation.quality(),
        "uncertainty": reputation.uncertainty(),
        "lower_bound": lower_bound,
        "evidence": reputation.evidence,
    })
}

/// An agent's reputation as JSON, with the lower bound computed with the scores.
fn agent_json(scores: &Scores, manifest: &agora_registry::Manifest) -> Value {
    reputation_json(
        &scores.of(manifest),
        scores.lower_bound(&manifest.publisher, &manifest.component.hash),
    )
}

#[derive(Deserialize)]
struct AgentFilter {
    name: Option<String>,
    action: Option<String>,
    publisher: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn list_agents(
    State(state): State<Shared>,
    ApiQuery(filter): ApiQuery<AgentFilter>,
) -> Result<Json<Value>, ApiError> {
    state.count();
    let limit = page_size(filter.limit)?;
    let skip: usize = match filter.cursor.as_deref() {
        None => 0,
        Some(cursor) => cursor_digits(cursor, 0)
            .and_then(|digits| digits.parse().ok())
            .ok_or_else(|| not_a_cursor(cursor))?,
    };
    let publisher = match filter.publisher.as_deref().map(parse_key).transpose()? {
        None => None,
        Some(Some(key)) => Some(key),
        // Bytes that are no key: nobody published under them.
        Some(None) => return Ok(Json(json!({ "agents": [], "next": null }))),
    };
    let snapshot = state.snapshot();
    let scores = &snapshot.scores;
    // Rank what matches from the registry's columns, then read only the page's manifests.
    let index = state
        .read(move |registry| {
            registry.manifest_index(
                filter.name.as_deref(),
                filter.action.as_deref(),
                publisher.as_ref(),
            )
        })
        .await?;
    let mut ranked: Vec<(f64, Hash)> = index
        .into_iter()
        .map(|(manifest, publisher, component)| {
            (scores.lower_bound(&publisher, &component), manifest)
        })
        .collect();
    // Best lower bound first; ties by manifest hash, so every host lists in the same order.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let total = ranked.len();
    let page: Vec<Hash> = ranked
        .into_iter()
        .skip(skip)
        .take(limit)
        .map(|(_, hash)| hash)
        .collect();
    let next = (skip + page.len() < total).then(|| (skip + page.len()).to_string());
    let manifests = state
        .read(move |registry| {
            page.iter()
                .filter_map(|hash| registry.manifest(hash).transpose())
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    let mut agents = Vec::with_capacity(manifests.len());
    for m in manifests {
        let body = m.body();
        agents.push(json!({
            "manifest": m.hash(),
            "name": body.name,
            "version": body.version,
            "publisher": body.publisher,
            "component": body.component.hash,
            "actions": body.actions,
            "capabilities": body.capabilities,
            "price_per_mfuel": body.price_per_mfuel,
            "description": body.description,
            "reputation": agent_json(scores, body),
        }));
    }
    Ok(Json(json!({ "agents": agents, "next": next })))
}

async fn agent_manifest(
    State(state): State<Shared>,
    ApiPath(hash): ApiPath<String>,
) -> Result<Response, ApiError> {
    state.count();
    let manifest = state.manifest(&hash).await?;
    // The signed envelope itself, so that the client can verify it.
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        manifest.as_bytes().to_vec(),
    )
        .into_response())
}

async fn agent_reputation(
    State(state): State<Shared>,
    ApiPath(hash): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    state.count();
    let manifest = state.manifest(&hash).await?;
    let snapshot = state.snapshot();
    let component = manifest.body().component.hash;
    let mut body = agent_json(&snapshot.scores, manifest.body());
    body["manifest"] = json!(manifest.hash());
    body["component"] = json!(component);
    body["anchors"] = json!(state.anchors);
    body["computed_at_ms"] = json!(snapshot.computed_at_ms);
    Ok(Json(body))
}

#[derive(Deserialize)]
struct Page {
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn agent_receipts(
    State(state): State<Shared>,
    ApiPath(hash): ApiPath<String>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Response, ApiError> {
    state.count();
    let manifest = state.manifest(&hash).await?;
    let limit = page_size(page.limit)?;
    let after = match page.cursor.as_deref() {
        None => None,
        Some(cursor) => Some(
            cursor_digits(cursor, 1)
                .and_then(|digits| digits.parse::<ReceiptCursor>().ok())
                .ok_or_else(|| not_a_cursor(cursor))?,
        ),
    };
    let manifest_hash = manifest.hash();
    let page = state
        .read(move |registry| registry.receipts_page(&manifest_hash, after, limit))
        .await?;
    // The signed envelopes are canonical JSON already: splice their exact bytes into the
    // answer, so that clients can verify them and the server need not re-encode them.
    let mut body = Vec::with_capacity(
        page.receipts.iter().map(|r| r.len() + 1).sum::<usize>()
            + page
                .requests
                .iter()
                .flatten()
                .map(|r| r.len() + 1)
                .sum::<usize>()
            + 64,
    );
    body.extend_from_slice(b"{\"receipts\":[");
    for (index, receipt) in page.receipts.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(receipt);
    }
    body.extend_from_slice(b"],\"requests\":[");
    for (index, request) in page.requests.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(request.as_deref().unwrap_or(b"null"));
    }
    body.extend_from_slice(b"],\"next\":");
    let next = page.next.map(|cursor| cursor.to_string());
    body.extend_from_slice(json!(next).to_string().as_bytes());
    body.push(b'}');
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

async fn host_record(
    State(state): State<Shared>,
    ApiPath(key): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    state.count();
    let no_record = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no receipts from host {key}, no trust in it and no evidence against it"),
        )
    };
    let host = parse_key(&key)?.ok_or_else(no_record)?;
    let record = state
        .read(move |registry| registry.host_record(&host))
        .await?;
    let snapshot = state.snapshot();
    let trust = snapshot.scores.trust_in(&host);
    let nothing_against = record.forks.is_empty() && record.misbehaviour.is_empty();
    if record.receipts == 0 && trust == 0.0 && nothing_against {
        return Err(no_record());
    }
    Ok(Json(json!({
        "host": host,
        "trust": trust,
        "receipts": record.receipts,
        "head": record.head.map(|(seq, receipt)| json!({ "seq": seq, "receipt": receipt })),
        "first_receipt_ms": record.active_ms.map(|(first, _)| first),
        "last_receipt_ms": record.active_ms.map(|(_, last)| last),
        "missing": record.missing,
        "forks": record.forks.iter().map(|fork| json!({
            "seq": fork.seq,
            "first": fork.first,
            "second": fork.second,
        })).collect::<Vec<_>>(),
        "misbehaviour": record.misbehaviour.iter().map(|m| json!({
            "kind": m.kind,
            "subject": m.subject,
            "reason": m.reason,
        })).collect::<Vec<_>>(),
        "anchors": state.anchors,
        "computed_at_ms": snapshot.computed_at_ms,
    })))
}

async fn publisher_record(
    State(state): State<Shared>,
    ApiPath(key): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    state.count();
    let none_by = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no agents published by {key}"),
        )
    };
    let publisher = parse_key(&key)?.ok_or_else(none_by)?;
    let manifests = state
        .read(move |registry| registry.manifests_by(&publisher))
        .await?;
    if manifests.is_empty() {
        return Err(none_by());
    }
    let snapshot = state.snapshot();
    let scores = &snapshot.scores;
    let agents: Vec<Value> = manifests
        .iter()
        .map(|m| {
            let body = m.body();
            json!({
                "manifest": m.hash(),
                "name": body.name,
                "version": body.version,
                "component": body.component.hash,
                "reputation": agent_json(scores, body),
            })
        })
        .collect();
    let reputation = scores
        .publishers
        .get(&publisher)
        .copied()
        .unwrap_or(Reputation {
            positive: 0.0,
            negative: 0.0,
            evidence: 0,
        });
    Ok(Json(json!({
        "publisher": publisher,
        "trust": scores.trust_in(&publisher),
        "reputation": reputation_json(&reputation, reputation.lower_bound()),
        "agents": agents,
        "anchors": state.anchors,
        "computed_at_ms": snapshot.computed_at_ms,
    })))
}

/// Who this host is: the key that signs its receipts, which a caller names in its requests.
async fn this_host(State(state): State<Shared>) -> Json<Value> {
    state.count();
    Json(json!({
        "key": state.node.public_key(),
        "version": env!("CARGO_PKG_VERSION"),
        "runtime": crate::RUNTIME_VERSION,
        "profile": {
            "name": state.node.sandbox().profile().name,
            "hash": state.node.sandbox().profile_hash(),
        },
    }))
}

async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}
