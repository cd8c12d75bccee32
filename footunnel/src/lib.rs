//! footunnel's userspace: loading the data plane, and (in later modules) the
//! broker's controller and the client.

pub mod broker;
pub mod client;
pub mod config;
pub mod dataplane;
pub mod decide;
pub mod fou;
pub mod link;
pub mod rawudp;
pub mod secret;
pub mod show;
