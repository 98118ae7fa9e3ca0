//! Builds the plugins under `plugins/` for `wasm32-wasip2`, so `cargo build` alone produces a
//! binary with its built-in plugins embedded, and the tests get their guest components.
//!
//! The plugins are built by a nested `cargo build` into their own target directory (beside the
//! outer one), because the outer build holds the lock on its own. Built-ins are exposed to the
//! crate as `CALLFLOW_PLUGIN_<NAME>` paths (embedded with `include_bytes!`); test guests as
//! `CALLFLOW_TEST_GUEST_<NAME>` paths; the examples of `plugins/examples` as
//! `CALLFLOW_EXAMPLE_<NAME>` paths.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (package, environment variable) for every component built here.
const COMPONENTS: &[(&str, &str)] = &[
    ("callflow-plugin-hello", "CALLFLOW_PLUGIN_HELLO"),
    ("callflow-plugin-twiml", "CALLFLOW_PLUGIN_TWIML"),
    ("callflow-plugin-retry", "CALLFLOW_PLUGIN_RETRY"),
    ("callflow-plugin-rapidpro", "CALLFLOW_PLUGIN_RAPIDPRO"),
    ("callflow-test-abuse", "CALLFLOW_TEST_GUEST_ABUSE"),
    ("callflow-test-fs-import", "CALLFLOW_TEST_GUEST_FS_IMPORT"),
    ("callflow-test-net-import", "CALLFLOW_TEST_GUEST_NET_IMPORT"),
    ("callflow-test-bad-keep", "CALLFLOW_TEST_GUEST_BAD_KEEP"),
    ("callflow-example-menu", "CALLFLOW_EXAMPLE_MENU"),
    (
        "callflow-example-retry-hours",
        "CALLFLOW_EXAMPLE_RETRY_HOURS",
    ),
    (
        "callflow-example-trim-silence",
        "CALLFLOW_EXAMPLE_TRIM_SILENCE",
    ),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.join("../..");
    for watched in ["plugins", "sdk", "wit", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    // OUT_DIR is <target>/<profile>/build/<pkg>/out: the plugins get <target>/wasm-plugins
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map_or_else(|| out_dir.join("wasm"), |t| t.join("wasm-plugins"));

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    for (package, _) in COMPONENTS {
        cmd.args(["-p", package]);
    }
    // The outer build's compiler wrappers (clippy's, for one) and flags are not for the guests.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true");
    let status = cmd
        .status()
        .expect("running cargo to build the wasm plugins");
    assert!(
        status.success(),
        "building the plugins for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`)"
    );
    for (package, var) in COMPONENTS {
        let file = target_dir
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", package.replace('-', "_")));
        assert!(
            Path::new(&file).is_file(),
            "{} was not built",
            file.display()
        );
        println!("cargo:rustc-env={var}={}", file.display());
    }
}
