//! HTTP client for one Cloud Hypervisor process's API socket (hyper 1 over a
//! Unix socket via hyperlocal).
//!
//! CH answers errors with a JSON array of strings — its error chain, outermost
//! first. It is carried verbatim in [`ClientError::Refused`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use hyperlocal::UnixConnector;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::api::{
    file_url, DiskConfig, PciDeviceInfo, RestoreConfig, VmConfig, VmCounters, VmInfo,
    VmRemoveDevice, VmResize, VmSnapshotConfig, VmmPingResponse,
};

/// Time limit for ordinary requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time limit for requests that move guest memory (snapshot, restore).
const STATE_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the cloud-hypervisor API at {socket} for {op}")]
    Transport {
        op: &'static str,
        socket: PathBuf,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("cloud-hypervisor did not answer {op} within {after:?}")]
    Timeout { op: &'static str, after: Duration },
    #[error("cloud-hypervisor refused {op} (HTTP {status}): {}", chain.join(": "))]
    Refused {
        op: &'static str,
        status: u16,
        /// CH's error chain, outermost first.
        chain: Vec<String>,
    },
    #[error("reading the answer to {op} failed")]
    Body {
        op: &'static str,
        #[source]
        source: hyper::Error,
    },
    #[error("unexpected answer to {op}: {body}")]
    Decode {
        op: &'static str,
        body: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode the {op} request")]
    Encode {
        op: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// CH's error chain when CH itself refused the request.
    pub fn chain(&self) -> Option<&[String]> {
        match self {
            ClientError::Refused { chain, .. } => Some(chain),
            _ => None,
        }
    }
}

/// A client bound to one API socket. Cheap to clone; no connection pooling
/// (a restarted CH on the same path must never see a stale connection).
#[derive(Clone)]
pub struct ChClient {
    socket: PathBuf,
    http: Client<UnixConnector, Full<Bytes>>,
}

impl std::fmt::Debug for ChClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChClient")
            .field("socket", &self.socket)
            .finish()
    }
}

impl ChClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(UnixConnector);
        ChClient {
            socket: socket.into(),
            http,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn ping(&self) -> Result<VmmPingResponse, ClientError> {
        self.get_json("vmm.ping").await
    }

    pub async fn create(&self, config: &VmConfig) -> Result<(), ClientError> {
        self.put(
            "vm.create",
            Some(encode("vm.create", config)?),
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }

    pub async fn boot(&self) -> Result<(), ClientError> {
        self.put_empty("vm.boot").await
    }

    pub async fn info(&self) -> Result<VmInfo, ClientError> {
        self.get_json("vm.info").await
    }

    pub async fn counters(&self) -> Result<VmCounters, ClientError> {
        self.get_json("vm.counters").await
    }

    pub async fn pause(&self) -> Result<(), ClientError> {
        self.put_empty("vm.pause").await
    }

    pub async fn resume(&self) -> Result<(), ClientError> {
        self.put_empty("vm.resume").await
    }

    /// `vm.snapshot` into `dir` (must exist). The VM must be paused.
    pub async fn snapshot(&self, dir: &Path) -> Result<(), ClientError> {
        let body = VmSnapshotConfig {
            destination_url: file_url(dir),
        };
        let body = encode("vm.snapshot", &body)?;
        self.put("vm.snapshot", Some(body), STATE_TIMEOUT)
            .await
            .map(drop)
    }

    pub async fn restore(&self, config: &RestoreConfig) -> Result<(), ClientError> {
        let body = encode("vm.restore", config)?;
        self.put("vm.restore", Some(body), STATE_TIMEOUT)
            .await
            .map(drop)
    }

    pub async fn shutdown(&self) -> Result<(), ClientError> {
        self.put_empty("vm.shutdown").await
    }

    pub async fn delete(&self) -> Result<(), ClientError> {
        self.put_empty("vm.delete").await
    }

    /// Hot-plug a disk. `None` when CH cold-added it (VM not booted, 204).
    pub async fn add_disk(&self, disk: &DiskConfig) -> Result<Option<PciDeviceInfo>, ClientError> {
        let body = encode("vm.add-disk", disk)?;
        let answer = self.put("vm.add-disk", Some(body), REQUEST_TIMEOUT).await?;
        if answer.is_empty() {
            return Ok(None);
        }
        decode("vm.add-disk", &answer).map(Some)
    }

    pub async fn remove_device(&self, id: &str) -> Result<(), ClientError> {
        let body = encode("vm.remove-device", &VmRemoveDevice { id: id.into() })?;
        self.put("vm.remove-device", Some(body), REQUEST_TIMEOUT)
            .await
            .map(drop)
    }

    pub async fn resize(&self, resize: &VmResize) -> Result<(), ClientError> {
        let body = encode("vm.resize", resize)?;
        self.put("vm.resize", Some(body), REQUEST_TIMEOUT)
            .await
            .map(drop)
    }

    /// Ask the VMM process to exit (it shuts the VM down first).
    pub async fn vmm_shutdown(&self) -> Result<(), ClientError> {
        self.put_empty("vmm.shutdown").await
    }

    async fn put_empty(&self, op: &'static str) -> Result<(), ClientError> {
        self.put(op, None, REQUEST_TIMEOUT).await.map(drop)
    }

    async fn get_json<T: DeserializeOwned>(&self, op: &'static str) -> Result<T, ClientError> {
        let body = self.request(Method::GET, op, None, REQUEST_TIMEOUT).await?;
        decode(op, &body)
    }

    async fn put(
        &self,
        op: &'static str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        self.request(Method::PUT, op, body, timeout).await
    }

    async fn request(
        &self,
        method: Method,
        op: &'static str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        let call = self.send(method, op, body);
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| ClientError::Timeout { op, after: timeout })?
    }

    async fn send(
        &self,
        method: Method,
        op: &'static str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let uri: hyper::Uri = hyperlocal::Uri::new(&self.socket, &format!("/api/v1/{op}")).into();
        let mut req = Request::builder().method(method).uri(uri);
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("static request parts are valid");
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|source| ClientError::Transport {
                op,
                socket: self.socket.clone(),
                source,
            })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|source| ClientError::Body { op, source })?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        Err(refused(op, status, &bytes))
    }
}

fn encode<T: Serialize>(op: &'static str, value: &T) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(value).map_err(|source| ClientError::Encode { op, source })
}

fn decode<T: DeserializeOwned>(op: &'static str, body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|source| ClientError::Decode {
        op,
        body: String::from_utf8_lossy(body).into_owned(),
        source,
    })
}

/// CH's error body is a JSON array of messages; anything else is kept as text.
fn refused(op: &'static str, status: StatusCode, body: &[u8]) -> ClientError {
    let chain = serde_json::from_slice::<Vec<String>>(body).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(body).trim().to_string();
        if text.is_empty() {
            Vec::new()
        } else {
            vec![text]
        }
    });
    ClientError::Refused {
        op,
        status: status.as_u16(),
        chain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_parses_ch_error_chain() {
        let body = br#"["Error from API","The VM could not be snapshotted","GetNestedState(Invalid argument)"]"#;

        let err = refused("vm.snapshot", StatusCode::INTERNAL_SERVER_ERROR, body);

        assert_eq!(
            err.to_string(),
            "cloud-hypervisor refused vm.snapshot (HTTP 500): Error from API: \
             The VM could not be snapshotted: GetNestedState(Invalid argument)"
        );
    }

    #[test]
    fn refused_keeps_plain_text_body() {
        let err = refused("vm.boot", StatusCode::NOT_FOUND, b"not created\n");

        assert_eq!(err.chain(), Some(&["not created".to_string()][..]));
    }

    #[test]
    fn refused_empty_body_has_empty_chain() {
        let err = refused("vm.pause", StatusCode::METHOD_NOT_ALLOWED, b"");

        assert_eq!(err.chain(), Some(&[][..]));
    }
}
