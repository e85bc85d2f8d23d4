//! A ride-share agent that thinks: given a ride the rider's agent agreed with a driver, it
//! writes the rider one short, friendly message about it with the host's language model. A
//! rule-based agent can fill in a template; a model can say it like a person would.
//!
//! - `announce` `{"rider": String, "driver": String, "destination": String, "fare_cents": u64,
//!   "distance_m": u64, "duration_s": u64}`
//!   → `{"message": String, "written_by": "model" | "rules", "why_rules"?: String,
//!   "tokens"?: u32}`.
//!
//! When the host offers no model (or it is busy, or this call's token budget is spent) the
//! agent says so in `why_rules` and writes the message by rules: never silently.

wit_bindgen::generate!({ path: "../../wit", world: "thinking-agent" });

use agora::agent::model::{self, Message, ModelError, Params, Role};
use agora::agent::types::{AgentError, AgentInfo, Request};
use serde::Deserialize;
use serde_json::json;

/// The model this agent's manifest declares.
pub const MODEL: &str = "smollm2-135m-instruct";

/// An agreed ride.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ride {
    /// The rider's name.
    pub rider: String,
    /// The driver's name.
    pub driver: String,
    /// Where the ride goes (`the airport`).
    pub destination: String,
    /// The agreed fare.
    pub fare_cents: u64,
    /// Route length in metres.
    pub distance_m: u64,
    /// Expected duration in seconds.
    pub duration_s: u64,
}

/// `12.50`.
fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// The message rules write.
pub fn by_rules(ride: &Ride) -> String {
    format!(
        "{}, your ride with {} to {} is booked: {:.1} km, about {} minutes, for {}.",
        ride.rider,
        ride.driver,
        ride.destination,
        ride.distance_m as f64 / 1000.0,
        ride.duration_s.div_ceil(60),
        money(ride.fare_cents)
    )
}

/// What the model is asked: worded the way a small model (SmolLM2-135M) answers best, tried
/// against the alternatives.
pub fn prompt(ride: &Ride) -> String {
    format!(
        "Write a one-sentence text message to {rider} saying that the driver {} will take \
         {rider} to {} in about {} minutes for {} euros.",
        ride.driver,
        ride.destination,
        ride.duration_s.div_ceil(60),
        money(ride.fare_cents),
        rider = ride.rider,
    )
}

fn why(error: ModelError) -> String {
    match error {
        ModelError::NotOffered(m) => format!("no model: {m}"),
        ModelError::BudgetExhausted => "the model budget is spent".into(),
        ModelError::TooLong(m) => format!("too long for the model: {m}"),
        ModelError::Unavailable(m) => format!("the model is unavailable: {m}"),
    }
}

struct Concierge;

impl exports::agora::agent::handler::Guest for Concierge {
    fn info() -> AgentInfo {
        AgentInfo {
            name: "ride-concierge".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "writes the rider a message about an agreed ride, with a model".into(),
            actions: vec!["announce".into()],
        }
    }

    fn handle(req: Request) -> Result<Vec<u8>, AgentError> {
        if req.action != "announce" {
            return Err(AgentError::BadRequest(format!(
                "unknown action {:?}",
                req.action
            )));
        }
        let ride: Ride = serde_json::from_slice(&req.payload)
            .map_err(|e| AgentError::BadRequest(format!("payload: {e}")))?;
        let messages = [
            Message {
                role: Role::System,
                content: "You are a helpful ride-share assistant.".into(),
            },
            Message {
                role: Role::User,
                content: prompt(&ride),
            },
        ];
        let params = Params {
            max_tokens: 48,
            temperature_milli: 0,
            seed: 0,
        };
        let answer = match model::complete(MODEL, &messages, params) {
            Ok(done) if !done.text.trim().is_empty() => json!({
                "message": done.text.trim(),
                "written_by": "model",
                "tokens": done.usage.prompt_tokens + done.usage.generated_tokens,
            }),
            Ok(_) => json!({
                "message": by_rules(&ride),
                "written_by": "rules",
                "why_rules": "the model answered nothing",
            }),
            Err(error) => json!({
                "message": by_rules(&ride),
                "written_by": "rules",
                "why_rules": why(error),
            }),
        };
        Ok(answer.to_string().into_bytes())
    }
}

export!(Concierge);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_write_the_ride_plainly() {
        let ride = Ride {
            rider: "Sam".into(),
            driver: "Ben".into(),
            destination: "the airport".into(),
            fare_cents: 2_050,
            distance_m: 12_500,
            duration_s: 1_500,
        };
        assert_eq!(
            by_rules(&ride),
            "Sam, your ride with Ben to the airport is booked: 12.5 km, about 25 minutes, for 20.50."
        );
        assert!(prompt(&ride).ends_with("in about 25 minutes for 20.50 euros."));
    }
}
