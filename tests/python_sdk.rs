//! rewind's own Python SDK (`sdk/python`, `pip install`ed into a venv this
//! test makes) against the real service on a real socket: its pytest suite
//! (`sdk/python/tests`) runs with `REWIND_URL` / `REWIND_API_KEY` pointing
//! here, one Rust test per pytest file. The debootstrap image (python3 in
//! the sandbox, for the REPL case) when built, else busybox (the REPL case
//! is then skipped by pytest, by name, with the reason).
//!
//! Needs `python3 -m venv` and PyPI (httpx, pytest, pytest-asyncio); without
//! them the tests print `SKIPPED <name>: <reason>`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::service::Service;

/// What the SDK and its tests need, besides the SDK itself.
const PACKAGES: &[&str] = &[
    "httpx>=0.24,<1",
    "pytest>=7",
    "pytest-asyncio>=0.23",
    "setuptools>=68",
    "wheel",
];

struct Env {
    service: Service,
    url: String,
    python: PathBuf,
    has_python: bool,
}

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk/python")
}

fn env(test: &str) -> Option<&'static Env> {
    static ENV: OnceLock<Result<Env, String>> = OnceLock::new();
    let env = ENV.get_or_init(|| {
        let python = common::python::venv("venv-python-sdk", PACKAGES)?;
        common::python::install_local(&python, &sdk_dir())?;
        let (image, has_python) = common::debootstrap_or_busybox();
        let service = Service::start("python-sdk", image, |_| {});
        let url = service.serve();
        Ok(Env {
            service,
            url,
            python,
            has_python,
        })
    });
    match env {
        Ok(env) => Some(env),
        Err(reason) => {
            println!("SKIPPED {test}: {reason}");
            None
        }
    }
}

/// Runs `sdk/python/tests/<file>` under pytest with a fresh key; asserts
/// it passed and that its sandboxes are gone.
fn pytest(test: &str, file: &str) {
    let Some(env) = env(test) else { return };
    let key = env.service.user_key();
    let basetemp = common::test_root().join(format!("pytest-{test}"));
    let mut cmd = Command::new(&env.python);
    cmd.args(["-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider"])
        .arg(format!("--basetemp={}", basetemp.display()))
        .arg(format!("tests/{file}"))
        .current_dir(sdk_dir())
        .env("REWIND_URL", &env.url)
        .env("REWIND_API_KEY", &key);
    if env.has_python {
        cmd.env("REWIND_SANDBOX_HAS_PYTHON", "1");
    }

    let out = cmd.output().unwrap();

    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "pytest {file} failed:\n{text}");
    assert!(!text.contains(" SKIPPED") || !env.has_python, "{text}");
    assert_eq!(env.service.vm_names(&key), Vec::<String>::new());
}

#[test]
fn python_sdk_sync_client_passes_its_suite() {
    pytest("python_sdk_sync_client_passes_its_suite", "test_sync.py");
}

#[test]
fn python_sdk_async_client_passes_its_suite() {
    pytest("python_sdk_async_client_passes_its_suite", "test_async.py");
}
