//! `/metrics`: the host's counters in the Prometheus text format.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::response::IntoResponse;

use super::Shared;

pub(crate) async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
    let m = &state.metrics;
    let snapshot = state.snapshot();
    let text = format!(
        "# TYPE agora_http_requests_total counter\nagora_http_requests_total {}\n\
         # TYPE agora_http_rejected_total counter\nagora_http_rejected_total {}\n\
         # TYPE agora_receipts_accepted_total counter\nagora_receipts_accepted_total {}\n\
         # TYPE agora_feedback_accepted_total counter\nagora_feedback_accepted_total {}\n\
         # TYPE agora_scores_receipts gauge\nagora_scores_receipts {}\n\
         # TYPE agora_scores_compute_seconds gauge\nagora_scores_compute_seconds {}\n\
         # TYPE agora_scores_age_seconds gauge\nagora_scores_age_seconds {}\n\
         # TYPE agora_scores_skipped_rows gauge\nagora_scores_skipped_rows {}\n\
         # TYPE agora_refused_over_quota_total counter\nagora_refused_over_quota_total {}\n",
        m.requests.load(Ordering::Relaxed),
        m.rejected.load(Ordering::Relaxed),
        m.receipts_accepted.load(Ordering::Relaxed),
        m.feedback_accepted.load(Ordering::Relaxed),
        snapshot.calls,
        snapshot.took.as_secs_f64(),
        snapshot.computed.elapsed().as_secs_f64(),
        snapshot.skipped_rows,
        state.node.registry().refused_over_quota(),
    );
    let mut text = text;
    // What the quotas on strangers bound, read off the executor like every registry read.
    let node = state.node.clone();
    let strangers = tokio::task::spawn_blocking(move || node.registry().stranger_usage())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    text.push_str(&format!(
        "# TYPE agora_stranger_receipts gauge\nagora_stranger_receipts {}\n\
         # TYPE agora_stranger_feedback gauge\nagora_stranger_feedback {}\n",
        strangers.receipts, strangers.feedback
    ));
    text.push_str(&format!(
        "# TYPE agora_sqlite_memory_bytes gauge\nagora_sqlite_memory_bytes {}\n",
        agora_registry::Registry::sqlite_memory_bytes()
    ));
    let sandbox = state.node.sandbox().stats();
    text.push_str(&format!(
        "# TYPE agora_components_compiled_total counter\nagora_components_compiled_total {}\n\
         # TYPE agora_agents_loaded gauge\nagora_agents_loaded {}\n\
         # TYPE agora_instance_pool_slots gauge\nagora_instance_pool_slots {}\n",
        sandbox.compiles,
        sandbox.loaded,
        match sandbox.allocation {
            Some(crate::Allocation::Pooling { instances }) => instances,
            _ => 0,
        },
    ));
    if let Some(disk) = sandbox.disk {
        text.push_str(&format!(
            "# TYPE agora_compiled_cache_hits_total counter\nagora_compiled_cache_hits_total {}\n\
             # TYPE agora_compiled_cache_misses_total counter\nagora_compiled_cache_misses_total {}\n\
             # TYPE agora_compiled_cache_rejected_total counter\nagora_compiled_cache_rejected_total {}\n\
             # TYPE agora_compiled_cache_evicted_total counter\nagora_compiled_cache_evicted_total {}\n",
            disk.hits, disk.misses, disk.rejected, disk.evicted,
        ));
    }
    if let Some(gossip) = &state.gossip {
        text.push_str(&format!(
            "# TYPE agora_gossip_accepted_total counter\nagora_gossip_accepted_total {}\n\
             # TYPE agora_gossip_dropped_total counter\nagora_gossip_dropped_total {}\n\
             # TYPE agora_gossip_over_quota_total counter\nagora_gossip_over_quota_total {}\n\
             # TYPE agora_gossip_lagged_total counter\nagora_gossip_lagged_total {}\n\
             # TYPE agora_gossip_neighbours gauge\nagora_gossip_neighbours {}\n",
            gossip.accepted(),
            gossip.dropped(),
            gossip.over_quota(),
            gossip.lagged(),
            gossip.neighbours(),
        ));
    }
    if let Some(audit) = &state.audit {
        text.push_str(&format!(
            "# TYPE agora_audit_sampled_total counter\nagora_audit_sampled_total {}\n\
             # TYPE agora_audit_matched_total counter\nagora_audit_matched_total {}\n\
             # TYPE agora_audit_fraud_total counter\nagora_audit_fraud_total {}\n\
             # TYPE agora_audit_unbacked_total counter\nagora_audit_unbacked_total {}\n\
             # TYPE agora_audit_reports_checked_total counter\nagora_audit_reports_checked_total {}\n\
             # TYPE agora_audit_reports_dropped_total counter\nagora_audit_reports_dropped_total {}\n",
            audit.sampled(),
            audit.matched(),
            audit.fraud(),
            audit.unbacked(),
            audit.reports_checked(),
            audit.reports_dropped(),
        ));
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
}
