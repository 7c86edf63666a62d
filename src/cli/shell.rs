//! `rewind shell`: an interactive terminal in a sandbox over the PTY
//! WebSocket (`GET /vms/:name/pty`, see `api/pty.rs`).
//!
//! When standard input is a terminal it is put in raw mode (restored on
//! the way out) and window resizes are forwarded. Otherwise standard input
//! is piped as it comes, and its end is sent as Ctrl-D so that a shell
//! reading it exits — which makes `printf 'cmd\nexit 3\n' | rewind shell sb`
//! scriptable. Exits with the session's exit code.

use std::io::{self, IsTerminal, Read, Write};

use futures_util::{SinkExt, StreamExt};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message};

use super::{Client, ClientError};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The server's last (text) message.
#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum End {
    #[serde(rename_all = "camelCase")]
    Exit {
        exit_code: i32,
        reason: String,
        snapshot: String,
    },
    Error {
        status: u16,
        error: String,
    },
}

#[derive(Serialize)]
struct Resize {
    resize: Size,
}

#[derive(Serialize)]
struct Size {
    cols: u16,
    rows: u16,
}

/// Opens a terminal in `sandbox` (running `command`, default a login
/// shell) and relays it until it ends; returns its exit code.
pub fn shell(
    client: &Client,
    sandbox: &str,
    command: Option<&str>,
    json_out: bool,
) -> Result<i32, ClientError> {
    let tty = io::stdin().is_terminal();
    let size = tty.then(terminal_size).flatten().unwrap_or((80, 24));
    let req = client.ws_request(&pty_path(sandbox, command, size))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ClientError::Io {
            what: "cannot start the I/O runtime".into(),
            source,
        })?;
    let end = rt.block_on(async {
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(refusal)?;
        let _raw = tty.then(RawMode::enable).transpose()?;
        relay(ws, tty).await
    })?;
    report(end, json_out)
}

fn pty_path(sandbox: &str, command: Option<&str>, (cols, rows): (u16, u16)) -> String {
    let mut url = reqwest::Url::parse("http://query.invalid/").expect("a valid URL");
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("cols", &cols.to_string());
        query.append_pair("rows", &rows.to_string());
        if let Some(command) = command {
            query.append_pair("command", command);
        }
    }
    format!("/vms/{sandbox}/pty?{}", url.query().unwrap_or_default())
}

/// A refused handshake is the server's answer (404, 409, ...).
fn refusal(e: tungstenite::Error) -> ClientError {
    match e {
        tungstenite::Error::Http(response) => {
            let body = response.body().clone().unwrap_or_default();
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            ClientError::Server {
                status: response.status().as_u16(),
                message,
            }
        }
        other => ClientError::Io {
            what: "cannot open the terminal".into(),
            source: io::Error::other(other),
        },
    }
}

/// Bytes both ways until the server's last message.
async fn relay(ws: Ws, tty: bool) -> Result<End, ClientError> {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut input) = mpsc::channel(16);
    // A plain thread: a blocked read of stdin must not hold up the exit.
    std::thread::spawn(move || read_stdin(tx));
    let mut winch = match tty {
        true => Some(signal(SignalKind::window_change()).map_err(local_io)?),
        false => None,
    };
    let mut stdin_open = true;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(data))) => write_out(&data)?,
                Some(Ok(Message::Text(text))) => return parse_end(text.as_str()),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Err(closed_early()),
            },
            data = input.recv(), if stdin_open => {
                // Ctrl-D at the end of piped input: the shell sees end of file.
                let data = data.unwrap_or_else(|| {
                    stdin_open = false;
                    if tty { Vec::new() } else { vec![4] }
                });
                if !data.is_empty() {
                    let _ = sink.send(Message::Binary(data.into())).await;
                }
            }
            () = next_resize(&mut winch) => {
                if let Some((cols, rows)) = terminal_size() {
                    let text = serde_json::to_string(&Resize { resize: Size { cols, rows } })
                        .unwrap_or_default();
                    let _ = sink.send(Message::Text(text.into())).await;
                }
            }
        }
    }
}

async fn next_resize(winch: &mut Option<Signal>) {
    match winch {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

fn read_stdin(tx: mpsc::Sender<Vec<u8>>) {
    let mut stdin = io::stdin().lock();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = stdin.read(&mut buf) {
        if tx.blocking_send(buf[..n].to_vec()).is_err() {
            return;
        }
    }
}

fn write_out(data: &[u8]) -> Result<(), ClientError> {
    let mut out = io::stdout().lock();
    out.write_all(data)
        .and_then(|()| out.flush())
        .map_err(local_io)
}

fn local_io(source: io::Error) -> ClientError {
    ClientError::Io {
        what: "terminal I/O failed".into(),
        source,
    }
}

fn closed_early() -> ClientError {
    ClientError::Io {
        what: "the terminal connection closed before the session's exit".into(),
        source: io::ErrorKind::UnexpectedEof.into(),
    }
}

fn parse_end(text: &str) -> Result<End, ClientError> {
    serde_json::from_str(text).map_err(|e| ClientError::Io {
        what: format!("unexpected terminal message {text:?}"),
        source: io::Error::other(e),
    })
}

/// The exit code (after the terminal is back to normal), or the error.
fn report(end: End, json_out: bool) -> Result<i32, ClientError> {
    if json_out {
        eprintln!("{}", serde_json::to_string(&end).unwrap_or_default());
    }
    match end {
        End::Exit {
            exit_code,
            reason,
            snapshot,
        } => {
            if !json_out {
                eprintln!("[rewind] {reason}, exit {exit_code}, snapshot {snapshot}");
            }
            Ok(exit_code)
        }
        End::Error { status, error } => Err(ClientError::Server {
            status,
            message: error,
        }),
    }
}

nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);

/// Columns and rows of the terminal on standard input.
fn terminal_size() -> Option<(u16, u16)> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into `size`, which we own and
    // which outlives the call; fd 0 is only read, not closed.
    unsafe { tiocgwinsz(libc::STDIN_FILENO, &mut size) }.ok()?;
    (size.ws_col > 0 && size.ws_row > 0).then_some((size.ws_col, size.ws_row))
}

/// Standard input in raw mode until dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enable() -> Result<Self, ClientError> {
        let stdin = io::stdin();
        let saved = tcgetattr(&stdin).map_err(|e| local_io(e.into()))?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).map_err(|e| local_io(e.into()))?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pty_path_encodes_the_command() {
        let path = pty_path("sb", Some("echo a&b"), (100, 40));

        assert_eq!(path, "/vms/sb/pty?cols=100&rows=40&command=echo+a%26b");
    }

    #[test]
    fn parse_end_reads_the_exit_message() {
        let end = parse_end(
            r#"{"type":"exit","exitCode":3,"signal":null,"reason":"exited","snapshot":"cmd_4","durationMs":5,"snapshotMs":1}"#,
        )
        .unwrap();

        assert!(matches!(end, End::Exit { exit_code: 3, ref snapshot, .. } if snapshot == "cmd_4"));
    }
}
