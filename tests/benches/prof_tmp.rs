use agora_host::{DataDir, Limits, Node, NodeConfig};
use agora_tests::CPU_KERNEL;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
fn main() -> anyhow::Result<()> {
    unsafe { agora_host::without_error_backtraces() };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let dir = tempfile::tempdir()?;
        let data_dir = DataDir::new(dir.path());
        data_dir.keygen()?;
        let d = if std::env::var_os("PIPE").is_some() {
            agora_registry::ReceiptDurability::Pipelined
        } else {
            Default::default()
        };
        let node = Node::open(
            NodeConfig::new(data_dir)
                .limits(Limits::default())
                .receipts(d),
        )
        .await?;
        let agent = node
            .publish(CPU_KERNEL, Default::default())
            .await?
            .manifest
            .hash()
            .to_hex();
        for _ in 0..2000 {
            node.run(&agent, "echo", b"hi", None).await?.into_output()?;
        }
        let secs: u64 = std::env::var("SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10);
        let callers: usize = std::env::var("CALLERS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        eprintln!("go");
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        let start = Instant::now();
        for _ in 0..callers {
            let (stop, done, node, agent) =
                (stop.clone(), done.clone(), node.clone(), agent.clone());
            tasks.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    node.run(&agent, "echo", b"hi", None).await?.into_output()?;
                    done.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
                anyhow::Ok(())
            });
        }
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Relaxed);
        let n = done.load(Ordering::Relaxed);
        while let Some(t) = tasks.join_next().await {
            t??;
        }
        eprintln!(
            "{} calls, {:.0}/s",
            n,
            n as f64 / start.elapsed().as_secs_f64()
        );
        anyhow::Ok(())
    })
}
