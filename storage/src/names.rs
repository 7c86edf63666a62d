//! Validated names for sandboxes and snapshots.
//!
//! Every path this crate builds is made of fixed components and these names,
//! so validation here is what keeps traversal out.

use std::fmt;
use std::str::FromStr;

/// Longest accepted name, in bytes (all accepted characters are ASCII).
pub const MAX_NAME_LEN: usize = 64;

/// Why a name was rejected.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is {len} bytes long, the limit is {MAX_NAME_LEN}")]
    TooLong { len: usize },
    #[error("name contains {ch:?}; allowed are A-Z a-z 0-9 . _ -")]
    BadChar { ch: char },
    #[error("name starts with {ch:?}")]
    BadStart { ch: char },
    #[error("name contains \"..\"")]
    DotDot,
}

fn validate(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if let Some(ch) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::BadChar { ch });
    }
    if s.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { len: s.len() });
    }
    if let Some(ch) = s.chars().next().filter(|c| matches!(c, '.' | '-')) {
        return Err(NameError::BadStart { ch });
    }
    if s.contains("..") {
        return Err(NameError::DotDot);
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(String);

        impl TryFrom<&str> for $ty {
            type Error = NameError;
            fn try_from(s: &str) -> Result<Self, NameError> {
                validate(s).map(|()| $ty(s.to_owned()))
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                validate(&s).map(|()| $ty(s))
            }
        }

        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::try_from(s)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A validated sandbox name: 1..=64 of `[A-Za-z0-9._-]`, not starting
    /// with `.` or `-`, no `..`.
    SandboxName
);
name_type!(
    /// A validated snapshot (or template) name; same rules as [`SandboxName`].
    SnapshotName
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_from_accepts_safe_names() {
        for ok in [
            "a",
            "cmd_1700000000000",
            "my-box.v2",
            "A_b-c.d",
            &"x".repeat(64),
        ] {
            assert_eq!(SandboxName::try_from(ok).unwrap().as_ref(), ok);
        }
    }

    #[test]
    fn try_from_rejects_traversal() {
        assert_eq!(
            SnapshotName::try_from("..").unwrap_err(),
            NameError::BadStart { ch: '.' }
        );
        assert_eq!(
            SnapshotName::try_from("a..b").unwrap_err(),
            NameError::DotDot
        );
        assert_eq!(
            SnapshotName::try_from("a/b").unwrap_err(),
            NameError::BadChar { ch: '/' }
        );
        assert_eq!(
            SnapshotName::try_from("../etc").unwrap_err(),
            NameError::BadChar { ch: '/' }
        );
    }

    #[test]
    fn try_from_rejects_odd_input() {
        assert_eq!(SandboxName::try_from("").unwrap_err(), NameError::Empty);
        assert_eq!(
            SandboxName::try_from("a\0b").unwrap_err(),
            NameError::BadChar { ch: '\0' }
        );
        assert_eq!(
            SandboxName::try_from("a\nb").unwrap_err(),
            NameError::BadChar { ch: '\n' }
        );
        assert_eq!(
            SandboxName::try_from("a b").unwrap_err(),
            NameError::BadChar { ch: ' ' }
        );
        assert_eq!(
            SandboxName::try_from("é").unwrap_err(),
            NameError::BadChar { ch: 'é' }
        );
        assert_eq!(
            SandboxName::try_from("-rf").unwrap_err(),
            NameError::BadStart { ch: '-' }
        );
        assert_eq!(
            SandboxName::try_from(".hidden").unwrap_err(),
            NameError::BadStart { ch: '.' }
        );
    }

    #[test]
    fn try_from_rejects_too_long() {
        let long = "x".repeat(65);
        assert_eq!(
            SandboxName::try_from(long.as_str()).unwrap_err(),
            NameError::TooLong { len: 65 }
        );
    }

    #[test]
    fn from_str_matches_try_from() {
        let parsed: SnapshotName = "snap-1".parse().unwrap();
        assert_eq!(parsed.to_string(), "snap-1");
        assert_eq!(
            "a/b".parse::<SnapshotName>().unwrap_err(),
            NameError::BadChar { ch: '/' }
        );
    }
}
