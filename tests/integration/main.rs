//! Integration tests: real Postgres (a fresh database per test) and the sandbox in-process.

mod cli;
mod config_errors;
mod delivery;
mod helpers;
mod ops;
mod privacy;
mod shapes;
mod sync;
