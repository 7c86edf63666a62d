//! rewind: a snapshot-first sandbox service. A client creates a sandbox,
//! runs commands in it over REST, and after every command rewind takes a
//! copy-on-write Btrfs snapshot of the sandbox's workspace, so any earlier
//! state can be restored in milliseconds.
//!
//! `main.rs` parses flags and calls [`server::serve`] or the key CLI; the
//! router is [`api::app`].

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod events;
pub mod failpoint;
pub mod runtime;
pub mod sandbox;
pub mod security;
pub mod server;
