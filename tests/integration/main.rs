//! Integration tests: real Postgres (a fresh database per test) and the sandbox in-process.

mod config_errors;
mod helpers;
mod ops;
mod sync;
