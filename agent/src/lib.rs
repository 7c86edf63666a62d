//! `rewind-agent`: the program that runs as PID 1 inside every rewind sandbox
//! (a set of Linux namespaces, or a Cloud Hypervisor microVM), and the
//! library half shared with the host: the wire [`protocol`], the host-side
//! [`client`], and the namespace [`sandbox`] launcher.
//!
//! The protocol is versioned ([`protocol::PROTOCOL_VERSION`]), opens with a
//! handshake, and moves length-prefixed JSON frames (see [`protocol`]).

pub mod client;
pub mod frame;
pub mod protocol;
pub mod sandbox;
pub mod server;
