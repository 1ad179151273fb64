//! Integration tests: real Postgres (a fresh database per test) and the sandbox in-process.

mod cli;
mod config_errors;
mod crash;
mod delivery;
mod helpers;
mod ledger;
mod lives;
mod ops;
mod privacy;
mod shapes;
mod soak;
mod sync;
mod values;
