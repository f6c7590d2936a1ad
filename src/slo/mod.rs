//! Service level objectives: the Prometheus rules that compute their error budgets and burn
//! rates (`sloguard rules`).

pub mod rules;
