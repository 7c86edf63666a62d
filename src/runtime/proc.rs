//! What the runtimes read from `/proc` about host processes.

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot),
/// which tells a process from a later one that reused its pid; `None` when
/// the process does not exist (zombies included: they are gone for our
/// purposes).
pub fn start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // "pid (comm) state ppid ..." — comm may contain spaces and ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    if matches!(fields.next()?, "Z" | "X") {
        return None;
    }
    // `rest` starts at field 3 (state); field 22 is 19 further.
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_start_time_handles_spaces_in_comm() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";

        assert_eq!(parse_start_time(stat), Some(987654));
    }

    #[test]
    fn parse_start_time_zombie_is_none() {
        let stat = "42 (ch) Z 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";

        assert_eq!(parse_start_time(stat), None);
    }

    #[test]
    fn start_time_of_self_is_some() {
        let me = std::process::id() as i32;

        assert!(start_time(me).unwrap() > 0);
    }
}
