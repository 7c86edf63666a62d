//! Egress through an allow-listed HTTP proxy (off unless
//! `[network] egress_allow` lists hosts).
//!
//! Sandboxes have no route out: a namespace sandbox has only loopback, a VM
//! only its TAP in its own namespace. rewind gives each one a proxy listener
//! *inside* its network namespace ([`PROXY_PORT`] on the sandbox's loopback,
//! or on the VM's gateway address) and sets `http_proxy`/`https_proxy` for
//! its commands. The proxy (HTTP `CONNECT` for TLS, absolute-URI requests for
//! plain HTTP) connects from the service only to allow-listed hosts, and a
//! name must resolve to a public address: private, loopback and link-local
//! addresses are refused unless listed as IP literals. Nothing is added to
//! the host's network configuration.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Port of the proxy inside each sandbox.
pub const PROXY_PORT: u16 = 3128;
/// Largest request head the proxy reads.
const MAX_HEAD: usize = 16 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent connections per sandbox proxy (more are closed at once).
pub const MAX_CONNECTIONS: usize = 256;

/// One `egress_allow` entry: `host`, `*.domain`, or an IP literal, each
/// optionally with `:port` (any port otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Allow {
    host: Host,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Name(String),
    /// `*.example.org`: any subdomain (not `example.org` itself).
    Suffix(String),
    Ip(IpAddr),
}

/// The parsed `network.egress_allow`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<Allow>,
}

impl AllowList {
    /// Parse the config entries; the error names the bad one.
    pub fn parse(entries: &[String]) -> Result<AllowList, String> {
        let entries = entries
            .iter()
            .map(|e| {
                parse_entry(e).ok_or_else(|| {
                    format!("`{e}` is not host, *.domain or IP, with an optional :port")
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(AllowList { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn find(&self, host: &str, port: u16) -> Option<&Allow> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let ip = host.trim_matches(['[', ']']).parse::<IpAddr>().ok();
        self.entries.iter().find(|a| {
            a.port.is_none_or(|p| p == port)
                && match &a.host {
                    Host::Name(n) => *n == host,
                    Host::Suffix(s) => host.ends_with(&format!(".{s}")),
                    Host::Ip(allowed) => ip == Some(*allowed),
                }
        })
    }
}

fn parse_entry(entry: &str) -> Option<Allow> {
    let entry = entry.trim().to_ascii_lowercase();
    if let Ok(ip) = entry.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Some(Allow {
            host: Host::Ip(ip),
            port: None,
        });
    }
    let (host, port) = match entry.rsplit_once(':') {
        Some((h, p)) => (
            h.to_owned(),
            Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
        ),
        None => (entry.clone(), None),
    };
    let host_kind = if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        Host::Ip(ip)
    } else if let Some(domain) = host.strip_prefix("*.") {
        valid_name(domain).then(|| Host::Suffix(domain.to_owned()))?
    } else {
        valid_name(&host).then(|| Host::Name(host.clone()))?
    };
    Some(Allow {
        host: host_kind,
        port,
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Whether `ip` is a public unicast address. IPv6 forms that embed an
/// IPv4 address (mapped, compatible, NAT64, 6to4) are judged by it.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                is_public(IpAddr::V4(std::net::Ipv4Addr::from(
                    ((hi as u32) << 16) | lo as u32,
                )))
            };
            if let Some(v4) = v6.to_ipv4() {
                // ::ffff:a.b.c.d and the deprecated ::a.b.c.d
                return !v6.is_unspecified() && !v6.is_loopback() && is_public(IpAddr::V4(v4));
            }
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return embedded(s[6], s[7]);
            }
            if s[0] == 0x2002 {
                return embedded(s[1], s[2]);
            }
            !(v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x64 && s[1] == 0xff9b)
                || (s[0] == 0x2001 && s[1] == 0)
                || (s[0] == 0x2001 && s[1] == 0xdb8)
                || s[..4] == [0x100, 0, 0, 0])
        }
    }
}

/// Why the proxy refused a target.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("egress to {host}:{port} is not allowed (network.egress_allow)")]
    NotAllowed { host: String, port: u16 },
    #[error("{host} resolves only to non-public addresses ({addrs}); list the IP to allow it")]
    NotPublic { host: String, addrs: String },
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
}

/// The addresses the proxy may connect to for `host:port`.
pub async fn resolve_allowed(
    allow: &AllowList,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, Refused> {
    let not_allowed = || Refused::NotAllowed {
        host: host.to_owned(),
        port,
    };
    let entry = allow.find(host, port).ok_or_else(not_allowed)?;
    if let Host::Ip(ip) = entry.host {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
        return Err(not_allowed());
    }
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| Refused::Resolve {
            host: host.to_owned(),
            source,
        })?
        .collect();
    let public: Vec<SocketAddr> = resolved
        .iter()
        .copied()
        .filter(|a| is_public(a.ip()))
        .collect();
    if public.is_empty() {
        let addrs = resolved
            .iter()
            .map(|a| a.ip().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Refused::NotPublic {
            host: host.to_owned(),
            addrs,
        });
    }
    Ok(public)
}

/// A running proxy listener; closed when dropped.
#[derive(Debug)]
pub struct EgressProxy {
    task: JoinHandle<()>,
    pub listen: SocketAddr,
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listen on `at.addr` inside `at`'s network namespace and serve. At
/// most [`MAX_CONNECTIONS`] at once; dropping the proxy ends them all.
pub async fn spawn(at: &super::PortTarget, allow: Arc<AllowList>) -> io::Result<EgressProxy> {
    let listen = at.addr;
    let listener = TcpListener::from_std(super::network::listen_in(at).await?)?;
    let task = super::network::serve_connections(listener, MAX_CONNECTIONS, move |conn| {
        let allow = allow.clone();
        async move { serve(conn, &allow).await }
    });
    Ok(EgressProxy { task, listen })
}

/// One client connection: read the request head, check the target, connect,
/// then relay.
async fn serve(mut conn: TcpStream, allow: &AllowList) -> io::Result<()> {
    let (head, rest) = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut conn))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request head"))??;
    let req = match Request::parse(&head) {
        Ok(r) => r,
        Err(msg) => return reply(&mut conn, "400 Bad Request", msg).await,
    };
    let addrs = match resolve_allowed(allow, &req.host, req.port).await {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(target = %format!("{}:{}", req.host, req.port), reason = %e, "egress refused");
            return reply(&mut conn, "403 Forbidden", &e.to_string()).await;
        }
    };
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addrs[..])).await;
    let mut upstream = match connect {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return reply(
                &mut conn,
                "502 Bad Gateway",
                &format!("connect {}:{}: {e}", req.host, req.port),
            )
            .await
        }
        Err(_) => {
            return reply(
                &mut conn,
                "504 Gateway Timeout",
                &format!("connect {}:{}", req.host, req.port),
            )
            .await
        }
    };
    let Some(head) = &req.forward_head else {
        conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        upstream.write_all(&rest).await?;
        tokio::io::copy_bidirectional(&mut conn, &mut upstream).await?;
        return Ok(());
    };
    // Plain HTTP: exactly this one request (head + Content-Length bytes) goes
    // upstream; later bytes on the connection (pipelined requests, maybe for
    // other hosts) are never forwarded.
    upstream.write_all(head).await?;
    let early = rest.len().min(req.body_len as usize);
    upstream.write_all(&rest[..early]).await?;
    let mut body = (&mut conn).take(req.body_len - early as u64);
    tokio::io::copy(&mut body, &mut upstream).await?;
    tokio::io::copy(&mut upstream, &mut conn).await?;
    Ok(())
}

async fn reply(conn: &mut TcpStream, status: &str, message: &str) -> io::Result<()> {
    let body = format!("rewind egress: {message}\n");
    let text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(text.as_bytes()).await
}

/// Read until httparse sees a complete request head (or an invalid one);
/// returns (head, bytes after it).
async fn read_head(conn: &mut TcpStream) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "no request head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        match httparse::Request::new(&mut headers).parse(&buf) {
            Ok(httparse::Status::Complete(end)) => {
                let rest = buf.split_off(end);
                return Ok((buf, rest));
            }
            Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => {}
            // Invalid or too large: `Request::parse` answers 400.
            _ => return Ok((buf, Vec::new())),
        }
    }
}

/// A parsed proxy request.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    host: String,
    port: u16,
    /// For plain HTTP: the head to send upstream (origin-form target, `Host`
    /// from the URI, `Connection: close`, no proxy headers). `None` for
    /// `CONNECT`.
    forward_head: Option<Vec<u8>>,
    /// Plain HTTP: the request body's length (`Content-Length`).
    body_len: u64,
}

impl Request {
    fn parse(head: &[u8]) -> Result<Request, &'static str> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return Err("malformed request head"),
        }
        let (method, target) = (req.method.unwrap_or(""), req.path.unwrap_or(""));
        if method == "CONNECT" {
            let (host, port) = split_authority(target, None).ok_or("CONNECT needs host:port")?;
            return Ok(Request {
                host,
                port,
                forward_head: None,
                body_len: 0,
            });
        }
        let rest = target
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case("http://"))
            .map(|_| &target[7..])
            .ok_or("only CONNECT and absolute http:// requests are proxied")?;
        let cut = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(cut);
        let (host, port) = split_authority(authority, Some(80)).ok_or("bad host in request URI")?;
        let mut body_len = 0;
        let host_header = match port {
            80 => host.clone(),
            p => format!("{host}:{p}"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else if path.is_empty() {
            "/".into()
        } else {
            path.to_owned()
        };
        let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {host_header}\r\n");
        for h in req.headers.iter() {
            let name = h.name.to_ascii_lowercase();
            match name.as_str() {
                "host"
                | "connection"
                | "proxy-connection"
                | "keep-alive"
                | "proxy-authorization" => continue,
                "transfer-encoding" => {
                    return Err("chunked request bodies are not proxied; use https")
                }
                "content-length" => {
                    body_len = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .ok_or("bad Content-Length")?;
                }
                _ => {}
            }
            out.push_str(&format!(
                "{}: {}\r\n",
                h.name,
                String::from_utf8_lossy(h.value)
            ));
        }
        out.push_str("Connection: close\r\n\r\n");
        Ok(Request {
            host,
            port,
            forward_head: Some(out.into_bytes()),
            body_len,
        })
    }
}

/// `host:port` or `[v6]:port` (port optional when `default` is given).
fn split_authority(authority: &str, default: Option<u16>) -> Option<(String, u16)> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, rest) = v6.split_once(']')?;
        (h.to_owned(), rest.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok().filter(|p| *p != 0)?,
        None => default?,
    };
    let host = host.to_ascii_lowercase();
    let valid = host.parse::<IpAddr>().is_ok() || valid_name(host.trim_end_matches('.'));
    valid.then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(entries: &[&str]) -> AllowList {
        AllowList::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn parse_rejects_bad_entries_by_name() {
        for bad in ["", "a b", "host:0", "host:http", "*.", "ex_ample.org"] {
            let err = AllowList::parse(&[bad.to_string()]).unwrap_err();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn find_matches_names_suffixes_ips_and_ports() {
        let a = allow(&[
            "pypi.org",
            "*.pythonhosted.org:443",
            "10.1.2.3",
            "[::1]:8080",
        ]);

        assert!(a.find("PyPI.org.", 80).is_some());
        assert!(a.find("files.pythonhosted.org", 443).is_some());
        assert!(a.find("files.pythonhosted.org", 80).is_none());
        assert!(
            a.find("pythonhosted.org", 443).is_none(),
            "*.x does not match x"
        );
        assert!(a.find("evilpypi.org", 443).is_none());
        assert!(a.find("10.1.2.3", 22).is_some());
        assert!(a.find("[::1]", 8080).is_some());
        assert!(a.find("::1", 8081).is_none());
    }

    #[test]
    fn is_public_refuses_private_loopback_link_local_and_cgnat() {
        for ip in [
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["151.101.0.223", "2a04:4e42::223"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn resolve_allowed_refuses_unlisted_and_non_public_names_without_connecting() {
        let a = allow(&["localhost", "127.0.0.1:9"]);

        let unlisted = resolve_allowed(&a, "example.org", 443).await.unwrap_err();
        let local = resolve_allowed(&a, "localhost", 443).await.unwrap_err();
        let listed_ip = resolve_allowed(&a, "127.0.0.1", 9).await.unwrap();
        let other_port = resolve_allowed(&a, "127.0.0.1", 10).await.unwrap_err();

        assert!(matches!(unlisted, Refused::NotAllowed { .. }), "{unlisted}");
        assert!(matches!(local, Refused::NotPublic { .. }), "{local}");
        assert_eq!(listed_ip, vec!["127.0.0.1:9".parse().unwrap()]);
        assert!(
            matches!(other_port, Refused::NotAllowed { .. }),
            "{other_port}"
        );
    }

    #[test]
    fn request_parse_connect_and_absolute_http() {
        let connect =
            Request::parse(b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n").unwrap();
        assert_eq!(
            (connect.host.as_str(), connect.port, connect.forward_head),
            ("pypi.org", 443, None)
        );

        let get = Request::parse(b"GET http://deb.debian.org/debian/x HTTP/1.1\r\nHost: deb.debian.org\r\nProxy-Connection: keep-alive\r\n\r\n").unwrap();
        assert_eq!((get.host.as_str(), get.port), ("deb.debian.org", 80));
        let head = String::from_utf8(get.forward_head.unwrap()).unwrap();
        assert_eq!(
            head,
            "GET /debian/x HTTP/1.1\r\nHost: deb.debian.org\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn request_parse_rejects_origin_form_and_bad_authority() {
        assert!(Request::parse(b"GET / HTTP/1.1\r\n\r\n").is_err());
        assert!(Request::parse(b"CONNECT pypi.org HTTP/1.1\r\n\r\n").is_err());
        assert!(Request::parse(b"CONNECT pypi.org:0 HTTP/1.1\r\n\r\n").is_err());
        assert!(Request::parse(b"GET http://user@x.pypi.org/ HTTP/1.1\r\n\r\n").is_err());
        assert!(Request::parse(b"CONNECT a%2eb:443 HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn request_parse_takes_host_from_the_uri_not_the_client() {
        let get = Request::parse(
            b"GET HTTP://pypi.org:8080?q=1 HTTP/1.0\r\nHost: other.example\r\nContent-Length: 3\r\n\r\n",
        )
        .unwrap();

        let head = String::from_utf8(get.forward_head.unwrap()).unwrap();
        assert_eq!(
            head,
            "GET /?q=1 HTTP/1.1\r\nHost: pypi.org:8080\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        );
        assert_eq!((get.port, get.body_len), (8080, 3));
    }

    #[test]
    fn request_parse_refuses_chunked_bodies() {
        let err =
            Request::parse(b"POST http://pypi.org/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap_err();

        assert!(err.contains("chunked"), "{err}");
    }

    #[test]
    fn is_public_judges_embedded_ipv4_and_special_ranges() {
        for ip in [
            "64:ff9b::a00:1",
            "::10.0.0.1",
            "2002:a00:1::1",
            "2001::1",
            "fec0::1",
            "2001:db8::1",
            "100::1",
            "192.0.0.8",
            "198.18.0.1",
            "64:ff9b:1::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["64:ff9b::9765:df", "2002:9765:df::1"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
