//! More of the `rewind` CLI client against the real service on a real
//! socket: `run` streaming its output live, `shell` over the PTY
//! WebSocket (piped stdin), `cp` both ways for files and directories, and
//! `snapshot diff`. Busybox root filesystem.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::sync::OnceLock;

use serde_json::Value;

use common::cli::{assert_not_found, stderr, stdout, CliEnv, Vm};

fn env() -> &'static CliEnv {
    static ENV: OnceLock<CliEnv> = OnceLock::new();
    ENV.get_or_init(|| CliEnv::start("cli-more"))
}

/// A new key and a sandbox it owns (deleted when the test ends).
fn sandbox(prefix: &str) -> (String, Vm<'static>) {
    let key = env().service.user_key();
    let name = env().service.create_vm(&key, prefix);
    (key, Vm { env: env(), name })
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(out), stderr(out)))
}

#[test]
fn cli_run_streams_output_and_exits_with_the_command_code() {
    let (key, vm) = sandbox("cli-run");

    let out = env().rewind(
        &key,
        &["run", &vm.name, "--", "echo out; echo err >&2; exit 5"],
    );
    let missing = env().rewind(&key, &["run", "no-such-sandbox", "--", "true"]);

    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(stdout(&out), "out\n");
    let err = stderr(&out);
    assert!(err.starts_with("err\n[rewind] exit 5, snapshot "), "{err}");
    let snapshot = err.trim_end().rsplit(' ').next().unwrap().to_owned();
    assert!(env()
        .service
        .snapshot_names(&key, &vm.name)
        .contains(&snapshot));
    assert_not_found(&missing);
    assert!(
        stderr(&missing).contains("no-such-sandbox"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn cli_run_prints_output_before_the_command_ends() {
    let (key, vm) = sandbox("cli-live");
    let command = "echo started; sleep 30; touch finished";
    let mut child = env()
        .command(&key, &["run", &vm.name, "--", command])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    child.kill().unwrap(); // the connection closes: the server kills the command
    child.wait().unwrap();
    // The next run queues on the sandbox's lock, so it sees the aftermath.
    let after = env().service.run(&key, &vm.name, "ls finished");

    assert_eq!(first, "started\n");
    assert_ne!(after["exitCode"], 0, "the command ran to its end: {after}");
}

#[test]
fn cli_shell_pipes_stdin_and_exits_with_the_shell_code() {
    let (key, vm) = sandbox("cli-shell");
    let mut child = env()
        .command(&key, &["shell", &vm.name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"echo hi > f\nexit 3\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let cat = env().service.run(&key, &vm.name, "cat f");

    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("exit 3, snapshot "),
        "{}",
        stderr(&out)
    );
    assert_eq!(cat["stdout"], "hi\n");
}

#[test]
fn cli_shell_command_and_end_of_input_ends_the_session() {
    let (key, vm) = sandbox("cli-shell-cmd");

    let computed = env().rewind(&key, &["shell", &vm.name, "--command", "echo $((6 * 7))"]);
    // No `exit` in the input: its end (sent as Ctrl-D) ends the shell.
    let mut child = env()
        .command(&key, &["shell", &vm.name])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"touch made\n")
        .unwrap();
    let ended = child.wait_with_output().unwrap();
    let missing = env().rewind(&key, &["shell", "no-such-sandbox"]);

    assert_eq!(computed.status.code(), Some(0), "{}", stderr(&computed));
    assert!(stdout(&computed).contains("42"), "{}", stdout(&computed));
    assert_eq!(ended.status.code(), Some(0), "{}", stderr(&ended));
    let made = env().service.run(&key, &vm.name, "ls made");
    assert_eq!(made["exitCode"], 0, "{made}");
    assert_not_found(&missing);
}

#[test]
fn cli_cp_copies_files_and_directories_both_ways() {
    let (key, vm) = sandbox("cli-cp");
    let local = tempfile::tempdir().unwrap();
    let tree = local.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), "alpha\n").unwrap();
    let blob: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(tree.join("sub/tool.bin"), &blob).unwrap();
    std::fs::set_permissions(
        tree.join("sub/tool.bin"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let tree_arg = tree.to_str().unwrap();
    let file_arg = tree.join("a.txt");
    let remote = |p: &str| format!("{}:{p}", vm.name);

    let one = env().rewind(
        &key,
        &["cp", file_arg.to_str().unwrap(), &remote("one.txt")],
    );
    let dir = env().rewind(&key, &["--json", "cp", tree_arg, &remote("copy")]);
    let listing = env()
        .service
        .run(&key, &vm.name, "cat one.txt copy/a.txt; ls -l copy/sub");
    let back_dir = local.path().join("back");
    std::fs::create_dir(&back_dir).unwrap();
    let down = env().rewind(&key, &["cp", &remote("copy"), back_dir.to_str().unwrap()]);
    let single = local.path().join("single.txt");
    let down_one = env().rewind(&key, &["cp", &remote("one.txt"), single.to_str().unwrap()]);

    assert_eq!(one.status.code(), Some(0), "{}", stderr(&one));
    let copied = json(&dir);
    let snapshots: Vec<&str> = copied
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["snapshot"].as_str().unwrap())
        .collect();
    assert_eq!(snapshots.len(), 2, "{copied}");
    assert_eq!(
        listing["stdout"]
            .as_str()
            .unwrap()
            .lines()
            .take(2)
            .collect::<Vec<_>>(),
        ["alpha", "alpha"]
    );
    assert!(
        listing["stdout"].as_str().unwrap().contains("-rwxr-xr-x"),
        "{listing}"
    );
    assert_eq!(down.status.code(), Some(0), "{}", stderr(&down));
    assert_eq!(
        std::fs::read(back_dir.join("copy/sub/tool.bin")).unwrap(),
        blob
    );
    let mode = std::fs::metadata(back_dir.join("copy/sub/tool.bin"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        std::fs::read_to_string(back_dir.join("copy/a.txt")).unwrap(),
        "alpha\n"
    );
    assert_eq!(down_one.status.code(), Some(0), "{}", stderr(&down_one));
    assert_eq!(std::fs::read_to_string(&single).unwrap(), "alpha\n");
}

#[test]
fn cli_cp_errors_name_the_problem() {
    let (key, vm) = sandbox("cli-cp-err");
    let before = env().service.snapshot_names(&key, &vm.name);

    let both_local = env().rewind(&key, &["cp", "/etc/hostname", "/tmp/x"]);
    let missing_local = env().rewind(&key, &["cp", "/no/such/file", &format!("{}:f", vm.name)]);
    let missing_remote = env().rewind(&key, &["cp", &format!("{}:nope", vm.name), "/tmp"]);

    assert_eq!(both_local.status.code(), Some(1));
    assert!(
        stderr(&both_local).contains("one side must be <sandbox>:<path>"),
        "{}",
        stderr(&both_local)
    );
    assert_eq!(missing_local.status.code(), Some(1));
    assert!(
        stderr(&missing_local).contains("/no/such/file"),
        "{}",
        stderr(&missing_local)
    );
    assert_not_found(&missing_remote);
    assert_eq!(env().service.snapshot_names(&key, &vm.name), before);
}

#[test]
fn cli_snapshot_diff_human_and_json() {
    let (key, vm) = sandbox("cli-diff");
    let first = env().service.run(&key, &vm.name, "echo one > f");
    let second = env()
        .service
        .run(&key, &vm.name, "echo two > f; echo new > extra");
    let (s1, s2) = (
        first["snapshot"].as_str().unwrap(),
        second["snapshot"].as_str().unwrap(),
    );

    let step = env().rewind(&key, &["snapshot", "diff", &vm.name, s2]);
    let whole = env().rewind(
        &key,
        &["--json", "snapshot", "diff", &vm.name, "initial", s2],
    );
    let content = env().rewind(&key, &["snapshot", "diff", "--content", &vm.name, s2]);
    let missing = env().rewind(&key, &["snapshot", "diff", &vm.name, "cmd_404"]);

    assert_eq!(step.status.code(), Some(0), "{}", stderr(&step));
    assert_eq!(
        stdout(&step),
        format!(
            "{s1} -> {s2}: 1 added, 1 modified, 0 deleted\n\
             A\t/workspace/extra\t4 bytes\n\
             M\t/workspace/f\t4 bytes\n"
        )
    );
    let whole = json(&whole);
    assert_eq!(
        (whole["from"].as_str(), whole["added"].as_u64()),
        (Some("initial"), Some(2))
    );
    assert!(stdout(&content).contains("+two"), "{}", stdout(&content));
    assert_not_found(&missing);
}

/// With a terminal on stdin the CLI goes raw, passes the terminal's size,
/// and puts the terminal back as it was when the session ends.
#[test]
fn cli_shell_on_a_terminal_passes_its_size_and_restores_it() {
    use nix::pty::{openpty, Winsize};
    use nix::sys::termios::{tcgetattr, LocalFlags};
    use std::io::Read;

    let (key, vm) = sandbox("cli-tty");
    let size = Winsize {
        ws_row: 31,
        ws_col: 101,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None).unwrap();
    let before = tcgetattr(&pty.slave).unwrap();
    let mut master = std::fs::File::from(pty.master);
    // Typed ahead: the CLI reads it once it is in raw mode.
    master.write_all(b"stty size; exit 4\r").unwrap();
    let stdio = |fd: &std::os::fd::OwnedFd| Stdio::from(fd.try_clone().unwrap());
    let mut child = env()
        .command(&key, &["shell", &vm.name])
        .stdin(stdio(&pty.slave))
        .stdout(stdio(&pty.slave))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let _ = master.read_to_end(&mut seen); // EIO once every slave fd is closed
        String::from_utf8_lossy(&seen).into_owned()
    });

    let status = child.wait().unwrap();
    let after = tcgetattr(&pty.slave).unwrap();
    drop(pty.slave);
    let seen = reader.join().unwrap();

    assert_eq!(status.code(), Some(4), "{seen}");
    assert!(seen.contains("31 101"), "{seen}");
    let canonical = LocalFlags::ICANON | LocalFlags::ECHO;
    assert!(before.local_flags.contains(canonical));
    assert_eq!(after.local_flags, before.local_flags);
}
