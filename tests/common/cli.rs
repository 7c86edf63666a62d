//! Driving the `rewind` binary's client subcommands against a service on a
//! real socket (for `tests/cli*.rs`).

use std::process::{Command, Output};

use super::service::Service;

/// A service and the URL it listens on.
pub struct CliEnv {
    pub service: Service,
    pub url: String,
}

impl CliEnv {
    /// A service on data dir `name` with the busybox root filesystem.
    pub fn start(name: &str) -> Self {
        let service = Service::start(name, super::busybox_rootfs(), |_| {});
        let url = service.serve();
        CliEnv { service, url }
    }

    /// `rewind <args>` aimed at this service with `key`, not yet run.
    pub fn command(&self, key: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rewind"));
        cmd.args(args)
            .env("REWIND_URL", &self.url)
            .env("REWIND_API_KEY", key)
            .env("XDG_CONFIG_HOME", "/nonexistent");
        cmd
    }

    /// `rewind <args>`, run to the end.
    pub fn rewind(&self, key: &str, args: &[&str]) -> Output {
        self.command(key, args).output().unwrap()
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The CLI exited with 1 and reported the service's 404.
pub fn assert_not_found(out: &Output) {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    assert!(stderr(out).starts_with("rewind: 404"), "{}", stderr(out));
}

/// A sandbox deleted (by the admin key) when the test ends.
pub struct Vm<'a> {
    pub env: &'a CliEnv,
    pub name: String,
}

impl Drop for Vm<'_> {
    fn drop(&mut self) {
        let admin = self.env.service.admin.clone();
        let _ = self.env.rewind(&admin, &["sandbox", "delete", &self.name]);
    }
}
