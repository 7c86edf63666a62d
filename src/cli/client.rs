//! The HTTP side of the CLI: one blocking request per call.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A WebSocket handshake request.
pub type WsRequest = tokio_tungstenite::tungstenite::handshake::client::Request;

/// Why a CLI call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the rewind server at {url}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{status}: {message}")]
    Server { status: u16, message: String },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A bad argument or local input, named in the message.
    #[error("{0}")]
    Usage(String),
    #[error("cannot read the client config {path:?}")]
    Config {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Where the server is and which key to use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Target {
    pub url: Option<String>,
    pub api_key: Option<String>,
}

impl Target {
    /// Flags/env first, then the config file, then the defaults.
    pub fn resolve(flags: Target) -> Result<Target, ClientError> {
        let file = match config_path() {
            Some(path) if path.exists() => read_config(&path)?,
            _ => Target::default(),
        };
        Ok(Target {
            url: flags
                .url
                .or(file.url)
                .or_else(|| Some("http://127.0.0.1:4000".into())),
            api_key: flags.api_key.or(file.api_key),
        })
    }
}

fn config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("rewind/client.toml"))
}

fn read_config(path: &std::path::Path) -> Result<Target, ClientError> {
    let error = |source: Box<dyn std::error::Error + Send + Sync>| ClientError::Config {
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.into()))?;
    toml::from_str(&text).map_err(|e| error(e.into()))
}

/// A blocking client for one server.
pub struct Client {
    http: reqwest::blocking::Client,
    url: String,
    key: Option<String>,
}

impl Client {
    pub fn new(target: Target) -> Self {
        let url = target.url.unwrap_or_default();
        Self {
            http: reqwest::blocking::Client::builder()
                .timeout(None)
                .build()
                .unwrap_or_default(),
            url: url.trim_end_matches('/').to_owned(),
            key: target.api_key,
        }
    }

    /// The WebSocket handshake request for `path` (`ws://` for `http://`;
    /// no TLS here), with the key set.
    pub fn ws_request(&self, path: &str) -> Result<WsRequest, ClientError> {
        let url = match self.url.strip_prefix("http://") {
            Some(rest) => format!("ws://{rest}{path}"),
            None => {
                return Err(ClientError::Usage(format!(
                    "{}: only http:// servers are supported for terminals",
                    self.url
                )))
            }
        };
        let bad = |e: &dyn std::fmt::Display| ClientError::Usage(format!("{url}: {e}"));
        let mut req = url.as_str().into_client_request().map_err(|e| bad(&e))?;
        if let Some(key) = &self.key {
            let value = key.parse().map_err(|e| bad(&e))?;
            req.headers_mut().insert("x-api-key", value);
        }
        Ok(req)
    }

    /// A request to `path` with the key set, for streamed bodies.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::blocking::RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(key) = &self.key {
            req = req.header("x-api-key", key);
        }
        req
    }

    /// Send `req`; the response when it is a 2xx, else the server's error.
    pub fn send(
        &self,
        req: reqwest::blocking::RequestBuilder,
    ) -> Result<reqwest::blocking::Response, ClientError> {
        let resp = req.send().map_err(|source| ClientError::Connect {
            url: self.url.clone(),
            source,
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let message = value["error"].as_str().map(str::to_owned);
        Err(ClientError::Server {
            status,
            message: message.unwrap_or_else(|| value.to_string()),
        })
    }

    /// One request; the JSON body of a 2xx answer (null when empty).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or_default();
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(key) = &self.key {
            req = req.header("x-api-key", key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let connect = |source| ClientError::Connect {
            url: self.url.clone(),
            source,
        };
        let resp = req.send().map_err(connect)?;
        let status = resp.status();
        let text = resp.text().map_err(connect)?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(value);
        }
        let message = value["error"].as_str().map(str::to_owned);
        Err(ClientError::Server {
            status: status.as_u16(),
            message: message.unwrap_or_else(|| value.to_string()),
        })
    }
}
