//! The API authors' published Python client, `py-microvm` 1.0.1 from PyPI,
//! in a venv made once per test root (needs python3 with venv, and PyPI).

use std::path::PathBuf;

/// The venv's python, with `py-microvm==1.0.1` installed.
pub fn python() -> PathBuf {
    super::python::venv("py-microvm-venv", &["py-microvm==1.0.1"])
        .unwrap_or_else(|e| panic!("py-microvm 1.0.1 venv: {e}"))
}
