//! `rewind run`: the command's output as it is written, over the streamed
//! run (`POST /vms/:name/run` with `Accept: text/event-stream`, see
//! `api/run_stream.rs`), then its exit code as ours.

use std::io::{self, BufRead, BufReader, Write};

use serde::Deserialize;

use super::{Client, ClientError};

/// One event of the stream (the fields the CLI uses).
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Event {
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    #[serde(rename_all = "camelCase")]
    Exit {
        exit_code: i32,
        snapshot: String,
        #[serde(default)]
        timed_out: bool,
    },
    Error {
        status: u16,
        error: String,
    },
}

/// Body of the streamed request.
#[derive(Debug, serde::Serialize)]
pub struct RunBody {
    pub command: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
}

/// Runs `body` in `sandbox`, copying its output to ours as it comes;
/// returns the command's exit code.
pub fn run(client: &Client, sandbox: &str, body: &RunBody) -> Result<i32, ClientError> {
    let req = client
        .request(reqwest::Method::POST, &format!("/vms/{sandbox}/run"))
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .json(body);
    let reader = BufReader::new(client.send(req)?);
    let mut data = String::new();
    for line in reader.lines() {
        let line = line.map_err(broke_off)?;
        if let Some(rest) = line.strip_prefix("data:") {
            data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        } else if line.is_empty() && !data.is_empty() {
            let event = parse(&std::mem::take(&mut data))?;
            if let Some(code) = show(event)? {
                return Ok(code);
            }
        }
    }
    Err(broke_off(io::ErrorKind::UnexpectedEof.into()))
}

fn broke_off(source: io::Error) -> ClientError {
    ClientError::Io {
        what: "the output stream broke off before the command's exit".into(),
        source,
    }
}

fn parse(data: &str) -> Result<Event, ClientError> {
    serde_json::from_str(data).map_err(|e| ClientError::Io {
        what: format!("unexpected stream event {data:?}"),
        source: io::Error::other(e),
    })
}

/// Prints one event; the exit code once the command has ended.
fn show(event: Event) -> Result<Option<i32>, ClientError> {
    let written = match &event {
        Event::Stdout { data } => write_flush(&mut io::stdout().lock(), data),
        Event::Stderr { data } => write_flush(&mut io::stderr().lock(), data),
        Event::Exit {
            exit_code,
            snapshot,
            timed_out,
        } => {
            let timed_out = if *timed_out { " (timed out)" } else { "" };
            eprintln!("[rewind] exit {exit_code}{timed_out}, snapshot {snapshot}");
            return Ok(Some(*exit_code));
        }
        Event::Error { status, error } => {
            return Err(ClientError::Server {
                status: *status,
                message: error.clone(),
            })
        }
    };
    written.map_err(|source| ClientError::Io {
        what: "cannot write the command's output".into(),
        source,
    })?;
    Ok(None)
}

fn write_flush(out: &mut impl Write, data: &str) -> io::Result<()> {
    out.write_all(data.as_bytes())?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_exit_event_reads_camel_case_fields() {
        let event =
            parse(r#"{"type":"exit","exitCode":3,"snapshot":"cmd_2","timedOut":false,"execMs":1}"#)
                .unwrap();

        assert_eq!(
            event,
            Event::Exit {
                exit_code: 3,
                snapshot: "cmd_2".into(),
                timed_out: false
            }
        );
    }

    #[test]
    fn parse_unknown_event_names_it() {
        let err = parse(r#"{"type":"bogus"}"#).unwrap_err();

        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
