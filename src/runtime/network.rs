//! Sandbox networking (off by default; `[network] enabled = true`).
//!
//! Each networked sandbox gets a named network namespace
//! `/run/netns/rewind-<owner hash>-<sandbox>` (visible to `ip netns`), and in
//! it a persistent TAP device [`TAP`] holding the gateway address
//! [`GATEWAY`]/[`PREFIX`]. The hypervisor runs inside that namespace and
//! opens the TAP by name; the guest takes [`GUEST`] statically (guest init's
//! `rewind.ip` / `rewind.gw`). Nothing is created in, or routed to, the
//! host's own network namespace: a sandbox reaches only its namespace.
//!
//! Namespaces are created and configured from a short-lived thread that
//! `unshare`s (or `setns`es into) the namespace, so the service's own threads
//! never change namespace; links and addresses are set over rtnetlink from a
//! socket opened inside the namespace. Deleting the TAP and unmounting the
//! namespace file removes everything ([`remove`]); [`list`] finds what an
//! earlier service instance left behind.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::statfs::{statfs, FsType};
use rtnetlink::{Handle, LinkUnspec};

use super::PortTarget;
use sha2::{Digest, Sha256};

/// Where named network namespaces live (the `ip netns` convention).
pub const NETNS_DIR: &str = "/run/netns";
/// The TAP device in each sandbox namespace.
pub const TAP: &str = "tap0";
/// The namespace side of the TAP.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The guest's address.
pub const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
pub const PREFIX: u8 = 24;
/// `statfs` magic of an nsfs bind mount.
const NSFS_MAGIC: FsType = FsType(0x6e73_6673);

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot create network namespace {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter network namespace {path}")]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create TAP device {TAP} in {path}")]
    Tap {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("netlink: {op} in {path} failed")]
    Netlink {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove network namespace {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A sandbox's network as the API shows it (`network_config` of
/// `GET /vms/:name`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct NetworkInfo {
    /// The guest's address.
    #[schema(value_type = String)]
    pub ip: Ipv4Addr,
    pub prefix: u8,
    #[schema(value_type = String)]
    pub gateway: Ipv4Addr,
    pub mac_address: String,
    /// The TAP in the namespace (the reference's `network_interface`).
    pub network_interface: String,
    /// The namespace file (`ip netns exec <name> ...` for operators).
    #[schema(value_type = String)]
    pub netns: PathBuf,
}

/// Guest kernel command line parameters for the static address (read by
/// the guest init, `images/guest/init`).
pub fn guest_cmdline() -> String {
    format!("rewind.ip={GUEST}/{PREFIX} rewind.gw={GATEWAY}")
}

/// Namespace name prefix of one rewind instance.
fn owner_prefix(owner: &str) -> String {
    let hash = Sha256::digest(owner.as_bytes());
    format!("rewind-{}-", hex::encode(&hash[..4]))
}

/// The namespace file of `sandbox` under `owner`.
pub fn netns_path(owner: &str, sandbox: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(format!("{}{sandbox}", owner_prefix(owner)))
}

/// Create (or complete) the sandbox's namespace and TAP; returns the
/// namespace file. Idempotent: an existing namespace is reused and its TAP
/// and addresses re-checked.
pub async fn ensure(owner: &str, sandbox: &str) -> Result<PathBuf, NetError> {
    let path = netns_path(owner, sandbox);
    let p = path.clone();
    on_ns_thread(move || {
        if is_netns(&p) {
            enter(&p)?;
        } else {
            create(&p)?;
        }
        create_tap(&p)?;
        configure(&p)
    })
    .await?;
    Ok(path)
}

/// Delete the TAP and the namespace. Idempotent. A process still inside the
/// namespace keeps it alive until it exits (its devices go with it).
pub async fn remove(owner: &str, sandbox: &str) -> Result<(), NetError> {
    remove_path(netns_path(owner, sandbox)).await
}

async fn remove_path(path: PathBuf) -> Result<(), NetError> {
    if !path.exists() {
        return Ok(());
    }
    let p = path.clone();
    on_ns_thread(move || {
        if is_netns(&p) {
            enter(&p)?;
            delete_tap(&p)?;
        }
        Ok(())
    })
    .await?;
    let removed = umount2(&path, MntFlags::MNT_DETACH)
        .or_else(|e| {
            if e == nix::errno::Errno::EINVAL {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(io::Error::from)
        .and_then(|()| std::fs::remove_file(&path));
    removed.map_err(|source| NetError::Remove { path, source })
}

/// Sandboxes of `owner` that have a namespace file.
pub fn list(owner: &str) -> Vec<String> {
    let prefix = owner_prefix(owner);
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix(&prefix)
                .map(String::from)
        })
        .collect()
}

/// Remove the namespaces of `owner`'s sandboxes that are not in `keep`;
/// returns what was removed.
pub async fn remove_orphans(owner: &str, keep: &[String]) -> Vec<String> {
    let mut removed = Vec::new();
    for sandbox in list(owner).into_iter().filter(|s| !keep.contains(s)) {
        match remove(owner, &sandbox).await {
            Ok(()) => removed.push(format!("network namespace of sandbox {sandbox}")),
            Err(e) => {
                tracing::warn!(sandbox, error = %e, "cannot remove orphaned network namespace")
            }
        }
    }
    removed
}

/// Connect to `target.addr` from inside `target`'s network namespace (a
/// socket's namespace is fixed when it is created, so the caller's threads
/// never switch). The stream is non-blocking, ready for tokio.
pub async fn connect_in(
    target: &PortTarget,
    timeout: std::time::Duration,
) -> io::Result<std::net::TcpStream> {
    let addr = target.addr;
    in_netns_thread(target.clone(), move || {
        let s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
    .await
}

/// A listening TCP socket on `target.addr` inside `target`'s network
/// namespace (non-blocking, ready for tokio).
pub async fn listen_in(target: &PortTarget) -> io::Result<std::net::TcpListener> {
    let addr = target.addr;
    in_netns_thread(target.clone(), move || {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .await
}

/// Run `f` on a fresh thread that has entered `target`'s namespace. Refuses
/// the service's own namespace, and a `/proc/<pid>` namespace whose process
/// is no longer the one recorded (pid reuse).
async fn in_netns_thread<T, F>(target: PortTarget, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    on_thread(move || enter_checked(&target).and_then(|()| f()))
        .await
        .unwrap_or_else(|| Err(io::Error::other("network thread panicked")))
}

fn enter_checked(target: &PortTarget) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let ns = File::open(&target.netns)?;
    if let Some((pid, start)) = target.guard {
        if crate::runtime::proc::start_time(pid) != Some(start) {
            return Err(io::Error::other(format!("process {pid} is gone")));
        }
    }
    let entered = ns.metadata()?;
    if (entered.dev(), entered.ino()) == service_netns()? {
        return Err(io::Error::other(format!(
            "{} is the service's own network namespace",
            target.netns.display()
        )));
    }
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// The service's own network namespace (device, inode); it never changes,
/// since service threads never switch namespace.
fn service_netns() -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    static OWN: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
    if let Some(own) = OWN.get() {
        return Ok(*own);
    }
    let m = std::fs::metadata("/proc/self/ns/net")?;
    Ok(*OWN.get_or_init(|| (m.dev(), m.ino())))
}

/// Accept connections on `listener` and run `handler` on each, at most `max`
/// at once (more are closed at once). Aborting the returned task ends the
/// listener and every connection it started.
pub fn serve_connections<F, Fut>(
    listener: tokio::net::TcpListener,
    max: usize,
    handler: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = io::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((conn, _)) if conns.len() < max => {
                        let work = handler(conn);
                        conns.spawn(async move {
                            if let Err(e) = work.await {
                                tracing::debug!(error = %e, "connection ended");
                            }
                        });
                    }
                    Ok((conn, peer)) => {
                        tracing::warn!(%peer, max, "connection limit reached; closing");
                        drop(conn);
                    }
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    })
}

/// Whether `path` is a mounted network namespace (not a leftover file).
pub fn is_netns(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Run `f` on a fresh thread (which may change its network namespace freely)
/// and await its result; `None` if the thread panicked.
async fn on_thread<T, F>(f: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.await.ok()
}

/// [`on_thread`] for the namespace operations.
async fn on_ns_thread<T, F>(f: F) -> Result<T, NetError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetError> + Send + 'static,
{
    on_thread(f).await.unwrap_or_else(|| {
        Err(NetError::Enter {
            path: PathBuf::from(NETNS_DIR),
            source: io::Error::other("network thread panicked"),
        })
    })
}

/// On the calling (dedicated) thread: a new namespace, bind-mounted at `path`.
fn create(path: &Path) -> Result<(), NetError> {
    let err = |source: io::Error| NetError::Create {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(NETNS_DIR).map_err(err)?;
    File::create(path).map_err(err)?;
    if let Err(e) = unshare(CloneFlags::CLONE_NEWNET) {
        let _ = std::fs::remove_file(path);
        return Err(err(e.into()));
    }
    let bound = mount(
        Some("/proc/thread-self/ns/net"),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    );
    if let Err(e) = bound {
        let _ = std::fs::remove_file(path);
        return Err(err(e.into()));
    }
    Ok(())
}

/// On the calling (dedicated) thread: join the namespace at `path`.
fn enter(path: &Path) -> Result<(), NetError> {
    let err = |source: io::Error| NetError::Enter {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(err)?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| err(e.into()))
}

nix::ioctl_write_ptr_bad!(
    tun_set_iff,
    nix::request_code_write!(b'T', 202, std::mem::size_of::<libc::c_int>()),
    libc::ifreq
);
nix::ioctl_write_int_bad!(
    tun_set_persist,
    nix::request_code_write!(b'T', 203, std::mem::size_of::<libc::c_int>())
);

/// A persistent TAP named [`TAP`] in the current namespace, with the flags
/// Cloud Hypervisor opens it with (single queue, vnet header, no packet
/// info). Attaching to an existing one is fine.
fn create_tap(path: &Path) -> Result<(), NetError> {
    let err = |source: io::Error| NetError::Tap {
        path: path.to_owned(),
        source,
    };
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(err)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(TAP.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    // SAFETY: `tun` is an open /dev/net/tun fd and `req` a valid ifreq that
    // outlives the call.
    unsafe { tun_set_iff(tun.as_raw_fd(), &req) }.map_err(|e| err(e.into()))?;
    // SAFETY: same fd; TUNSETPERSIST takes an integer argument.
    unsafe { tun_set_persist(tun.as_raw_fd(), 1) }.map_err(|e| err(e.into()))?;
    Ok(())
}

/// Bring `lo` and the TAP up and give the TAP the gateway address, over a
/// netlink socket opened in the current namespace.
fn configure(path: &Path) -> Result<(), NetError> {
    netlink(path, |handle| async move {
        let up = |name: &str| LinkUnspec::new_with_name(name).up().build();
        handle
            .link()
            .set(up("lo"))
            .execute()
            .await
            .map_err(op("set lo up"))?;
        handle
            .link()
            .set(up(TAP))
            .execute()
            .await
            .map_err(op("set tap up"))?;
        let index = link_index(&handle, TAP).await?.ok_or((
            "find tap",
            io::Error::new(io::ErrorKind::NotFound, "tap0 vanished"),
        ))?;
        let added = handle
            .address()
            .add(index, IpAddr::V4(GATEWAY), PREFIX)
            .execute()
            .await;
        match added {
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::EEXIST => Ok(()),
            other => other.map_err(op("add gateway address")),
        }
    })
}

/// Delete the TAP in the current namespace, if it is there.
fn delete_tap(path: &Path) -> Result<(), NetError> {
    netlink(path, |handle| async move {
        match link_index(&handle, TAP).await? {
            Some(index) => handle
                .link()
                .del(index)
                .execute()
                .await
                .map_err(op("delete tap")),
            None => Ok(()),
        }
    })
}

type OpError = (&'static str, io::Error);

fn op(what: &'static str) -> impl FnOnce(rtnetlink::Error) -> OpError {
    move |e| (what, io::Error::other(e.to_string()))
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, OpError> {
    let mut links = handle.link().get().match_name(name.into()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(op("find link")(e)),
    }
}

/// Run netlink requests from a socket in the current thread's namespace.
fn netlink<F, Fut>(path: &Path, f: F) -> Result<(), NetError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: std::future::Future<Output = Result<(), OpError>>,
{
    let err = |op: &'static str, source: io::Error| NetError::Netlink {
        op,
        path: path.to_owned(),
        source,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| err("start runtime", e))?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| err("connect", e))?;
        tokio::spawn(conn);
        f(handle).await.map_err(|(op, e)| err(op, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_path_is_per_owner_and_sandbox() {
        let a = netns_path("/var/lib/rewind/images/guest", "box");
        let b = netns_path("/other/images/guest", "box");

        assert_ne!(a, b);
        assert!(a.starts_with(NETNS_DIR));
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("rewind-") && name.ends_with("-box"),
            "{name}"
        );
    }

    #[test]
    fn guest_cmdline_names_address_and_gateway() {
        assert_eq!(guest_cmdline(), "rewind.ip=10.0.2.15/24 rewind.gw=10.0.2.2");
    }

    #[test]
    fn is_netns_is_false_for_a_plain_file() {
        let f = tempfile::NamedTempFile::new().unwrap();

        assert!(!is_netns(f.path()));
    }
}
