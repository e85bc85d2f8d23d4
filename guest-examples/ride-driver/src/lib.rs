//! A ride-share driver agent.
//!
//! Quotes a fare for a trip (distance, duration, demand) under the driver's own pricing rules,
//! which the driver's operator sets with `configure` and the agent keeps in its host memory, and
//! answers a rider's counter-offers, conceding towards a floor it never goes below.
//!
//! Actions (JSON in, JSON out):
//! - `quote` `{"trip": Trip}` → `{"fare_cents": u64}`
//! - `counter` `{"trip": Trip, "offer_cents": u64, "round": u32}` → `{"accepted": bool, "fare_cents": u64, "round": u32}`
//! - `configure` `PricingRules` → the rules now in force

wit_bindgen::generate!({ path: "../../wit", world: "agent" });

use agora::agent::host::{self, LogLevel};
use agora::agent::types::{AgentError, AgentInfo, Request};
use serde::{Deserialize, Serialize};

/// A trip to price. Integers only, so every host computes the same fare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trip {
    /// Route length in metres.
    pub distance_m: u64,
    /// Expected duration in seconds.
    pub duration_s: u64,
    /// Demand relative to normal, in percent (100 = normal, 180 = busy).
    #[serde(default = "normal_demand")]
    pub demand_pct: u32,
}

fn normal_demand() -> u32 {
    100
}

/// A driver's pricing rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingRules {
    /// Flag-fall.
    pub base_cents: u64,
    /// Per kilometre.
    pub per_km_cents: u64,
    /// Per minute.
    pub per_min_cents: u64,
    /// No fare below this.
    pub minimum_cents: u64,
    /// Surge follows demand up to this percentage.
    pub max_surge_pct: u32,
    /// The most the driver concedes from its quote in negotiation, in percent.
    pub max_discount_pct: u32,
}

impl Default for PricingRules {
    fn default() -> Self {
        PricingRules {
            base_cents: 250,
            per_km_cents: 120,
            per_min_cents: 30,
            minimum_cents: 700,
            max_surge_pct: 250,
            max_discount_pct: 15,
        }
    }
}

/// Rounds over which the driver concedes from its quote to its floor.
const CONCESSION_ROUNDS: u64 = 3;

impl PricingRules {
    fn validate(&self) -> Result<(), String> {
        if self.max_surge_pct < 100 {
            return Err("max_surge_pct must be at least 100".into());
        }
        if self.max_discount_pct > 90 {
            return Err("max_discount_pct must be at most 90".into());
        }
        Ok(())
    }

    /// The fare the driver quotes for `trip`.
    pub fn quote(&self, trip: &Trip) -> u64 {
        let distance = trip.distance_m.saturating_mul(self.per_km_cents) / 1000;
        let time = trip.duration_s.saturating_mul(self.per_min_cents) / 60;
        let surge = u64::from(trip.demand_pct.clamp(100, self.max_surge_pct));
        let fare = self
            .base_cents
            .saturating_add(distance)
            .saturating_add(time)
            .saturating_mul(surge)
            / 100;
        fare.max(self.minimum_cents)
    }

    /// The lowest fare the driver will accept for `trip`.
    pub fn floor(&self, trip: &Trip) -> u64 {
        (self.quote(trip) * u64::from(100 - self.max_discount_pct) / 100).max(self.minimum_cents)
    }

    /// The driver's ask in negotiation round `round` (0-based): it concedes in equal steps from
    /// its quote to its floor.
    pub fn ask(&self, trip: &Trip, round: u32) -> u64 {
        let quote = self.quote(trip);
        let floor = self.floor(trip);
        let step = u64::from(round).min(CONCESSION_ROUNDS);
        quote - (quote - floor) * step / CONCESSION_ROUNDS
    }

    /// Answers an offer: accept if it meets this round's ask, otherwise counter with the ask.
    pub fn counter(&self, trip: &Trip, offer_cents: u64, round: u32) -> CounterReply {
        let ask = self.ask(trip, round);
        if offer_cents >= ask {
            CounterReply {
                accepted: true,
                fare_cents: offer_cents,
                round,
            }
        } else {
            CounterReply {
                accepted: false,
                fare_cents: ask,
                round,
            }
        }
    }
}

/// The answer to a counter-offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterReply {
    /// Whether the driver takes the offer.
    pub accepted: bool,
    /// The agreed fare if accepted, else the driver's counter.
    pub fare_cents: u64,
    /// The round answered.
    pub round: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuoteRequest {
    trip: Trip,
}

#[derive(Serialize)]
struct QuoteReply {
    fare_cents: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CounterRequest {
    trip: Trip,
    offer_cents: u64,
    #[serde(default)]
    round: u32,
}

const RULES_KEY: &str = "pricing-rules";

fn rules() -> PricingRules {
    host::kv_get(RULES_KEY)
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn parse<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, AgentError> {
    serde_json::from_slice(payload).map_err(|e| AgentError::BadRequest(format!("payload: {e}")))
}

fn reply<T: Serialize>(value: &T) -> Result<Vec<u8>, AgentError> {
    serde_json::to_vec(value).map_err(|e| AgentError::Internal(e.to_string()))
}

struct Driver;

impl exports::agora::agent::handler::Guest for Driver {
    fn info() -> AgentInfo {
        AgentInfo {
            name: "ride-driver".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: env!("CARGO_PKG_DESCRIPTION").into(),
            actions: vec!["quote".into(), "counter".into(), "configure".into()],
        }
    }

    fn handle(req: Request) -> Result<Vec<u8>, AgentError> {
        match req.action.as_str() {
            "quote" => {
                let QuoteRequest { trip } = parse(&req.payload)?;
                let fare_cents = rules().quote(&trip);
                host::log(LogLevel::Info, &format!("quoted {fare_cents} cents"));
                reply(&QuoteReply { fare_cents })
            }
            "counter" => {
                let request: CounterRequest = parse(&req.payload)?;
                reply(&rules().counter(&request.trip, request.offer_cents, request.round))
            }
            "configure" => {
                let rules: PricingRules = parse(&req.payload)?;
                rules.validate().map_err(AgentError::BadRequest)?;
                let bytes = reply(&rules)?;
                host::kv_set(RULES_KEY, &bytes).map_err(AgentError::Internal)?;
                Ok(bytes)
            }
            other => Err(AgentError::BadRequest(format!(
                "unknown action `{other}`; expected quote, counter or configure"
            ))),
        }
    }
}

export!(Driver);

#[cfg(test)]
mod tests {
    use super::*;

    const CROSSTOWN: Trip = Trip {
        distance_m: 12_500,
        duration_s: 1_500,
        demand_pct: 100,
    };

    #[test]
    fn a_quote_adds_base_distance_and_time() {
        // 250 + 12.5 km × 120 + 25 min × 30 = 250 + 1500 + 750
        assert_eq!(PricingRules::default().quote(&CROSSTOWN), 2_500);
    }

    #[test]
    fn demand_surges_the_fare_up_to_the_cap() {
        let rules = PricingRules::default();
        let busy = Trip {
            demand_pct: 150,
            ..CROSSTOWN
        };
        let frenzy = Trip {
            demand_pct: 900,
            ..CROSSTOWN
        };
        let quiet = Trip {
            demand_pct: 40,
            ..CROSSTOWN
        };
        assert_eq!(rules.quote(&busy), 3_750);
        assert_eq!(rules.quote(&frenzy), 6_250, "capped at 250%");
        assert_eq!(rules.quote(&quiet), 2_500, "never below normal");
    }

    #[test]
    fn short_trips_pay_the_minimum() {
        let hop = Trip {
            distance_m: 300,
            duration_s: 60,
            demand_pct: 100,
        };
        assert_eq!(PricingRules::default().quote(&hop), 700);
    }

    #[test]
    fn the_driver_concedes_to_its_floor_and_no_further() {
        let rules = PricingRules::default();
        let asks: Vec<u64> = (0..6).map(|round| rules.ask(&CROSSTOWN, round)).collect();
        assert_eq!(asks, vec![2_500, 2_375, 2_250, 2_125, 2_125, 2_125]);
        assert!(!rules.counter(&CROSSTOWN, 2_000, 5).accepted);
        assert_eq!(rules.counter(&CROSSTOWN, 2_000, 5).fare_cents, 2_125);
        let deal = rules.counter(&CROSSTOWN, 2_300, 2);
        assert!(deal.accepted);
        assert_eq!(deal.fare_cents, 2_300);
    }

    #[test]
    fn unknown_trip_fields_are_rejected() {
        assert!(
            parse::<QuoteRequest>(br#"{"trip":{"distance_m":1,"duration_s":1,"tip":5}}"#).is_err()
        );
    }
}
