//! `agora verify`: fetch a receipt, its input, transcript and component from a host's API, run
//! the call again here under the profile the receipt names, and sign what was found. A receipt
//! that does not match becomes a fraud proof, written to a file and sent to other hosts.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use agora_host::client::ApiClient;
use agora_host::{DataDir, Node, Verdict};
use agora_registry::{BlobRef, FraudProof, Hash, Receipt, Signed, SignedReceipt};
use anyhow::{Context, bail};

use crate::ui::spinner;

/// Exit code when the receipt is wrong (a fraud proof).
const FRAUD: u8 = 3;
/// Exit code when the receipt's outcome cannot be reproduced (a timeout, the host's memory, a
/// stack overflow): nothing was compared.
const NOT_REPRODUCIBLE: u8 = 4;

#[derive(clap::Args)]
pub(crate) struct VerifyArgs {
    /// The receipt's hash.
    pub receipt: Hash,
    /// The API of a host that holds the receipt and keeps its input and transcript: the host
    /// that signed it.
    #[arg(long, env = "AGORA_API", default_value = "http://127.0.0.1:7070")]
    pub api: String,
    /// When the receipt is wrong, write the fraud proof to this file.
    #[arg(long, value_name = "FILE")]
    pub proof: Option<PathBuf>,
    /// When the receipt is wrong, send the fraud proof to this host's API (repeatable).
    #[arg(long = "report", value_name = "API")]
    pub report: Vec<String>,
    /// Print the signed validation record (JSON) instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// Runs `agora verify`. Exits 0 when the receipt matches, 3 when it is wrong, 4 when its outcome
/// cannot be reproduced.
pub(crate) async fn verify(data_dir: DataDir, options: VerifyArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(&options.api)?;
    let node = crate::commands::open_for_one_command(data_dir)
        .await
        .context("opening this data dir to run the call in")?;
    let verified = check(&client, &node, &options).await;
    node.shutdown().await?;
    verified
}

async fn check(client: &ApiClient, node: &Node, options: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let fetching = spinner("fetching the receipt, its input, transcript and component");
    let fetched = fetch(client, node, options.receipt).await;
    fetching.finish_and_clear();
    let (receipt, component, input, transcript) = fetched?;
    let running = spinner("running the call again");
    let validated = node
        .validate(&receipt, &component, &input, &transcript)
        .await;
    running.finish_and_clear();
    let (again, validation) = validated?;
    let body = receipt.body();
    let mut out = std::io::stdout().lock();
    if options.json {
        if let Some(validation) = &validation {
            out.write_all(validation.as_bytes())?;
            writeln!(out)?;
        }
    } else {
        writeln!(
            out,
            "receipt {} signed by host {}\n  receipt:     {}, output {}, fuel {}\n  re-executed: {}, output {}, fuel {}",
            receipt.hash(),
            body.host,
            body.outcome,
            show(body.output_hash),
            body.fuel_used,
            again.outcome,
            show(again.output_hash),
            again.fuel_used,
        )?;
    }
    let validation = match (&again.verdict, validation) {
        (Verdict::Matches, _) => {
            if !options.json {
                writeln!(out, "verified: the call gives what the receipt says")?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        (Verdict::NotReproducible, _) | (_, None) => {
            writeln!(
                out,
                "not verifiable: the receipt's outcome ({}) depends on the host that ran it",
                body.outcome
            )?;
            return Ok(ExitCode::from(NOT_REPRODUCIBLE));
        }
        (_, Some(validation)) => validation,
    };
    if !options.json {
        writeln!(out, "FRAUD: {}", validation.body().finding)?;
    }
    drop(out);
    let proof = FraudProof::new(receipt, validation, input, transcript)?;
    let bytes = proof.to_bytes();
    if let Some(path) = &options.proof {
        std::fs::write(path, &bytes)
            .with_context(|| format!("writing the fraud proof to {}", path.display()))?;
        eprintln!("fraud proof written to {}", path.display());
    }
    for api in &options.report {
        let answer = ApiClient::new(api)?
            .post_json("/v1/fraud-proofs", bytes.clone())
            .await
            .with_context(|| format!("reporting the fraud to {api}"))?;
        eprintln!("{api} checked the proof and recorded it: {answer}");
    }
    Ok(ExitCode::from(FRAUD))
}

fn show(hash: Option<Hash>) -> String {
    hash.map_or_else(|| "none".into(), |hash| hash.to_hex())
}

/// The receipt, and the component, input and transcript it names, each checked against its hash.
async fn fetch(
    client: &ApiClient,
    node: &Node,
    hash: Hash,
) -> anyhow::Result<(SignedReceipt, Vec<u8>, Vec<u8>, Vec<u8>)> {
    let bytes = client
        .get_bytes(&format!("/v1/receipts/{hash}"), 1 << 20)
        .await?;
    let receipt: SignedReceipt = Signed::<Receipt>::from_bytes(&bytes)?;
    if receipt.hash() != hash {
        bail!("the host answered with receipt {}", receipt.hash());
    }
    let body = receipt.body();
    let (Some(input_size), Some(transcript_ref)) = (body.input_size, body.transcript) else {
        bail!(
            "receipt {hash} names no input size or transcript: its host did not record what a \
             re-execution needs"
        );
    };
    let blob = |what: &'static str, key: Hash, size: u64| async move {
        let size = usize::try_from(size).context("a size beyond this machine")?;
        let bytes = client
            .get_bytes(&format!("/v1/call-data/{key}"), size)
            .await
            .with_context(|| format!("fetching the {what}"))?;
        anyhow::ensure!(
            bytes.len() == size,
            "the host sent a {what} of {} bytes; the receipt names {size}",
            bytes.len()
        );
        anyhow::Ok(bytes.to_vec())
    };
    let input = blob("input", body.input_hash, input_size).await?;
    let transcript = blob("transcript", transcript_ref.hash, transcript_ref.size).await?;
    if BlobRef::of(&transcript) != transcript_ref {
        bail!("the host sent a transcript other than the one receipt {hash} names");
    }
    let component_hash = body.agent.component;
    let component = match node.blobs().get(&component_hash).await? {
        Some(bytes) => bytes.to_vec(),
        None => {
            let limit =
                usize::try_from(node.sandbox().limits().max_component_bytes).unwrap_or(usize::MAX);
            let bytes = client
                .get_bytes(&format!("/v1/components/{component_hash}"), limit)
                .await
                .context("fetching the component")?;
            let actual = Hash::of(&bytes);
            if actual != component_hash {
                bail!(
                    "the host sent a component hashing to {actual}; the receipt names {component_hash}"
                );
            }
            // Kept, so that this host can check proofs about it later.
            node.blobs().put(bytes.clone()).await?;
            bytes.to_vec()
        }
    };
    Ok((receipt, component, input, transcript))
}
