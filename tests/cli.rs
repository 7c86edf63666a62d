//! The `rewind` CLI client subcommands (same binary as the server) against
//! the real service on a real socket: exit codes, `--json`, human output,
//! and errors that name the problem. Busybox root filesystem.

mod common;

use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

use common::cli::{assert_not_found, stderr, stdout, CliEnv, Vm};

fn env() -> &'static CliEnv {
    static ENV: OnceLock<CliEnv> = OnceLock::new();
    ENV.get_or_init(|| CliEnv::start("cli"))
}

fn rewind(key: &str, args: &[&str]) -> Output {
    env().rewind(key, args)
}

/// Deletes the sandbox when the test ends.
fn vm(prefix: &str) -> Vm<'static> {
    Vm {
        env: env(),
        name: common::unique(prefix),
    }
}

#[test]
fn cli_run_exits_with_command_code_and_restore_undoes() {
    let key = env().service.user_key();
    let vm = vm("cli");

    let created = rewind(&key, &["sandbox", "create", &vm.name]);
    let first = rewind(&key, &["--json", "run", &vm.name, "--", "echo one > f"]);
    let failed = rewind(
        &key,
        &["run", &vm.name, "--", "echo two > f; echo oops >&2; exit 7"],
    );
    let snap: Value = serde_json::from_slice(&first.stdout).unwrap();
    let restored = rewind(
        &key,
        &[
            "snapshot",
            "restore",
            &vm.name,
            snap["snapshot"].as_str().unwrap(),
        ],
    );
    let cat = rewind(&key, &["run", &vm.name, "--", "cat f"]);
    let listed = rewind(&key, &["snapshot", "list", &vm.name]);

    assert_eq!(created.status.code(), Some(0), "{}", stderr(&created));
    assert_eq!(
        (first.status.code(), snap["exitCode"].as_i64()),
        (Some(0), Some(0))
    );
    assert_eq!(failed.status.code(), Some(7));
    assert!(stderr(&failed).contains("oops"), "{}", stderr(&failed));
    assert_eq!(restored.status.code(), Some(0), "{}", stderr(&restored));
    assert_eq!(stdout(&cat), "one\n");
    assert!(
        stdout(&listed).starts_with("SNAPSHOT\tKIND"),
        "{}",
        stdout(&listed)
    );
    assert!(
        stdout(&listed).contains("initial\tinitial"),
        "{}",
        stdout(&listed)
    );
}

#[test]
fn cli_sandbox_list_json_and_show() {
    let key = env().service.user_key();
    let vm = vm("cli-list");
    rewind(&key, &["sandbox", "create", &vm.name]);

    let listed = rewind(&key, &["--json", "sandbox", "list"]);
    let shown = rewind(&key, &["sandbox", "show", &vm.name]);

    let body: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(body["vms"][0]["name"], vm.name.as_str());
    assert_eq!(stdout(&shown), format!("{}\trunning\n", vm.name));
}

#[test]
fn cli_errors_name_the_problem_and_exit_1() {
    let key = env().service.user_key();

    let missing = rewind(&key, &["sandbox", "show", "no-such-sandbox"]);
    let bad_key = rewind("ws_wrong", &["sandbox", "list"]);
    let unreachable = Command::new(env!("CARGO_BIN_EXE_rewind"))
        .args(["--url", "http://127.0.0.1:9", "sandbox", "list"])
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .output()
        .unwrap();

    assert_not_found(&missing);
    assert!(
        stderr(&missing).contains("no-such-sandbox"),
        "{}",
        stderr(&missing)
    );
    assert_eq!(bad_key.status.code(), Some(1));
    assert!(stderr(&bad_key).contains("403"), "{}", stderr(&bad_key));
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(stderr(&unreachable).contains("cannot reach the rewind server at http://127.0.0.1:9"));
}
