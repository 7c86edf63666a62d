//! Python virtual environments for the tests that drive rewind with Python
//! clients (the official MCP SDK, microsandbox's SDK, rewind's own SDK),
//! made under the test root and reused while their package list is the same.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The python of venv `<test root>/<name>` holding `packages` (pip
/// requirement strings); made once, remade when the list changes. An error
/// says why (no `python3 -m venv`, no PyPI) so the caller can skip loudly.
pub fn venv(name: &str, packages: &[&str]) -> Result<PathBuf, String> {
    let dir = super::test_root().join(name);
    let python = dir.join("bin/python3");
    let stamp = dir.join(".installed");
    let wanted = packages.join(" ");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(python);
    }
    if !succeeds(Command::new("python3").args(["-m", "venv"]).arg(&dir)) {
        return Err("python3 -m venv failed (install python3-venv)".into());
    }
    let mut pip = pip_install(&python);
    if !succeeds(pip.args(packages)) {
        return Err(format!("pip install {wanted} failed (no PyPI?)"));
    }
    std::fs::write(&stamp, wanted).map_err(|e| e.to_string())?;
    Ok(python)
}

/// Installs the local package at `source` into the venv of `python`, fresh
/// each time (it is the code under test); no network: its build backend
/// must already be in the venv.
pub fn install_local(python: &Path, source: &Path) -> Result<(), String> {
    let mut pip = pip_install(python);
    pip.args(["--no-deps", "--no-build-isolation", "--force-reinstall"])
        .arg(source);
    match succeeds(&mut pip) {
        true => Ok(()),
        false => Err(format!("pip install {} failed", source.display())),
    }
}

fn pip_install(python: &Path) -> Command {
    let mut cmd = Command::new(python);
    cmd.args(["-m", "pip", "install", "-q", "--disable-pip-version-check"]);
    cmd
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.status().map(|s| s.success()).unwrap_or(false)
}
