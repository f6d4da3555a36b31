//! Files written whole or not at all, so a reader or a resumed run never
//! sees half a table, cache entry or weight file after a crash or a kill.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A temporary path beside `path`, unique to this process and call, so
/// concurrent writers of one file never mix their bytes.
fn temp_beside(path: &Path) -> PathBuf {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.{}.{}.partial",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Replaces `path` whole or not at all: `fill` writes a temporary file
/// beside it (given its path), which is synced to disk and renamed over
/// `path`. On failure the temporary file is removed; `io_err` turns an I/O
/// error at a path into the caller's error.
pub fn replace<E>(
    path: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
    io_err: impl Fn(&Path, io::Error) -> E,
) -> Result<(), E> {
    let tmp = temp_beside(path);
    let result = fill(&tmp).and_then(|()| {
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_err(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` whole or not at all.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, |tmp| std::fs::write(tmp, bytes), |_, e| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".partial"))
            .collect()
    }

    #[test]
    fn write_replaces_the_file_and_leaves_no_temporary() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.json");
        std::fs::write(&path, "old").unwrap();
        write(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert!(leftovers(tmp.path()).is_empty());
    }

    #[test]
    fn a_failed_fill_keeps_the_old_file_and_removes_the_temporary() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.json");
        std::fs::write(&path, "old").unwrap();
        let err = replace(
            &path,
            |t| {
                std::fs::write(t, "half")?;
                Err(io::Error::other("killed midway"))
            },
            |_, e| e,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "killed midway");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert!(leftovers(tmp.path()).is_empty());
    }

    #[test]
    fn temporaries_of_one_file_differ() {
        let p = Path::new("/x/a.json");
        assert_ne!(temp_beside(p), temp_beside(p));
        assert_eq!(temp_beside(p).parent(), Some(Path::new("/x")));
    }
}
