//! Dialing a transport and the protocol handshake.

use super::*;

impl AgentClient {
    /// A client for the agent behind `transport`, with default timeouts.
    /// Nothing is dialed until the first call.
    pub fn new(transport: Transport) -> Self {
        Self::with_timeouts(transport, ClientTimeouts::default())
    }

    /// A client with explicit timeouts.
    pub fn with_timeouts(transport: Transport, timeouts: ClientTimeouts) -> Self {
        Self {
            transport,
            timeouts,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Where this client connects.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Drops idle connections (e.g. after the VM was restored).
    pub fn reset(&self) {
        self.lock_idle().clear();
    }

    pub(super) fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection (`true` = from the pool) or a fresh one.
    pub(super) async fn checkout(&self) -> Result<(Connection, bool), AgentError> {
        if let Some(conn) = self.lock_idle().pop() {
            return Ok((conn, true));
        }
        Ok((self.dial().await?, false))
    }

    pub(super) fn checkin(&self, conn: Connection) {
        let mut idle = self.lock_idle();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Dials and handshakes a new connection within the connect timeout.
    pub(super) async fn dial(&self) -> Result<Connection, AgentError> {
        let after = self.timeouts.connect;
        tokio::time::timeout(after, self.dial_inner())
            .await
            .map_err(|_| AgentError::Timeout {
                op: "connect",
                after,
            })?
    }

    async fn dial_inner(&self) -> Result<Connection, AgentError> {
        let connect_err = |source| AgentError::Connect {
            transport: self.transport.to_string(),
            source,
        };
        let stream: Box<dyn Io> = match &self.transport {
            Transport::Unix(path) => {
                Box::new(UnixStream::connect(path).await.map_err(connect_err)?)
            }
            Transport::Tcp(addr) => {
                let stream = TcpStream::connect(addr).await.map_err(connect_err)?;
                stream.set_nodelay(true).map_err(connect_err)?;
                Box::new(stream)
            }
            Transport::HybridVsock { socket, port } => {
                let stream = UnixStream::connect(socket).await.map_err(connect_err)?;
                Box::new(self.vsock_connect(stream, *port).await?)
            }
        };
        let mut conn = Connection { stream };
        conn.handshake().await?;
        Ok(conn)
    }

    /// Cloud Hypervisor's hybrid vsock preamble.
    async fn vsock_connect(
        &self,
        mut stream: UnixStream,
        port: u32,
    ) -> Result<BufReader<UnixStream>, AgentError> {
        let connect_err = |source| AgentError::Connect {
            transport: self.transport.to_string(),
            source,
        };
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .await
            .map_err(connect_err)?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await.map_err(connect_err)?;
        if !line.starts_with("OK ") {
            return Err(AgentError::VsockRefused {
                transport: self.transport.to_string(),
                reply: line,
            });
        }
        Ok(reader)
    }
}

impl Connection {
    async fn handshake(&mut self) -> Result<(), AgentError> {
        const OP: &str = "handshake";
        let hello = Request::Hello {
            protocol: PROTOCOL_VERSION,
        };
        match self.roundtrip(OP, &hello).await? {
            Response::Hello { .. } => Ok(()),
            other => Err(unexpected(OP, other)),
        }
    }

    pub(super) async fn send(&mut self, op: &'static str, req: &Request) -> Result<(), AgentError> {
        write_frame(&mut self.stream, req)
            .await
            .map_err(|source| AgentError::Connection { op, source })
    }

    pub(super) async fn recv(&mut self, op: &'static str) -> Result<Response, AgentError> {
        match read_frame(&mut self.stream).await {
            Ok(Some(response)) => Ok(response),
            Ok(None) => Err(AgentError::Closed { op }),
            Err(source) => Err(AgentError::Connection { op, source }),
        }
    }

    /// One request, one response (an `Error` response becomes `Remote`).
    pub(super) async fn roundtrip(
        &mut self,
        op: &'static str,
        req: &Request,
    ) -> Result<Response, AgentError> {
        self.send(op, req).await?;
        match self.recv(op).await? {
            Response::Error { code, message } => Err(AgentError::Remote { op, code, message }),
            response => Ok(response),
        }
    }
}

/// A response that does not fit the request.
pub(super) fn unexpected(op: &'static str, response: Response) -> AgentError {
    AgentError::Protocol {
        op,
        detail: format!("unexpected response {response:?}"),
    }
}
