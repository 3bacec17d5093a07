//! Helpers that make a test's inputs in one line: a fresh store, an entry, a child process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use bytes::Bytes;
use courier_host_store::{Entry, Kind, RedbStore};

/// The variable that tells a re-executed test binary which child it is.
pub const CHILD_ENV: &str = "COURIER_STORE_CHILD";
/// The variable that tells a child where the store is.
pub const PATH_ENV: &str = "COURIER_STORE_PATH";

/// A store in a fresh temporary folder, and the folder (dropped last).
pub fn fresh() -> (RedbStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let store = RedbStore::open_in_dir(dir.path()).expect("a new store opens");
    (store, dir)
}

/// A message from `sender` to `actor` carrying sequence number `seq` and payload `seq` as text.
pub fn entry(actor: &str, sender: &str, seq: u64) -> Entry {
    Entry::new(actor, sender, Kind::Message, Bytes::from(seq.to_string())).with_seq(seq)
}

/// The payload as the number it carries.
pub fn number(payload: &[u8]) -> u64 {
    std::str::from_utf8(payload)
        .expect("text")
        .parse()
        .expect("a number")
}

/// Which child this process is, if it was started as one.
pub fn child_role() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// This test binary again, running only the test `test` as child `role` on the store at
/// `path`, with the variables `env` and its output piped.
pub fn spawn_child(test: &str, role: &str, path: &Path, env: &[(&str, String)]) -> Child {
    Command::new(std::env::current_exe().expect("the test binary"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, role)
        .env(PATH_ENV, path)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the test binary starts again as a child")
}

/// A line of a child's output without the test harness's `test NAME ... `, which the child's
/// first line follows on the same line.
fn own_part(line: &str) -> &str {
    match line.split_once(" ... ") {
        Some((harness, own)) if harness.starts_with("test ") => own,
        _ => line,
    }
}

/// The lines a child wrote that start with `prefix`, without it, until it closed its output.
pub fn lines_with(stdout: impl std::io::Read, prefix: &str) -> Vec<String> {
    BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| own_part(&line).strip_prefix(prefix).map(str::to_string))
        .collect()
}

/// Wait until the child writes a line equal to `line`; the reader, to read on from.
pub fn wait_for_line(stdout: ChildStdout, line: &str) -> BufReader<ChildStdout> {
    let mut reader = BufReader::new(stdout);
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = reader.read_line(&mut buf).expect("the child's output");
        assert!(n > 0, "the child ended before writing `{line}`");
        if own_part(buf.trim_end()) == line {
            return reader;
        }
    }
}

/// A small pseudo-random sequence, seeded from the clock, so every run kills at other moments
/// (the seed is printed, to replay a failure).
pub struct Random(u64);

impl Random {
    pub fn from_clock() -> Random {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos() as u64
            | 1;
        eprintln!("random seed {seed}");
        Random(seed)
    }

    /// A number in `range`.
    pub fn between(&mut self, range: std::ops::Range<u64>) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        range.start + self.0 % (range.end - range.start)
    }
}
