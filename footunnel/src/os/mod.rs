//! What footunnel asks of the kernel, for both roles: tunnel links and FoU
//! ports over netlink, raw UDP sockets, the service manager, files, and
//! every other system call (`sys`). No `libc` call lives outside this folder.

pub mod datagram;
pub mod files;
pub mod fou;
pub mod link;
pub mod manage;
pub mod rawudp;
pub mod service;
pub mod sys;
