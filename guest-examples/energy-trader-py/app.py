"""A household energy agent for peer-to-peer trading, in Python (componentize-py).

It speaks the same JSON as the Rust `energy-trader` and computes the same orders and clearings,
so a Python household and a Rust one trade in one market:

- `offer` `{"household": str, "net_wh": int, "reserve_cents_per_kwh": int, "slot": str}` -> order
  (`net_wh` > 0 is surplus to sell, < 0 a deficit to buy)
- `clear` `{"slot": str, "orders": [order]}` -> clearing: a uniform-price double auction, bids
  from the highest price, asks from the lowest, ties broken by household id, settling at the
  midpoint of the last matched pair. Integers only, so every host gets the same trades.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import (
    AgentError_BadRequest,
    AgentError_Refused,
    AgentInfo,
    Request,
)

MAX_ORDERS = 10_000
LAST_PRICE_KEY = "last-clearing-price"
ORDER_FIELDS = {"id", "side", "quantity_wh", "price_cents_per_kwh", "slot"}


def bad_request(message: str) -> Err:
    return Err(AgentError_BadRequest(message))


def field(obj: dict, name: str, kind: type, minimum: int | None = None):
    value = obj.get(name)
    # bool is an int in Python; JSON's true is not a number.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise bad_request(f"payload: `{name}` must be a {kind.__name__}")
    if minimum is not None and value < minimum:
        raise bad_request(f"payload: `{name}` must be at least {minimum}")
    return value


def exact_fields(obj, names: set, what: str) -> dict:
    if not isinstance(obj, dict):
        raise bad_request(f"payload: {what} must be an object")
    unknown = sorted(set(obj) - names)
    if unknown:
        raise bad_request(f"payload: unknown field `{unknown[0]}` in {what}")
    return obj


def make_order(household: str, net_wh: int, reserve: int, slot: str, last_clearing):
    if not household:
        raise bad_request("household must not be empty")
    if net_wh == 0:
        raise Err(AgentError_Refused("nothing to trade: net_wh is 0"))
    if net_wh > 0:
        side, price = "ask", max(reserve, last_clearing or 0)
    else:
        side, price = "bid", reserve
    return {
        "id": household,
        "side": side,
        "quantity_wh": abs(net_wh),
        "price_cents_per_kwh": price,
        "slot": slot,
    }


def clear(slot: str, orders: list) -> dict:
    if len(orders) > MAX_ORDERS:
        raise bad_request(f"at most {MAX_ORDERS} orders per auction")
    ids = set()
    for order in orders:
        if order["slot"] != slot:
            raise bad_request(f"order {order['id']} is for slot {order['slot']}, not {slot}")
        if order["quantity_wh"] == 0:
            raise bad_request(f"order {order['id']} has no quantity")
        if order["id"] in ids:
            raise bad_request(f"order id {order['id']} appears twice")
        ids.add(order["id"])
    # Python compares strings by code point, which is UTF-8 byte order: the Rust agent's order.
    bids = sorted((o for o in orders if o["side"] == "bid"),
                  key=lambda o: (-o["price_cents_per_kwh"], o["id"]))
    asks = sorted((o for o in orders if o["side"] == "ask"),
                  key=lambda o: (o["price_cents_per_kwh"], o["id"]))
    bid_left = [o["quantity_wh"] for o in bids]
    ask_left = [o["quantity_wh"] for o in asks]
    i = j = 0
    trades = []
    last_pair = None
    while i < len(bids) and j < len(asks) and \
            bids[i]["price_cents_per_kwh"] >= asks[j]["price_cents_per_kwh"]:
        quantity = min(bid_left[i], ask_left[j])
        trades.append({"buyer": bids[i]["id"], "seller": asks[j]["id"], "quantity_wh": quantity})
        last_pair = (bids[i]["price_cents_per_kwh"], asks[j]["price_cents_per_kwh"])
        bid_left[i] -= quantity
        ask_left[j] -= quantity
        if bid_left[i] == 0:
            i += 1
        if ask_left[j] == 0:
            j += 1
    unmatched = [
        {"id": order["id"], "side": order["side"], "quantity_wh": left}
        for order, left in list(zip(bids, bid_left)) + list(zip(asks, ask_left))
        if left > 0
    ]
    return {
        "slot": slot,
        "price_cents_per_kwh": None if last_pair is None else (last_pair[0] + last_pair[1]) // 2,
        "trades": trades,
        "volume_wh": sum(t["quantity_wh"] for t in trades),
        "unmatched": unmatched,
    }


def parse_order(obj) -> dict:
    order = exact_fields(obj, ORDER_FIELDS, "an order")
    missing = sorted(ORDER_FIELDS - set(order))
    if missing:
        raise bad_request(f"payload: missing field `{missing[0]}` in an order")
    field(order, "id", str)
    field(order, "slot", str)
    field(order, "quantity_wh", int, 0)
    field(order, "price_cents_per_kwh", int, 0)
    if order["side"] not in ("bid", "ask"):
        raise bad_request("payload: `side` must be bid or ask")
    return order


def dumps(value) -> bytes:
    # Compact, like serde_json, so both agents' outputs are byte for byte the same.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class Handler(exports.Handler):
    def info(self) -> AgentInfo:
        return AgentInfo(
            name="energy-trader-py",
            version="1.0.0",
            description="A household energy agent in Python: turns a forecast surplus or "
                        "deficit into an order and clears double auctions",
            actions=["offer", "clear"],
        )

    def handle(self, req: Request) -> bytes:
        try:
            payload = json.loads(req.payload)
        except ValueError as e:
            raise bad_request(f"payload: {e}")
        if req.action == "offer":
            offer = exact_fields(payload, {"household", "net_wh", "reserve_cents_per_kwh", "slot"},
                                 "the offer")
            last = host.kv_get(LAST_PRICE_KEY)
            try:
                last = int(last) if last is not None else None
            except ValueError:
                last = None
            return dumps(make_order(
                field(offer, "household", str),
                field(offer, "net_wh", int),
                field(offer, "reserve_cents_per_kwh", int, 0),
                field(offer, "slot", str),
                last,
            ))
        if req.action == "clear":
            request = exact_fields(payload, {"slot", "orders"}, "the auction")
            slot = field(request, "slot", str)
            orders = [parse_order(o) for o in field(request, "orders", list)]
            clearing = clear(slot, orders)
            if clearing["price_cents_per_kwh"] is not None:
                # Advice for later offers, not part of the result.
                try:
                    host.kv_set(LAST_PRICE_KEY, str(clearing["price_cents_per_kwh"]).encode())
                except Err as e:
                    host.log(host.LogLevel.WARN, f"could not remember the price: {e.value}")
            host.log(host.LogLevel.INFO,
                     f"slot {clearing['slot']} cleared {clearing['volume_wh']} Wh "
                     f"in {len(clearing['trades'])} trades")
            return dumps(clearing)
        raise bad_request(f"unknown action `{req.action}`; expected offer or clear")
