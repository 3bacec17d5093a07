//! `courier new NAME`: a component crate that builds for `wasm32-wasip2` and handles messages
//! as it stands.

use std::fs;
use std::path::{Path, PathBuf};

/// This repository's SDK, as seen when `courier` was compiled. A crate created by a
/// `courier` built from the repository depends on it by path, so it builds against the SDK
/// beside it rather than a published one.
const REPO_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk");

/// The SDK version a crate depends on when this repository's SDK is not at hand.
const SDK_VERSION: &str = "0.1";

/// Names a crate may not have: Rust's keywords and the crates every program already sees.
const RESERVED: [&str; 57] = [
    "as",
    "async",
    "await",
    "break",
    "const",
    "continue",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "return",
    "self",
    "Self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "abstract",
    "become",
    "box",
    "do",
    "final",
    "gen",
    "macro",
    "override",
    "priv",
    "try",
    "typeof",
    "unsized",
    "virtual",
    "yield",
    "alloc",
    "core",
    "std",
    "proc_macro",
    "test",
];

/// What `courier new` made.
#[derive(Debug, Clone)]
pub struct Created {
    /// The crate's name, which is also its component id in the generated manifest.
    pub name: String,
    /// The crate's folder.
    pub dir: PathBuf,
    /// The files written, in the crate's folder.
    pub files: Vec<PathBuf>,
    /// How the crate depends on the SDK (`path = ...` or a version).
    pub sdk: String,
}

/// Whether `name` can be the name of a new component crate (and so of its component): an
/// ASCII letter, then letters, digits, `-` or `_`; not a Rust keyword or a standard crate;
/// not `host`, which is the host's own sender id, nor the SDK's name.
pub fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Err("the name is empty".into()),
        Some(first) if !first.is_ascii_alphabetic() => {
            return Err(format!("`{name}` must start with an ASCII letter"));
        }
        Some(_) => {}
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return Err(format!(
            "`{name}` contains {bad:?}: a crate name has only ASCII letters, digits, `-` and `_`"
        ));
    }
    if name.len() > 64 {
        return Err(format!("`{name}` is longer than 64 characters"));
    }
    let underscored = name.replace('-', "_");
    if RESERVED.contains(&underscored.as_str()) {
        return Err(format!(
            "`{name}` is a Rust keyword or a standard crate's name"
        ));
    }
    if underscored == "host" {
        return Err("`host` is the sender id of the host itself".into());
    }
    if underscored == "courier_sdk" || underscored == "courier_sdk_macros" {
        return Err(format!("`{name}` is the SDK's own name"));
    }
    Ok(())
}

/// Create the crate in the new folder `dir`, whose last part is the crate's name. Refuses a
/// folder that exists and a name that is not a valid crate name.
pub fn new_component(dir: &Path) -> Result<Created, String> {
    let name = dir
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| format!("{} does not end in a crate name", dir.display()))?
        .to_string();
    check_name(&name).map_err(|reason| format!("cannot create `{name}`: {reason}"))?;
    if dir.exists() || dir.is_symlink() {
        return Err(format!(
            "{} already exists: choose a new folder",
            dir.display()
        ));
    }
    let sdk = sdk_dependency();
    let artifact = name.replace('-', "_");
    let files = [
        ("Cargo.toml", cargo_toml(&name, &sdk)),
        ("src/lib.rs", lib_rs(&name, &artifact)),
        ("courier.toml", manifest(&name, &artifact)),
        ("rust-toolchain.toml", toolchain()),
        (".gitignore", "/target\n".to_string()),
    ];

    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .map_err(|err| format!("cannot create {}: {err}", parent.display()))?;
    }
    // `create_dir` rather than `create_dir_all`: it fails if the folder appeared meanwhile.
    fs::create_dir(dir).map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
    let mut written = Vec::new();
    for (file, text) in files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(|err| format!("cannot create {}: {err}", parent.display()))?;
        }
        fs::write(&path, text).map_err(|err| format!("cannot write {}: {err}", path.display()))?;
        written.push(path);
    }
    Ok(Created {
        name,
        dir: dir.to_path_buf(),
        files: written,
        sdk,
    })
}

/// This repository's toolchain file, whose compiler a new crate is pinned to.
const REPO_TOOLCHAIN: &str = include_str!("../../rust-toolchain.toml");

/// The new crate's `rust-toolchain.toml`: the compiler Courier is built with, and the
/// wasm32-wasip2 target, so rustup installs what the crate needs on a machine whose default
/// toolchain lacks the target.
fn toolchain() -> String {
    let channel = REPO_TOOLCHAIN
        .parse::<toml::Table>()
        .ok()
        .and_then(|table| {
            let channel = table.get("toolchain")?.get("channel")?.as_str()?;
            Some(channel.to_string())
        })
        .unwrap_or_else(|| "stable".to_string());
    format!(
        "[toolchain]\n\
         # rustup installs this compiler and the target components are built for on first\n\
         # use, whatever the machine's default toolchain has.\n\
         channel = \"{channel}\"\n\
         targets = [\"wasm32-wasip2\"]\n\
         profile = \"minimal\"\n"
    )
}

/// The `courier-sdk` dependency: by path to this repository's SDK if it is still where it
/// was when `courier` was built, by version otherwise.
fn sdk_dependency() -> String {
    match fs::canonicalize(REPO_SDK) {
        Ok(path) if path.join("Cargo.toml").is_file() => {
            let path = toml::Value::String(path.to_string_lossy().into_owned());
            format!("{{ path = {path} }}")
        }
        _ => format!("\"{SDK_VERSION}\""),
    }
}

fn cargo_toml(name: &str, sdk: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# A component is a library that the Courier host loads.
crate-type = ["cdylib"]

[dependencies]
courier-sdk = {sdk}

[profile.release]
# Small components load and compile faster in the host; size matters more than speed here.
opt-level = "s"
lto = true
strip = true
codegen-units = 1

# A crate of its own, even inside another project's folder.
[workspace]
"#
    )
}

fn lib_rs(name: &str, artifact: &str) -> String {
    format!(
        r#"//! `{name}`: a Courier component.
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (the component is
//! `target/wasm32-wasip2/release/{artifact}.wasm`), run it with `courier run courier.toml`,
//! then send it a message and a request:
//!
//! ```text
//! curl -X POST --data 'hello' http://127.0.0.1:8080/components/{name}/messages
//! curl -X POST --data 'world' http://127.0.0.1:8080/components/{name}/requests
//! ```

use courier_sdk::prelude::*;

/// Handles a fire-and-forget message: logs who sent it and what it says.
#[handler]
fn on_message(msg: Message) -> Result<(), HandlerError> {{
    // A payload that is not UTF-8 is refused with `invalid-message`.
    let text = msg.text()?;
    courier_sdk::info!("{{}} says {{text:?}}", msg.sender());
    Ok(())
}}

/// Answers a request: greets whoever it names.
#[handler(request)]
fn on_request(req: Message) -> Result<Vec<u8>, HandlerError> {{
    Ok(format!("hello, {{}}", req.text()?).into_bytes())
}}
"#
    )
}

fn manifest(name: &str, artifact: &str) -> String {
    format!(
        r#"# Run this component with `courier run courier.toml` once it is built with
# `cargo build --release --target wasm32-wasip2`. See `courier --help`.

[runtime]
listen = "127.0.0.1:8080"

[[component]]
id = "{name}"
path = "target/wasm32-wasip2/release/{artifact}.wasm"
limits = {{ memory = "16 MiB", deadline = "100ms" }}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_names_follow_cargo() {
        for good in ["greeter", "order-billing", "a1_b2"] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "1st",
            "-x",
            "has space",
            "dot.ted",
            "fn",
            "std",
            "host",
            "courier-sdk",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn an_existing_folder_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("greeter");
        fs::create_dir(&target).unwrap();
        let err = new_component(&target).unwrap_err();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(fs::read_dir(&target).unwrap().count(), 0);
    }

    #[test]
    fn a_new_crate_has_a_manifest_sources_and_a_run_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let created = new_component(&dir.path().join("order-billing")).unwrap();
        assert_eq!(created.name, "order-billing");
        let cargo = fs::read_to_string(created.dir.join("Cargo.toml")).unwrap();
        assert!(cargo.contains("name = \"order-billing\""));
        assert!(cargo.contains("crate-type = [\"cdylib\"]"));
        assert!(cargo.contains("courier-sdk = "));
        assert!(cargo.contains("\n[workspace]\n"));
        let lib = fs::read_to_string(created.dir.join("src/lib.rs")).unwrap();
        assert!(lib.contains("#[handler]\nfn on_message"));
        assert!(lib.contains("#[handler(request)]\nfn on_request"));
        let manifest = fs::read_to_string(created.dir.join("courier.toml")).unwrap();
        assert!(manifest.contains("release/order_billing.wasm"));
        assert!(cargo.parse::<toml::Table>().is_ok(), "Cargo.toml is TOML");
        // Its own toolchain file lists the target, so rustup installs it by itself.
        let toolchain = fs::read_to_string(created.dir.join("rust-toolchain.toml")).unwrap();
        let toolchain = toolchain.parse::<toml::Table>().unwrap();
        let ours = REPO_TOOLCHAIN.parse::<toml::Table>().unwrap();
        assert_eq!(
            toolchain["toolchain"]["targets"],
            toml::Value::Array(vec!["wasm32-wasip2".into()])
        );
        assert_eq!(
            toolchain["toolchain"]["channel"],
            ours["toolchain"]["channel"]
        );
    }
}
