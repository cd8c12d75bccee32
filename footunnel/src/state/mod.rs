//! What footunnel persists for its views and tools: the broker's state
//! file (read by `show`, `reload`, `unload` and the metrics) and the
//! client's. Below the roles and the views, so neither imports the other
//! for it.

#[cfg(feature = "broker")]
pub mod broker;
pub mod client;
