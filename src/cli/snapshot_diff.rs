//! `rewind snapshot diff <sandbox> <a> [<b>]`: the paths added, modified
//! and deleted from snapshot `a` to `b` — or, with only `a`, by the step
//! that made `a` (from the snapshot before it) — over `GET
//! /vms/:name/snapshots/:snapshot/diff`.

use serde::Deserialize;

use super::{Client, ClientError};

#[derive(Debug, Deserialize)]
struct Diff {
    from: String,
    to: String,
    added: usize,
    modified: usize,
    deleted: usize,
    changes: Vec<Change>,
}

#[derive(Debug, Deserialize)]
struct Change {
    path: String,
    change: String,
    #[serde(rename = "type")]
    kind: String,
    size_after: Option<u64>,
    diff: Option<String>,
}

/// The diff's route for `a` alone or `a` to `b`.
fn route(sandbox: &str, a: &str, b: Option<&str>, content: bool) -> String {
    let content = if content { "true" } else { "false" };
    match b {
        Some(b) => format!("/vms/{sandbox}/snapshots/{b}/diff?from={a}&content={content}"),
        None => format!("/vms/{sandbox}/snapshots/{a}/diff?content={content}"),
    }
}

/// Prints the diff: a summary line, then `A|M|D <path>` lines (and the
/// unified diffs with `content`); `--json` prints the server's JSON.
pub fn diff(
    client: &Client,
    sandbox: &str,
    (a, b): (&str, Option<&str>),
    content: bool,
    json_out: bool,
) -> Result<i32, ClientError> {
    let body = client.call("GET", &route(sandbox, a, b, content), None)?;
    if json_out {
        println!("{body}");
        return Ok(0);
    }
    let diff: Diff = serde_json::from_value(body).map_err(|e| ClientError::Io {
        what: "unexpected diff answer".into(),
        source: std::io::Error::other(e),
    })?;
    println!(
        "{} -> {}: {} added, {} modified, {} deleted",
        diff.from, diff.to, diff.added, diff.modified, diff.deleted
    );
    for c in &diff.changes {
        println!("{}", line(c));
        if let Some(text) = &c.diff {
            print!("{text}");
        }
    }
    Ok(0)
}

fn line(c: &Change) -> String {
    let mark = match c.change.as_str() {
        "added" => "A",
        "modified" => "M",
        "deleted" => "D",
        _ => "?",
    };
    match (c.kind.as_str(), c.size_after) {
        ("file", Some(size)) => format!("{mark}\t{}\t{size} bytes", c.path),
        (kind, _) => format!("{mark}\t{}\t{kind}", c.path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_with_two_snapshots_diffs_from_the_first() {
        assert_eq!(
            route("sb", "cmd_1", Some("cmd_3"), false),
            "/vms/sb/snapshots/cmd_3/diff?from=cmd_1&content=false"
        );
    }

    #[test]
    fn line_shows_mark_path_and_size() {
        let c = Change {
            path: "/workspace/a".into(),
            change: "added".into(),
            kind: "file".into(),
            size_after: Some(4),
            diff: None,
        };

        assert_eq!(line(&c), "A\t/workspace/a\t4 bytes");
    }
}
