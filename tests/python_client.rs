//! The Python client (`client/python`) passes its own tests against this
//! workspace's `isoflow`: pytest starts its nodes (plain, and TLS with API
//! tokens) from `CARGO_BIN_EXE_isoflow` and drives them through the
//! package, its example program included.
//!
//! The interpreter is `.deps/python/bin/python`, the venv
//! `deploy/scripts/setup.sh` makes with the pinned packages of
//! `client/python/requirements-dev.txt`; `ISOFLOW_PYTHON` names another.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("node/ is in the repository")
        .to_owned()
}

#[test]
fn the_python_client_passes_its_tests_against_this_build() {
    let repo = repo();
    let python = std::env::var_os("ISOFLOW_PYTHON")
        .map_or_else(|| repo.join(".deps/python/bin/python"), PathBuf::from);
    assert!(
        python.exists(),
        "{} is missing: run deploy/scripts/setup.sh, which makes the venv the Python client's tests need",
        python.display()
    );
    let output = Command::new(&python)
        // No .pytest_cache left in the source tree.
        .args([
            "-m",
            "pytest",
            "client/python/tests",
            "-q",
            "-p",
            "no:cacheprovider",
        ])
        .current_dir(&repo)
        .env("ISOFLOW_BIN", env!("CARGO_BIN_EXE_isoflow"))
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", python.display()));
    assert!(
        output.status.success(),
        "pytest failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
