//! egress-monitor: an eBPF egress monitor and enforcer.
//!
//! Data flows one way: kernel -> events -> pipeline -> (stdout, store,
//! API, metrics) reading the `state` view; policy -> `control` -> kernel.
pub mod api;
pub mod attribution;
pub mod baseline;
pub mod cgroups;
pub mod cli;
pub mod cloud;
pub mod containers;
pub mod control;
pub mod daemon;
pub mod error_text;
pub mod events;
pub mod evidence;
pub mod fleet;
pub mod geo;
pub mod kernel;
pub mod malloc;
pub mod metrics;
pub mod names;
pub mod pipeline;
pub mod policy;
pub mod private_file;
pub mod process;
pub mod progress;
pub mod state;
pub mod statedir;
pub mod store;
