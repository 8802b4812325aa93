//! A Python with the examples' requirements (nats-py from PyPI), in a venv under `.data/`,
//! created on first use, so the test command needs nothing installed beforehand but python3.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::workspace_root;

/// The venv's `python`, created (`python3 -m venv`, `pip install -r requirements`) if it cannot
/// import `nats` yet. Once per test process.
pub fn examples_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let root = workspace_root();
            let venv = root.join(".data/venv-examples");
            let python = venv.join("bin/python");
            let ready = || {
                std::process::Command::new(&python)
                    .args(["-c", "import nats"])
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !ready() {
                run("python3", &["-m", "venv", &venv.display().to_string()]);
                let pip = venv.join("bin/pip").display().to_string();
                let requirements = root.join("examples/subscriber/requirements.txt");
                run(
                    &pip,
                    &["install", "-q", "-r", &requirements.display().to_string()],
                );
                assert!(ready(), "nats-py not importable in {}", venv.display());
            }
            python
        })
        .clone()
}

fn run(program: &str, args: &[&str]) {
    let status = std::process::Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed: {status}");
}
