//! Integration tests: real Postgres (a fresh database per test) and the sandbox in-process.

mod cli;
mod config_errors;
mod crash;
mod delivery;
mod faults;
mod graph_answers;
mod helpers;
mod ledger;
mod lives;
mod lock_loss;
mod many_models;
mod ops;
mod privacy;
mod proxy;
mod shapes;
mod shutdown;
mod soak;
mod stalls;
mod sync;
mod tls;
