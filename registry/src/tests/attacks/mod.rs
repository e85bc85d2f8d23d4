//! The attack suite: each attack from the evidence review, on a real registry (SQLite file)
//! with real signed records, against an honest market. Each test states what the attacker
//! may move and by how much. This module holds the market they share; the attacks are in
//! [`ratings`], [`receipts`] and [`records`].

use super::{Chain, feedback};
use crate::reputation::{ScoreParams, Scores, compute};
use crate::*;

mod ratings;
mod receipts;
mod records;

/// A small deterministic random source, so every run builds the same market.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn agent_manifest(publisher: &SecretKey, name: &str, code: &[u8]) -> SignedManifest {
    let mut body = crate::tests::manifest(publisher, "1.0.0", code);
    body.name = name.into();
    body.price_per_mfuel = 100;
    Signed::sign(body, publisher).unwrap()
}

/// An honest market: hosts (the first is "this host"), anchored callers, agents with known
/// true qualities. Callers call agents at random hosts and rate them near their quality;
/// agents trap with probability (1 − q)/10.
struct Market {
    _dir: tempfile::TempDir,
    registry: Registry,
    hosts: Vec<Chain>,
    callers: Vec<SecretKey>,
    agents: Vec<(SignedManifest, f64)>,
    /// "Now" for every score computation of this market, so that scores differ only by
    /// evidence, not by ageing (ten minutes after the market was built, later than any
    /// receipt a test signs).
    now_ms: u64,
}

impl Market {
    fn new(agents: usize, calls: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("registry.db")).unwrap();
        let mut rng = Rng(7);
        let publishers: Vec<SecretKey> = (0..5).map(|_| SecretKey::generate()).collect();
        let agents: Vec<(SignedManifest, f64)> = (0..agents)
            .map(|i| {
                let manifest = agent_manifest(
                    &publishers[i % publishers.len()],
                    &format!("agent-{i}"),
                    format!("code {i}").as_bytes(),
                );
                registry.insert_manifest(&manifest).unwrap();
                (manifest, 0.2 + 0.75 * i as f64 / agents as f64)
            })
            .collect();
        let mut market = Market {
            _dir: dir,
            registry,
            hosts: (0..4).map(|_| Chain::new()).collect(),
            callers: (0..20).map(|_| SecretKey::generate()).collect(),
            agents,
            now_ms: rules::now_ms() + 600_000,
        };
        let mut batch = Vec::new();
        let mut ratings = Vec::new();
        for _ in 0..calls {
            let agent = rng.below(market.agents.len() as u64) as usize;
            let caller = rng.below(market.callers.len() as u64) as usize;
            let host = rng.below(market.hosts.len() as u64) as usize;
            let (manifest, quality) = &market.agents[agent];
            let trapped = rng.unit() < (1.0 - quality) / 10.0;
            let outcome = if trapped {
                Outcome::Trap {
                    code: Some(TrapCode::Unreachable),
                    message: "unreachable".into(),
                }
            } else {
                Outcome::Ok
            };
            let (receipt, request) =
                market.hosts[host].call(manifest, &market.callers[caller], outcome);
            if !trapped {
                let score = (quality * 100.0 + (rng.unit() - 0.5) * 20.0).clamp(0.0, 100.0);
                ratings.push(feedback(&market.callers[caller], &receipt, score as u8));
            }
            batch.push((receipt, Some(request)));
        }
        for answer in market.registry.insert_receipts(batch).unwrap() {
            assert_eq!(answer.unwrap(), Inserted::New);
        }
        for answer in market.registry.insert_feedback_batch(ratings).unwrap() {
            assert_eq!(answer.unwrap(), Inserted::New);
        }
        market
    }

    /// This host and the callers its operator vouches for.
    fn anchors(&self) -> Vec<PublicKey> {
        let mut anchors = vec![self.hosts[0].key.public()];
        anchors.extend(self.callers.iter().map(SecretKey::public));
        anchors
    }

    fn scores(&self) -> Scores {
        let evidence = self.registry.evidence_set().unwrap();
        compute(&evidence, &ScoreParams::new(self.anchors(), self.now_ms))
    }

    fn best(&self) -> &SignedManifest {
        &self.agents.last().unwrap().0
    }

    /// An agent's rank (1 = best lower bound) among the market's agents, and its lower bound.
    fn rank(&self, scores: &Scores, agent: &SignedManifest) -> (usize, f64) {
        let bound = scores.of(agent.body()).lower_bound();
        let better = self
            .agents
            .iter()
            .filter(|(m, _)| scores.of(m.body()).lower_bound() > bound)
            .count();
        (better + 1, bound)
    }

    /// Host `index` of the market, ready to sign its next receipt.
    fn resume(&self, index: usize) -> Chain {
        let key = self.hosts[index].key.clone();
        let head = self.registry.host_record(&key.public()).unwrap().head;
        Chain { key, head }
    }

    fn store(
        &self,
        receipts: Vec<(SignedReceipt, Option<SignedRequest>)>,
    ) -> Vec<Result<Inserted, Error>> {
        self.registry.insert_receipts(receipts).unwrap()
    }
}

fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|a, b| values[*a].total_cmp(&values[*b]));
    let mut ranks = vec![0.0; values.len()];
    for (rank, index) in order.into_iter().enumerate() {
        ranks[index] = rank as f64;
    }
    ranks
}

fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let d2: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - y).powi(2)).sum();
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}
