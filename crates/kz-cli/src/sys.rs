//! The only `unsafe` code shipped in keyzero:
//!
//! - making a pseudo-terminal the controlling terminal of a child (`kz run --mask` on a terminal,
//!   so colours and interactive programs keep working). Everything else about the PTY uses
//!   rustix's safe wrappers; this module only registers the `pre_exec` hook, which runs in the
//!   forked child between `fork` and `exec`, where only async-signal-safe calls are allowed;
//! - the two system calls of `kz run --isolate`'s namespace helper (Linux only) that have no safe
//!   wrapper: `unshare` of a user, network and mount namespace, and the
//!   `SIOCGIFFLAGS`/`SIOCSIFFLAGS` ioctls that bring the new namespace's loopback interface up.
//!   (The mounts that hide the host's sockets use rustix's safe wrappers, in `isolate`.)
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

/// Moves the calling process into a new user namespace, a new network namespace and a new mount
/// namespace (`kz run --isolate`), all owned by the new user namespace. The kernel refuses a new
/// user namespace to a multi-threaded process, so this must run before the process starts any
/// thread.
#[cfg(target_os = "linux")]
pub fn unshare_user_net_mount() -> std::io::Result<()> {
    use rustix::thread::UnshareFlags;
    // SAFETY: `unshare_unsafe` is unsafe only because `CLONE_FILES` would give this thread an fd
    // table of its own that other threads' descriptors are not part of. These flags do not
    // include `FILES` (nor anything else that splits per-thread state: `NEWNS` also unshares
    // the filesystem root and cwd, which is harmless with one thread), and the caller has a
    // single thread.
    unsafe {
        rustix::thread::unshare_unsafe(
            UnshareFlags::NEWUSER | UnshareFlags::NEWNET | UnshareFlags::NEWNS,
        )
    }?;
    Ok(())
}

/// `struct ifreq` as `SIOCGIFFLAGS`/`SIOCSIFFLAGS` use it: the interface name, then the union
/// whose first member is `short ifr_flags`. Padded to 40 bytes, `sizeof(struct ifreq)` on 64-bit
/// Linux (32 on 32-bit), because the kernel copies a whole `struct ifreq` in and out.
#[cfg(target_os = "linux")]
#[repr(C)]
struct IfreqFlags {
    name: [u8; 16],
    flags: std::ffi::c_short,
    pad: [u8; 22],
}

#[cfg(target_os = "linux")]
const _: () = assert!(size_of::<IfreqFlags>() >= 40);

/// Sets the `IFF_UP` flag of the loopback interface `lo` in the current network namespace (a
/// new one starts with `lo` down). Needs `CAP_NET_ADMIN` there, which the owner of a new user
/// namespace has.
#[cfg(target_os = "linux")]
pub fn loopback_up() -> std::io::Result<()> {
    use rustix::ioctl::{Opcode, Setter, Updater, ioctl};
    use rustix::net::{AddressFamily, SocketType};
    const SIOCGIFFLAGS: Opcode = 0x8913;
    const SIOCSIFFLAGS: Opcode = 0x8914;
    const IFF_UP: std::ffi::c_short = 0x1;

    let sock = rustix::net::socket(AddressFamily::INET, SocketType::DGRAM, None)?;
    let mut req = IfreqFlags {
        name: [0; 16],
        flags: 0,
        pad: [0; 22],
    };
    // "lo", NUL-terminated by the zeroed rest.
    for (d, s) in req.name.iter_mut().zip(b"lo") {
        *d = *s;
    }
    // SAFETY: SIOCGIFFLAGS reads `ifr_name` and writes `ifr_flags` of a `struct ifreq`.
    // `IfreqFlags` has that layout (`repr(C)`: 16-byte name, then the flags at offset 16 where
    // the union starts) and is at least `sizeof(struct ifreq)`, so the kernel reads and writes
    // only inside `req`, which the `Updater` borrows mutably for the call.
    unsafe { ioctl(&sock, Updater::<SIOCGIFFLAGS, IfreqFlags>::new(&mut req)) }?;
    req.flags |= IFF_UP;
    // SAFETY: SIOCSIFFLAGS reads a `struct ifreq` (name and flags); the `Setter` owns `req`
    // (same layout and size as above) and passes a pointer to it that lives for the call.
    unsafe { ioctl(&sock, Setter::<SIOCSIFFLAGS, IfreqFlags>::new(req)) }?;
    Ok(())
}
