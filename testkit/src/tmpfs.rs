//! A small tmpfs of a test's own, for full-disk tests: mounted on a fresh
//! directory, unmounted on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs; unmounted (lazily, so that a process still holding files
/// there does not keep it) when dropped.
pub struct Tmpfs {
    path: PathBuf,
    /// The directory created for it by [`Tmpfs::mount`].
    _dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount`'s syntax: `24m`) on a new directory.
    /// `None`, with a note on stderr, where this process may not mount;
    /// panics instead in CI as root, where mounting must work.
    pub fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::Builder::new()
            .prefix("acmeproxy-tmpfs-")
            .tempdir()
            .unwrap();
        let mut fs = Self::mount_on(dir.path(), size)?;
        fs._dir = Some(dir);
        Some(fs)
    }

    /// Mounts a tmpfs of `size` on the existing directory `path`; `None` as
    /// for [`Tmpfs::mount`].
    pub fn mount_on(path: &Path, size: &str) -> Option<Self> {
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        if mounted {
            return Some(Self {
                path: path.to_owned(),
                _dir: None,
            });
        }
        assert!(
            !(crate::is_root() && std::env::var_os("CI").is_some()),
            "mount -t tmpfs failed although running as root"
        );
        eprintln!("skipped: cannot mount a tmpfs here (not root?)");
        None
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `file` (inside the tmpfs) until the file system is full, then
    /// gives `room` bytes back.
    pub fn fill(&self, file: &Path, room: u64) {
        use std::io::Write;
        let mut f = std::fs::File::create(file).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(room)).unwrap();
        f.sync_all().unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
