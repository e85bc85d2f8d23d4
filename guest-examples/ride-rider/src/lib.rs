//! A ride-share rider agent.
//!
//! Given a trip, a budget and a list of driver agents (content hashes), it asks every driver for
//! a quote through `call-agent`, then negotiates with the cheapest drivers in turn, raising its
//! offer each round but never above its budget, and returns the chosen driver and fare.
//!
//! Action `negotiate`:
//! `{"trip": Trip, "budget_cents": u64, "drivers": [hash], "max_rounds": u32}` →
//! `{"status": "agreed" | "no-deal", "driver": hash?, "fare_cents": u64?, "rounds": u32, "quotes": [..]}`

wit_bindgen::generate!({ path: "../../wit", world: "agent" });

use agora::agent::host::{self, LogLevel};
use agora::agent::types::{AgentError, AgentInfo, Request};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Most drivers one negotiation will consult.
const MAX_DRIVERS: usize = 16;

/// The rider's opening offer, as a percentage of the best quote.
const OPENING_PCT: u64 = 80;
/// How much the rider raises its offer each round, in percent of the best quote.
const RAISE_PCT: u64 = 5;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Negotiate {
    trip: serde_json::Value,
    budget_cents: u64,
    drivers: Vec<String>,
    #[serde(default = "default_rounds")]
    max_rounds: u32,
}

fn default_rounds() -> u32 {
    4
}

/// One driver's answer to the request for a quote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QuoteResult {
    /// The driver agent.
    pub driver: String,
    /// Its fare, if it quoted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fare_cents: Option<u64>,
    /// Why it did not, if it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The negotiation's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// `agreed` or `no-deal`.
    pub status: &'static str,
    /// The chosen driver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// The agreed fare.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fare_cents: Option<u64>,
    /// Counter-offer rounds used in all.
    pub rounds: u32,
    /// Every driver's quote.
    pub quotes: Vec<QuoteResult>,
}

/// The rider's offer in round `round` (0-based): opening at a fraction of the quote and rising,
/// never above the budget.
pub fn offer(quote: u64, budget: u64, round: u32) -> u64 {
    let pct = OPENING_PCT + RAISE_PCT * u64::from(round);
    (quote * pct / 100).min(quote).min(budget)
}

/// How the rider talks to drivers; the agent uses `call-agent`, tests use closures.
pub trait Drivers {
    /// Asks `driver` for a quote.
    fn quote(&mut self, driver: &str) -> Result<u64, String>;
    /// Sends `driver` an offer; returns (accepted, fare or counter).
    fn counter(
        &mut self,
        driver: &str,
        offer_cents: u64,
        round: u32,
    ) -> Result<(bool, u64), String>;
}

fn agreed(driver: String, fare: u64, rounds: u32, quotes: Vec<QuoteResult>) -> Outcome {
    Outcome {
        status: "agreed",
        driver: Some(driver),
        fare_cents: Some(fare),
        rounds,
        quotes,
    }
}

/// Runs a negotiation: quotes from all drivers, then rounds of offers with each driver from the
/// cheapest up, until one accepts within the budget.
pub fn negotiate(
    drivers: &[String],
    budget: u64,
    max_rounds: u32,
    market: &mut impl Drivers,
) -> Outcome {
    let quotes: Vec<QuoteResult> = drivers
        .iter()
        .map(|driver| match market.quote(driver) {
            Ok(fare) => QuoteResult {
                driver: driver.clone(),
                fare_cents: Some(fare),
                error: None,
            },
            Err(error) => QuoteResult {
                driver: driver.clone(),
                fare_cents: None,
                error: Some(error),
            },
        })
        .collect();
    let mut candidates: Vec<(u64, &str)> = quotes
        .iter()
        .filter_map(|q| q.fare_cents.map(|fare| (fare, q.driver.as_str())))
        .collect();
    candidates.sort();

    let mut rounds = 0;
    for (quote, driver) in candidates {
        if quote <= budget {
            return agreed(driver.to_owned(), quote, rounds, quotes);
        }
        for round in 0..max_rounds {
            rounds += 1;
            let offer = offer(quote, budget, round);
            match market.counter(driver, offer, round) {
                Ok((true, fare)) => {
                    return agreed(driver.to_owned(), fare, rounds, quotes);
                }
                // The driver's counter is within budget: take it.
                Ok((false, ask)) if ask <= budget => {
                    if let Ok((true, fare)) = market.counter(driver, ask, round) {
                        return agreed(driver.to_owned(), fare, rounds, quotes);
                    }
                }
                Ok((false, _)) => {}
                Err(_) => break,
            }
        }
    }
    Outcome {
        status: "no-deal",
        driver: None,
        fare_cents: None,
        rounds,
        quotes,
    }
}

/// Drivers reached through the host's `call-agent`.
struct CallAgent<'a> {
    trip: &'a serde_json::Value,
}

impl CallAgent<'_> {
    fn call(
        &self,
        driver: &str,
        action: &str,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let request = Request {
            action: action.into(),
            payload: payload.to_string().into_bytes(),
        };
        let output = host::call_agent(driver, &request).map_err(|e| match e {
            AgentError::BadRequest(m) => format!("bad request: {m}"),
            AgentError::Refused(m) => format!("refused: {m}"),
            AgentError::Internal(m) => format!("failed: {m}"),
        })?;
        serde_json::from_slice(&output)
            .map_err(|e| format!("driver answered with invalid JSON: {e}"))
    }
}

impl Drivers for CallAgent<'_> {
    fn quote(&mut self, driver: &str) -> Result<u64, String> {
        let reply = self.call(driver, "quote", json!({ "trip": self.trip }))?;
        reply["fare_cents"]
            .as_u64()
            .ok_or_else(|| "quote without fare_cents".to_string())
    }

    fn counter(
        &mut self,
        driver: &str,
        offer_cents: u64,
        round: u32,
    ) -> Result<(bool, u64), String> {
        let reply = self.call(
            driver,
            "counter",
            json!({ "trip": self.trip, "offer_cents": offer_cents, "round": round }),
        )?;
        match (reply["accepted"].as_bool(), reply["fare_cents"].as_u64()) {
            (Some(accepted), Some(fare)) => Ok((accepted, fare)),
            _ => Err("counter reply without accepted and fare_cents".into()),
        }
    }
}

struct Rider;

impl exports::agora::agent::handler::Guest for Rider {
    fn info() -> AgentInfo {
        AgentInfo {
            name: "ride-rider".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: env!("CARGO_PKG_DESCRIPTION").into(),
            actions: vec!["negotiate".into()],
        }
    }

    fn handle(req: Request) -> Result<Vec<u8>, AgentError> {
        if req.action != "negotiate" {
            return Err(AgentError::BadRequest(format!(
                "unknown action `{}`; expected negotiate",
                req.action
            )));
        }
        let request: Negotiate = serde_json::from_slice(&req.payload)
            .map_err(|e| AgentError::BadRequest(format!("payload: {e}")))?;
        if request.drivers.is_empty() || request.drivers.len() > MAX_DRIVERS {
            return Err(AgentError::BadRequest(format!(
                "give between 1 and {MAX_DRIVERS} drivers"
            )));
        }
        let mut market = CallAgent {
            trip: &request.trip,
        };
        let outcome = negotiate(
            &request.drivers,
            request.budget_cents,
            request.max_rounds,
            &mut market,
        );
        host::log(
            LogLevel::Info,
            &format!(
                "negotiation {} after {} rounds",
                outcome.status, outcome.rounds
            ),
        );
        serde_json::to_vec(&outcome).map_err(|e| AgentError::Internal(e.to_string()))
    }
}

export!(Rider);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Drivers that quote a fixed fare and concede to a floor over three rounds.
    struct Market {
        drivers: HashMap<String, (u64, u64)>,
        calls: Vec<(String, u64)>,
    }

    impl Drivers for Market {
        fn quote(&mut self, driver: &str) -> Result<u64, String> {
            self.drivers
                .get(driver)
                .map(|d| d.0)
                .ok_or_else(|| "unknown driver".into())
        }
        fn counter(&mut self, driver: &str, offer: u64, round: u32) -> Result<(bool, u64), String> {
            self.calls.push((driver.to_owned(), offer));
            let (quote, floor) = self.drivers[driver];
            let ask = quote - (quote - floor) * u64::from(round.min(3)) / 3;
            Ok(if offer >= ask {
                (true, offer)
            } else {
                (false, ask)
            })
        }
    }

    fn market(drivers: &[(&str, u64, u64)]) -> Market {
        Market {
            drivers: drivers
                .iter()
                .map(|(n, q, f)| (n.to_string(), (*q, *f)))
                .collect(),
            calls: vec![],
        }
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_quote_within_budget_is_taken_without_haggling() {
        let mut m = market(&[("ava", 2_500, 2_100), ("ben", 2_200, 2_000)]);
        let outcome = negotiate(&names(&["ava", "ben"]), 3_000, 4, &mut m);
        assert_eq!(outcome.status, "agreed");
        assert_eq!(outcome.driver.as_deref(), Some("ben"));
        assert_eq!(outcome.fare_cents, Some(2_200));
        assert!(m.calls.is_empty());
    }

    #[test]
    fn the_rider_negotiates_down_to_its_budget() {
        let mut m = market(&[("ava", 2_500, 2_125)]);
        let outcome = negotiate(&names(&["ava"]), 2_300, 4, &mut m);
        assert_eq!(outcome.status, "agreed");
        assert!(outcome.fare_cents.unwrap() <= 2_300);
        assert!(outcome.rounds >= 1);
    }

    #[test]
    fn no_deal_when_every_floor_is_above_budget() {
        let mut m = market(&[("ava", 2_500, 2_125), ("ben", 2_600, 2_400)]);
        let outcome = negotiate(&names(&["ava", "ben"]), 1_500, 3, &mut m);
        assert_eq!(outcome.status, "no-deal");
        assert!(
            m.calls.iter().all(|(_, offer)| *offer <= 1_500),
            "offers never exceed budget"
        );
    }

    #[test]
    fn a_driver_that_fails_is_skipped() {
        let mut m = market(&[("ben", 2_000, 1_900)]);
        let outcome = negotiate(&names(&["ghost", "ben"]), 2_500, 3, &mut m);
        assert_eq!(outcome.driver.as_deref(), Some("ben"));
        assert_eq!(outcome.quotes[0].error.as_deref(), Some("unknown driver"));
    }

    #[test]
    fn offers_rise_but_never_pass_the_budget_or_the_quote() {
        assert_eq!(offer(2_500, 5_000, 0), 2_000);
        assert_eq!(offer(2_500, 5_000, 2), 2_250);
        assert_eq!(offer(2_500, 2_100, 3), 2_100);
        assert_eq!(offer(2_500, 5_000, 10), 2_500);
    }
}
