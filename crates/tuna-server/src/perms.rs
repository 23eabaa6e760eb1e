//! Private files: everything the server and its workers write (database, uploads, checkpoints,
//! logs) is for the account that runs Tuna only (issue 9, item 8: the data directory was 0755
//! and `tuna.db`, uploads and checkpoints 0644, readable by every local account).
//!
//! Two layers: the process that serves sets its umask to `077` at start-up
//! ([`restrict_new_files`]), which every file and directory it and its worker processes (which
//! inherit the umask) create then follows; and the places the server itself creates are made
//! with explicit modes (0700 directories, 0600 files), which also fixes the modes left by older
//! versions. SQLite creates `-wal` and `-shm` with the mode of the database file, so a 0600
//! `tuna.db` keeps them private too.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const PRIVATE_DIR_MODE: u32 = 0o700;
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// New files and directories of this process and its children: no access for group or others.
pub fn restrict_new_files() {
    // SAFETY: umask only swaps the process's file-mode mask; it has no memory effects.
    unsafe {
        libc::umask(0o077);
    }
}

/// Creates `dir` (and missing parents) 0700, and makes an existing `dir` 0700.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(PRIVATE_DIR_MODE))
}

/// Creates `file` empty and 0600 if it is missing; makes an existing one 0600.
pub fn private_file(file: &Path) -> io::Result<()> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(PRIVATE_FILE_MODE)
        .open(file)?;
    std::fs::set_permissions(file, Permissions::from_mode(PRIVATE_FILE_MODE))
}

/// Makes `file` 0600 if it exists.
pub fn private_if_exists(file: &Path) -> io::Result<()> {
    match std::fs::set_permissions(file, Permissions::from_mode(PRIVATE_FILE_MODE)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// The SQLite database at `db` and its `-wal`/`-shm`/`-journal` companions, private: the
/// database file is created 0600 before SQLite opens it, so the companions inherit the mode.
pub fn private_sqlite(db: &Path) -> io::Result<()> {
    private_file(db)?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        private_if_exists(Path::new(&name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn dirs_and_files_become_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700, "an existing directory is fixed");

        let db = dir.join("tuna.db");
        std::fs::write(dir.join("tuna.db-wal"), b"x").unwrap();
        std::fs::set_permissions(dir.join("tuna.db-wal"), Permissions::from_mode(0o644)).unwrap();
        private_sqlite(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&dir.join("tuna.db-wal")), 0o600);
        assert!(!dir.join("tuna.db-shm").exists());
    }
}
