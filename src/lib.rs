//! sloguard: a sidecar reverse proxy that applies Site Reliability Engineering to AI agents.
//!
//! The modules follow the request: [`proxy`] accepts and forwards it, [`upstream`] reaches the
//! upstream, [`sli`] classifies the outcome, [`telemetry`] counts it, [`admin`] shows it.

pub mod admin;
pub mod background;
pub mod budget;
pub mod cli;
pub mod config;
pub mod incident;
pub mod inspect;
pub mod proxy;
pub mod sidecar;
pub mod sim;
pub mod sli;
pub mod slo;
pub mod telemetry;
pub mod upstream;

pub use config::Config;
pub use sidecar::Sidecar;
