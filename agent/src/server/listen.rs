//! Where the agent listens: a Unix socket, TCP (debugging and image tests),
//! AF_VSOCK (inside a microVM), or an inherited listening Unix socket fd
//! (the namespace launcher binds it before the sandbox exists).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::str::FromStr;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, VsockAddr};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener, UnixStream};

/// A parsed `--listen` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenSpec {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
    Vsock(u32),
    Fd(RawFd),
}

/// Why a `--listen` argument is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("listen spec {spec:?} is not unix:<path>, tcp:<addr>, vsock:<port> or fd:<n>")]
    Parse { spec: String },
    #[error("cannot listen on {spec:?}")]
    Bind {
        spec: String,
        #[source]
        source: io::Error,
    },
}

impl FromStr for ListenSpec {
    type Err = ListenError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = || ListenError::Parse {
            spec: spec.to_owned(),
        };
        let (kind, rest) = spec.split_once(':').ok_or_else(bad)?;
        match kind {
            "unix" if !rest.is_empty() => Ok(Self::Unix(rest.into())),
            "tcp" => rest.parse().map(Self::Tcp).map_err(|_| bad()),
            "vsock" => rest.parse().map(Self::Vsock).map_err(|_| bad()),
            "fd" => rest.parse().map(Self::Fd).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

/// Any accepted connection.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// A bound, listening socket.
pub enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
    Vsock(AsyncFd<OwnedFd>),
}

impl Listener {
    /// Binds (or adopts) the socket named by `spec`. Needs a tokio runtime.
    pub async fn bind(spec: &ListenSpec) -> Result<Self, ListenError> {
        let wrap = |source| ListenError::Bind {
            spec: format!("{spec:?}"),
            source,
        };
        match spec {
            ListenSpec::Unix(path) => {
                let _ = std::fs::remove_file(path);
                UnixListener::bind(path).map(Self::Unix).map_err(wrap)
            }
            ListenSpec::Tcp(addr) => TcpListener::bind(addr).await.map(Self::Tcp).map_err(wrap),
            ListenSpec::Vsock(port) => bind_vsock(*port).map(Self::Vsock).map_err(wrap),
            ListenSpec::Fd(fd) => adopt_unix_fd(*fd).map(Self::Unix).map_err(wrap),
        }
    }

    /// Waits for the next connection.
    pub async fn accept(&self) -> io::Result<Box<dyn Conn>> {
        match self {
            Self::Unix(l) => Ok(Box::new(l.accept().await?.0)),
            Self::Tcp(l) => {
                let (stream, _) = l.accept().await?;
                stream.set_nodelay(true)?;
                Ok(Box::new(stream))
            }
            Self::Vsock(fd) => accept_vsock(fd).await.map(|s| Box::new(s) as Box<dyn Conn>),
        }
    }
}

fn adopt_unix_fd(fd: RawFd) -> io::Result<UnixListener> {
    // SAFETY: the caller handed us this fd number on the command line as a
    // listening Unix socket it passed to us; nothing else in this process
    // owns it.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    std_listener.set_nonblocking(true)?;
    UnixListener::from_std(std_listener)
}

fn bind_vsock(port: u32) -> io::Result<AsyncFd<OwnedFd>> {
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = socket::socket(AddressFamily::Vsock, SockType::Stream, flags, None)?;
    let addr = VsockAddr::new(libc::VMADDR_CID_ANY, port);
    socket::bind(fd.as_raw_fd(), &addr)?;
    socket::listen(&fd, socket::Backlog::new(128).map_err(io::Error::from)?)?;
    // SAFETY: an OwnedFd always returns the same, open fd from as_raw_fd
    // for as long as it lives, and the AsyncFd owns it.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// Accepts one vsock connection and wraps it as a tokio stream. A connected
/// AF_VSOCK socket speaks plain read/write, which is all `UnixStream` uses.
async fn accept_vsock(listener: &AsyncFd<OwnedFd>) -> io::Result<UnixStream> {
    loop {
        let mut guard = listener.readable().await?;
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        match guard.try_io(|fd| Ok(socket::accept4(fd.as_raw_fd(), flags)?)) {
            Ok(result) => {
                let raw = result?;
                // SAFETY: accept4 just returned this fd; we are its only owner.
                let std_stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(raw) };
                return UnixStream::from_std(std_stream);
            }
            Err(_would_block) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_spec_parses_each_kind() {
        assert_eq!(
            "unix:/run/a.sock".parse::<ListenSpec>().unwrap(),
            ListenSpec::Unix("/run/a.sock".into())
        );
        assert_eq!(
            "tcp:127.0.0.1:7000".parse::<ListenSpec>().unwrap(),
            ListenSpec::Tcp("127.0.0.1:7000".parse().unwrap())
        );
        assert_eq!(
            "vsock:1024".parse::<ListenSpec>().unwrap(),
            ListenSpec::Vsock(1024)
        );
        assert_eq!("fd:3".parse::<ListenSpec>().unwrap(), ListenSpec::Fd(3));
    }

    #[test]
    fn listen_spec_rejects_unknown_kind() {
        let err = "udp:1".parse::<ListenSpec>().unwrap_err();
        assert!(matches!(err, ListenError::Parse { .. }), "{err:?}");
    }
}
