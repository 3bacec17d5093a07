//! Finds, or installs, the headless Chromium that the dashboard's browser test drives.
//!
//! The test (`host-cli/tests/dashboard.rs`) looks for the browser in `$CHROMIUM_BIN`, then on
//! `PATH`. `test-all` runs [`chromium_for_tests`] first and hands the path it found to
//! `cargo test` in `CHROMIUM_BIN`, so a fresh Debian machine needs no manual step: as root, or
//! with password-less sudo, Debian's `chromium` package is installed with apt-get, as
//! nats-server is. There is no second installer: Chromium is not on PyPI, and downloading a
//! browser build from elsewhere would be a dependency nobody reviewed.
//!
//! Where it can be neither found nor installed, a developer's `test-all` goes on without it
//! and the browser test prints why it skipped; in CI (`CI` set to anything but `false`) that
//! is an error, so the browser test never silently stops running there.
//!
//! Like `nats-server`, everything this prints goes to stderr, so that `cargo xtask chromium`
//! prints nothing but the path on stdout.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::nats::{apt_access, apt_install_package, find_on_path, is_executable, last_lines};

/// The environment variable that names the Chromium binary to use. `test-all` sets it for
/// `cargo test`, and the dashboard's browser test reads it.
pub const CHROMIUM_BIN_ENV: &str = "CHROMIUM_BIN";

/// The Debian package (148 on Debian 12, from bookworm-security).
const APT_PACKAGE: &str = "chromium";

/// The names a Chromium-based browser that takes the same headless flags goes by on `PATH`:
/// Debian's, Ubuntu's and Fedora's package, then Google's build.
const NAMES: [&str; 4] = [
    "chromium",
    "chromium-browser",
    "google-chrome-stable",
    "google-chrome",
];

/// Finds a Chromium that runs and returns its path: `$CHROMIUM_BIN` if set, else one on
/// `PATH`, else it installs Debian's package with apt-get. Prints one line naming the binary,
/// its version and where it came from (and, when installing, the installer's output and how
/// long it took).
///
/// The error names everything that was tried and how to fix it by hand.
pub fn ensure_chromium() -> Result<PathBuf, String> {
    let (path, origin) = find_or_install()?;
    let version = version_of(&path, &origin)?;
    eprintln!("chromium: {version} {origin}: {}", path.display());
    Ok(path)
}

/// What `test-all` runs: [`ensure_chromium`], except that outside CI a machine without
/// Chromium, where it cannot be installed either (and `CHROMIUM_BIN` is unset), is told so
/// and gets `None` (the browser test then skips, saying why) instead of an error.
pub fn chromium_for_tests() -> Result<Option<PathBuf>, String> {
    match ensure_chromium() {
        Ok(path) => Ok(Some(path)),
        // A `CHROMIUM_BIN` that names no browser is a mistake to fix, not a missing browser.
        Err(why) if !in_ci() && env::var_os(CHROMIUM_BIN_ENV).is_none() => {
            eprintln!(
                "chromium: {why}\nchromium: going on without it: the dashboard's browser test \
                 will be skipped (in CI this is an error)"
            );
            Ok(None)
        }
        Err(why) => Err(format!(
            "{why}\n(CI is set, where the dashboard's browser test must run: install Chromium \
             in the CI image, or let the job run apt-get)"
        )),
    }
}

/// Whether this runs in CI, as CI services say: `CI` set, to anything but `false` or `0`.
pub fn in_ci() -> bool {
    env::var("CI").is_ok_and(|value| !matches!(value.as_str(), "" | "false" | "0"))
}

/// The binary and a few words on where it came from, before it is checked to run.
fn find_or_install() -> Result<(PathBuf, String), String> {
    if let Some(value) = env::var_os(CHROMIUM_BIN_ENV) {
        let path = PathBuf::from(&value);
        if !path.is_file() {
            return Err(format!(
                "{CHROMIUM_BIN_ENV} is set to `{}`, which is not a file: point it at a Chromium \
                 binary, or unset it to have xtask find or install one",
                path.display()
            ));
        }
        // Absolute, because `cargo test` runs each test binary from its own crate's folder.
        let path = fs::canonicalize(&path)
            .map_err(|e| format!("could not resolve {CHROMIUM_BIN_ENV}: {e}"))?;
        return Ok((path, format!("from {CHROMIUM_BIN_ENV}")));
    }
    if let Some(path) = NAMES.iter().find_map(|name| find_on_path(name)) {
        return Ok((path, "from PATH".to_owned()));
    }
    install()
}

/// Installs Debian's package with apt-get, if apt-get can run here.
fn install() -> Result<(PathBuf, String), String> {
    eprintln!(
        "chromium: not found ({CHROMIUM_BIN_ENV} is unset and none of {} is on PATH); \
         installing Debian's `{APT_PACKAGE}` package",
        NAMES.join(", ")
    );
    let tried = match apt_access() {
        Ok(sudo) => {
            let started = Instant::now();
            match apt_install_package(sudo, APT_PACKAGE) {
                Ok(()) => {
                    let took = started.elapsed().as_secs_f64();
                    eprintln!("chromium: apt-get took {took:.0} s");
                    let how = if sudo { "sudo apt-get" } else { "apt-get" };
                    let path = find_on_path(APT_PACKAGE)
                        .or_else(|| {
                            Some(PathBuf::from("/usr/bin/chromium")).filter(|p| is_executable(p))
                        })
                        .ok_or_else(|| {
                            format!(
                                "`apt-get install {APT_PACKAGE}` succeeded but there is no \
                                 chromium on PATH"
                            )
                        })?;
                    return Ok((
                        path,
                        format!(
                            "installed with {how} (Debian package {APT_PACKAGE}) in {took:.0} s"
                        ),
                    ));
                }
                Err(why) => why,
            }
        }
        Err(why) => why,
    };
    Err(format!(
        "could not find or install Chromium. Tried:\n  \
         - ${CHROMIUM_BIN_ENV}: not set\n  \
         - PATH: none of {} on it\n  \
         - {tried}\n\
         Install Chromium yourself (Debian and Ubuntu: `apt-get install chromium`; Fedora: \
         `dnf install chromium`) and put it on PATH, or set {CHROMIUM_BIN_ENV}=/path/to/chromium",
        NAMES.join(", ")
    ))
}

/// The version that `binary --version` reports (`Chromium 148.0.7778.167 built on Debian…`),
/// or an error saying the binary does not run.
fn version_of(binary: &Path, origin: &str) -> Result<String, String> {
    let output = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "Chromium {origin} at {} does not run ({e}): set {CHROMIUM_BIN_ENV} to one \
                 that does",
                binary.display()
            )
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let version = stdout.trim();
    if !output.status.success() || version.is_empty() {
        return Err(format!(
            "`{} --version` ({origin}) failed ({}): {}; set {CHROMIUM_BIN_ENV} to a Chromium \
             that runs",
            binary.display(),
            output.status,
            last_lines(&String::from_utf8_lossy(&output.stderr)),
        ));
    }
    Ok(version.to_owned())
}
