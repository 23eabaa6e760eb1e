//! The machine's storage and memory as the server sees them: whether an error means "disk full",
//! free space and sizes under the data directory, and the memory the machine has.

use std::io;
use std::path::Path;

/// ENOSPC, EDQUOT, EFBIG: the disk is full, the user's disk quota is, or a file reached the
/// size limit the process runs under (`ulimit -f`, systemd's `LimitFSIZE=`).
const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;
const EFBIG: i32 = 27;

/// Whether an I/O error means there is no room left to write.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge
    ) || matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT | EFBIG))
}

/// Whether any error in the chain of `e` means the disk is full. Errors that were turned into
/// text on the way (a library's message) are recognised by the OS's wording.
pub fn chain_is_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && is_disk_full(io)
        {
            return true;
        }
        let text = err.to_string();
        if [
            "No space left on device",
            "Disk quota exceeded",
            "File too large",
        ]
        .iter()
        .any(|t| text.contains(t))
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Bytes available to an unprivileged writer on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(path).map_err(io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Total size of the files under `path` (0 when it does not exist).
pub fn dir_size(path: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        if !meta.is_dir() {
            return meta.len();
        }
        std::fs::read_dir(p)
            .map(|entries| entries.flatten().map(|e| walk(&e.path())).sum())
            .unwrap_or(0)
    }
    walk(path)
}

/// The machine's memory in bytes (`MemTotal` of `/proc/meminfo`), when it can be read.
pub fn total_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `1.5 GiB`, `300 MiB`, `12 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_is_disk_full_in_any_wrapping() {
        let e = io::Error::from_raw_os_error(ENOSPC);
        assert!(is_disk_full(&e));
        assert!(!is_disk_full(&io::Error::from_raw_os_error(2)));
        let wrapped = io::Error::other(format!("writing x: {e}"));
        assert!(chain_is_disk_full(&wrapped));
    }

    #[test]
    fn sizes_and_free_space() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/x"), [0u8; 100]).unwrap();
        std::fs::write(dir.path().join("y"), [0u8; 23]).unwrap();
        assert_eq!(dir_size(dir.path()), 123);
        assert_eq!(dir_size(&dir.path().join("none")), 0);
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(total_memory_bytes().unwrap() > 0);
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 bytes");
    }
}
