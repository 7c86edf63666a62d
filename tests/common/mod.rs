//! Shared set-up for the service's integration tests: a busybox root
//! filesystem (seconds to build, unlike the debootstrap base image), paths
//! to the built binaries, and a fresh data directory per test binary.
#![allow(dead_code)]

#[path = "../../agent/tests/common/busybox.rs"]
mod busybox;
pub mod cleanup;
pub mod cli;
pub mod memory;
pub mod process;
pub mod py_microvm;
pub mod python;
pub mod service;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Directory holding the test binaries' sibling executables (target/debug).
pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rewind"))
        .parent()
        .expect("target dir")
        .to_owned()
}

/// The agent binary next to `rewind`; `scripts/test.sh` builds the workspace first.
pub fn agent_binary() -> PathBuf {
    let path = bin_dir().join("rewind-agent");
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build -p rewind-agent` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Where the tests keep their data dirs: `$REWIND_TEST_ROOT`, default
/// `/var/tmp/rewind-test` (separate roots let two checkouts test at once).
pub fn test_root() -> PathBuf {
    std::env::var_os("REWIND_TEST_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/rewind-test"))
}

/// The debootstrap base image (`$REWIND_TEST_BASE_IMAGE`, default
/// `/var/lib/rewind/images/base/rootfs`) and `true` when it is built
/// (python3, bash, node), else the busybox rootfs and `false`, with a note.
pub fn debootstrap_or_busybox() -> (PathBuf, bool) {
    let real = std::env::var_os("REWIND_TEST_BASE_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/rewind/images/base/rootfs"));
    if real.join(".rewind-image-complete").exists() {
        return (real, true);
    }
    eprintln!(
        "NOTE: debootstrap base image not built at {}; using the busybox test rootfs",
        real.display()
    );
    (busybox_rootfs(), false)
}

/// The debootstrap base image, for the tests that are `#[ignore]`d for
/// needing it (python3, bash, node) and that `scripts/test.sh` runs with
/// `--ignored` after building it. Panics naming the image when it is not
/// built: a test that cannot run must fail, never pass without running.
pub fn debootstrap_image() -> PathBuf {
    let real = std::env::var_os("REWIND_TEST_BASE_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/rewind/images/base/rootfs"));
    assert!(
        real.join(".rewind-image-complete").exists(),
        "needs the debootstrap base image at {} (REWIND_TEST_BASE_IMAGE): \
         build it with images/build-rootfs.sh, as scripts/test.sh does",
        real.display()
    );
    real
}

/// A minimal root filesystem made of busybox-static, built once.
pub fn busybox_rootfs() -> PathBuf {
    let root = test_root().join("busybox-rootfs");
    if root.join(".complete").exists() {
        return root;
    }
    let tmp = root.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    busybox::populate(&tmp);
    std::fs::write(tmp.join(".complete"), "busybox\n").unwrap();
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&tmp, &root).unwrap();
    root
}

/// A data directory for one test binary, emptied of everything but the
/// pool from an earlier run (which storage re-uses). Its sandboxes, processes
/// and mounts are released when the test binary exits ([`cleanup`]).
pub fn data_dir(name: &str) -> PathBuf {
    let dir = test_root().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    cleanup::release_at_exit(&dir);
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let p = entry.path();
        let keep = ["pool", "pool.img", "images"]
            .iter()
            .any(|k| p.file_name().is_some_and(|n| n == *k));
        if !keep {
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
    dir
}

/// Poll `cond` until it holds; panics naming `what` after 60 s.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// [`data_dir`] whose `images/` (the shifted rootfs the runtime prepares
/// once) is shared by every data dir that uses this.
pub fn data_dir_sharing_images(name: &str) -> PathBuf {
    let dir = data_dir(name);
    let cache = test_root().join("images-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let link = dir.join("images");
    if !link.exists() {
        std::os::unix::fs::symlink(&cache, &link).unwrap();
    }
    dir
}

/// A name unique within this test run.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `GET / HTTP/1.0` to 127.0.0.1:`port`; the whole response, or the error.
pub fn http_get(port: u16) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    conn.read_to_string(&mut out)?;
    Ok(out)
}

/// An HTTP server on the host's loopback answering every request with
/// `body`; returns its port.
pub fn host_http_server(body: &'static str) -> u16 {
    host_http_server_logged(body).port
}

/// A [`host_http_server_logged`]: its port, what it saw, and one message on
/// `done` each time it has finished with a connection.
pub struct LoggedServer {
    pub port: u16,
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub done: std::sync::mpsc::Receiver<()>,
}

/// Like [`host_http_server`], also recording every request head it got and
/// any bytes that followed one on the same connection (within 300 ms).
pub fn host_http_server_logged(body: &'static str) -> LoggedServer {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (done_tx, done) = std::sync::mpsc::channel();
    let seen = log.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).into_owned());
            let reply = format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes());
            let _ = conn.set_read_timeout(Some(std::time::Duration::from_millis(300)));
            let mut extra = Vec::new();
            let _ = conn.read_to_end(&mut extra);
            if !extra.is_empty() {
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&extra).into_owned());
            }
            let _ = done_tx.send(());
        }
    });
    LoggedServer {
        port,
        seen: log,
        done,
    }
}

/// `ip -netns <name of ns> args…`, which must succeed; its stdout.
pub fn ip_netns(ns: &Path, args: &[&str]) -> String {
    let name = ns.file_name().unwrap().to_str().unwrap();
    let out = Command::new("ip")
        .args(["-netns", name])
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Network devices of the host namespace, sorted.
pub fn host_links() -> Vec<String> {
    let dev = std::fs::read_to_string("/proc/self/net/dev").unwrap();
    let mut links: Vec<String> = dev
        .lines()
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_string()))
        .collect();
    links.sort();
    links
}
