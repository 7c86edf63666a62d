//! Port forwards: a TCP listener on the host (`[network] forward_bind`,
//! loopback by default) per forward. Each accepted connection is connected
//! to the port inside the sandbox ([`Runtime::port_target`], resolved per
//! connection from the sandbox's recorded runtime state, so a restarted
//! sandbox is found again) from inside the sandbox's network namespace, and
//! the bytes are copied both ways. Forwards are recorded in the database,
//! opened again at startup, and closed with their sandbox.
//!
//! [`Runtime::port_target`]: crate::runtime::Runtime::port_target

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{parse_sandbox_name, SandboxError, Sandboxes};
use crate::auth::Caller;
use crate::db::{Db, ForwardRow, SandboxRow, SandboxStatus};
use crate::runtime::{network, PortTarget};

/// How long a forwarded connection may take to reach the sandbox.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent connections per forward.
const MAX_CONNECTIONS: usize = 256;

/// Listener tasks by host port, with the id of the sandbox they lead to.
pub(super) type Listeners = Arc<Mutex<HashMap<u16, (i64, JoinHandle<()>)>>>;

/// A forward to create.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewForward {
    /// Host port; absent or 0 picks a free one.
    #[serde(default)]
    pub host_port: Option<u16>,
    pub guest_port: u16,
    /// Only `tcp`.
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

impl NewForward {
    fn validate(&self) -> Result<(), SandboxError> {
        let invalid = |field, message: &str| SandboxError::Invalid {
            field,
            message: message.into(),
        };
        match self.protocol.as_deref() {
            None | Some("tcp") => {}
            Some("udp") => return Err(invalid("protocol", "udp is not supported; use tcp")),
            Some(_) => return Err(invalid("protocol", "must be tcp")),
        }
        if self.guest_port == 0 {
            return Err(invalid("guest_port", "must be 1-65535"));
        }
        if self.description.as_ref().is_some_and(|d| d.len() > 1024) {
            return Err(invalid("description", "longer than 1024 bytes"));
        }
        Ok(())
    }
}

impl Sandboxes {
    /// Open a host port that leads to `guest_port` inside the sandbox.
    pub async fn add_forward(
        &self,
        caller: &Caller,
        name: &str,
        req: NewForward,
    ) -> Result<ForwardRow, SandboxError> {
        req.validate()?;
        let (row, _) = self.find_live(caller, name).await?;
        if self.target_of(&row, req.guest_port).is_none() {
            return Err(SandboxError::Invalid {
                field: "name",
                message: format!(
                    "VM \"{}\" has no network to forward to (VM sandboxes need [network] enabled = true)",
                    row.name
                ),
            });
        }
        let listener = self.bind_forward(req.host_port.unwrap_or(0)).await?;
        let host_port = listener
            .local_addr()
            .map_err(|source| SandboxError::Io {
                op: "read listener address",
                source,
            })?
            .port();
        let (id, guest, desc) = (row.id, req.guest_port, req.description.clone());
        let fwd = self
            .db
            .call(move |c| Db::insert_forward(c, id, host_port, guest, desc.as_deref()))
            .await?;
        self.serve_forward(row.id, host_port, guest, listener);
        // A delete that started meanwhile may have listed the forwards
        // before this one was recorded: undo it then.
        let now = self.db.call(move |c| Db::sandbox_by_id(c, id)).await?;
        if now.is_none_or(|r| r.status == SandboxStatus::Deleting) {
            self.close_listeners(&[host_port]);
            let _ = self
                .db
                .call(move |c| Db::delete_forward(c, id, host_port))
                .await;
            return Err(SandboxError::NotFound(format!("VM \"{name}\" not found")));
        }
        tracing::info!(sandbox = %row.name, host_port, guest_port = guest, "port forward opened");
        Ok(fwd)
    }

    pub async fn list_forwards(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<Vec<ForwardRow>, SandboxError> {
        let id = self.find(caller, name).await?.id;
        Ok(self
            .db
            .call(move |c| Db::list_forwards(c, Some(id)))
            .await?)
    }

    /// Close a forward and forget it.
    pub async fn remove_forward(
        &self,
        caller: &Caller,
        name: &str,
        host_port: u16,
    ) -> Result<(), SandboxError> {
        let id = self.find(caller, name).await?.id;
        let removed = self
            .db
            .call(move |c| Db::delete_forward(c, id, host_port))
            .await?;
        if !removed {
            return Err(SandboxError::NotFound(format!(
                "no port forward from host port {host_port} on VM \"{name}\""
            )));
        }
        self.close_listeners(&[host_port]);
        Ok(())
    }

    /// Close the listeners of a sandbox being deleted (its rows go with it).
    pub(super) fn close_forwards_of(&self, sandbox_id: i64) {
        let mut map = self.forwards.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (id, task)| {
            if *id == sandbox_id {
                task.abort();
            }
            *id != sandbox_id
        });
    }

    /// At startup: open every recorded forward again. A port that cannot be
    /// bound is logged and stays recorded (remove it, or free the port and
    /// restart).
    pub async fn open_recorded_forwards(&self) -> Result<usize, SandboxError> {
        let rows = self.db.call(|c| Db::list_forwards(c, None)).await?;
        let mut opened = 0;
        for fwd in rows {
            match self.bind_forward(fwd.host_port).await {
                Ok(listener) => {
                    self.serve_forward(fwd.sandbox_id, fwd.host_port, fwd.guest_port, listener);
                    opened += 1;
                }
                Err(e) => {
                    tracing::warn!(sandbox_id = fwd.sandbox_id, host_port = fwd.host_port, error = %e, "cannot reopen port forward")
                }
            }
        }
        Ok(opened)
    }

    async fn bind_forward(&self, port: u16) -> Result<TcpListener, SandboxError> {
        let addr = SocketAddr::new(self.config.network.forward_bind, port);
        TcpListener::bind(addr).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                SandboxError::Conflict(format!("host port {port} is in use"))
            }
            std::io::ErrorKind::PermissionDenied => SandboxError::Invalid {
                field: "host_port",
                message: format!("binding {addr} is not permitted"),
            },
            _ => SandboxError::Io {
                op: "bind a port forward",
                source: e,
            },
        })
    }

    /// Serve a forward of sandbox `sandbox_id` (looked up by id per
    /// connection: a later sandbox with the same name is never reached).
    fn serve_forward(
        &self,
        sandbox_id: i64,
        host_port: u16,
        guest_port: u16,
        listener: TcpListener,
    ) {
        let this = self.clone();
        let task = network::serve_connections(listener, MAX_CONNECTIONS, move |conn| {
            let this = this.clone();
            async move { this.forward_one(sandbox_id, guest_port, conn).await }
        });
        self.forwards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host_port, (sandbox_id, task));
    }

    fn close_listeners(&self, ports: &[u16]) {
        let mut map = self.forwards.lock().unwrap_or_else(|p| p.into_inner());
        for port in ports {
            if let Some((_, task)) = map.remove(port) {
                task.abort();
            }
        }
    }

    async fn forward_one(
        &self,
        sandbox_id: i64,
        guest_port: u16,
        mut inbound: TcpStream,
    ) -> std::io::Result<()> {
        let row = self
            .db
            .call(move |c| Db::sandbox_by_id(c, sandbox_id))
            .await;
        let target = row
            .ok()
            .flatten()
            .filter(|r| r.status == SandboxStatus::Running)
            .and_then(|r| self.target_of(&r, guest_port))
            .ok_or_else(|| {
                std::io::Error::other(format!("sandbox {sandbox_id} is not reachable"))
            })?;
        let out = network::connect_in(&target, CONNECT_TIMEOUT).await?;
        let mut out = TcpStream::from_std(out)?;
        tokio::io::copy_bidirectional(&mut inbound, &mut out).await?;
        Ok(())
    }

    fn target_of(&self, row: &SandboxRow, port: u16) -> Option<PortTarget> {
        let name = parse_sandbox_name(&row.name).ok()?;
        self.runtime
            .port_target(&self.context(&name), &row.runtime_state, port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(guest_port: u16, protocol: Option<&str>) -> NewForward {
        NewForward {
            guest_port,
            protocol: protocol.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn validate_accepts_tcp_and_no_protocol() {
        req(80, None).validate().unwrap();
        req(80, Some("tcp")).validate().unwrap();
    }

    #[test]
    fn validate_names_the_bad_field() {
        let field = |r: NewForward| match r.validate() {
            Err(SandboxError::Invalid { field, message }) => format!("{field}: {message}"),
            other => panic!("expected Invalid, got {other:?}"),
        };

        assert_eq!(
            field(req(80, Some("udp"))),
            "protocol: udp is not supported; use tcp"
        );
        assert_eq!(field(req(80, Some("sctp"))), "protocol: must be tcp");
        assert_eq!(field(req(0, None)), "guest_port: must be 1-65535");
    }
}
