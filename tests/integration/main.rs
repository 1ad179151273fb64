//! Integration tests: real Postgres (a fresh database per test) and the sandbox in-process.

mod cli;
mod config_errors;
mod connection_budget;
mod crash;
mod delivery;
mod faults;
mod graph_answers;
mod helpers;
mod ledger;
mod lives;
mod lock_loss;
mod ops;
mod privacy;
mod proxy;
mod shapes;
mod shutdown;
mod soak;
mod stalls;
mod sync;
mod tls;
