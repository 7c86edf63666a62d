//! Collecting one stream of a REPL cell up to its end marker.

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

const CHUNK_BYTES: usize = 64 * 1024;

/// Bytes of one stream until `marker` + status + `\n`, capped at `cap`
/// bytes of output (the marker is still found past the cap).
pub struct Collector {
    marker: Vec<u8>,
    cap: usize,
    buf: Vec<u8>,
    truncated: bool,
    /// Where the marker starts and the status after it, once seen.
    end: Option<(usize, String)>,
}

impl Collector {
    pub fn new(marker: String, cap: usize) -> Self {
        Self {
            marker: marker.into_bytes(),
            cap,
            buf: Vec::new(),
            truncated: false,
            end: None,
        }
    }

    pub fn done(&self) -> bool {
        self.end.is_some()
    }

    /// `ok` or `error` from the marker, once seen.
    pub fn status(&self) -> Option<&str> {
        self.end.as_ref().map(|(_, status)| status.as_str())
    }

    /// Reads one chunk (pending forever once done). False on EOF.
    pub async fn read(&mut self, pipe: &mut pipe::Receiver) -> bool {
        if self.done() {
            return std::future::pending().await;
        }
        let mut chunk = vec![0u8; CHUNK_BYTES];
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.push(&chunk[..n]);
                true
            }
        }
    }

    /// Appends bytes, looks for the marker, and trims output past the cap.
    pub fn push(&mut self, data: &[u8]) {
        let from = self.buf.len().saturating_sub(self.marker.len() + 8);
        self.buf.extend_from_slice(data);
        self.find_marker(from);
        if self.end.is_none() {
            self.trim();
        }
    }

    fn find_marker(&mut self, from: usize) {
        let Some(at) = find(&self.buf[from..], &self.marker).map(|i| i + from) else {
            return;
        };
        let rest = &self.buf[at + self.marker.len()..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return;
        };
        let status = String::from_utf8_lossy(&rest[..nl]).into_owned();
        self.end = Some((at, status));
    }

    /// Past the cap, keep the first `cap` bytes and a tail long enough to
    /// hold a marker split across reads.
    fn trim(&mut self) {
        let tail = self.marker.len() + 16;
        if self.buf.len() > self.cap.saturating_add(tail + CHUNK_BYTES) {
            let keep_from = self.buf.len() - tail;
            self.buf.drain(self.cap..keep_from);
            self.truncated = true;
        }
    }

    /// The output before the marker (all of it if none came), capped.
    pub fn into_output(mut self) -> (Vec<u8>, bool) {
        let end = self.end.as_ref().map_or(self.buf.len(), |(at, _)| *at);
        self.buf.truncate(end);
        if self.buf.len() > self.cap {
            self.buf.truncate(self.cap);
            self.truncated = true;
        }
        (self.buf, self.truncated)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_marker_split_across_chunks_is_found() {
        let mut c = Collector::new("\x1eM-1-".into(), 100);

        c.push(b"hello\n\x1eM-");
        c.push(b"1-ok\n");

        assert_eq!(c.status(), Some("ok"));
        assert_eq!(c.into_output(), (b"hello\n".to_vec(), false));
    }

    #[test]
    fn push_output_past_cap_is_truncated_and_marker_still_found() {
        let mut c = Collector::new("\x1eM-1-".into(), 10);

        for _ in 0..40 {
            c.push(&[b'x'; 4096]);
        }
        c.push(b"\x1eM-1-error\n");

        assert_eq!(c.status(), Some("error"));
        assert_eq!(c.into_output(), (vec![b'x'; 10], true));
    }

    #[test]
    fn push_marker_of_another_cell_is_ignored() {
        let mut c = Collector::new("\x1eM-2-".into(), 100);

        c.push(b"\x1eM-1-ok\n");

        assert_eq!(c.status(), None);
    }
}
