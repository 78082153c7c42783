//! consent-drop: consent-proof files in a drop folder → consent events.
//!
//! The pipeline, one module a stage: [`config`] → [`watch`] (find ready
//! files) → [`claim`] / [`journal`] (durable state) → [`parse`] (file →
//! validated rows) → [`event`] (row → consent event) → [`sink`] (batches →
//! file or HTTP). [`pipeline`] runs one file through them; [`daemon`] and
//! [`commands`] drive it.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod backlog;
pub mod claim;
pub mod commands;
pub mod commit;
pub mod config;
pub mod daemon;
pub mod event;
pub mod fault;
pub mod index;
pub mod journal;
pub mod logging;
pub mod metrics;
pub mod parse;
pub mod pipeline;
pub mod retention;
pub mod retry;
pub mod sink;
pub mod trace;
pub mod unpack;
pub mod watch;
