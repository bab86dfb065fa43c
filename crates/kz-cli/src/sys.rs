//! The only `unsafe` code shipped in keyzero: making a pseudo-terminal the controlling terminal of a
//! child (`kz run --mask` on a terminal, so colours and interactive programs keep working).
//!
//! Everything else about the PTY uses rustix's safe wrappers; this module only registers the
//! `pre_exec` hook, which runs in the forked child between `fork` and `exec`, where only
//! async-signal-safe calls are allowed.
#![allow(unsafe_code)]

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// Gives `cmd` the PTY slave as stdin, stdout and stderr, in a new session whose controlling
/// terminal is that slave.
pub fn attach_pty(cmd: &mut Command, slave: &OwnedFd) -> std::io::Result<()> {
    cmd.stdin(Stdio::from(slave.try_clone()?));
    cmd.stdout(Stdio::from(slave.try_clone()?));
    cmd.stderr(Stdio::from(slave.try_clone()?));
    // SAFETY: the hook calls only `setsid` and `ioctl(TIOCSCTTY)` through rustix, both plain
    // system calls that are async-signal-safe; it allocates nothing and touches no lock. By the
    // time it runs, stdin is already a duplicate of the slave, so the ioctl targets fd 0.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid().map_err(std::io::Error::from)?;
            rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())
                .map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    Ok(())
}
