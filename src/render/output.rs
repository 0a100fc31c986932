//! Writing rendered files: atomically (temp file in the destination's directory → fsync →
//! rename → fsync the directory) so a reader never sees a partial file, with the mode and owner
//! set on the temp file before it becomes visible; or in place, for a bind-mounted single file
//! that a rename would detach. An unchanged render does not touch the file.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::template::RenderError;

/// Where and how a template's output is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// File path.
    pub path: PathBuf,
    /// Permission bits.
    pub mode: u32,
    /// Owner uid (needs privileges).
    pub owner: Option<u32>,
    /// Group gid.
    pub group: Option<u32>,
    /// Create missing parent directories (mode 0755).
    pub create_dirs: bool,
    /// Overwrite in place instead of renaming (bind-mounted files).
    pub in_place: bool,
}

impl Destination {
    /// Writes `bytes` unless the file already holds exactly them. Returns whether it wrote.
    pub fn write(&self, bytes: &[u8]) -> Result<bool, RenderError> {
        let io = |what: &str, e: std::io::Error| {
            RenderError::Io(format!("{what} {}: {e}", self.path.display()))
        };
        if fs::read(&self.path).is_ok_and(|current| current == bytes) {
            return Ok(false);
        }
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if self.create_dirs {
            fs::create_dir_all(dir).map_err(|e| io("cannot create the directory of", e))?;
        }
        if self.in_place {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&self.path)
                .map_err(|e| io("cannot open", e))?;
            self.secure(&f)
                .map_err(|e| io("cannot set mode/owner of", e))?;
            f.write_all(bytes)
                .and_then(|()| f.sync_all())
                .map_err(|e| io("cannot write", e))?;
            return Ok(true);
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".sidekey-")
            .tempfile_in(dir)
            .map_err(|e| io("cannot create a temp file next to", e))?;
        self.secure(tmp.as_file())
            .map_err(|e| io("cannot set mode/owner for", e))?;
        tmp.write_all(bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| io("cannot write", e))?;
        tmp.persist(&self.path)
            .map_err(|e| io("cannot rename into", e.error))?;
        // Make the rename itself durable.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("cannot sync the directory of", e))?;
        Ok(true)
    }

    fn secure(&self, f: &File) -> std::io::Result<()> {
        f.set_permissions(fs::Permissions::from_mode(self.mode))?;
        if self.owner.is_some() || self.group.is_some() {
            std::os::unix::fs::fchown(f, self.owner, self.group)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn dest(path: PathBuf, in_place: bool) -> Destination {
        Destination {
            path,
            mode: 0o640,
            owner: None,
            group: None,
            create_dirs: true,
            in_place,
        }
    }

    #[test]
    fn atomic_write_sets_mode_skips_unchanged_and_replaces_the_inode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/app.env");
        let d = dest(path.clone(), false);
        assert!(d.write(b"A=1\n").unwrap());
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        assert!(
            !d.write(b"A=1\n").unwrap(),
            "identical output is not rewritten"
        );
        assert_eq!(fs::metadata(&path).unwrap().ino(), meta.ino());
        assert!(d.write(b"A=2\n").unwrap());
        assert_ne!(
            fs::metadata(&path).unwrap().ino(),
            meta.ino(),
            "renamed into place"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "A=2\n");
        let leftovers = fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1, "no temp files left behind");
    }

    #[test]
    fn a_concurrent_reader_never_sees_a_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.conf");
        let (a, b) = ("a".repeat(1 << 20), "b".repeat(1 << 20));
        let d = dest(path.clone(), false);
        d.write(a.as_bytes()).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (path, stop, a, b) = (path.clone(), stop.clone(), a.clone(), b.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let s = fs::read_to_string(&path).unwrap();
                    assert!(s == a || s == b, "partial file of {} bytes", s.len());
                    reads += 1;
                }
                reads
            })
        };
        for i in 0..40 {
            d.write(if i % 2 == 0 {
                b.as_bytes()
            } else {
                a.as_bytes()
            })
            .unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    }

    #[test]
    fn in_place_write_keeps_the_inode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mounted.conf");
        fs::write(&path, "old").unwrap();
        let ino = fs::metadata(&path).unwrap().ino();
        assert!(dest(path.clone(), true).write(b"new").unwrap());
        assert_eq!(fs::metadata(&path).unwrap().ino(), ino);
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
    }

    #[test]
    fn errors_name_the_path() {
        let mut d = dest(PathBuf::from("/proc/sidekey-test/x"), false);
        d.create_dirs = false;
        let e = d.write(b"x").unwrap_err().to_string();
        assert!(e.contains("/proc/sidekey-test/x"), "{e}");
    }
}
