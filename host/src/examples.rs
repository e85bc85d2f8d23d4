//! The example agents from `guest-examples/`, compiled to components when this crate is built.
//!
//! They are the marketplace's reference agents: a ride-share driver that quotes and haggles, a
//! rider that negotiates with drivers through `call-agent`, and a household energy trader that
//! clears a double auction.

include!(concat!(env!("OUT_DIR"), "/examples.rs"));

/// Every example agent, by package name.
pub const ALL: &[(&str, &[u8])] = &[
    ("energy-trader", ENERGY_TRADER),
    ("ride-driver", RIDE_DRIVER),
    ("ride-rider", RIDE_RIDER),
];
