// A ride-share driver agent in JavaScript (componentize-js).
//
// It speaks the same JSON as the Rust `ride-driver` and quotes the same fares, so riders
// negotiate with either without knowing which runs:
// - `quote` {"trip": Trip} -> {"fare_cents": n}
// - `counter` {"trip": Trip, "offer_cents": n, "round": n} -> {"accepted": b, "fare_cents": n, "round": n}
// - `configure` PricingRules -> the rules now in force (kept in the agent's host memory)
// Integers only (cents, metres, seconds, percent), so every host computes the same fare;
// numbers above 2^53 are refused rather than rounded.

import { log, kvGet, kvSet } from 'agora:agent/host@0.1.0';

const RULES_KEY = 'pricing-rules';
const CONCESSION_ROUNDS = 3;
const DEFAULT_RULES = {
  base_cents: 250,
  per_km_cents: 120,
  per_min_cents: 30,
  minimum_cents: 700,
  max_surge_pct: 250,
  max_discount_pct: 15,
};

class AgentError {
  constructor(tag, message) {
    // componentize-js returns a thrown value's `payload` as the error case of the result.
    this.payload = { tag, val: message };
  }
}
const badRequest = (message) => new AgentError('bad-request', message);

function integer(object, name, fallback) {
  const value = object[name] === undefined ? fallback : object[name];
  if (!Number.isSafeInteger(value) || value < 0) {
    throw badRequest(`payload: \`${name}\` must be a non-negative integer below 2^53`);
  }
  return value;
}

function exactFields(object, names, what) {
  if (object === null || typeof object !== 'object' || Array.isArray(object)) {
    throw badRequest(`payload: ${what} must be an object`);
  }
  for (const key of Object.keys(object)) {
    if (!names.includes(key)) throw badRequest(`payload: unknown field \`${key}\` in ${what}`);
  }
  return object;
}

function parseTrip(value) {
  const trip = exactFields(value, ['distance_m', 'duration_s', 'demand_pct'], 'the trip');
  return {
    distance_m: integer(trip, 'distance_m'),
    duration_s: integer(trip, 'duration_s'),
    demand_pct: integer(trip, 'demand_pct', 100),
  };
}

function parseRules(value) {
  const names = Object.keys(DEFAULT_RULES);
  const object = exactFields(value, names, 'the pricing rules');
  const rules = {};
  for (const name of names) {
    if (object[name] === undefined) throw badRequest(`payload: missing field \`${name}\``);
    rules[name] = integer(object, name);
  }
  if (rules.max_surge_pct < 100) throw badRequest('max_surge_pct must be at least 100');
  if (rules.max_discount_pct > 90) throw badRequest('max_discount_pct must be at most 90');
  return rules;
}

function rules() {
  const stored = kvGet(RULES_KEY);
  if (stored === undefined) return DEFAULT_RULES;
  try {
    return parseRules(JSON.parse(new TextDecoder().decode(stored)));
  } catch {
    return DEFAULT_RULES;
  }
}

function quote(r, trip) {
  const distance = Math.floor((trip.distance_m * r.per_km_cents) / 1000);
  const time = Math.floor((trip.duration_s * r.per_min_cents) / 60);
  const surge = Math.min(Math.max(trip.demand_pct, 100), r.max_surge_pct);
  const fare = Math.floor(((r.base_cents + distance + time) * surge) / 100);
  return Math.max(fare, r.minimum_cents);
}

function floor(r, trip) {
  return Math.max(Math.floor((quote(r, trip) * (100 - r.max_discount_pct)) / 100), r.minimum_cents);
}

function ask(r, trip, round) {
  const q = quote(r, trip);
  const step = Math.min(round, CONCESSION_ROUNDS);
  return q - Math.floor(((q - floor(r, trip)) * step) / CONCESSION_ROUNDS);
}

function parse(payload) {
  try {
    return JSON.parse(new TextDecoder().decode(payload));
  } catch (e) {
    throw badRequest(`payload: ${e.message}`);
  }
}

const reply = (value) => new TextEncoder().encode(JSON.stringify(value));

export const handler = {
  info() {
    return {
      name: 'ride-driver-js',
      version: '1.0.0',
      description: 'A ride-share driver agent in JavaScript: quotes fares under its own pricing rules and answers counter-offers',
      actions: ['quote', 'counter', 'configure'],
    };
  },

  handle(req) {
    const payload = parse(req.payload);
    switch (req.action) {
      case 'quote': {
        const { trip } = exactFields(payload, ['trip'], 'the request');
        const fare_cents = quote(rules(), parseTrip(trip));
        log('info', `quoted ${fare_cents} cents`);
        return reply({ fare_cents });
      }
      case 'counter': {
        const request = exactFields(payload, ['trip', 'offer_cents', 'round'], 'the request');
        const trip = parseTrip(request.trip);
        const offer = integer(request, 'offer_cents');
        const round = integer(request, 'round', 0);
        const asked = ask(rules(), trip, round);
        return offer >= asked
          ? reply({ accepted: true, fare_cents: offer, round })
          : reply({ accepted: false, fare_cents: asked, round });
      }
      case 'configure': {
        const configured = parseRules(payload);
        const bytes = reply(configured);
        try {
          kvSet(RULES_KEY, bytes);
        } catch (e) {
          throw new AgentError('internal', String(e.payload ?? e));
        }
        return bytes;
      }
      default:
        throw badRequest(`unknown action \`${req.action}\`; expected quote, counter or configure`);
    }
  },
};
