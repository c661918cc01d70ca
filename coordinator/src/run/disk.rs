//! Telling a full disk from other recording failures: a run whose database or checkpoints
//! cannot be written is not helped by re-forming its group, and the user needs to hear that
//! the filesystem is full, not only SQLite's words for it.

use std::path::Path;

/// Whether `err` comes from a full filesystem: SQLite's "database or disk is full", or an
/// I/O error `ENOSPC`, anywhere in its chain.
pub(super) fn is_full(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        let sqlite = cause
            .downcast_ref::<rusqlite::Error>()
            .and_then(rusqlite::Error::sqlite_error_code)
            == Some(rusqlite::ErrorCode::DiskFull);
        let io = cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            == Some(libc::ENOSPC);
        sqlite || io
    })
}

/// Whether a worker's reported failure is a full filesystem (its error text ends in the OS's
/// "No space left on device (os error 28)").
pub(super) fn mentions_full(cause: &str) -> bool {
    cause.contains(&format!("(os error {})", libc::ENOSPC))
}

/// `cause`, introduced by what a user must hear first: the filesystem of `run_dir` is full,
/// with its free space.
pub(super) fn explain(run_dir: &Path, cause: &str) -> String {
    let free = free_bytes(run_dir).map_or_else(
        || "free space unknown".into(),
        |b| format!("{b} bytes free"),
    );
    format!(
        "the filesystem of {} is full ({free}): {cause}",
        run_dir.display()
    )
}

/// Bytes an unprivileged writer may still use on the filesystem of `path`, if it can be read.
pub(super) fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a zeroed statvfs is a valid out-parameter, and `path` is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; statvfs only writes `stat`.
    let status = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    (status == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disks_are_told_from_other_failures() {
        let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(is_full(&anyhow::Error::new(enospc).context("writing")));
        let sqlite = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        assert!(is_full(&anyhow::Error::new(sqlite)));
        let other = std::io::Error::from_raw_os_error(libc::EACCES);
        assert!(!is_full(&anyhow::Error::new(other)));
        let worker = format!(
            "writing checkpoint 24: {}",
            std::io::Error::from_raw_os_error(libc::ENOSPC)
        );
        assert!(mentions_full(&worker), "{worker}");
        assert!(!mentions_full("the peer closed the connection"));
        assert!(explain(Path::new("/"), "x").starts_with("the filesystem of / is full ("));
        assert!(free_bytes(Path::new("/")).is_some());
        assert!(free_bytes(Path::new("/no/such/place")).is_none());
    }
}
