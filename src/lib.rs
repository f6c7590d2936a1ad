//! sloguard: a sidecar reverse proxy that applies Site Reliability Engineering to AI agents.
//!
//! The modules follow the request: [`proxy`] accepts and forwards it, [`upstream`] reaches the
//! upstream, [`sli`] classifies the outcome, [`telemetry`] counts it, the admin port shows it.

// `pub` only where the binary, tests or benches need it; every public type can be printed.
#![warn(unreachable_pub, missing_debug_implementations)]
// The docs describe the internals too (read them with `cargo doc --document-private-items`).
#![allow(rustdoc::private_intra_doc_links)]

pub(crate) mod admin;
pub(crate) mod background;
pub(crate) mod budget;
pub mod cli;
pub mod client_body;
pub mod config;
pub(crate) mod connect;
pub mod incident;
pub mod inspect;
pub mod metric_table;
pub mod proxy;
pub(crate) mod runtime;
pub mod sidecar;
pub mod sim;
pub mod sli;
pub mod slo;
pub mod telemetry;
pub mod upstream;

pub use config::Config;

/// Cuts `s` to at most `max` bytes, at a character boundary: for strings from outside (a model
/// name, a path, a tool name) kept in bounded memory.
pub(crate) fn truncate_at_char(s: &mut String, max: usize) {
    let end = prefix_at_char(s, max).len();
    s.truncate(end);
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub(crate) fn prefix_at_char(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
pub use sidecar::Sidecar;
