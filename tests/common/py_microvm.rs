//! The API authors' published Python client, `py-microvm` 1.0.1 from PyPI,
//! in a venv made once per test root (needs python3 with venv, and PyPI).

use std::path::PathBuf;

/// The venv's python, with `py-microvm==1.0.1` installed.
pub fn python() -> PathBuf {
    let venv = super::test_root().join("py-microvm-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let ok = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 (scripts/install-deps.sh installs it with python3-venv)");
        assert!(ok.success(), "python3 -m venv failed");
    }
    let ok = std::process::Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "py-microvm==1.0.1"])
        .status()
        .unwrap();
    assert!(ok.success(), "pip install py-microvm==1.0.1 failed");
    python
}
