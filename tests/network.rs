//! Sandbox networking against the real kernel: named network namespaces,
//! a persistent TAP, addresses over rtnetlink. Needs root. Everything is
//! checked independently with `ip -netns` and `/proc/thread-self/net`; no
//! packet leaves a namespace the test created.

use std::fs::File;
use std::path::Path;
use std::process::Command;

mod common;

use common::{host_links, ip_netns};
use rewind::runtime::egress::{self, AllowList};
use rewind::runtime::network::{self, GATEWAY, TAP};

/// Each test uses its own owner, so tests run in parallel without seeing
/// each other's namespaces.
fn owner(test: &str) -> String {
    format!("/tests/network/{test}/{}", std::process::id())
}

/// Device names in the namespace behind `ns` (an open namespace file).
fn links_in(ns: File) -> String {
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        std::fs::read_to_string("/proc/thread-self/net/dev").unwrap()
    })
    .join()
    .unwrap()
}

#[tokio::test]
async fn ensure_creates_tap_with_gateway_inside_a_named_namespace_only() {
    let owner = owner("ensure");
    let before = host_links();

    let net = network::ensure(&owner, "box").await.unwrap();

    assert!(
        network::is_netns(&net),
        "{} is not an nsfs mount",
        net.display()
    );
    let link = ip_netns(&net, &["-o", "link", "show", TAP]);
    assert!(link.contains("tap0") && link.contains(",UP"), "{link}");
    let addr = ip_netns(&net, &["-o", "-4", "addr", "show", TAP]);
    assert!(addr.contains(&format!("inet {GATEWAY}/24")), "{addr}");
    let lo = ip_netns(&net, &["-o", "link", "show", "lo"]);
    assert!(lo.contains(",UP"), "{lo}");
    assert_eq!(
        host_links(),
        before,
        "nothing may appear in the host namespace"
    );
    let tun_flags = ip_netns(&net, &["-d", "link", "show", TAP]);
    assert!(
        tun_flags.contains("tap") && tun_flags.contains("vnet_hdr"),
        "{tun_flags}"
    );

    network::remove(&owner, "box").await.unwrap();
}

#[tokio::test]
async fn ensure_twice_reuses_the_namespace_and_keeps_one_address() {
    let owner = owner("twice");
    let first = network::ensure(&owner, "box").await.unwrap();
    let held = File::open(&first).unwrap();

    let second = network::ensure(&owner, "box").await.unwrap();

    assert_eq!(first, second);
    let same = File::open(&second).unwrap();
    let ino = |f: &File| std::os::unix::fs::MetadataExt::ino(&f.metadata().unwrap());
    assert_eq!(ino(&held), ino(&same), "the namespace was replaced");
    let addr = ip_netns(&second, &["-o", "-4", "addr", "show", TAP]);
    assert_eq!(addr.matches("inet ").count(), 1, "{addr}");
    network::remove(&owner, "box").await.unwrap();
}

#[tokio::test]
async fn remove_deletes_the_tap_and_the_namespace_file() {
    let owner = owner("remove");
    let net = network::ensure(&owner, "box").await.unwrap();
    let held = File::open(&net).unwrap();
    let held_again = held.try_clone().unwrap();
    assert!(links_in(held).contains("tap0:"));

    network::remove(&owner, "box").await.unwrap();

    assert!(!net.exists());
    assert!(
        !links_in(held_again).contains("tap0:"),
        "tap0 outlived its sandbox"
    );
    assert!(!network::list(&owner).contains(&"box".to_string()));
    network::remove(&owner, "box").await.unwrap();
}

#[tokio::test]
async fn ensure_replaces_a_leftover_plain_file() {
    let owner = owner("leftover");
    let path = network::netns_path(&owner, "box");
    std::fs::create_dir_all(network::NETNS_DIR).unwrap();
    std::fs::write(&path, b"").unwrap();

    let net = network::ensure(&owner, "box").await.unwrap();

    assert!(network::is_netns(&net));
    network::remove(&owner, "box").await.unwrap();
}

#[tokio::test]
async fn remove_orphans_keeps_known_sandboxes() {
    let owner = owner("orphans");
    let other = owner.clone() + "-other";
    for name in ["known", "orphan"] {
        network::ensure(&owner, name).await.unwrap();
    }
    network::ensure(&other, "orphan").await.unwrap();

    let removed = network::remove_orphans(&owner, &["known".to_string()]).await;

    assert_eq!(
        removed,
        vec!["network namespace of sandbox orphan".to_string()]
    );
    assert_eq!(network::list(&owner), vec!["known".to_string()]);
    assert_eq!(
        network::list(&other),
        vec!["orphan".to_string()],
        "another owner's namespace was touched"
    );
    network::remove(&owner, "known").await.unwrap();
    network::remove(&other, "orphan").await.unwrap();
}

/// The guest image (`images/build-guest.sh`) boots under QEMU software
/// emulation on a sandbox namespace's TAP: the guest init takes the address
/// and gateway from `network::guest_cmdline()`, the agent answers on
/// 10.0.2.15 from inside the namespace, and the guest reaches the gateway
/// address over TCP. Everything stays in the namespace.
#[test]
#[ignore = "needs guest images and qemu: run images/build-guest.sh (scripts/test.sh does), then --ignored"]
fn guest_on_sandbox_tap_takes_its_address_and_reaches_the_gateway() {
    let guest = guest_dir();
    assert!(
        guest.join(".rewind-image-complete").exists(),
        "no complete guest image in {} (run images/build-guest.sh)",
        guest.display()
    );
    let owner = owner("qemu");
    // Multi-threaded: the egress proxy's tasks run on its (host namespace)
    // workers while this thread waits.
    let host = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let net = host.block_on(network::ensure(&owner, "vm")).unwrap();
    let allow = std::sync::Arc::new(AllowList::parse(&["127.0.0.1".to_string()]).unwrap());
    let proxy_at = std::net::SocketAddr::from((GATEWAY, egress::PROXY_PORT));
    let proxy = host
        .block_on(egress::spawn(&target(&net, proxy_at), allow))
        .unwrap();
    let web_port = common::host_http_server("from-the-host");
    let console = tempfile::NamedTempFile::new().unwrap();
    let mut qemu = Qemu(spawn_qemu_in(&net, &guest, console.path()));

    let ns = File::open(&net).unwrap();
    let seen = std::thread::spawn(move || talk_to_guest_from_inside(ns, web_port))
        .join()
        .map_err(|_| console_tail(console.path()));

    let agent_at = std::net::SocketAddr::from((network::GUEST, GUEST_AGENT_PORT));
    let from_host = host.block_on(network::connect_in(
        &target(&net, agent_at),
        std::time::Duration::from_secs(5),
    ));
    let _ = qemu.0.kill();
    drop(proxy);
    host.block_on(network::remove(&owner, "vm")).unwrap();
    from_host.expect("connect_in reaches the guest agent from a service thread");
    let (route, received, via_proxy) =
        seen.unwrap_or_else(|console| panic!("guest test failed; console:\n{console}"));
    assert!(
        via_proxy.starts_with("HTTP/1.1 200 Connection established")
            && via_proxy.ends_with("from-the-host"),
        "guest egress through the proxy on the gateway: {via_proxy:?}"
    );
    let default = route
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("00000000"));
    let gateway = default.and_then(|l| l.split_whitespace().nth(2));
    assert_eq!(
        gateway,
        Some("0202000A"),
        "no default route via 10.0.2.2:\n{route}"
    );
    assert_eq!(received, "hello from 10.0.2.15\n");
}

/// Killed on drop, so a failed assertion never leaves QEMU running.
struct Qemu(std::process::Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const GUEST_AGENT_PORT: u16 = 7000;

fn guest_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("REWIND_GUEST_DIR") {
        return dir.into();
    }
    let data = std::env::var_os("REWIND_DATA_DIR").unwrap_or_else(|| "/var/lib/rewind".into());
    Path::new(&data).join("images/guest")
}

fn spawn_qemu_in(netns: &Path, guest: &Path, console: &Path) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let cmdline = std::fs::read_to_string(guest.join("cmdline")).unwrap();
    let append = format!(
        "{} rewind.listen=tcp:0.0.0.0:{GUEST_AGENT_PORT} {}",
        cmdline.trim(),
        network::guest_cmdline()
    );
    let root = format!(
        "file={},if=none,id=d0,format=raw,readonly=on",
        guest.join("rootfs.ext4").display()
    );
    let ns = File::open(netns).unwrap();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "q35", "-accel", "tcg", "-m", "512", "-smp", "1"])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(guest.join("vmlinuz"))
        .arg("-initrd")
        .arg(guest.join("initrd.img"))
        .args(["-append", &append])
        .args([
            "-drive",
            &root,
            "-device",
            "virtio-blk-pci,drive=d0,serial=rootfs",
        ])
        .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
        .args(["-device", "virtio-net-pci,netdev=n0,romfile="])
        .stdin(std::process::Stdio::null())
        .stdout(File::create(console).unwrap());
    // SAFETY: setns is a plain syscall on an fd the closure owns; it runs in
    // the forked child before exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(Into::into)
        });
    }
    cmd.spawn().expect("spawn qemu-system-x86_64")
}

/// On a thread inside the namespace: wait for the agent on the guest address,
/// read the guest's routing table, and have the guest send a line to a
/// listener on the gateway address. Returns (route table, received line).
fn talk_to_guest_from_inside(ns: File, web_port: u16) -> (String, String, String) {
    use rewind_agent::client::{AgentClient, ClientTimeouts, Transport};
    use std::io::Read;

    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    let listener = std::net::TcpListener::bind((GATEWAY, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (route, via_proxy) = rt.block_on(async {
        let timeouts = ClientTimeouts {
            connect: std::time::Duration::from_secs(1),
            ..ClientTimeouts::default()
        };
        let addr = std::net::SocketAddr::from((network::GUEST, GUEST_AGENT_PORT));
        let client = AgentClient::with_timeouts(Transport::Tcp(addr), timeouts);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
        while client.ping().await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "agent not reachable on {addr}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        let route = guest_sh(&client, "cat /proc/net/route".into()).await;
        guest_sh(
            &client,
            format!("bash -c 'echo hello from 10.0.2.15 > /dev/tcp/{GATEWAY}/{port}'"),
        )
        .await;
        let egress = format!(
            r#"bash -c 'exec 3<>/dev/tcp/{GATEWAY}/{}; printf "CONNECT 127.0.0.1:{web_port} HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n" >&3; cat <&3'"#,
            egress::PROXY_PORT
        );
        (route, guest_sh(&client, egress).await)
    });
    let (mut conn, from) = listener.accept().unwrap();
    assert_eq!(from.ip(), std::net::IpAddr::V4(network::GUEST));
    let mut received = String::new();
    conn.read_to_string(&mut received).unwrap();
    (route, received, via_proxy)
}

async fn guest_sh(client: &rewind_agent::client::AgentClient, script: String) -> String {
    let req = rewind_agent::protocol::ExecRequest {
        shell: Some(script),
        timeout_ms: Some(60_000),
        ..Default::default()
    };
    let out = client.exec_collect(req).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.exit_code, 0, "{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn console_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn target(netns: &Path, addr: std::net::SocketAddr) -> rewind::runtime::PortTarget {
    rewind::runtime::PortTarget {
        netns: netns.to_owned(),
        addr,
        guard: None,
    }
}

#[tokio::test]
async fn connect_in_refuses_the_service_namespace_and_a_gone_process() {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    let own = target(Path::new("/proc/self/ns/net"), addr);
    let pid = std::process::id() as i32;
    let mut gone = target(Path::new(&format!("/proc/{pid}/ns/net")), addr);
    gone.guard = Some((pid, u64::MAX));

    let own_err = network::connect_in(&own, std::time::Duration::from_secs(1))
        .await
        .unwrap_err();
    let gone_err = network::listen_in(&gone).await.unwrap_err();

    assert!(
        own_err
            .to_string()
            .contains("service's own network namespace"),
        "{own_err}"
    );
    assert!(
        gone_err
            .to_string()
            .contains(&format!("process {pid} is gone")),
        "{gone_err}"
    );
}
