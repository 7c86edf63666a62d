//! Client subcommands of the `rewind` binary: they talk to a running
//! service over HTTP.

pub mod snapshot_archive;
