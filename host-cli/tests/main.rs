//! The `courier` binary's integration tests: the runner end to end, its dashboard in a
//! headless browser, and `courier new`.
//!
//! One test binary rather than one per file: each binary links all of wasmtime, so a binary
//! per file multiplies link time and disk use for nothing.

mod dashboard;
mod durable;
mod durable_lattice;
mod keyed;
mod new;
mod run;
mod server;
mod traces;

use std::path::Path;
use std::process::Command;

/// Runs `courier check` on a manifest and fails the test, with what it printed, unless the
/// manifest and every component in it pass.
fn assert_check_passes(manifest: &Path) {
    let output = Command::new(env!("CARGO_BIN_EXE_courier"))
        .arg("check")
        .arg(manifest)
        .output()
        .expect("the courier binary starts");
    assert!(
        output.status.success(),
        "courier check {} failed:\n{}",
        manifest.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A component that is slow to compile and fails its checks: one core module of 800
/// functions, each a chain of 500 multiplications, and a custom section that makes its bytes
/// (and so its key in a code cache) new each time.
fn slow_to_compile_component() -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn section(id: u8, content: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(content.len(), out);
        out.extend_from_slice(content);
    }
    const FUNCTIONS: usize = 800;
    const CHAIN: usize = 500;
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    // One type, (i32) -> i32.
    section(1, &[1, 0x60, 1, 0x7f, 1, 0x7f], &mut module);
    let mut functions = Vec::new();
    leb(FUNCTIONS, &mut functions);
    functions.extend(std::iter::repeat_n(0u8, FUNCTIONS));
    section(3, &functions, &mut module);
    let mut body = vec![0u8, 0x20, 0]; // no locals; local.get 0
    for i in 0..CHAIN {
        // local.get 0; i32.mul; i32.const k; i32.xor
        body.extend_from_slice(&[0x20, 0, 0x6c, 0x41, (i % 64) as u8, 0x73]);
    }
    body.push(0x0b);
    let mut code = Vec::new();
    leb(FUNCTIONS, &mut code);
    for _ in 0..FUNCTIONS {
        leb(body.len(), &mut code);
        code.extend_from_slice(&body);
    }
    section(10, &code, &mut module);
    let mut custom = vec![4];
    custom.extend_from_slice(b"salt");
    let salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    custom.extend_from_slice(&salt.to_le_bytes());
    custom.extend_from_slice(&std::process::id().to_le_bytes());
    section(0, &custom, &mut module);
    // A component holding that one core module.
    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    section(1, &module, &mut component);
    component
}
