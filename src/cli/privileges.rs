//! One identity per process. sendmail runs a mailer with `F=S` and `U=user:group`
//! under the effective ids of `U=` while the real ids stay root's (sendmail's op
//! guide, F=S); without `F=S` it runs it as the sending local user instead, so the
//! recipe needs `F=S` (docs/recipes/sendmail.md). A process that talks to the
//! internet must not keep a real uid of root it could switch back to: blackpony
//! makes its real and saved ids the effective ones before it does anything else.

/// The real ids a process started with, when they differed from the effective ids
/// and were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub real_uid: u32,
    pub real_gid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Sets the real and saved user and group ids to the effective ones (group first,
/// while the process may still change it). `Ok(None)`: they already were.
///
/// Linux keeps credentials per thread, and the system calls change only the
/// calling thread's (glibc's `setresuid` signals every thread to follow; the
/// raw call does not). So this runs before any other thread exists, and checks
/// that none does: a thread left with the old real uid could switch back.
pub fn drop_real_ids() -> std::io::Result<Option<Dropped>> {
    use rustix::process::{getegid, geteuid, getgid, getuid};
    let (ruid, euid, rgid, egid) = (getuid(), geteuid(), getgid(), getegid());
    if ruid == euid && rgid == egid {
        return Ok(None);
    }
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(std::io::Error::other(format!(
            "{threads} threads already running; the ids must be dropped before any starts"
        )));
    }
    rustix::thread::set_thread_res_gid(egid, egid, egid)?;
    rustix::thread::set_thread_res_uid(euid, euid, euid)?;
    // Check that the real ids cannot come back.
    if getuid() != euid || getgid() != egid {
        return Err(std::io::Error::other("real ids unchanged after setresuid"));
    }
    Ok(Some(Dropped {
        real_uid: ruid.as_raw(),
        real_gid: rgid.as_raw(),
        uid: euid.as_raw(),
        gid: egid.as_raw(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_ids_are_left_alone() {
        // The test runner's real and effective ids are the same.
        assert_eq!(drop_real_ids().unwrap(), None);
    }
}
