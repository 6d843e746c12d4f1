//! Faults of a member's storage, for the process tests: a data dir on a small tmpfs that a
//! ballast file fills ([`Tmpfs`]), an `LD_PRELOAD` shim whose `fsync` and `fdatasync` fail
//! with `EIO` once a trigger file exists ([`FsyncShim`]), and bytes flipped inside a file
//! ([`flip_bytes`]).
//!
//! The shim is a few lines of C compiled at run time with the host's `cc` into a temp dir;
//! nothing binary is committed. A mount is unmounted on drop (lazily if a process still
//! holds it), also when the test fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bytes of each write while filling a tmpfs.
const FILL_CHUNK_BYTES: usize = 256 * 1024;

/// A tmpfs mounted by the test; unmounted on drop.
pub struct Tmpfs {
    path: PathBuf,
    /// Its size now.
    size_bytes: std::cell::Cell<u64>,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_bytes` at `path` (created if missing).
    pub fn mount(path: &Path, size_bytes: u64) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("mount");
        assert!(out.status.success(), "mount tmpfs at {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
        Tmpfs { path: path.to_owned(), size_bytes: std::cell::Cell::new(size_bytes) }
    }

    /// Changes the size of the mounted tmpfs (`mount -o remount,size=`).
    pub fn resize(&self, size_bytes: u64) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size_bytes}")])
            .arg(&self.path)
            .output()
            .expect("mount -o remount");
        assert!(out.status.success(), "remount {}: {}", self.path.display(), String::from_utf8_lossy(&out.stderr));
        self.size_bytes.set(size_bytes);
    }

    /// Its size now.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes.get()
    }

    /// Writes `name` in the tmpfs until the write fails (the tmpfs is full); returns the
    /// bytes written.
    pub fn fill(&self, name: &str) -> u64 {
        let mut f = std::fs::File::create(self.path.join(name)).expect("ballast file");
        let chunk = vec![0x5au8; FILL_CHUNK_BYTES];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) | Err(_) => return written,
                Ok(n) => written += n as u64,
            }
        }
    }

    /// Free bytes left in the tmpfs.
    pub fn free_bytes(&self) -> u64 {
        let c = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes()).expect("path without NUL");
        // SAFETY: statvfs on a NUL-terminated path into a zeroed struct we own.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        assert_eq!(rc, 0, "statvfs {}: {}", self.path.display(), std::io::Error::last_os_error());
        st.f_bavail.saturating_mul(st.f_frsize)
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.path).output().is_ok_and(|o| o.status.success());
        if !ok {
            // A member still running on it: detach now, freed when it exits.
            let _ = Command::new("umount").arg("-l").arg(&self.path).output();
        }
    }
}

const FSYNC_SHIM_C: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

/* Fails every fsync-family call with EIO while the file named by PLF_FSYNC_TRIGGER exists. */
static int failing(void) {
    const char *t = getenv("PLF_FSYNC_TRIGGER");
    return t != NULL && access(t, F_OK) == 0;
}

int fsync(int fd) {
    static int (*real)(int);
    if (failing()) { errno = EIO; return -1; }
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (failing()) { errno = EIO; return -1; }
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}
"#;

/// An `LD_PRELOAD` library whose `fsync`/`fdatasync` return `EIO` once its trigger file
/// exists; the temp dir holding it goes on drop.
pub struct FsyncShim {
    dir: tempfile::TempDir,
}

impl FsyncShim {
    /// Compiles the shim with `cc`.
    pub fn build() -> FsyncShim {
        let dir = tempfile::Builder::new().prefix("plf-fsync-shim-").tempdir().expect("temp dir");
        let src = dir.path().join("shim.c");
        std::fs::write(&src, FSYNC_SHIM_C).expect("write shim source");
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(dir.path().join("shim.so"))
            .arg(&src)
            .arg("-ldl")
            .output()
            .expect("cc");
        assert!(out.status.success(), "cc shim: {}", String::from_utf8_lossy(&out.stderr));
        FsyncShim { dir }
    }

    /// The environment process `k` needs to run with the shim (each process has its own
    /// trigger).
    pub fn env(&self, k: usize) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".to_owned(), self.dir.path().join("shim.so").display().to_string()),
            ("PLF_FSYNC_TRIGGER".to_owned(), self.trigger_path(k).display().to_string()),
        ]
    }

    fn trigger_path(&self, k: usize) -> PathBuf {
        self.dir.path().join(format!("fail-fsync-{k}"))
    }

    /// From now on every fsync of process `k` fails with `EIO`.
    pub fn trigger(&self, k: usize) {
        std::fs::write(self.trigger_path(k), b"").expect("write trigger");
    }

    /// Process `k`'s fsyncs work again (for a process started afterwards).
    pub fn untrigger(&self, k: usize) {
        let _ = std::fs::remove_file(self.trigger_path(k));
    }
}

/// Overwrites `len` bytes of `path` at `offset` with their complement; returns the bytes
/// that were there, for [`restore_bytes`].
pub fn flip_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open to corrupt");
    let mut old = vec![0u8; len];
    f.read_exact_at(&mut old, offset).expect("read bytes to flip");
    let flipped: Vec<u8> = old.iter().map(|b| !b).collect();
    f.write_all_at(&flipped, offset).expect("write flipped bytes");
    f.sync_all().expect("fsync corrupted file");
    old
}

/// Puts back bytes that [`flip_bytes`] replaced.
pub fn restore_bytes(path: &Path, offset: u64, old: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).expect("open to restore");
    f.write_all_at(old, offset).expect("restore bytes");
    f.sync_all().expect("fsync restored file");
}

/// Files under `dir` (recursively) whose names end with `suffix`, largest first.
pub fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                found.push(p);
            }
        }
    }
    found.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).map_or(0, |m| m.len())));
    found
}
