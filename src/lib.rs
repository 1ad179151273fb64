//! capi-sync: SQL models on a Postgres warehouse → Meta's Conversions API, incrementally and
//! on a schedule.

pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod mapping;
pub mod pipeline;
pub mod sandbox;
pub mod scheduler;
pub mod sink;
pub mod source;
pub mod state;
