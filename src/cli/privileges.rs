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
pub fn drop_real_ids() -> std::io::Result<Option<Dropped>> {
    // SAFETY: these calls take and return plain integers; no memory is shared.
    let (ruid, euid, rgid, egid) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    };
    if ruid == euid && rgid == egid {
        return Ok(None);
    }
    // SAFETY: as above.
    if unsafe { libc::setresgid(egid, egid, egid) } != 0
        || unsafe { libc::setresuid(euid, euid, euid) } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above. Check that the real uid cannot come back.
    let (ruid_now, rgid_now) = unsafe { (libc::getuid(), libc::getgid()) };
    if ruid_now != euid || rgid_now != egid {
        return Err(std::io::Error::other("real ids unchanged after setresuid"));
    }
    Ok(Some(Dropped {
        real_uid: ruid,
        real_gid: rgid,
        uid: euid,
        gid: egid,
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
