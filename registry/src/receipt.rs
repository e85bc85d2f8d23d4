//! Execution receipts: a host's signed account of one call.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Hash;
use crate::identity::PublicKey;
use crate::signed::{Record, Signed};

/// Sequence numbers are reserved a block of this many at a time. A host that restarts after a
/// crash cannot know whether it signed receipts it no longer holds (a power cut can lose the
/// last writes), so it continues at the next multiple of this, its first receipt there naming
/// its last stored one as `prev`: a *declared skip*. Verifiers accept a skip only onto a
/// multiple of this number and only from a receipt they hold, so a host can hide at most the
/// tail of one block per restart, and any receipt from a skipped range that turns up still
/// counts.
pub const RECEIPT_SEQ_BLOCK: u64 = 1024;

/// What happened in one execution. Signed by the host that ran it.
///
/// Receipts from one host form a hash chain (`seq`, `prev`), so a host that deletes or rewrites
/// its history, or shows different histories to different peers, can be caught. After a crash
/// a host continues at the next multiple of [`RECEIPT_SEQ_BLOCK`] (a declared skip).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The agent that ran.
    pub agent: AgentRef,
    /// Hash of the caller-signed request this call answered; `None` for calls the host made on
    /// its own account (e.g. from its operator's command line) and for nested calls.
    pub request: Option<Hash>,
    /// The caller who signed `request`.
    pub caller: Option<PublicKey>,
    /// BLAKE3 of the request (action and payload, see [`request_hash`]).
    pub input_hash: Hash,
    /// BLAKE3 of the output bytes; `None` when the call produced no output.
    pub output_hash: Option<Hash>,
    /// How the call ended.
    pub outcome: Outcome,
    /// The fuel budget the call ran under.
    pub fuel_limit: u64,
    /// Fuel consumed, including fuel passed on to nested calls.
    pub fuel_used: u64,
    /// What the call costs: its own fuel at the agent's price plus the charges of nested calls.
    pub charge: u64,
    /// Wall time in microseconds. Advisory: it cannot be verified by re-execution.
    pub wall_time_us: u64,
    /// Receipts of the calls this one made through `call-agent`, in order.
    pub nested: Vec<Hash>,
    /// The receipt of the call that made this one, if it was nested.
    pub parent_call: Option<ParentCall>,
    /// The host that ran the call and signs the receipt.
    pub host: PublicKey,
    /// The wasmtime version, since fuel counts compare only under the same runtime.
    pub runtime: String,
    /// The hash of the deterministic execution profile the call ran under (the engine
    /// configuration, pinned to the exact wasmtime version and its fuel cost table), so that
    /// anyone running the same component on the same input under that profile gets the same
    /// outcome, output and fuel. Absent in receipts from hosts that did not record it: those
    /// cannot be re-checked by re-execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Hash>,
    /// What the guest saw of the world that its input does not decide: where its virtual clocks
    /// started and the salt of its randomness. Absent in receipts from hosts that gave guests
    /// real clocks and randomness: those cannot be re-checked by re-execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<CallEnvironment>,
    /// How many bytes the input (action and payload) has: what a verifier fetches from the host
    /// that signed the receipt. Absent in receipts from hosts that do not keep inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_size: Option<u64>,
    /// The [`Transcript`](crate::Transcript) of the call's host calls, which a re-execution
    /// replays. Absent in receipts from hosts that did not record one: those cannot be re-checked
    /// if they made host calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript: Option<crate::BlobRef>,
    /// This host's receipt counter, starting at 0.
    pub seq: u64,
    /// Hash of this host's previous receipt; `None` only for `seq` 0.
    pub prev: Option<Hash>,
    /// When the call finished, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The limits the call ran under besides its fuel (the lower of the host's and the
    /// manifest's), so that anyone can tell whether a limit the agent hit was its publisher's
    /// own. Absent in receipts from hosts that do not record them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<CallLimits>,
    /// What the call spent on language models, one entry per model, in the order first used.
    /// Their charges are part of [`Receipt::charge`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_usage: Vec<crate::ModelUsage>,
    /// What the call spent on outbound HTTP; absent when it sent nothing. Its charge is part of
    /// [`Receipt::charge`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<crate::egress::EgressUsage>,
}

/// The limits one call ran under, as a receipt records them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallLimits {
    /// Linear memory, all memories of the instance together, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock milliseconds.
    pub wall_ms: u64,
    /// Output bytes.
    pub output_bytes: u64,
}

/// The clocks and randomness of one call, as its receipt records them: everything a
/// re-execution needs to show the guest the same world.
///
/// The wall clock starts at `clock_ms` and the monotonic clock at zero, and each read advances
/// either by one microsecond, so a guest sees time pass but never the host's. Randomness, both
/// `wasi:random` streams, is BLAKE3 in extendable-output mode keyed by [`CallEnvironment::seed`],
/// which mixes the host's salt with the caller's signed request: reproducible by anyone holding
/// the receipt, so an agent must not use it for secrets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallEnvironment {
    /// What the guest's wall clock read first, in milliseconds since the Unix epoch: when the
    /// call started.
    pub clock_ms: u64,
    /// Random bytes the host chose for this call.
    pub salt: Hash,
}

impl CallEnvironment {
    /// The seed of the call's randomness: the salt, the request the call answers (its hash when
    /// the caller signed one, else the input hash) and the wall clock's start.
    pub fn seed(&self, input_hash: &Hash, request: Option<&Hash>) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key("agora 2026-12 call randomness seed");
        hasher.update(self.salt.as_bytes());
        match request {
            Some(request) => hasher.update(b"request").update(request.as_bytes()),
            None => hasher.update(b"input").update(input_hash.as_bytes()),
        };
        hasher.update(&self.clock_ms.to_le_bytes());
        *hasher.finalize().as_bytes()
    }
}

/// The agent a receipt is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRef {
    /// Hash of the signed manifest.
    pub manifest: Hash,
    /// Hash of the component that actually ran.
    pub component: Hash,
}

/// Where a nested call came from. The parent's receipt is signed after its children, so a
/// child names its parent by manifest and call depth rather than by receipt hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentCall {
    /// Manifest of the calling agent.
    pub manifest: Hash,
    /// Depth of this call: 1 for a call made by a top-level call.
    pub depth: u32,
}

/// How an execution ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Outcome {
    /// The agent returned output.
    Ok,
    /// The agent returned one of its own errors (`bad-request`, `refused`, `internal`).
    AgentError {
        /// Which variant of `agent-error`.
        error: String,
        /// The agent's message, truncated.
        message: String,
    },
    /// The guest trapped (a panic, an out-of-bounds access, a failed host call…).
    Trap {
        /// Which trap, in a name that does not change between runtime versions; what a
        /// re-execution compares. Absent in receipts from hosts that did not record it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<TrapCode>,
        /// What the runtime reported, truncated: for people, never compared (its wording
        /// changes between wasmtime versions).
        message: String,
    },
    /// The fuel budget ran out.
    FuelExhausted,
    /// The wall-clock deadline passed.
    Timeout,
    /// The guest asked for more memory (or tables, or instances) than allowed.
    MemoryLimit,
    /// The agent handed the host more bytes than allowed: its output, or the arguments of one
    /// host call.
    OutputLimit,
    /// The guest logged more than allowed.
    LogLimit,
    /// The host's memory for all its calls together ran out while this call grew within its own
    /// limit: the host's load, never blamed on the agent.
    HostMemory,
    /// The guest's stack ran out. How deep a guest gets within the stack bound depends on the
    /// compiler and the CPU, so this is not reproducible on another host: never blamed on the
    /// agent.
    StackOverflow,
}

/// Why a guest trapped, as receipts name it: stable across runtime versions, unlike the
/// runtime's messages, so a re-execution under a newer wasmtime compares like with like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrapCode {
    /// An `unreachable` instruction: how Rust panics and C aborts end.
    Unreachable,
    /// A load or store outside linear memory.
    MemoryOutOfBounds,
    /// An atomic access at an unaligned address.
    UnalignedAtomic,
    /// A table access out of bounds.
    TableOutOfBounds,
    /// An indirect call through an uninitialised table element.
    IndirectCallToNull,
    /// An indirect call whose callee has another signature.
    IndirectCallTypeMismatch,
    /// Signed division overflowed.
    IntegerOverflow,
    /// Integer division or remainder by zero.
    IntegerDivisionByZero,
    /// A float converted to an integer it does not fit.
    InvalidConversionToInteger,
    /// A component instance entered again while it may not be (after an earlier trap).
    CannotEnterComponent,
    /// A value the guest handed the host was not valid for its type (a `char`, a string or
    /// list out of bounds, a variant discriminant, an unaligned pointer).
    InvalidValue,
    /// An allocation request too large to satisfy.
    AllocationTooLarge,
    /// A host function failed the call (a resource handle limit, a malformed request).
    HostError,
    /// Any other trap.
    Other,
}

impl TrapCode {
    /// The code as written in receipts: `unreachable`, `memory-out-of-bounds`, …
    pub fn name(self) -> &'static str {
        match self {
            TrapCode::Unreachable => "unreachable",
            TrapCode::MemoryOutOfBounds => "memory-out-of-bounds",
            TrapCode::UnalignedAtomic => "unaligned-atomic",
            TrapCode::TableOutOfBounds => "table-out-of-bounds",
            TrapCode::IndirectCallToNull => "indirect-call-to-null",
            TrapCode::IndirectCallTypeMismatch => "indirect-call-type-mismatch",
            TrapCode::IntegerOverflow => "integer-overflow",
            TrapCode::IntegerDivisionByZero => "integer-division-by-zero",
            TrapCode::InvalidConversionToInteger => "invalid-conversion-to-integer",
            TrapCode::CannotEnterComponent => "cannot-enter-component",
            TrapCode::InvalidValue => "invalid-value",
            TrapCode::AllocationTooLarge => "allocation-too-large",
            TrapCode::HostError => "host-error",
            TrapCode::Other => "other",
        }
    }
}

impl fmt::Display for TrapCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Outcome {
    /// The outcome's name as written in receipts: `ok`, `fuel-exhausted`, …
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::AgentError { .. } => "agent-error",
            Outcome::Trap { .. } => "trap",
            Outcome::FuelExhausted => "fuel-exhausted",
            Outcome::Timeout => "timeout",
            Outcome::MemoryLimit => "memory-limit",
            Outcome::OutputLimit => "output-limit",
            Outcome::LogLimit => "log-limit",
            Outcome::HostMemory => "host-memory",
            Outcome::StackOverflow => "stack-overflow",
        }
    }

    /// Whether another host running the same component on the same input under the same
    /// profile must reach this outcome. A wall-clock timeout, the host's memory for all calls
    /// and a stack overflow depend on the host, not on the agent: they are never blamed on it
    /// and can never be the subject of a fraud proof.
    pub fn is_reproducible(&self) -> bool {
        !matches!(
            self,
            Outcome::Timeout | Outcome::HostMemory | Outcome::StackOverflow
        )
    }

    /// Whether the call produced output.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::AgentError { error, message } => write!(f, "agent-error ({error}: {message})"),
            Outcome::Trap {
                code: Some(code),
                message,
            } => write!(f, "trap ({code}: {message})"),
            Outcome::Trap {
                code: None,
                message,
            } => write!(f, "trap ({message})"),
            other => f.write_str(other.name()),
        }
    }
}

/// The tag of receipts that carry what a re-execution needs: the execution profile, and with it
/// the call's environment, input size, transcript and limits.
pub const RECEIPT_V2_TAG: &str = "agora/receipt/v2";

/// The tag of receipts from before verification: still read and counted, never re-checkable.
pub const RECEIPT_V1_TAG: &str = "agora/receipt/v1";

impl Record for Receipt {
    const TAG: &'static str = RECEIPT_V2_TAG;
    const KIND: &'static str = "receipt";

    fn signer(&self) -> &PublicKey {
        &self.host
    }

    /// A receipt naming an execution profile is a v2 receipt, one without is v1: each is only
    /// accepted under its own tag.
    fn tag(&self) -> &'static str {
        if self.profile.is_some() {
            RECEIPT_V2_TAG
        } else {
            RECEIPT_V1_TAG
        }
    }
}

/// A receipt with a verified host signature.
pub type SignedReceipt = Signed<Receipt>;

/// The input hash a receipt records for a request: BLAKE3 over a length-prefixed action
/// followed by the payload, so no two distinct requests share an encoding.
pub fn request_hash(action: &str, payload: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"agora/request-input/v1\0");
    hasher.update(&(action.len() as u64).to_le_bytes());
    hasher.update(action.as_bytes());
    hasher.update(payload);
    Hash::from_bytes(*hasher.finalize().as_bytes())
}

/// A call's input as hosts keep and serve it for verifiers: the action's length (8 bytes, little
/// endian), the action, then the payload — what [`request_hash`] hashes after its domain tag, so
/// the receipt's `input_hash` names these bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// The action.
    pub action: String,
    /// The payload.
    pub payload: Vec<u8>,
}

impl Input {
    /// The input's bytes; [`Receipt::input_size`] is their length.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(8 + self.action.len() + self.payload.len());
        bytes.extend_from_slice(&(self.action.len() as u64).to_le_bytes());
        bytes.extend_from_slice(self.action.as_bytes());
        bytes.extend_from_slice(&self.payload);
        bytes
    }

    /// Parses an input's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::Error> {
        let invalid = |reason: &str| crate::Error::Invalid {
            kind: "input",
            reason: reason.into(),
        };
        let (length, rest) = bytes
            .split_first_chunk::<8>()
            .ok_or_else(|| invalid("shorter than its 8-byte action length"))?;
        let length = usize::try_from(u64::from_le_bytes(*length))
            .ok()
            .filter(|length| *length <= rest.len())
            .ok_or_else(|| invalid("its action length runs past its end"))?;
        let (action, payload) = rest.split_at(length);
        let action = std::str::from_utf8(action).map_err(|_| invalid("its action is not UTF-8"))?;
        Ok(Input {
            action: action.to_owned(),
            payload: payload.to_vec(),
        })
    }

    /// [`request_hash`] of the input.
    pub fn hash(&self) -> Hash {
        request_hash(&self.action, &self.payload)
    }
}

/// A receipt together with the caller's signed request it answers, as hosts send them to each
/// other (gossip, `POST /v1/receipts`): `{"receipt": <signed receipt>, "request": <signed
/// request or null>}`, each record in its exact signed bytes. The request lets any host check
/// that the caller really asked for this call; a receipt naming a request it does not carry
/// (and the receiving host does not hold) is refused.
#[derive(Clone, Copy, Debug)]
pub struct ReceiptMessage<'a> {
    /// The signed receipt's bytes.
    pub receipt: &'a [u8],
    /// The signed request's bytes, if the receipt answers one.
    pub request: Option<&'a [u8]>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    #[serde(borrow)]
    receipt: &'a serde_json::value::RawValue,
    #[serde(borrow, default)]
    request: Option<&'a serde_json::value::RawValue>,
}

impl<'a> ReceiptMessage<'a> {
    /// Splits a message into its records without verifying them. A bare signed receipt is
    /// accepted too, as a message without a request.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, crate::Error> {
        if let Ok(wire) = serde_json::from_slice::<Wire<'a>>(bytes) {
            return Ok(ReceiptMessage {
                receipt: wire.receipt.get().as_bytes(),
                request: wire
                    .request
                    .map(|r| r.get().as_bytes())
                    .filter(|r| *r != b"null"),
            });
        }
        if bytes.starts_with(b"{\"tag\":") {
            return Ok(ReceiptMessage {
                receipt: bytes,
                request: None,
            });
        }
        Err(crate::Error::Malformed {
            kind: "receipt message",
            reason: "expected {\"receipt\": <signed receipt>, \"request\": <signed request>}"
                .into(),
        })
    }

    /// Encodes a receipt and its request.
    pub fn encode(receipt: &SignedReceipt, request: Option<&crate::SignedRequest>) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            receipt.as_bytes().len() + request.map_or(4, |r| r.as_bytes().len()) + 24,
        );
        out.extend_from_slice(b"{\"receipt\":");
        out.extend_from_slice(receipt.as_bytes());
        out.extend_from_slice(b",\"request\":");
        match request {
            Some(request) => out.extend_from_slice(request.as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
        out
    }

    /// Verifies both records, and that the request is the one the receipt names.
    pub fn verify(&self) -> Result<(SignedReceipt, Option<crate::SignedRequest>), crate::Error> {
        let receipt = SignedReceipt::from_bytes(self.receipt)?;
        let request = self
            .request
            .map(crate::SignedRequest::from_bytes)
            .transpose()?;
        check_pair(&receipt, request.as_ref())?;
        Ok((receipt, request))
    }
}

/// Checks that `request` is the one `receipt` names (if it came with one).
pub fn check_pair(
    receipt: &SignedReceipt,
    request: Option<&crate::SignedRequest>,
) -> Result<(), crate::Error> {
    if let Some(request) = request
        && receipt.body().request != Some(request.hash())
    {
        return Err(crate::Error::Invalid {
            kind: "receipt message",
            reason: format!(
                "request {} is not the one receipt {} answers",
                request.hash(),
                receipt.hash()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY_TRAP_CODE: [TrapCode; 14] = [
        TrapCode::Unreachable,
        TrapCode::MemoryOutOfBounds,
        TrapCode::UnalignedAtomic,
        TrapCode::TableOutOfBounds,
        TrapCode::IndirectCallToNull,
        TrapCode::IndirectCallTypeMismatch,
        TrapCode::IntegerOverflow,
        TrapCode::IntegerDivisionByZero,
        TrapCode::InvalidConversionToInteger,
        TrapCode::CannotEnterComponent,
        TrapCode::InvalidValue,
        TrapCode::AllocationTooLarge,
        TrapCode::HostError,
        TrapCode::Other,
    ];

    #[test]
    fn a_trap_code_is_written_as_its_name_and_read_back() {
        for code in EVERY_TRAP_CODE {
            let written = serde_json::to_string(&code).unwrap();
            assert_eq!(written, format!("\"{}\"", code.name()));
            assert_eq!(serde_json::from_str::<TrapCode>(&written).unwrap(), code);
        }
    }

    #[test]
    fn a_trap_from_a_host_that_named_no_code_still_reads_and_an_unknown_code_does_not() {
        let old: Outcome = serde_json::from_str(r#"{"kind":"trap","message":"boom"}"#).unwrap();
        assert_eq!(
            old,
            Outcome::Trap {
                code: None,
                message: "boom".into()
            }
        );
        let coded: Outcome =
            serde_json::from_str(r#"{"kind":"trap","code":"unreachable","message":"boom"}"#)
                .unwrap();
        assert_eq!(coded.to_string(), "trap (unreachable: boom)");
        assert!(
            serde_json::from_str::<Outcome>(r#"{"kind":"trap","code":"nope","message":"boom"}"#)
                .is_err()
        );
    }

    #[test]
    fn a_virtual_clock_starts_before_its_call_ends_and_within_an_hour_of_it() {
        let mut body = crate::tests::receipt(&crate::SecretKey::generate(), 0, None);
        body.timestamp_ms = 10_000_000;
        let salt = Hash::of(b"salt");
        for (clock_ms, admissible) in [
            (10_000_000, true),
            (10_000_000 - 3_600_000, true),
            (10_000_001, false),
            (10_000_000 - 3_600_001, false),
        ] {
            body.environment = Some(CallEnvironment { clock_ms, salt });
            assert_eq!(
                body.check(20_000_000).is_ok(),
                admissible,
                "clock_ms {clock_ms}"
            );
        }
    }

    #[test]
    fn the_seed_mixes_salt_request_and_clock() {
        let environment = CallEnvironment {
            clock_ms: 1,
            salt: Hash::of(b"salt"),
        };
        let input = Hash::of(b"input");
        let request = Hash::of(b"request");
        let seeds = [
            environment.seed(&input, None),
            environment.seed(&input, Some(&request)),
            environment.seed(&Hash::of(b"other input"), None),
            CallEnvironment {
                clock_ms: 2,
                ..environment
            }
            .seed(&input, None),
            CallEnvironment {
                salt: Hash::of(b"pepper"),
                ..environment
            }
            .seed(&input, None),
        ];
        for (i, a) in seeds.iter().enumerate() {
            for b in &seeds[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(seeds[0], environment.seed(&input, None));
    }

    #[test]
    fn only_host_bound_outcomes_are_not_reproducible() {
        for outcome in [
            Outcome::Timeout,
            Outcome::HostMemory,
            Outcome::StackOverflow,
        ] {
            assert!(!outcome.is_reproducible(), "{outcome}");
        }
        for outcome in [
            Outcome::Ok,
            Outcome::FuelExhausted,
            Outcome::MemoryLimit,
            Outcome::OutputLimit,
            Outcome::LogLimit,
            Outcome::Trap {
                code: Some(TrapCode::Unreachable),
                message: String::new(),
            },
        ] {
            assert!(outcome.is_reproducible(), "{outcome}");
        }
    }
}
