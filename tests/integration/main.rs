//! Integration tests: real Postgres (a fresh database per test) and the sandbox in-process.

mod cli;
mod config_errors;
mod delivery;
mod helpers;
mod privacy;
mod sync;
