//! footunnel's userspace: loading the data plane, and (in later modules) the
//! broker's controller and the client.

pub mod config;
pub mod dataplane;
pub mod link;
pub mod secret;
