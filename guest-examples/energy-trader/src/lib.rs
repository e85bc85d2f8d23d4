//! A household energy agent for peer-to-peer trading.
//!
//! `offer` turns a household's forecast surplus or deficit for a time slot into an ask or a bid;
//! `clear` runs a uniform-price double auction over a slot's orders and returns the trades. The
//! auction is deterministic (integer prices and quantities, ties broken by order id), so any host
//! re-running it gets the same trades.
//!
//! Actions:
//! - `offer` `{"household": str, "net_wh": i64, "reserve_cents_per_kwh": u64, "slot": str}` → `Order`
//!   (`net_wh` > 0 is surplus to sell, < 0 a deficit to buy)
//! - `clear` `{"slot": str, "orders": [Order]}` → `Clearing`

wit_bindgen::generate!({ path: "../../wit", world: "agent" });

use std::collections::BTreeSet;

use agora::agent::host::{self, LogLevel};
use agora::agent::types::{AgentError, AgentInfo, Request};
use serde::{Deserialize, Serialize};

/// Most orders one auction clears.
const MAX_ORDERS: usize = 10_000;

/// Which side of the market an order is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Buying energy.
    Bid,
    /// Selling energy.
    Ask,
}

/// One household's order for one slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    /// The household; unique within an auction.
    pub id: String,
    /// Buy or sell.
    pub side: Side,
    /// Energy in watt-hours.
    pub quantity_wh: u64,
    /// Limit price in cents per kWh: the most a bid pays, the least an ask takes.
    pub price_cents_per_kwh: u64,
    /// The delivery slot, e.g. `2026-11-23T18:00`.
    pub slot: String,
}

/// A matched trade.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trade {
    /// The buying household.
    pub buyer: String,
    /// The selling household.
    pub seller: String,
    /// Energy in watt-hours.
    pub quantity_wh: u64,
}

/// An order (or what is left of it) that found no counterpart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unmatched {
    /// The household.
    pub id: String,
    /// Its side.
    pub side: Side,
    /// Energy left, in watt-hours.
    pub quantity_wh: u64,
}

/// The result of an auction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clearing {
    /// The slot cleared.
    pub slot: String,
    /// The uniform price every trade settles at, if anything traded.
    pub price_cents_per_kwh: Option<u64>,
    /// The trades.
    pub trades: Vec<Trade>,
    /// Energy traded in all.
    pub volume_wh: u64,
    /// What did not trade.
    pub unmatched: Vec<Unmatched>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OfferRequest {
    household: String,
    net_wh: i64,
    reserve_cents_per_kwh: u64,
    slot: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClearRequest {
    slot: String,
    orders: Vec<Order>,
}

/// The order a household places. A seller asks its reserve, or the last clearing price if that
/// was higher (no reason to sell below what the market paid); a buyer bids its reserve.
pub fn make_order(
    household: &str,
    net_wh: i64,
    reserve: u64,
    slot: &str,
    last_clearing: Option<u64>,
) -> Result<Order, AgentError> {
    if household.is_empty() {
        return Err(AgentError::BadRequest("household must not be empty".into()));
    }
    let (side, price) = match net_wh {
        0 => return Err(AgentError::Refused("nothing to trade: net_wh is 0".into())),
        n if n > 0 => (Side::Ask, reserve.max(last_clearing.unwrap_or(0))),
        _ => (Side::Bid, reserve),
    };
    Ok(Order {
        id: household.to_owned(),
        side,
        quantity_wh: net_wh.unsigned_abs(),
        price_cents_per_kwh: price,
        slot: slot.to_owned(),
    })
}

/// Clears a uniform-price double auction: bids from highest price, asks from lowest, matched
/// while the bid covers the ask; the price is the midpoint of the last matched pair, which every
/// matched buyer can afford and every matched seller accepts.
pub fn clear(slot: &str, orders: &[Order]) -> Result<Clearing, AgentError> {
    if orders.len() > MAX_ORDERS {
        return Err(AgentError::BadRequest(format!(
            "at most {MAX_ORDERS} orders per auction"
        )));
    }
    let mut ids = BTreeSet::new();
    for order in orders {
        if order.slot != slot {
            return Err(AgentError::BadRequest(format!(
                "order {} is for slot {}, not {slot}",
                order.id, order.slot
            )));
        }
        if order.quantity_wh == 0 {
            return Err(AgentError::BadRequest(format!(
                "order {} has no quantity",
                order.id
            )));
        }
        if !ids.insert(order.id.as_str()) {
            return Err(AgentError::BadRequest(format!(
                "order id {} appears twice",
                order.id
            )));
        }
    }
    let mut bids: Vec<&Order> = orders.iter().filter(|o| o.side == Side::Bid).collect();
    let mut asks: Vec<&Order> = orders.iter().filter(|o| o.side == Side::Ask).collect();
    bids.sort_by(|a, b| {
        b.price_cents_per_kwh
            .cmp(&a.price_cents_per_kwh)
            .then(a.id.cmp(&b.id))
    });
    asks.sort_by(|a, b| {
        a.price_cents_per_kwh
            .cmp(&b.price_cents_per_kwh)
            .then(a.id.cmp(&b.id))
    });

    let mut bid_left: Vec<u64> = bids.iter().map(|o| o.quantity_wh).collect();
    let mut ask_left: Vec<u64> = asks.iter().map(|o| o.quantity_wh).collect();
    let (mut i, mut j) = (0, 0);
    let mut trades = Vec::new();
    let mut last_pair = None;
    while i < bids.len()
        && j < asks.len()
        && bids[i].price_cents_per_kwh >= asks[j].price_cents_per_kwh
    {
        let quantity = bid_left[i].min(ask_left[j]);
        trades.push(Trade {
            buyer: bids[i].id.clone(),
            seller: asks[j].id.clone(),
            quantity_wh: quantity,
        });
        last_pair = Some((bids[i].price_cents_per_kwh, asks[j].price_cents_per_kwh));
        bid_left[i] -= quantity;
        ask_left[j] -= quantity;
        if bid_left[i] == 0 {
            i += 1;
        }
        if ask_left[j] == 0 {
            j += 1;
        }
    }
    let unmatched = bids
        .iter()
        .zip(&bid_left)
        .chain(asks.iter().zip(&ask_left))
        .filter(|(_, left)| **left > 0)
        .map(|(order, left)| Unmatched {
            id: order.id.clone(),
            side: order.side,
            quantity_wh: *left,
        })
        .collect();
    Ok(Clearing {
        slot: slot.to_owned(),
        price_cents_per_kwh: last_pair.map(|(bid, ask)| (bid + ask) / 2),
        volume_wh: trades.iter().map(|t| t.quantity_wh).sum(),
        trades,
        unmatched,
    })
}

const LAST_PRICE_KEY: &str = "last-clearing-price";

struct Trader;

impl exports::agora::agent::handler::Guest for Trader {
    fn info() -> AgentInfo {
        AgentInfo {
            name: "energy-trader".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: env!("CARGO_PKG_DESCRIPTION").into(),
            actions: vec!["offer".into(), "clear".into()],
        }
    }

    fn handle(req: Request) -> Result<Vec<u8>, AgentError> {
        let bad = |e: serde_json::Error| AgentError::BadRequest(format!("payload: {e}"));
        let output = match req.action.as_str() {
            "offer" => {
                let r: OfferRequest = serde_json::from_slice(&req.payload).map_err(bad)?;
                let last = host::kv_get(LAST_PRICE_KEY)
                    .and_then(|b| serde_json::from_slice::<u64>(&b).ok());
                serde_json::to_vec(&make_order(
                    &r.household,
                    r.net_wh,
                    r.reserve_cents_per_kwh,
                    &r.slot,
                    last,
                )?)
            }
            "clear" => {
                let r: ClearRequest = serde_json::from_slice(&req.payload).map_err(bad)?;
                let clearing = clear(&r.slot, &r.orders)?;
                if let Some(price) = clearing.price_cents_per_kwh {
                    // Remembering the price is advice for later offers, not part of the result.
                    if let Err(e) = host::kv_set(LAST_PRICE_KEY, price.to_string().as_bytes()) {
                        host::log(
                            LogLevel::Warn,
                            &format!("could not remember the price: {e}"),
                        );
                    }
                }
                host::log(
                    LogLevel::Info,
                    &format!(
                        "slot {} cleared {} Wh in {} trades",
                        clearing.slot,
                        clearing.volume_wh,
                        clearing.trades.len()
                    ),
                );
                serde_json::to_vec(&clearing)
            }
            other => {
                return Err(AgentError::BadRequest(format!(
                    "unknown action `{other}`; expected offer or clear"
                )));
            }
        };
        output.map_err(|e| AgentError::Internal(e.to_string()))
    }
}

export!(Trader);

#[cfg(test)]
mod tests {
    use super::*;

    const SLOT: &str = "2026-11-23T18:00";

    fn order(id: &str, side: Side, quantity_wh: u64, price: u64) -> Order {
        Order {
            id: id.into(),
            side,
            quantity_wh,
            price_cents_per_kwh: price,
            slot: SLOT.into(),
        }
    }

    #[test]
    fn surplus_becomes_an_ask_and_deficit_a_bid() {
        let ask = make_order("solar-house", 3_000, 12, SLOT, None).unwrap();
        assert_eq!(
            (ask.side, ask.quantity_wh, ask.price_cents_per_kwh),
            (Side::Ask, 3_000, 12)
        );
        let bid = make_order("ev-house", -5_000, 30, SLOT, Some(20)).unwrap();
        assert_eq!(
            (bid.side, bid.quantity_wh, bid.price_cents_per_kwh),
            (Side::Bid, 5_000, 30)
        );
        assert!(make_order("idle", 0, 10, SLOT, None).is_err());
    }

    #[test]
    fn sellers_do_not_ask_below_the_last_clearing_price() {
        let ask = make_order("solar-house", 1_000, 12, SLOT, Some(18)).unwrap();
        assert_eq!(ask.price_cents_per_kwh, 18);
    }

    #[test]
    fn the_auction_matches_crossing_orders_at_one_price() {
        let orders = vec![
            order("a", Side::Bid, 4_000, 30),
            order("b", Side::Bid, 2_000, 22),
            order("c", Side::Bid, 3_000, 10),
            order("x", Side::Ask, 3_000, 12),
            order("y", Side::Ask, 2_500, 20),
            order("z", Side::Ask, 5_000, 28),
        ];
        let result = clear(SLOT, &orders).unwrap();
        assert_eq!(
            result.trades,
            vec![
                Trade {
                    buyer: "a".into(),
                    seller: "x".into(),
                    quantity_wh: 3_000
                },
                Trade {
                    buyer: "a".into(),
                    seller: "y".into(),
                    quantity_wh: 1_000
                },
                Trade {
                    buyer: "b".into(),
                    seller: "y".into(),
                    quantity_wh: 1_500
                },
            ]
        );
        assert_eq!(result.volume_wh, 5_500);
        assert_eq!(
            result.price_cents_per_kwh,
            Some(21),
            "midpoint of 22 and 20"
        );
        for trade in &result.trades {
            let buyer = orders.iter().find(|o| o.id == trade.buyer).unwrap();
            let seller = orders.iter().find(|o| o.id == trade.seller).unwrap();
            assert!(buyer.price_cents_per_kwh >= 21 && seller.price_cents_per_kwh <= 21);
        }
        assert_eq!(
            result.unmatched,
            vec![
                Unmatched {
                    id: "b".into(),
                    side: Side::Bid,
                    quantity_wh: 500
                },
                Unmatched {
                    id: "c".into(),
                    side: Side::Bid,
                    quantity_wh: 3_000
                },
                Unmatched {
                    id: "z".into(),
                    side: Side::Ask,
                    quantity_wh: 5_000
                },
            ]
        );
    }

    #[test]
    fn the_auction_does_not_depend_on_order_of_arrival() {
        let mut orders = vec![
            order("a", Side::Bid, 1_000, 25),
            order("b", Side::Bid, 1_000, 25),
            order("x", Side::Ask, 1_500, 15),
        ];
        let first = clear(SLOT, &orders).unwrap();
        orders.reverse();
        assert_eq!(clear(SLOT, &orders).unwrap(), first);
    }

    #[test]
    fn nothing_trades_when_bids_and_asks_do_not_cross() {
        let result = clear(
            SLOT,
            &[
                order("a", Side::Bid, 1_000, 10),
                order("x", Side::Ask, 1_000, 11),
            ],
        )
        .unwrap();
        assert!(result.trades.is_empty());
        assert_eq!(result.price_cents_per_kwh, None);
    }

    #[test]
    fn malformed_auctions_are_rejected() {
        assert!(
            clear(
                SLOT,
                &[order("a", Side::Bid, 1, 1), order("a", Side::Ask, 1, 1)]
            )
            .is_err()
        );
        assert!(clear(SLOT, &[order("a", Side::Bid, 0, 1)]).is_err());
        let mut other_slot = order("a", Side::Bid, 1, 1);
        other_slot.slot = "tomorrow".into();
        assert!(clear(SLOT, &[other_slot]).is_err());
    }
}
