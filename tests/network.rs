//! Sandbox networking against the real kernel: named network namespaces,
//! a persistent TAP, addresses over rtnetlink. Needs root. Everything is
//! checked independently with `ip -netns` and `/proc/thread-self/net`; no
//! packet leaves a namespace the test created.

use std::fs::File;
use std::path::Path;
use std::process::Command;

use rewind::runtime::network::{self, GATEWAY, TAP};

/// Each test uses its own owner, so tests run in parallel without seeing
/// each other's namespaces.
fn owner(test: &str) -> String {
    format!("/tests/network/{test}/{}", std::process::id())
}

fn ip_netns(ns: &Path, args: &[&str]) -> String {
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

fn host_links() -> Vec<String> {
    let dev = std::fs::read_to_string("/proc/self/net/dev").unwrap();
    let mut links: Vec<String> = dev
        .lines()
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_string()))
        .collect();
    links.sort();
    links
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
        network::is_netns(&net.netns),
        "{} is not an nsfs mount",
        net.netns.display()
    );
    let link = ip_netns(&net.netns, &["-o", "link", "show", TAP]);
    assert!(link.contains("tap0") && link.contains(",UP"), "{link}");
    let addr = ip_netns(&net.netns, &["-o", "-4", "addr", "show", TAP]);
    assert!(addr.contains(&format!("inet {GATEWAY}/24")), "{addr}");
    let lo = ip_netns(&net.netns, &["-o", "link", "show", "lo"]);
    assert!(lo.contains(",UP"), "{lo}");
    assert_eq!(
        host_links(),
        before,
        "nothing may appear in the host namespace"
    );
    let tun_flags = ip_netns(&net.netns, &["-d", "link", "show", TAP]);
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
    let held = File::open(&first.netns).unwrap();

    let second = network::ensure(&owner, "box").await.unwrap();

    assert_eq!(first, second);
    let same = File::open(&second.netns).unwrap();
    let ino = |f: &File| std::os::unix::fs::MetadataExt::ino(&f.metadata().unwrap());
    assert_eq!(ino(&held), ino(&same), "the namespace was replaced");
    let addr = ip_netns(&second.netns, &["-o", "-4", "addr", "show", TAP]);
    assert_eq!(addr.matches("inet ").count(), 1, "{addr}");
    network::remove(&owner, "box").await.unwrap();
}

#[tokio::test]
async fn remove_deletes_the_tap_and_the_namespace_file() {
    let owner = owner("remove");
    let net = network::ensure(&owner, "box").await.unwrap();
    let held = File::open(&net.netns).unwrap();
    let held_again = held.try_clone().unwrap();
    assert!(links_in(held).contains("tap0:"));

    network::remove(&owner, "box").await.unwrap();

    assert!(!net.netns.exists());
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

    assert!(network::is_netns(&net.netns));
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
