//! rewind's own Python SDK (`src/sdk/python`, `pip install`ed into a venv this
//! test makes) against the real service on a real socket: its pytest suite
//! (`src/sdk/python/tests`) runs with `REWIND_URL` / `REWIND_API_KEY` pointing
//! here, one Rust test per pytest file, on the debootstrap image (python3
//! in the sandbox, for the REPL case; no pytest case may be skipped).
//!
//! `#[ignore]`d for needing `python3 -m venv`, PyPI (httpx, pytest,
//! pytest-asyncio) and the debootstrap image: `scripts/test.sh` provides
//! them and runs these with `--ignored`, where a missing one fails naming it.

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
}

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sdk/python")
}

/// The venv with the SDK and the shared service on the debootstrap image;
/// panics naming what is missing (PyPI, or the image).
fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let python = common::python::venv("venv-python-sdk", PACKAGES)
            .and_then(|python| common::python::install_local(&python, &sdk_dir()).map(|()| python))
            .unwrap_or_else(|e| panic!("needs python3 -m venv and PyPI for {PACKAGES:?}: {e}"));
        let service = Service::start("python-sdk", common::debootstrap_image(), |_| {});
        let url = service.serve();
        Env {
            service,
            url,
            python,
        }
    })
}

/// Runs `src/sdk/python/tests/<file>` under pytest with a fresh key; asserts
/// it passed and that its sandboxes are gone.
fn pytest(test: &str, file: &str) {
    let env = env();
    let key = env.service.user_key();
    let basetemp = common::test_root().join(format!("pytest-{test}"));
    let mut cmd = Command::new(&env.python);
    cmd.args(["-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider"])
        .arg(format!("--basetemp={}", basetemp.display()))
        .arg(format!("tests/{file}"))
        .current_dir(sdk_dir())
        .env("REWIND_URL", &env.url)
        .env("REWIND_API_KEY", &key)
        .env("REWIND_SANDBOX_HAS_PYTHON", "1");

    let out = cmd.output().unwrap();

    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "pytest {file} failed:\n{text}");
    assert!(!text.contains(" SKIPPED"), "{text}");
    assert_eq!(env.service.vm_names(&key), Vec::<String>::new());
}

#[test]
#[ignore = "needs PyPI and the debootstrap base image; scripts/test.sh runs it"]
fn python_sdk_sync_client_passes_its_suite() {
    pytest("python_sdk_sync_client_passes_its_suite", "test_sync.py");
}

#[test]
#[ignore = "needs PyPI and the debootstrap base image; scripts/test.sh runs it"]
fn python_sdk_async_client_passes_its_suite() {
    pytest("python_sdk_async_client_passes_its_suite", "test_async.py");
}
