//! `agora reputation`: an agent's reputation as a running host's HTTP API reports it.

use std::io::Write;

use agora_registry::Hash;
use anyhow::bail;

/// Prints the reputation of every release `agent` names, as the host at `api` scores it.
pub(crate) async fn reputation(agent: &str, api: &str, json: bool) -> anyhow::Result<()> {
    let client = agora_host::client::ApiClient::new(api)?;
    let manifests: Vec<String> = match agent.parse::<Hash>() {
        Ok(hash) => vec![hash.to_hex()],
        Err(_) => {
            let (name, version) = match agent.split_once('@') {
                Some((name, version)) => (name, Some(version)),
                None => (agent, None),
            };
            let listed = client
                .get_json(&format!("/v1/agents?name={}", query_escape(name)))
                .await?;
            let matches: Vec<&serde_json::Value> = listed["agents"]
                .as_array()
                .map(|agents| {
                    agents
                        .iter()
                        .filter(|a| a["name"] == name && version.is_none_or(|v| a["version"] == v))
                        .collect()
                })
                .unwrap_or_default();
            let mut publishers: Vec<&str> = matches
                .iter()
                .filter_map(|a| a["publisher"].as_str())
                .collect();
            publishers.sort_unstable();
            publishers.dedup();
            if publishers.len() > 1 {
                bail!(
                    "`{agent}` is published by {} keys ({}); give a manifest hash",
                    publishers.len(),
                    publishers.join(", ")
                );
            }
            if matches.is_empty() {
                bail!("{api} lists no agent named `{agent}`");
            }
            matches
                .iter()
                .filter_map(|a| a["manifest"].as_str().map(str::to_owned))
                .collect()
        }
    };
    let mut out = std::io::stdout().lock();
    for manifest in manifests {
        let reputation = client
            .get_json(&format!("/v1/agents/{manifest}/reputation"))
            .await?;
        if json {
            writeln!(out, "{reputation}")?;
            continue;
        }
        let number = |field: &str| reputation[field].as_f64().unwrap_or(f64::NAN);
        let anchors: Vec<String> = reputation["anchors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|k| k.as_str())
                    .map(|k| k[..12.min(k.len())].to_owned())
                    .collect()
            })
            .unwrap_or_default();
        writeln!(out, "manifest     {manifest}")?;
        writeln!(
            out,
            "component    {}",
            reputation["component"].as_str().unwrap_or("?")
        )?;
        writeln!(out, "quality      {:.3}", number("quality"))?;
        writeln!(out, "uncertainty  {:.3}", number("uncertainty"))?;
        writeln!(
            out,
            "lower bound  {:.3}  (5% quantile; agents are ranked by it)",
            number("lower_bound")
        )?;
        writeln!(out, "evidence     {}", reputation["evidence"])?;
        writeln!(out, "anchors      {}", anchors.join(", "))?;
    }
    Ok(())
}

/// Percent-encodes a query value.
fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
