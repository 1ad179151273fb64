//! Integration tests: real Postgres (a fresh database per test) and the sandbox in-process.

mod cli;
mod config_errors;
mod config_rules;
mod crash;
mod delivery;
mod endpoints;
mod faults;
mod graph_answers;
mod helpers;
mod ledger;
mod lives;
mod lock_loss;
mod cmd_check;
mod privacy;
mod proxy;
mod shapes;
mod shutdown;
mod soak;
mod stalls;
mod sync;
mod tls;
mod unreadable_rows;
mod values;
