//! What makes a signed record admissible, whichever way it arrives: published here, fetched
//! from a peer, gossiped, or posted over HTTP.
//!
//! A valid signature says who wrote a record, not that its fields make sense. Every record is
//! checked against the bounds below before the registry stores it, so nothing a stranger signs
//! can overflow a column, a sum or a terminal, and nothing can claim to come from the future.
//! The checks here need only the record and the time; the checks that need other records (a
//! receipt's charge against its manifest, its place in the host's chain) are in the registry,
//! which holds those records.
//!
//! | bound | value |
//! |---|---|
//! | agent name | 1–64 bytes of `a-z`, `0-9`, `-`, not starting with `-` |
//! | version | 1–64 bytes, no whitespace or control characters |
//! | description | at most 4,096 bytes, no control characters but newline and tab |
//! | actions | at most 64, each 1–64 bytes of printable ASCII |
//! | capabilities | at most 32, each 1–128 bytes of printable ASCII |
//! | egress origins | at most 16, each an [`OriginPattern`](crate::egress::OriginPattern) of at most 300 bytes |
//! | `max_fuel`, a receipt's fuel | at most [`MAX_FUEL`] (10¹¹) |
//! | `max_memory_bytes` | at most 4 GiB |
//! | `max_wall_ms` | at most 10 minutes |
//! | `max_output_bytes` | at most 64 MiB |
//! | component size | at most 1 GiB |
//! | `price_per_mfuel` | at most [`MAX_PRICE_PER_MFUEL`] (10¹²), so a charge always fits in 63 bits |
//! | timestamps | no later than [`MAX_CLOCK_SKEW_MS`] (5 minutes) past the checking host's clock |
//! | a receipt's virtual clock start | not after its timestamp, at most an hour before it |
//! | a receipt's nested calls | at most 256 |
//! | a receipt's input | at most [`MAX_INPUT_BYTES`] (64 MiB) |
//! | a receipt's transcript | at most [`MAX_TRANSCRIPT_BYTES`](crate::transcript::MAX_TRANSCRIPT_BYTES) (16 MiB) |
//! | a validation's reason | at most [`MAX_REASON_BYTES`] (1,024) |
//! | a request's time to live | at most [`MAX_REQUEST_TTL_MS`] (10 minutes) |

use crate::Error;
use crate::evidence::{CallRequest, MAX_REQUEST_TTL_MS};
use crate::identity::PublicKey;
use crate::manifest::Manifest;
use crate::receipt::{Outcome, Receipt};
use crate::validation::{Finding, Validation};

/// Longest agent name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Longest version, in bytes.
pub const MAX_VERSION_BYTES: usize = 64;
/// Longest description, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 4096;
/// Most actions a manifest lists.
pub const MAX_ACTIONS: usize = 64;
/// Longest action name, in bytes.
pub const MAX_ACTION_BYTES: usize = 64;
/// Most capabilities a manifest lists.
pub const MAX_CAPABILITIES: usize = 32;
/// Longest capability name, in bytes.
pub const MAX_CAPABILITY_BYTES: usize = 128;
/// Most fuel any call may be given, and so the largest `max_fuel` a manifest may state.
pub const MAX_FUEL: u64 = 100_000_000_000;
/// Largest memory limit a manifest may state, in bytes.
pub const MAX_MEMORY_BYTES: u64 = 4 << 30;
/// Largest wall-clock limit a manifest may state, in milliseconds.
pub const MAX_WALL_MS: u64 = 10 * 60 * 1000;
/// Largest output limit a manifest may state, in bytes.
pub const MAX_OUTPUT_BYTES: u64 = 64 << 20;
/// Largest input (action and payload) a receipt may name, in bytes.
pub const MAX_INPUT_BYTES: u64 = 64 << 20;
/// Longest reason a validation gives, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;
/// Largest component a manifest may name, in bytes.
pub const MAX_COMPONENT_BYTES: u64 = 1 << 30;
/// Highest price per million fuel. With [`MAX_FUEL`] a call's own charge is at most 10¹⁷.
pub const MAX_PRICE_PER_MFUEL: u64 = 1_000_000_000_000;
/// Largest charge a receipt may state: a top-level charge plus every nested one stays far
/// below `i64::MAX`.
pub const MAX_CHARGE: u64 = 1 << 62;
/// How far past this host's clock a record's timestamp may be.
pub const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;
/// Most nested receipts one receipt may name.
pub const MAX_NESTED: usize = 256;
/// Deepest nesting a receipt may claim.
pub const MAX_DEPTH: u32 = 16;
/// Longest message inside an outcome, and longest runtime name, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Longest wall time a receipt may state, in microseconds (one hour).
pub const MAX_WALL_TIME_US: u64 = 3_600_000_000;

fn invalid(kind: &'static str, reason: impl Into<String>) -> Error {
    Error::Invalid {
        kind,
        reason: reason.into(),
    }
}

fn at_most(kind: &'static str, field: &str, value: u64, max: u64) -> Result<(), Error> {
    if value > max {
        return Err(invalid(
            kind,
            format!("{field} {value} is above the limit {max}"),
        ));
    }
    Ok(())
}

fn not_in_future(kind: &'static str, field: &str, at_ms: u64, now_ms: u64) -> Result<(), Error> {
    if at_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
        return Err(invalid(
            kind,
            format!(
                "{field} is {} s in the future (at most {} s of clock skew is allowed)",
                (at_ms - now_ms) / 1000,
                MAX_CLOCK_SKEW_MS / 1000
            ),
        ));
    }
    Ok(())
}

/// Checks a list of at most `most` names, each 1 to `longest` printable characters.
fn check_names(
    kind: &'static str,
    what: &str,
    names: &[String],
    most: usize,
    longest: usize,
) -> Result<(), Error> {
    if names.len() > most
        || names
            .iter()
            .any(|n| n.is_empty() || n.len() > longest || !printable(n))
    {
        return Err(invalid(
            kind,
            format!("at most {most} {what} of 1 to {longest} printable characters"),
        ));
    }
    Ok(())
}

fn printable(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_graphic())
}

/// `fuel × price / 10⁶`, rounded up so that any work costs something at a non-zero price.
pub fn charge_for(fuel: u64, price_per_mfuel: u64) -> u64 {
    let charge = (u128::from(fuel) * u128::from(price_per_mfuel)).div_ceil(1_000_000);
    u64::try_from(charge).unwrap_or(u64::MAX)
}

/// Checks an agent name: 1–64 bytes of lowercase letters, digits and `-`, not starting with `-`.
pub fn check_name(name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !name.starts_with('-');
    if valid {
        Ok(())
    } else {
        Err(invalid(
            "manifest",
            format!(
                "agent name `{}` must be 1 to {MAX_NAME_BYTES} characters of lowercase letters, digits and '-'",
                name.escape_debug()
                    .to_string()
                    .chars()
                    .take(80)
                    .collect::<String>()
            ),
        ))
    }
}

impl Manifest {
    /// Checks every field against the bounds in [this module](crate::rules), with `now_ms` the
    /// checking host's clock.
    pub fn check(&self, now_ms: u64) -> Result<(), Error> {
        const KIND: &str = "manifest";
        check_name(&self.name)?;
        if self.version.is_empty()
            || self.version.len() > MAX_VERSION_BYTES
            || !printable(&self.version)
        {
            return Err(invalid(
                KIND,
                format!(
                    "version must be 1 to {MAX_VERSION_BYTES} printable characters without spaces"
                ),
            ));
        }
        if self.world != crate::AGENT_WORLD {
            return Err(invalid(
                KIND,
                format!("world must be `{}`", crate::AGENT_WORLD),
            ));
        }
        if self.description.len() > MAX_DESCRIPTION_BYTES
            || self
                .description
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err(invalid(
                KIND,
                format!(
                    "description must be at most {MAX_DESCRIPTION_BYTES} bytes without control characters"
                ),
            ));
        }
        check_names(
            KIND,
            "actions",
            &self.actions,
            MAX_ACTIONS,
            MAX_ACTION_BYTES,
        )?;
        check_names(
            KIND,
            "capabilities",
            &self.capabilities,
            MAX_CAPABILITIES,
            MAX_CAPABILITY_BYTES,
        )?;
        let names: Vec<String> = self.models.iter().map(|m| m.name.clone()).collect();
        check_names(
            KIND,
            "models",
            &names,
            crate::model::MAX_MODELS,
            crate::model::MAX_MODEL_NAME_BYTES,
        )?;
        if let Some(model) = self.models.iter().find(|m| {
            m.max_tokens_per_call == 0 || m.max_tokens_per_call > crate::model::MAX_TOKENS_PER_CALL
        }) {
            return Err(invalid(
                KIND,
                format!(
                    "model {:?} must allow 1 to {} tokens per call",
                    model.name,
                    crate::model::MAX_TOKENS_PER_CALL
                ),
            ));
        }
        if (1..names.len()).any(|i| names[..i].contains(&names[i])) {
            return Err(invalid(KIND, "a model is declared twice"));
        }
        at_most(
            KIND,
            "egress origins",
            self.egress.len() as u64,
            crate::egress::MAX_EGRESS_ORIGINS as u64,
        )?;
        for origin in &self.egress {
            if let Err(e) = origin.parse::<crate::egress::OriginPattern>() {
                return Err(invalid(KIND, format!("egress {e}")));
            }
        }
        let limits = &self.limits;
        if limits.max_fuel == 0 || limits.max_wall_ms == 0 {
            return Err(invalid(
                KIND,
                "limits must allow some fuel and some wall time",
            ));
        }
        at_most(KIND, "max_fuel", limits.max_fuel, MAX_FUEL)?;
        at_most(
            KIND,
            "max_memory_bytes",
            limits.max_memory_bytes,
            MAX_MEMORY_BYTES,
        )?;
        at_most(KIND, "max_wall_ms", limits.max_wall_ms, MAX_WALL_MS)?;
        at_most(
            KIND,
            "max_output_bytes",
            limits.max_output_bytes,
            MAX_OUTPUT_BYTES,
        )?;
        at_most(
            KIND,
            "component size",
            self.component.size,
            MAX_COMPONENT_BYTES,
        )?;
        at_most(
            KIND,
            "price_per_mfuel",
            self.price_per_mfuel,
            MAX_PRICE_PER_MFUEL,
        )?;
        not_in_future(
            KIND,
            "created_at",
            self.created_at.saturating_mul(1000),
            now_ms,
        )?;
        Ok(())
    }
}

impl Validation {
    /// Checks what a validation says about itself: a finding naming only receipt fields that
    /// can differ, each once, a reason of at most [`MAX_REASON_BYTES`], a timestamp that is not
    /// in the future.
    pub fn check(&self, now_ms: u64) -> Result<(), Error> {
        const KIND: &str = "validation";
        not_in_future(KIND, "timestamp_ms", self.timestamp_ms, now_ms)?;
        match &self.finding {
            Finding::Matches => {}
            Finding::Differs { fields } => {
                let known = [
                    "outcome",
                    "output_hash",
                    "fuel_used",
                    "nested",
                    "model_usage",
                    "egress",
                ];
                let named = known
                    .iter()
                    .filter(|field| fields.iter().any(|f| f == *field))
                    .count();
                if fields.is_empty() || named != fields.len() {
                    return Err(invalid(
                        KIND,
                        format!("finding.fields must be some of {known:?}, each once"),
                    ));
                }
            }
            Finding::TranscriptDiverges { reason, .. } => {
                at_most(
                    KIND,
                    "finding.reason bytes",
                    reason.len() as u64,
                    MAX_REASON_BYTES as u64,
                )?;
            }
        }
        Ok(())
    }
}

impl Receipt {
    /// Checks what a receipt says about itself, with `now_ms` the checking host's clock: fuel
    /// used within the limit and the limit within [`MAX_FUEL`], a charge that fits, a chain
    /// position that is well formed, a caller exactly when there is a request, and a timestamp
    /// that is not in the future. What needs other records (the charge against the manifest's
    /// price, the chain links) is checked by the registry.
    pub fn check(&self, now_ms: u64) -> Result<(), Error> {
        const KIND: &str = "receipt";
        at_most(KIND, "fuel_limit", self.fuel_limit, MAX_FUEL)?;
        if self.fuel_used > self.fuel_limit {
            return Err(invalid(
                KIND,
                format!(
                    "fuel_used {} is above its fuel_limit {}",
                    self.fuel_used, self.fuel_limit
                ),
            ));
        }
        at_most(KIND, "charge", self.charge, MAX_CHARGE)?;
        at_most(
            KIND,
            "model usage entries",
            self.model_usage.len() as u64,
            crate::model::MAX_MODELS as u64,
        )?;
        let usage_names: Vec<String> = self.model_usage.iter().map(|u| u.model.clone()).collect();
        check_names(
            KIND,
            "model usage",
            &usage_names,
            crate::model::MAX_MODELS,
            crate::model::MAX_MODEL_NAME_BYTES,
        )?;
        for usage in &self.model_usage {
            at_most(KIND, "model charge", usage.charge, MAX_CHARGE)?;
        }
        if let Some(egress) = &self.egress {
            at_most(KIND, "egress charge", egress.charge, MAX_CHARGE)?;
        }
        at_most(KIND, "wall_time_us", self.wall_time_us, MAX_WALL_TIME_US)?;
        at_most(
            KIND,
            "nested receipts",
            self.nested.len() as u64,
            MAX_NESTED as u64,
        )?;
        if let Some(parent) = &self.parent_call {
            at_most(KIND, "depth", u64::from(parent.depth), u64::from(MAX_DEPTH))?;
            if parent.depth == 0 {
                return Err(invalid(KIND, "a nested call has depth 1 or more"));
            }
        }
        if self.runtime.is_empty() || self.runtime.len() > 64 {
            return Err(invalid(KIND, "runtime must be 1 to 64 bytes"));
        }
        let message_len = match &self.outcome {
            Outcome::AgentError { error, message } => error.len() + message.len(),
            Outcome::Trap { message, .. } => message.len(),
            _ => 0,
        };
        at_most(
            KIND,
            "outcome message bytes",
            message_len as u64,
            MAX_MESSAGE_BYTES as u64,
        )?;
        if (self.seq == 0) != self.prev.is_none() {
            return Err(invalid(
                KIND,
                "prev must be absent exactly for the first receipt (seq 0)",
            ));
        }
        if self.request.is_some() != self.caller.is_some() {
            return Err(invalid(
                KIND,
                "a receipt names a caller exactly when it names a request",
            ));
        }
        if self.caller.is_some() && self.parent_call.is_some() {
            return Err(invalid(KIND, "a nested call answers no caller's request"));
        }
        not_in_future(KIND, "timestamp_ms", self.timestamp_ms, now_ms)?;
        if let Some(environment) = &self.environment {
            // The call started before it finished, and lasted no longer than a call may.
            let Some(lasted_ms) = self.timestamp_ms.checked_sub(environment.clock_ms) else {
                return Err(invalid(
                    KIND,
                    format!(
                        "environment.clock_ms {} is after the receipt's timestamp_ms {}",
                        environment.clock_ms, self.timestamp_ms
                    ),
                ));
            };
            at_most(
                KIND,
                "timestamp_ms - environment.clock_ms",
                lasted_ms,
                MAX_WALL_TIME_US / 1000,
            )?;
        }
        if let Some(input_size) = self.input_size {
            at_most(KIND, "input_size", input_size, MAX_INPUT_BYTES)?;
        }
        if let Some(transcript) = &self.transcript {
            at_most(
                KIND,
                "transcript.size",
                transcript.size,
                crate::transcript::MAX_TRANSCRIPT_BYTES,
            )?;
        }
        if let Some(limits) = &self.limits {
            at_most(
                KIND,
                "limits.memory_bytes",
                limits.memory_bytes,
                MAX_MEMORY_BYTES,
            )?;
            at_most(KIND, "limits.wall_ms", limits.wall_ms, MAX_WALL_MS)?;
            at_most(
                KIND,
                "limits.output_bytes",
                limits.output_bytes,
                MAX_OUTPUT_BYTES,
            )?;
        }
        Ok(())
    }
}

impl CallRequest {
    /// Checks that `host` may run this request at `now_ms`: addressed to it, not expired,
    /// valid for at most [`MAX_REQUEST_TTL_MS`], with a 128-bit nonce. Whether it was used
    /// before is for the registry, which keeps every request it admitted.
    pub fn check_admissible(&self, host: &PublicKey, now_ms: u64) -> Result<(), Error> {
        if self.host != *host {
            return Err(Error::WrongHost {
                addressed: self.host,
                host: *host,
            });
        }
        if self.expires_at_ms <= now_ms {
            return Err(Error::RequestExpired {
                expired_at_ms: self.expires_at_ms,
                now_ms,
            });
        }
        if self.expires_at_ms - now_ms > MAX_REQUEST_TTL_MS {
            return Err(Error::RequestTooLongLived {
                max_ms: MAX_REQUEST_TTL_MS,
            });
        }
        self.check_form()
    }

    /// Checks the fields any host can check of a request that some host ran: a well-formed
    /// nonce and a fuel limit within [`MAX_FUEL`].
    pub fn check_form(&self) -> Result<(), Error> {
        if self.nonce.len() != 32 || !self.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Malformed {
                kind: "request",
                reason: "nonce must be 32 hex digits (128 bits)".into(),
            });
        }
        at_most("request", "fuel_limit", self.fuel_limit, MAX_FUEL)
    }
}

/// The current time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
