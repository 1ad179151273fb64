//! capi-sync: SQL models on a Postgres warehouse → Meta's Conversions API, incrementally and
//! on a schedule.

pub mod app;
pub mod cli;
pub mod commands;
pub mod config;
pub mod connection;
pub mod dashboard;
pub mod error_line;
pub mod exit;
pub mod http_server;
pub mod human;
pub mod map_pool;
pub mod mapping;
pub mod metrics;
pub mod normalize;
/// The run's progress hooks live with the pipeline that calls them.
pub use pipeline::observer;
pub mod params;
pub mod pipeline;
pub mod progress;
pub mod quality;
pub mod redact;
pub mod report;
/// The Graph API stand-in, a crate of its own (`crates/graph-sandbox`) that cannot see this one.
pub use graph_sandbox as sandbox;
pub mod scheduler;
pub mod sink;
pub mod source;
pub mod state;
