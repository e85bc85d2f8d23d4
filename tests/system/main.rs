//! System tests: real hosts, real SQLite, real wasmtime running real components built from
//! `guest-examples/` and `tests/guests/`. One binary, one module per area.

mod determinism;
mod edge;
mod egress;
mod evidence;
mod handmade;
mod http;
mod invoke;
mod languages;
mod loading;
mod marketplace;
mod mcp;
mod models;
mod network;
mod publishing;
mod receipts;
mod reputation;
mod sandbox;
mod tls;
mod verification;
