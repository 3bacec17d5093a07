//! Resident memory of this process, for the cost of idle actors.

/// The resident set size of this process in bytes, from the `VmRSS` line of
/// `/proc/self/status` (the second field of `/proc/self/statm`, in KiB rather than pages), or
/// `None` where there is no procfs.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tbench\nVmPeak:\t  2048 kB\nVmRSS:\t    1536 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(1536 * 1024));
        assert_eq!(parse_vm_rss("Name:\tbench\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_resident_memory() {
        assert!(resident_bytes().is_some_and(|bytes| bytes > 0));
    }
}
