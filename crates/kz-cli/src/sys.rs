//! The only `unsafe` code shipped in keyzero:
//!
//! - making a pseudo-terminal the controlling terminal of a child (`kz run --mask` on a terminal,
//!   so colours and interactive programs keep working). Everything else about the PTY uses
//!   rustix's safe wrappers; this module only registers the `pre_exec` hook, which runs in the
//!   forked child between `fork` and `exec`, where only async-signal-safe calls are allowed;
//! - the system calls of `kz run --isolate`'s namespace helper (Linux only) that have no safe
//!   wrapper: `unshare` of a user, network, mount and PID namespace, the `fork` that starts the
//!   new PID namespace's init, `mount_setattr` (make a mount tree read-only, or one mount
//!   writable again), `keyctl(KEYCTL_JOIN_SESSION_KEYRING)`, and the
//!   `SIOCGIFFLAGS`/`SIOCSIFFLAGS` ioctls that bring the new namespace's loopback interface up.
//!   (The other mounts use rustix's safe wrappers, in `isolate`.)
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
/// namespace (`kz run --isolate`), all owned by the new user namespace, and makes the next child
/// it forks the init (pid 1) of a new PID namespace. The kernel refuses a new user namespace to
/// a multi-threaded process, so this must run before the process starts any thread.
#[cfg(target_os = "linux")]
pub fn unshare_isolate_namespaces() -> std::io::Result<()> {
    use rustix::thread::UnshareFlags;
    // SAFETY: `unshare_unsafe` is unsafe only because `CLONE_FILES` would give this thread an fd
    // table of its own that other threads' descriptors are not part of. These flags do not
    // include `FILES` (nor anything else that splits per-thread state: `NEWNS` also unshares
    // the filesystem root and cwd, and `NEWPID` sets the PID namespace of the children of this
    // thread only, both harmless with one thread), and the caller has a single thread.
    unsafe {
        rustix::thread::unshare_unsafe(
            UnshareFlags::NEWUSER
                | UnshareFlags::NEWNET
                | UnshareFlags::NEWNS
                | UnshareFlags::NEWPID,
        )
    }?;
    Ok(())
}

/// Which side of [`fork_single_threaded`] the caller is on.
#[cfg(target_os = "linux")]
pub enum Forked {
    /// The original process; the child's pid as this process sees it.
    Parent(rustix::process::Pid),
    /// The new process.
    Child,
}

/// `fork()`. Only for a process that has a single thread (the `--isolate` helper before it
/// starts any): the child then is a full copy in which any code may run.
#[cfg(target_os = "linux")]
pub fn fork_single_threaded() -> std::io::Result<Forked> {
    // SAFETY: `fork` is unsafe in a multi-threaded process, where the child would inherit locks
    // held by threads that do not exist in it. The only caller is the `--isolate` helper before
    // it starts a thread (its unshare of a user namespace, which the kernel refuses to a
    // multi-threaded process, has succeeded just before), so the child is a complete copy.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(std::io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        n => rustix::process::Pid::from_raw(n)
            .map(Forked::Parent)
            .ok_or_else(|| std::io::Error::other("fork returned an invalid pid")),
    }
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[cfg(target_os = "linux")]
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Sets (`read_only`) or clears the read-only flag of the mount at `path`, and of every mount
/// below it when `recursive`. Clearing fails (`EPERM`) on a mount that was read-only when the
/// mount namespace was created by a less privileged user (the kernel locks that flag).
#[cfg(target_os = "linux")]
pub fn set_mount_read_only(
    path: &std::path::Path,
    read_only: bool,
    recursive: bool,
) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // `MOUNT_ATTR_RDONLY` of <linux/mount.h>.
    let rdonly: u64 = 0x1;
    let mut attr = MountAttr {
        attr_set: if read_only { rdonly } else { 0 },
        attr_clr: if read_only { 0 } else { rdonly },
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: `mount_setattr(dirfd, path, flags, attr, size)` reads the NUL-terminated `c_path`
    // and `size` bytes of `attr`; both live until the call returns, and `attr` has the layout of
    // the kernel's `struct mount_attr` (four `__u64`, `MOUNT_ATTR_SIZE_VER0` = 32 bytes).
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            flags,
            &raw mut attr,
            size_of::<MountAttr>(),
        )
    };
    if r == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Gives the calling process a new, empty, anonymous session keyring, so that no key of the
/// session it was started in (`keyctl show @s`) is reachable from it or its children.
#[cfg(target_os = "linux")]
pub fn join_new_session_keyring() -> std::io::Result<()> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: `keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)` takes a name pointer that may be NULL
    // (an anonymous keyring); it reads no other memory of this process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if r == -1 {
        return Err(std::io::Error::last_os_error());
    }
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
