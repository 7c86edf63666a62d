//! Isolation and resource limits of the namespace runtime, through the whole
//! service (sandbox operations API, real agent, real namespaces, real
//! cgroups, real Btrfs). Needs root. Limits are set small on purpose.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rewind::auth::Caller;
use rewind::config::{Config, Overrides};
use rewind::sandbox::{RunOutput, RunRequest, Sandboxes};

struct Env {
    rt: tokio::runtime::Runtime,
    sandboxes: Sandboxes,
}

const CALLER: Caller = Caller {
    key_id: 1,
    admin: true,
};

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let overrides = Overrides {
            data_dir: Some(common::data_dir("isolation")),
            runtime: Some("namespace".into()),
            base_image: Some(common::busybox_rootfs()),
            agent_binary: Some(common::agent_binary()),
            ..Default::default()
        };
        let mut config = Config::load(None, &overrides).unwrap();
        config.storage.pool_size_gb = 4;
        config.limits.memory_mb = 64;
        config.limits.pids = 64;
        config.limits.cpu_millis = 500;
        let sandboxes = rt.block_on(rewind::server::build(config)).unwrap();
        rt.block_on(sandboxes.db.call(|c| {
            rewind::db::Db::insert_key(c, Some("t"), "ws_00000000", b"x", true, false).map(|_| ())
        }))
        .unwrap();
        Env { rt, sandboxes }
    })
}

fn sandbox(prefix: &str) -> String {
    let name = common::unique(prefix);
    let e = env();
    e.rt.block_on(e.sandboxes.create(&CALLER, &name)).unwrap();
    name
}

fn run(vm: &str, command: &str, timeout: f64) -> RunOutput {
    let e = env();
    let req = RunRequest {
        command: command.into(),
        timeout: Some(timeout),
        env: Default::default(),
        cwd: None,
        changes: false,
    };
    e.rt.block_on(e.sandboxes.run(&CALLER, vm, req)).unwrap()
}

#[test]
fn isolation_host_files_are_invisible() {
    let marker = format!("/var/tmp/rewind-host-marker-{}", std::process::id());
    std::fs::write(&marker, "host secret").unwrap();
    let vm = sandbox("files");
    let out = run(&vm, &format!("cat {marker} 2>&1; hostname"), 10.0);
    std::fs::remove_file(&marker).unwrap();
    assert!(!out.stdout.contains("host secret"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&vm),
        "hostname is the sandbox name: {}",
        out.stdout
    );
}

#[test]
fn isolation_rootfs_writes_stay_in_the_sandbox() {
    let (a, b) = (sandbox("rootw-a"), sandbox("rootw-b"));
    let out = run(
        &a,
        "echo mine > /etc/rewind-probe && cat /etc/rewind-probe",
        10.0,
    );
    assert_eq!(out.stdout, "mine\n");
    assert!(!common::busybox_rootfs().join("etc/rewind-probe").exists());
    assert_ne!(run(&b, "cat /etc/rewind-probe", 10.0).exit_code, 0);
}

#[test]
fn isolation_processes_of_host_and_others_are_invisible() {
    let vm = sandbox("procs");
    let out = run(&vm, "ps -o pid,args", 10.0);
    let lines: Vec<&str> = out.stdout.lines().skip(1).collect();
    assert!(
        lines.len() <= 6,
        "only the sandbox's own processes: {}",
        out.stdout
    );
    assert!(
        lines[0].trim_start().starts_with("1 "),
        "PID 1 is the agent: {}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("cargo") && !out.stdout.contains("process_api"),
        "{}",
        out.stdout
    );
}

#[test]
fn isolation_only_loopback_and_no_host_network() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let vm = sandbox("net");
    let links = run(
        &vm,
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
        10.0,
    );
    assert_eq!(links.stdout, "lo\n");
    let out = run(
        &vm,
        &format!("echo hi | nc -w 2 127.0.0.1 {port} && echo CONNECTED || echo REFUSED"),
        10.0,
    );
    assert_eq!(out.stdout.trim(), "REFUSED");
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "nothing from the sandbox reached the host listener"
    );
}

#[test]
fn isolation_uid_root_inside_maps_to_unprivileged_outside() {
    let vm = sandbox("uid");
    let out = run(&vm, "id -u; touch /workspace/owned", 10.0);
    assert_eq!(out.stdout, "0\n");
    let e = env();
    let name: rewind_storage::SandboxName = vm.parse().unwrap();
    let path = e.sandboxes.storage.workspace_path(&name).join("owned");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(path).unwrap().uid(),
        rewind::runtime::namespace::UID_BASE
    );
}

#[test]
fn isolation_cannot_load_modules_or_mount_host_devices() {
    let vm = sandbox("caps");
    let out = run(&vm, "insmod /nonexistent.ko 2>&1; echo rc=$?; mknod /tmp/vda b 254 0 2>&1; echo rc=$?; mount -t ext4 /dev/vda /mnt 2>&1; echo rc=$?", 10.0);
    let codes: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("rc="))
        .collect();
    assert_eq!(codes.len(), 3, "{}", out.stdout);
    assert!(codes.iter().all(|c| *c != "rc=0"), "{}", out.stdout);
}

#[test]
fn limits_fork_bomb_is_contained() {
    let vm = sandbox("forkbomb");
    let started = Instant::now();
    let bomb = run(
        &vm,
        "bomb() { bomb | bomb & }; bomb; sleep 3; echo survived",
        8.0,
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let other = sandbox("bystander");
    let t = Instant::now();
    assert_eq!(run(&other, "echo ok", 10.0).stdout, "ok\n");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "host stays responsive"
    );
    let count = run(&vm, "ls /proc | grep -c '^[0-9]'", 10.0);
    let n: u32 = count.stdout.trim().parse().unwrap_or(0);
    assert!(
        n <= 64,
        "pids limit holds: {n} processes (bomb exit {})",
        bomb.exit_code
    );
}

#[test]
fn limits_memory_hog_is_killed() {
    let vm = sandbox("memhog");
    let out = run(
        &vm,
        "dd if=/dev/zero of=/dev/null bs=400M count=1 2>/dev/null; echo rc=$?",
        30.0,
    );
    assert_ne!(
        out.stdout.trim(),
        "rc=0",
        "a 400 MB buffer cannot fit in 64 MiB: {out:?}"
    );
    assert_eq!(
        run(&vm, "echo alive", 10.0).stdout,
        "alive\n",
        "the sandbox itself survives the OOM kill"
    );
}

/// Host cgroup directories of a sandbox, in whatever hierarchy is in use.
fn cgroup_dirs(name: &str) -> Vec<std::path::PathBuf> {
    let mut found = vec![];
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        for group in std::fs::read_dir(hierarchy.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let candidate = group.path().join(name);
            if group.file_name().to_string_lossy().starts_with("rewind-") && candidate.exists() {
                found.push(candidate);
            }
        }
    }
    found
}

#[test]
fn delete_leaves_no_processes_cgroups_or_socket() {
    let vm = sandbox("cleanup");
    let e = env();
    run(&vm, "cd /tmp && (sleep 500 > /dev/null 2>&1 &)", 10.0);
    let row = e.rt.block_on(e.sandboxes.find(&CALLER, &vm)).unwrap();
    let pid = row.runtime_state["pid"].as_i64().unwrap();
    let socket = std::path::PathBuf::from(row.runtime_state["socket"].as_str().unwrap());
    assert!(
        !cgroup_dirs(&vm).is_empty(),
        "the sandbox has cgroups while it runs"
    );
    e.rt.block_on(e.sandboxes.delete(&CALLER, &vm)).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "PID 1 {pid} is gone: {stat}"
    );
    assert_eq!(cgroup_dirs(&vm), Vec::<std::path::PathBuf>::new());
    assert!(!socket.exists());
}
