//! Checkpoint downloads as an uncompressed tar (POSIX ustar), streamed file by file so a large
//! full-model checkpoint never sits in memory. Sizes of 8 GiB and more use GNU's base-256 size
//! field, which GNU tar, bsdtar and Python's `tarfile` read.

use std::io::{self, Read, Write};
use std::path::Path;

/// Files of a checkpoint that are resume state, not part of the published model.
pub const RESUME_ONLY: &[&str] = &[
    tuna_train::checkpoint::TRAINER_STATE,
    tuna_train::checkpoint::OPTIMIZER_STATE,
];

/// The files of `dir` to publish: regular files, resume state and markers (`.name`) left out,
/// sorted by name.
pub fn publishable_files(dir: &Path) -> io::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if meta.is_file() && !RESUME_ONLY.contains(&name.as_str()) && !name.starts_with('.') {
            out.push((name, meta.len()));
        }
    }
    out.sort();
    Ok(out)
}

fn octal(field: &mut [u8], value: u64) {
    // Digits, then NUL: `field.len() - 1` octal digits, zero padded.
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

/// One 512-byte ustar header for a regular file.
pub fn header(name: &str, size: u64, mtime: u64) -> io::Result<[u8; 512]> {
    let mut h = [0u8; 512];
    let bytes = name.as_bytes();
    if bytes.len() > 100 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tar entry name too long: {name}"),
        ));
    }
    h[..bytes.len()].copy_from_slice(bytes);
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    if size < 8u64.pow(11) {
        octal(&mut h[124..136], size);
    } else {
        // GNU base-256: high bit set, big-endian binary in the remaining bytes.
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    octal(&mut h[136..148], mtime);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Ok(h)
}

/// Writes `files` of `dir` under the folder `prefix/` as a tar stream.
pub fn write_tar(
    dir: &Path,
    prefix: &str,
    files: &[(String, u64)],
    out: &mut impl Write,
) -> io::Result<()> {
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut buf = vec![0u8; 1 << 20];
    for (name, size) in files {
        out.write_all(&header(&format!("{prefix}/{name}"), *size, mtime)?)?;
        let mut f = std::fs::File::open(dir.join(name))?.take(*size);
        let mut written = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
            written += n as u64;
        }
        if written != *size {
            return Err(io::Error::other(format!(
                "{name} changed size while being archived"
            )));
        }
        let pad = (512 - (size % 512) as usize) % 512;
        out.write_all(&vec![0u8; pad])?;
    }
    out.write_all(&[0u8; 1024])
}

/// A `Write` that sends what it gets, in chunks, to an async body stream.
pub struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    pub fn new(tx: tokio::sync::mpsc::Sender<io::Result<Vec<u8>>>) -> Self {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(256 << 10),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(256 << 10));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 256 << 10 {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// The archive's size, for `Content-Length`.
pub fn tar_size(files: &[(String, u64)]) -> u64 {
    files
        .iter()
        .map(|(_, s)| 512 + s.div_ceil(512) * 512)
        .sum::<u64>()
        + 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_reads_back_with_an_independent_reader() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("adapter_config.json"), b"{\"r\": 4}").unwrap();
        let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("adapter_model.safetensors"), &big).unwrap();
        std::fs::write(dir.path().join("trainer_state.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("optimizer.safetensors"), b"xx").unwrap();
        let files = publishable_files(dir.path()).unwrap();
        assert_eq!(
            files.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(),
            ["adapter_config.json", "adapter_model.safetensors"]
        );
        let mut out = Vec::new();
        write_tar(dir.path(), "ckpt-step-4", &files, &mut out).unwrap();
        assert_eq!(out.len() as u64, tar_size(&files));

        let mut ar = tar::Archive::new(out.as_slice());
        let mut seen = Vec::new();
        for entry in ar.entries().unwrap() {
            let mut e = entry.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            seen.push((path, data));
        }
        assert_eq!(seen.len(), 2);
        assert_eq!(
            seen[0],
            (
                "ckpt-step-4/adapter_config.json".to_string(),
                b"{\"r\": 4}".to_vec()
            )
        );
        assert_eq!(seen[1].0, "ckpt-step-4/adapter_model.safetensors");
        assert_eq!(seen[1].1, big);
    }

    #[test]
    fn huge_sizes_use_base256() {
        let h = header("a", 10 << 30, 0).unwrap();
        assert_eq!(h[124], 0x80);
        assert_eq!(
            u64::from_be_bytes(h[128..136].try_into().unwrap()),
            10 << 30
        );
    }
}
