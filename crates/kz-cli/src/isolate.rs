//! `kz run --blind --isolate`: the namespace helper (`blind.md`, "Isolation").
//!
//! A multi-threaded process cannot create a user namespace, so the outer kz (which has threads:
//! the proxy, signal handling) re-executes itself as
//! `kz __isolate SOCKET PORT [--hide PATH]… -- CMD ARGS…` ([`command`]; the paths are
//! [`hidden_paths`]: kz's XDG directories, every provider's `sources`, well-known credential
//! files, `[blind] hide`). `main` dispatches that to [`helper_main`] before anything else runs,
//! so the helper is still single-threaded when it:
//!
//! 1. notes the block devices and swap areas the user can read, then unshares a user, a network,
//!    a mount and a PID namespace, maps the user's own uid and gid (not root), denies
//!    `setgroups`, and forks the PID namespace's init (pid 1). The helper itself can start no
//!    thread after that (the kernel refuses threads to a process whose children go to another
//!    PID namespace): it forwards signals to the init and returns its exit code. The init gets
//!    `SIGKILL` if the helper dies, and when the init ends the kernel kills every process left
//!    in the namespace, so nothing of the run outlives it. The init, still single-threaded:
//! 2. makes every mount private, opens the proxy socket's directory (`O_PATH`), then covers
//!    every credential source (each `--hide` path with symlinks resolved, and those devices):
//!    an empty read-only tmpfs over a directory, an empty read-only file over anything else;
//!    a hard-linked file, `/`, or a directory that holds the run's CA directory is an error.
//!    Then it hides the host's filesystem sockets that lead out of the namespace (the network
//!    namespace does not cover them): an empty read-only tmpfs over `/run/user/UID`,
//!    `/run/dbus`, `/run/systemd` and `/run/nscd`, `/dev/null` over the docker, podman and
//!    containerd sockets. Then it builds the command's view from what it may see
//!    ([`linux::PRIVATE_DIRS`], [`linux::DEVICES`]): a `/proc` of the new PID namespace, every
//!    mount read-only, an empty private tmpfs over `/tmp`, `/var/tmp`, `/run`, a minimal `/dev`,
//!    and the working directory (writable) and the run's CA directory bound back at their own
//!    paths through descriptors opened before. It joins a new session keyring. The relay names
//!    the proxy as `/proc/self/fd/N/NAME`, so it is reached even when its directory is hidden.
//!    `CAP_SYS_ADMIN` leaves the bounding set, so a command running as root cannot unmount
//!    what hides them, and once set up the init drops every capability of its own (the
//!    command may ptrace it);
//! 3. brings the new namespace's `lo` up (its only interface: no route leaves the machine, and
//!    DNS fails because no resolver is reachable);
//! 4. listens on `127.0.0.1:PORT` (and `[::1]:PORT` when IPv6 is there), then starts threads
//!    that relay each accepted connection to a new connection to the proxy's Unix socket SOCKET
//!    (a filesystem path, which works across network namespaces);
//! 5. starts the command (`TMPDIR=/tmp`, otherwise the environment the outer kz gave the
//!    helper, which is exactly the child's), reaps every orphan, forwards `SIGINT SIGTERM
//!    SIGHUP SIGQUIT SIGUSR1 SIGUSR2` that another process sent, and returns the command's exit
//!    code (128+N for signal N).
//!
//! If a step before the command starts fails, the helper prints one line saying which and why,
//! and exits with [`SETUP_FAILED`] without starting the command. The unsafe system calls live in
//! [`crate::sys`]. On other systems both sides report that `--isolate` is Linux-only.

use std::ffi::OsString;
use std::path::PathBuf;

/// argv[1] that selects the helper.
pub const HELPER_ARG: &str = "__isolate";

/// Before each path the helper must hide.
const HIDE_ARG: &str = "--hide";

/// The helper's exit code when isolation could not be set up (nothing was started).
pub const SETUP_FAILED: u8 = 125;

/// The error on systems without Linux namespaces.
#[cfg_attr(
    target_os = "linux",
    allow(dead_code, reason = "only the non-Linux stubs use it")
)]
pub const LINUX_ONLY: &str = "--isolate is Linux-only";

/// What the outer kz asks for.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The proxy's Unix socket, outside the namespace.
    pub socket: PathBuf,
    /// The port to listen on at `127.0.0.1` inside the namespace.
    pub port: u16,
    /// Files and directories to hide from the command ([`hidden_paths`]).
    pub hide: Vec<PathBuf>,
    /// The program and its arguments.
    pub command: Vec<OsString>,
    /// The child's complete environment.
    pub env: Vec<(OsString, OsString)>,
}

/// Well-known credential files and directories under `$HOME` that `--isolate` hides whatever
/// the run uses (`docs/blind.md`, "Isolation"). `~/.ssh` and `~/.gnupg` are in: their private
/// keys are credentials, and nothing inside the namespace could use them (no network but the
/// HTTP proxy; the agents' sockets are hidden with `/run/user/UID`).
pub const WELL_KNOWN_IN_HOME: &[&str] = &[
    ".vault-token",
    ".aws",
    ".config/gcloud",
    ".docker/config.json",
    ".netrc",
    ".git-credentials",
    ".config/op",
    ".op",
    ".config/1Password",
    ".1password",
    ".kube/config",
    ".npmrc",
    ".pypirc",
    ".config/gh/hosts.yml",
    ".config/hub",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".azure",
    ".terraform.d/credentials.tfrc.json",
    ".ssh",
    ".gnupg",
];

/// The same, relative to `$XDG_CONFIG_HOME` when it is not `~/.config`.
pub const WELL_KNOWN_IN_CONFIG: &[&str] = &["gcloud", "op", "1Password", "gh/hosts.yml", "hub"];

/// Well-known credential locations outside `$HOME` (container and Kubernetes secrets).
pub const WELL_KNOWN_ABSOLUTE: &[&str] = &["/run/secrets", "/var/run/secrets"];

/// Everything `--isolate` hides from the command, in this order: kz's own configuration, data
/// and cache directories (`$XDG_*_HOME/keyzero`: identity, store, cache, trust records), the
/// sources the run's providers reported, the well-known credential locations, and
/// `[blind] hide`. Paths that do not exist are skipped by the helper.
pub fn hidden_paths(
    paths: &crate::context::Paths,
    provider_sources: &[PathBuf],
    extra: &[PathBuf],
) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = vec![
        paths.config_home.join("keyzero"),
        paths.state_dir(),
        paths.cache_home.join("keyzero"),
    ];
    out.extend(provider_sources.iter().cloned());
    if let Some(home) = &paths.home {
        out.extend(WELL_KNOWN_IN_HOME.iter().map(|rel| home.join(rel)));
    }
    out.extend(
        WELL_KNOWN_IN_CONFIG
            .iter()
            .map(|rel| paths.config_home.join(rel)),
    );
    out.extend(WELL_KNOWN_ABSOLUTE.iter().map(PathBuf::from));
    out.extend(extra.iter().cloned());
    out.extend(bus_socket(
        std::env::var_os("DBUS_SESSION_BUS_ADDRESS").as_deref(),
    ));
    // A relative path (`KEYZERO_AGE_IDENTITY_FILE=keys/id.txt`) is read from the working
    // directory, so it is hidden there; never dropped.
    let mut seen = std::collections::HashSet::new();
    out.into_iter()
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                paths.cwd.join(p)
            }
        })
        .filter(|p| seen.insert(p.clone()))
        .collect()
}

/// The socket file of a D-Bus address (`unix:path=/tmp/dbus-XYZ,guid=…`; the first `unix:`
/// address of a `;`-separated list with a `path=`), which the Secret Service (the `keychain`
/// provider's store) listens on. Abstract sockets need no hiding: the network namespace cuts
/// them off.
pub fn bus_socket(address: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    let address = address?.to_str()?;
    address
        .split(';')
        .filter_map(|a| a.strip_prefix("unix:"))
        .flat_map(|a| a.split(','))
        .find_map(|kv| kv.strip_prefix("path="))
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// The files and directories the providers of this run read values or credentials from
/// ([`kz_resolve::Provider::sources`]), for the secrets in `selected`.
pub fn provider_sources(
    ctx: &crate::context::Ctx,
    config: &kz_config::Config,
    selected: &[&kz_config::SecretEntry],
) -> Result<Vec<PathBuf>, crate::report::Failure> {
    let instances = ctx.instances(config, selected)?;
    let mut names: Vec<&String> = instances.keys().collect();
    names.sort();
    let mut out: Vec<PathBuf> = Vec::new();
    for name in names {
        let Some(inst) = instances.get(name) else {
            continue;
        };
        let items: Vec<kz_resolve::Item> = selected
            .iter()
            .filter(|s| &s.provider == name)
            .map(|s| kz_resolve::item_for(s))
            .collect();
        for p in inst.provider.sources(&items) {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// Whether this run's values or backend credentials sit in kz's own environment: a secret of
/// the `env` provider, or a credential variable of a used provider type (`AWS_*`, `VAULT_TOKEN`,
/// ...) that is set. The process that started kz holds the same environment, and the command
/// (same user) can read it through `/proc/PID/environ` unless it is isolated.
pub fn values_in_environment<'t>(
    types: impl IntoIterator<Item = &'t kz_config::catalog::ProviderType>,
    is_set: impl Fn(&str) -> bool,
    names: impl IntoIterator<Item = String>,
) -> bool {
    let types: Vec<&kz_config::catalog::ProviderType> = types.into_iter().collect();
    if types.iter().any(|t| t.name == "env") {
        return true;
    }
    let patterns: Vec<&str> = types
        .iter()
        .flat_map(|t| t.credential_env.iter().copied())
        .collect();
    names.into_iter().any(|n| {
        is_set(&n)
            && patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => n.starts_with(prefix),
                None => n == *p,
            })
    })
}

/// Without `--isolate`: the one line that says which sources of this run's values the command
/// could read (the files that exist and this user can read; the environment kz was started
/// with, which its parent process still holds, when `in_env`), and, as root, that it can read
/// kz's memory too; `None` when there is nothing to say.
pub fn exposure_line(provider_sources: &[PathBuf], in_env: bool, root: bool) -> Option<String> {
    let readable: Vec<String> = provider_sources
        .iter()
        .filter(|p| rustix::fs::access(p.as_path(), rustix::fs::Access::READ_OK).is_ok())
        .map(|p| p.display().to_string())
        .collect();
    let mut exposed = Vec::new();
    if !readable.is_empty() {
        exposed.push(format!(
            "where this run's values come from ({})",
            readable.join(", ")
        ));
    }
    if in_env {
        exposed.push(
            "the environment kz was started with (its parent process holds it too)".to_string(),
        );
    }
    if root {
        exposed.push("kz's memory (it runs as root)".to_string());
    }
    if exposed.is_empty() {
        return None;
    }
    Some(format!(
        "blind mode without --isolate: the command can read {}; add --isolate to keep it out \
         (docs/blind.md, \"Threat model\")",
        exposed.join(" and ")
    ))
}

/// Outer side: the command that runs this kz binary as the helper, with the spec in its
/// arguments (`__isolate SOCKET PORT [--hide PATH]… -- CMD ARGS…`: each path is one argument,
/// so it may hold any byte but NUL) and exactly `spec.env` as its environment,
/// which the helper passes to the child unchanged. The caller spawns it, forwards signals to it
/// and exits with its code.
#[cfg(target_os = "linux")]
pub fn command(spec: &Spec) -> std::io::Result<std::process::Command> {
    use std::os::unix::process::CommandExt;
    // `/proc/self/exe` is resolved by the kernel at exec time, so it names this very binary even
    // when the file was replaced or removed since kz started.
    let proc_exe = std::path::Path::new("/proc/self/exe");
    let exe = if proc_exe.exists() {
        proc_exe.to_path_buf()
    } else {
        std::env::current_exe()?
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.arg0("kz")
        .arg(HELPER_ARG)
        .arg(&spec.socket)
        .arg(spec.port.to_string());
    for p in &spec.hide {
        cmd.arg(HIDE_ARG).arg(p);
    }
    cmd.arg("--")
        .args(&spec.command)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)));
    Ok(cmd)
}

/// Outer side on systems without Linux namespaces: always an error.
#[cfg(not(target_os = "linux"))]
pub fn command(_spec: &Spec) -> std::io::Result<std::process::Command> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        LINUX_ONLY,
    ))
}

/// The helper's entry point (`args`: argv after `__isolate`); returns the exit code.
#[cfg(target_os = "linux")]
pub fn helper_main(args: Vec<OsString>) -> u8 {
    let p = match parse(args) {
        Ok(p) => p,
        Err(why) => {
            eprintln!("kz: --isolate: {why}");
            return SETUP_FAILED;
        }
    };
    let entered = linux::enter(&p.socket).and_then(|side| match side {
        linux::Side::Outer(init) => Ok(linux::wait_for_init(init)),
        linux::Side::Init(devices) => linux::setup(&p.socket, p.port, &p.hide, &devices)
            .map(|(proxy, listeners)| linux::run(proxy, listeners, &p.command)),
    });
    match entered {
        Ok(code) => code,
        Err(why) => {
            eprintln!("kz: --isolate: {why}");
            SETUP_FAILED
        }
    }
}

/// The helper's entry point on systems without Linux namespaces: always an error.
#[cfg(not(target_os = "linux"))]
pub fn helper_main(_args: Vec<OsString>) -> u8 {
    eprintln!("kz: {LINUX_ONLY}");
    SETUP_FAILED
}

/// What the helper was asked for.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
#[derive(Debug, PartialEq)]
struct Parsed {
    socket: PathBuf,
    port: u16,
    hide: Vec<PathBuf>,
    command: Vec<OsString>,
}

/// `SOCKET PORT [--hide PATH]… -- CMD ARGS…`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse(args: Vec<OsString>) -> Result<Parsed, String> {
    const USAGE: &str = "internal error: expected `kz __isolate SOCKET PORT [--hide PATH]… -- \
                         COMMAND…` (this helper is started by `kz run --blind --isolate`)";
    let mut it = args.into_iter();
    let (Some(socket), Some(port)) = (it.next(), it.next()) else {
        return Err(USAGE.into());
    };
    if socket.is_empty() {
        return Err(USAGE.into());
    }
    let port = port
        .to_str()
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("internal error: invalid port {}", port.to_string_lossy()))?;
    let mut hide = Vec::new();
    loop {
        match it.next() {
            Some(a) if a == "--" => break,
            Some(a) if a == HIDE_ARG => match it.next() {
                Some(p) if !p.is_empty() => hide.push(PathBuf::from(p)),
                _ => return Err(USAGE.into()),
            },
            _ => return Err(USAGE.into()),
        }
    }
    let command: Vec<OsString> = it.collect();
    if command.is_empty() {
        return Err(USAGE.into());
    }
    Ok(Parsed {
        socket: PathBuf::from(socket),
        port,
        hide,
        command,
    })
}

#[cfg(target_os = "linux")]
mod linux {
    use std::ffi::OsString;
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::net::UnixStream;
    use std::os::unix::process::ExitStatusExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, ExitStatus};
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::time::Duration;

    use rustix::fs::{Mode, OFlags};
    use rustix::mount::{MountFlags, MountPropagationFlags};
    use rustix::process::{Pid, Signal};
    use rustix::thread::CapabilitySet;
    use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
    use signal_hook::iterator::SignalsInfo;
    use signal_hook::iterator::exfiltrator::WithOrigin;
    use signal_hook::low_level::siginfo::{Cause, Origin};

    use crate::report::exit;

    const NO_USERNS_HINT: &str = "unprivileged user namespaces may be disabled: sysctl \
                                  kernel.unprivileged_userns_clone / user.max_user_namespaces";

    /// The proxy's socket as the relay reaches it from inside the namespace.
    pub(super) struct Proxy {
        /// The path the helper was given (for messages).
        shown: PathBuf,
        /// `/proc/self/fd/N/NAME`, where N is [`Proxy::_dir`]: it keeps working when the
        /// socket's directory is under a path that [`hide_host_sockets`] covers.
        via_fd: PathBuf,
        /// An `O_PATH` descriptor of the socket's directory, opened before anything was hidden
        /// (close-on-exec, so the command does not inherit it).
        _dir: OwnedFd,
    }

    /// Directories covered with an empty read-only tmpfs: each holds sockets that lead out of
    /// the namespace (session bus, systemd's and resolved's varlink/D-Bus endpoints, the system
    /// bus, nscd). Paths that do not exist are skipped.
    pub(super) fn hidden_dirs(uid: u32) -> Vec<PathBuf> {
        vec![
            PathBuf::from(format!("/run/user/{uid}")),
            PathBuf::from("/run/dbus"),
            PathBuf::from("/var/run/dbus"),
            PathBuf::from("/run/systemd"),
            PathBuf::from("/run/nscd"),
            PathBuf::from("/var/run/nscd"),
        ]
    }

    /// Socket files covered with `/dev/null` (their directories hold other things that may be
    /// needed). Paths that do not exist are skipped.
    const HIDDEN_FILES: &[&str] = &[
        "/run/docker.sock",
        "/var/run/docker.sock",
        "/run/podman/podman.sock",
        "/run/containerd/containerd.sock",
    ];

    /// Which process [`enter`] returns in.
    pub(super) enum Side {
        /// The helper itself, outside the new PID namespace: it waits for the init.
        Outer(Pid),
        /// The init (pid 1) of the new PID namespace, with the devices to hide.
        Init(Vec<PathBuf>),
    }

    /// Step 1 (single-threaded): checks the proxy socket, unshares the namespaces, maps the ids
    /// and forks the new PID namespace's init. Returns on both sides of the fork.
    pub(super) fn enter(socket: &Path) -> Result<Side, String> {
        match std::fs::metadata(socket) {
            Ok(m) if m.file_type().is_socket() => {}
            Ok(_) => {
                return Err(format!("{} is not a Unix socket", socket.display()));
            }
            Err(e) => {
                return Err(format!(
                    "cannot use the proxy socket {}: {e}",
                    socket.display()
                ));
            }
        }
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        // Outside the new user namespace, so `access` answers for the user's own credentials.
        let devices = readable_block_devices();
        crate::sys::unshare_isolate_namespaces()
            .map_err(|e| format!("cannot create a user namespace: {e} ({NO_USERNS_HINT})"))?;
        map_ids(uid, gid)?;
        match crate::sys::fork_single_threaded()
            .map_err(|e| format!("cannot start the new PID namespace: {e}"))?
        {
            crate::sys::Forked::Parent(init) => Ok(Side::Outer(init)),
            crate::sys::Forked::Child => {
                // The init dies with the helper (the helper's only thread forked it), and with
                // the init every process of the namespace: nothing of the run outlives it.
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
                    .map_err(|e| format!("cannot tie the PID namespace to the helper: {e}"))?;
                Ok(Side::Init(devices))
            }
        }
    }

    /// Steps 2–4, in the new PID namespace's init (still single-threaded): hidden credentials,
    /// the confined filesystem, `lo` up, listeners. Returns the proxy as seen from inside and
    /// the listeners, or the one-line reason.
    pub(super) fn setup(
        socket: &Path,
        port: u16,
        hide: &[PathBuf],
        devices: &[PathBuf],
    ) -> Result<(Proxy, Vec<TcpListener>), String> {
        let uid = rustix::process::getuid().as_raw();
        // Nothing mounted here may reach the host's mount namespace (nor the other way).
        rustix::mount::mount_change(
            "/",
            MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
        )
        .map_err(|e| format!("cannot make the new mount namespace private: {e}"))?;
        // Opened in the new mount namespace, before anything is hidden.
        let proxy = proxy_via_fd(socket)?;
        let cwd = std::env::current_dir()
            .map_err(|e| format!("cannot tell the working directory: {e}"))?;
        let stage = socket.parent().unwrap_or(Path::new("."));
        let targets = hide_targets(hide, devices, stage)?;
        hide_credentials(&targets, stage)?;
        hide_host_sockets(uid)?;
        confine_filesystem(&cwd, stage)?;
        // The working directory still names the directory as it was before anything was
        // mounted: a command could read what is hidden through relative paths. Enter it again
        // through the mounts.
        std::env::set_current_dir(&cwd).map_err(|e| {
            format!(
                "cannot enter the working directory {} again after hiding: {e}",
                cwd.display()
            )
        })?;
        if !std::fs::metadata(&proxy.via_fd).is_ok_and(|m| m.file_type().is_socket()) {
            return Err(format!(
                "cannot reach the proxy socket {} through {}",
                socket.display(),
                proxy.via_fd.display()
            ));
        }
        // Keys of the session kz was started in (`keyctl show @s`) stay out of reach.
        crate::sys::join_new_session_keyring()
            .map_err(|e| format!("cannot join a new session keyring: {e}"))?;
        // A command running as root inside would hold CAP_SYS_ADMIN over the new mount
        // namespace and could unmount what hides the host's sockets; the helper keeps it.
        rustix::thread::remove_capability_from_bounding_set(CapabilitySet::SYS_ADMIN).map_err(
            |e| format!("cannot drop CAP_SYS_ADMIN from the command's bounding set: {e}"),
        )?;
        crate::sys::loopback_up().map_err(|e| {
            format!("cannot bring up the loopback interface in the new network namespace: {e}")
        })?;
        let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map_err(|e| {
            format!("cannot listen on 127.0.0.1:{port} in the new network namespace: {e}")
        })?;
        let mut listeners = vec![v4];
        // IPv6 may be disabled; clients then use 127.0.0.1, which the proxy variables name.
        if let Ok(v6) = TcpListener::bind((Ipv6Addr::LOCALHOST, port)) {
            listeners.push(v6);
        }
        // Nothing below needs a capability. A command running as root inside may ptrace the
        // helper (same user namespace): it must find no capability there to unmount with.
        // Still single-threaded, so this covers every thread started later.
        rustix::thread::set_capabilities(
            None,
            rustix::thread::CapabilitySets {
                effective: CapabilitySet::empty(),
                permitted: CapabilitySet::empty(),
                inheritable: CapabilitySet::empty(),
            },
        )
        .map_err(|e| format!("cannot drop the helper's capabilities: {e}"))?;
        Ok((proxy, listeners))
    }

    /// Opens the socket's directory (`O_PATH`) and names the socket through that descriptor.
    fn proxy_via_fd(socket: &Path) -> Result<Proxy, String> {
        let bad = |why: &dyn std::fmt::Display| {
            format!(
                "cannot open the directory of the proxy socket {}: {why}",
                socket.display()
            )
        };
        let name = socket
            .file_name()
            .ok_or_else(|| bad(&"the path has no file name"))?;
        let dir = match socket.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let fd = rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| bad(&e))?;
        let via_fd = Path::new("/proc/self/fd")
            .join(fd.as_raw_fd().to_string())
            .join(name);
        Ok(Proxy {
            shown: socket.to_path_buf(),
            via_fd,
            _dir: fd,
        })
    }

    /// One path to cover, symlinks resolved.
    #[derive(Debug, PartialEq)]
    pub(super) struct Target {
        pub(super) path: PathBuf,
        pub(super) dir: bool,
    }

    /// What to cover: each path of `hide` (symlinks resolved, so a link and its target are both
    /// covered), the block devices and swap areas in `devices`. A path that does not exist, or
    /// that this user cannot look up (so neither can the command), is skipped; a path that
    /// cannot be covered completely is an error: `/`, a directory that holds `keep` (the run's
    /// CA directory, which the command needs), a file with other hard links (the command could
    /// read it through one of them). Targets inside a directory target are dropped (covered).
    pub(super) fn hide_targets(
        hide: &[PathBuf],
        devices: &[PathBuf],
        keep: &Path,
    ) -> Result<Vec<Target>, String> {
        use std::os::unix::fs::MetadataExt;
        let keep = std::fs::canonicalize(keep).unwrap_or_else(|_| keep.to_path_buf());
        let mut done: Vec<PathBuf> = Vec::new();
        let mut targets: Vec<Target> = Vec::new();
        for path in hide.iter().chain(devices) {
            let Some(real) = existing(path, &mut done)? else {
                continue;
            };
            let shown = if real == *path {
                path.display().to_string()
            } else {
                format!("{} (resolved to {})", path.display(), real.display())
            };
            let meta = std::fs::symlink_metadata(&real)
                .map_err(|e| format!("cannot hide {shown}: {e}"))?;
            let dir = meta.is_dir();
            if real.parent().is_none() {
                return Err(format!(
                    "cannot hide {shown}: it is the root directory (check `[blind] hide`)"
                ));
            }
            if dir && keep.starts_with(&real) {
                return Err(format!(
                    "cannot hide {shown}: it holds the run's CA directory {}, which the command \
                     needs; point TMPDIR elsewhere, or hide a narrower path",
                    keep.display()
                ));
            }
            if meta.is_file() && meta.nlink() > 1 {
                return Err(format!(
                    "cannot hide {shown}: it has {} other hard link(s), through which the \
                     command could still read it; remove them (copy the file instead of linking \
                     it)",
                    meta.nlink() - 1
                ));
            }
            targets.push(Target { path: real, dir });
        }
        let dirs: Vec<PathBuf> = targets
            .iter()
            .filter(|t| t.dir)
            .map(|t| t.path.clone())
            .collect();
        targets.retain(|t| !dirs.iter().any(|d| t.path != *d && t.path.starts_with(d)));
        Ok(targets)
    }

    /// Covers each target: an empty read-only tmpfs over a directory, an empty read-only file
    /// over anything else. The empty file lives on a small tmpfs mounted for a moment over
    /// `stage` (the run's CA directory; unmounted again once every file is covered), so no
    /// path leads to it and nothing can write to it.
    ///
    /// Each cover is mounted through a descriptor of the target ([`pinned`]), so a path swapped
    /// for a symlink after it was resolved cannot redirect the cover elsewhere.
    fn hide_credentials(targets: &[Target], stage: &Path) -> Result<(), String> {
        let quiet = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
        for t in targets.iter().filter(|t| t.dir) {
            let (_fd, at) = pinned(t)?;
            rustix::mount::mount(
                "tmpfs",
                &at,
                "tmpfs",
                quiet | MountFlags::RDONLY,
                c"size=4k,mode=755",
            )
            .map_err(|e| format!("cannot hide {} (tmpfs over it): {e}", t.path.display()))?;
        }
        if !targets.iter().any(|t| !t.dir) {
            return Ok(());
        }
        let staging = |e: &dyn std::fmt::Display| {
            format!(
                "cannot prepare the empty file that hides credential files (on {}): {e}",
                stage.display()
            )
        };
        rustix::mount::mount("tmpfs", stage, "tmpfs", quiet, c"size=4k,mode=700")
            .map_err(|e| staging(&e))?;
        let empty = stage.join("empty");
        let made = std::fs::File::create(&empty)
            .and_then(|f| f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o444)))
            .map_err(|e| staging(&e))
            .and_then(|()| {
                rustix::mount::mount_remount(stage, quiet | MountFlags::RDONLY, c"")
                    .map_err(|e| staging(&e))
            });
        let covered = made.and_then(|()| {
            for t in targets.iter().filter(|t| !t.dir) {
                let fail = |e: rustix::io::Errno| {
                    format!(
                        "cannot hide {} (an empty file over it): {e}",
                        t.path.display()
                    )
                };
                let (_fd, at) = pinned(t)?;
                rustix::mount::mount_bind(&empty, &at).map_err(fail)?;
                rustix::mount::mount_remount(
                    &t.path,
                    MountFlags::BIND | MountFlags::RDONLY | quiet,
                    c"",
                )
                .map_err(fail)?;
            }
            Ok(())
        });
        let unmounted = rustix::mount::unmount(stage, rustix::mount::UnmountFlags::DETACH)
            .map_err(|e| staging(&e));
        covered.and(unmounted)
    }

    /// `t.path` opened without following a symlink (`O_PATH|O_NOFOLLOW`), checked to still be
    /// that very path and of the kind that was resolved, and the `/proc/self/fd/N` name through
    /// which a mount lands on exactly that file or directory (keep the descriptor until then).
    pub(super) fn pinned(t: &Target) -> Result<(OwnedFd, PathBuf), String> {
        let fail = |why: &dyn std::fmt::Display| {
            format!(
                "cannot hide {}: {why} (did it change while kz started? run again)",
                t.path.display()
            )
        };
        let fd = rustix::fs::open(
            &t.path,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fail(&e))?;
        let kind = rustix::fs::FileType::from_raw_mode(
            rustix::fs::fstat(&fd).map_err(|e| fail(&e))?.st_mode,
        );
        let is_dir = kind == rustix::fs::FileType::Directory;
        if kind == rustix::fs::FileType::Symlink || is_dir != t.dir {
            return Err(fail(&"it was replaced"));
        }
        let at = Path::new("/proc/self/fd").join(fd.as_raw_fd().to_string());
        match std::fs::read_link(&at) {
            Ok(now) if now == t.path => Ok((fd, at)),
            Ok(now) => Err(fail(&format_args!("it now resolves to {}", now.display()))),
            Err(e) => Err(fail(&e)),
        }
    }

    /// Directories replaced by an empty private tmpfs for the command (with their mount
    /// options): where other programs keep sockets (tmux, screen, X11, ssh-agent, D-Bus) and
    /// temporary files. Paths that do not exist are skipped; a symlink counts once.
    pub(super) const PRIVATE_DIRS: &[(&str, &std::ffi::CStr)] = &[
        ("/tmp", c"mode=1777"),
        ("/var/tmp", c"mode=1777"),
        ("/run", c"mode=755"),
        ("/var/run", c"mode=755"),
    ];

    /// The devices the command's `/dev` holds (bind mounts of the host's).
    pub(super) const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

    /// Builds the command's view of the filesystem from what it may see, after the credential
    /// sources are covered: a fresh `/proc` of the new PID namespace; every mount read-only; an
    /// empty private tmpfs over each of [`PRIVATE_DIRS`]; a minimal `/dev` ([`DEVICES`],
    /// `pts`, `ptmx`, an empty `shm`); then the working directory `cwd` (writable, unless it
    /// was read-only already or is `/`) and the run's CA directory `keep` at their own paths.
    fn confine_filesystem(cwd: &Path, keep: &Path) -> Result<(), String> {
        let node = |p: &Path| {
            rustix::fs::open(
                p,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
        };
        let via = |fd: &OwnedFd| Path::new("/proc/self/fd").join(fd.as_raw_fd().to_string());
        let cwd_fd = node(cwd).map_err(|e| {
            format!(
                "the working directory {} is inside a directory that is hidden from the \
                 command ({e}); start kz from another directory",
                cwd.display()
            )
        })?;
        let keep = std::fs::canonicalize(keep).unwrap_or_else(|_| keep.to_path_buf());
        // Absent when it lies in a directory of the host's sockets (covered above): then the
        // command does not see it either way.
        let keep_fd = node(&keep).ok();
        let dev_fd = node(Path::new("/dev")).map_err(|e| format!("cannot open /dev: {e}"))?;
        let cwd_read_only = rustix::fs::statvfs(cwd)
            .is_ok_and(|s| s.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY));
        let quiet = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
        // A `/proc` of the new PID namespace: processes outside it cannot be named.
        rustix::mount::mount("proc", "/proc", "proc", quiet, c"")
            .map_err(|e| format!("cannot mount a /proc for the new PID namespace: {e}"))?;
        crate::sys::set_mount_read_only(Path::new("/"), true, true).map_err(|e| {
            format!(
                "cannot make the filesystem read-only for the command: {e} (mount_setattr \
                     needs Linux 5.12 or later)"
            )
        })?;
        let mut private: Vec<(PathBuf, &std::ffi::CStr)> = Vec::new();
        for (dir, options) in PRIVATE_DIRS {
            let Ok(real) = std::fs::canonicalize(dir) else {
                continue;
            };
            if real.is_dir() && !private.iter().any(|(p, _)| *p == real) {
                private.push((real, options));
            }
        }
        if let Some((p, _)) = private.iter().find(|(p, _)| p == cwd) {
            return Err(format!(
                "the working directory {} is replaced by an empty directory for the command (it \
                 holds other programs' sockets); start kz from a project directory",
                p.display()
            ));
        }
        let back = |fd: &OwnedFd, at: &Path| -> Result<(), String> {
            let fail = |e: &dyn std::fmt::Display| {
                format!("cannot show {} to the command again: {e}", at.display())
            };
            std::fs::create_dir_all(at).map_err(|e| fail(&e))?;
            rustix::mount::mount_bind_recursive(via(fd), at).map_err(|e| fail(&e))
        };
        let writable = |at: &Path| -> Result<(), String> {
            if cwd_read_only {
                return Ok(());
            }
            crate::sys::set_mount_read_only(at, false, false).map_err(|e| {
                format!(
                    "cannot keep the working directory {} writable: {e}",
                    at.display()
                )
            })
        };
        let cwd_is_private = private.iter().any(|(p, _)| cwd.starts_with(p));
        // Outside the private directories, the working directory is bound onto itself first,
        // so the private directories it may hold are covered again below.
        if !cwd_is_private && cwd.parent().is_some() {
            back(&cwd_fd, cwd)?;
            writable(cwd)?;
        }
        for (dir, options) in &private {
            rustix::mount::mount(
                "tmpfs",
                dir,
                "tmpfs",
                MountFlags::NOSUID | MountFlags::NODEV,
                *options,
            )
            .map_err(|e| format!("cannot put an empty tmpfs over {}: {e}", dir.display()))?;
        }
        minimal_dev(&via(&dev_fd))?;
        if cwd_is_private {
            back(&cwd_fd, cwd)?;
            writable(cwd)?;
        }
        if let Some(fd) = keep_fd.filter(|_| private.iter().any(|(p, _)| keep.starts_with(p))) {
            back(&fd, &keep)?;
        }
        Ok(())
    }

    /// An empty tmpfs over `/dev` with only [`DEVICES`], `pts`, `ptmx` (bound from `host`, the
    /// host's `/dev` through a descriptor), a private `shm` and the `fd`/`stdin`/`stdout`/
    /// `stderr` links; then read-only. No disk, no raw device is reachable.
    fn minimal_dev(host: &Path) -> Result<(), String> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            format!("cannot build the command's /dev ({what}): {e}")
        };
        let dev = Path::new("/dev");
        rustix::mount::mount(
            "tmpfs",
            dev,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NOEXEC,
            c"mode=755,size=64k",
        )
        .map_err(|e| fail("tmpfs", &e))?;
        for name in DEVICES.iter().chain(&["ptmx"]) {
            let src = host.join(name);
            if std::fs::metadata(&src).is_err() {
                continue;
            }
            let at = dev.join(name);
            std::fs::File::create(&at).map_err(|e| fail(name, &e))?;
            rustix::mount::mount_bind(&src, &at).map_err(|e| fail(name, &e))?;
        }
        let pts = host.join("pts");
        if pts.is_dir() {
            std::fs::create_dir(dev.join("pts")).map_err(|e| fail("pts", &e))?;
            rustix::mount::mount_bind_recursive(&pts, dev.join("pts"))
                .map_err(|e| fail("pts", &e))?;
        }
        std::fs::create_dir(dev.join("shm")).map_err(|e| fail("shm", &e))?;
        rustix::mount::mount(
            "tmpfs",
            dev.join("shm"),
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            c"mode=1777",
        )
        .map_err(|e| fail("shm", &e))?;
        for (link, to) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            std::os::unix::fs::symlink(to, dev.join(link)).map_err(|e| fail(link, &e))?;
        }
        crate::sys::set_mount_read_only(dev, true, false).map_err(|e| fail("read-only", &e))
    }

    /// Block devices under `/dev` that this user can read (as root: all of them; reading one
    /// reads every file on it), and the swap areas of `/proc/swaps`.
    fn readable_block_devices() -> Vec<PathBuf> {
        use std::os::unix::fs::FileTypeExt;
        fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let Ok(ft) = e.file_type() else { continue };
                if ft.is_block_device() {
                    out.push(e.path());
                } else if ft.is_dir() && depth > 0 {
                    walk(&e.path(), depth - 1, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(Path::new("/dev"), 3, &mut out);
        if let Ok(text) = std::fs::read_to_string("/proc/swaps") {
            out.extend(
                text.lines()
                    .skip(1)
                    .filter_map(|l| l.split_whitespace().next())
                    .map(|p| PathBuf::from(unescape_octal(p))),
            );
        }
        out.retain(|p| rustix::fs::access(p.as_path(), rustix::fs::Access::READ_OK).is_ok());
        out
    }

    /// `/proc/swaps` writes a space in a path as `\040` (octal escapes for blanks).
    pub(super) fn unescape_octal(s: &str) -> OsString {
        use std::os::unix::ffi::OsStringExt;
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while let Some(&c) = b.get(i) {
            let code = b
                .get(i + 1..i + 4)
                .filter(|d| c == b'\\' && d.iter().all(|x| (b'0'..=b'7').contains(x)))
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| u8::from_str_radix(d, 8).ok());
            match code {
                Some(v) => {
                    out.push(v);
                    i += 4;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        OsString::from_vec(out)
    }

    /// Covers the host's filesystem sockets that lead out of the namespace: an empty read-only
    /// tmpfs over each directory of [`hidden_dirs`], `/dev/null` over each of [`HIDDEN_FILES`].
    /// A path that does not exist, or that this user cannot look up (so neither can the
    /// command), is skipped; failing to cover one that exists is an error.
    fn hide_host_sockets(uid: u32) -> Result<(), String> {
        let tmpfs =
            MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
        let mut done: Vec<PathBuf> = Vec::new();
        for dir in hidden_dirs(uid) {
            let Some(target) = existing(&dir, &mut done)? else {
                continue;
            };
            rustix::mount::mount("tmpfs", &target, "tmpfs", tmpfs, c"size=4k,mode=755")
                .map_err(|e| format!("cannot hide {} (tmpfs over it): {e}", dir.display()))?;
        }
        for file in HIDDEN_FILES {
            let file = Path::new(file);
            let Some(target) = existing(file, &mut done)? else {
                continue;
            };
            rustix::mount::mount_bind("/dev/null", &target)
                .map_err(|e| format!("cannot hide {} (/dev/null over it): {e}", file.display()))?;
        }
        Ok(())
    }

    /// `path` with symlinks resolved, if it exists and was not covered yet (`done`, which it
    /// joins); `None` when there is nothing to cover: it does not exist (or cannot, a component
    /// being a file), or this user cannot look it up (so neither can the command).
    pub(super) fn existing(
        path: &Path,
        done: &mut Vec<PathBuf>,
    ) -> Result<Option<PathBuf>, String> {
        match std::fs::canonicalize(path) {
            Ok(p) if done.contains(&p) => Ok(None),
            Ok(p) => {
                done.push(p.clone());
                Ok(Some(p))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::NotADirectory
                        | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(format!("cannot look up {}: {e}", path.display())),
        }
    }

    /// Maps the user's own uid and gid (not root) into the new user namespace.
    fn map_ids(uid: u32, gid: u32) -> Result<(), String> {
        let write = |file: &str, text: String| {
            std::fs::write(format!("/proc/self/{file}"), text).map_err(|e| {
                format!("cannot write /proc/self/{file} in the new user namespace: {e}")
            })
        };
        // Needed before an unprivileged gid_map; absent on kernels older than 3.19.
        match std::fs::write("/proc/self/setgroups", "deny") {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!(
                    "cannot write /proc/self/setgroups in the new user namespace: {e}"
                ));
            }
            _ => {}
        }
        write("uid_map", format!("{uid} {uid} 1\n"))?;
        write("gid_map", format!("{gid} {gid} 1\n"))?;
        Ok(())
    }

    enum Event {
        Signal(Origin),
        Exited(Option<ExitStatus>),
    }

    /// The signals passed on to the child: those another process sent (a signal from the
    /// terminal already reached the child's process group).
    const FORWARDED: [i32; 6] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];

    /// The helper outside the PID namespace: forwards signals to the init and returns its exit
    /// code (128+N when signal N ended it). Without threads: a process that made a new PID
    /// namespace for its children cannot start any, so `SIGCHLD` tells when to reap the init.
    pub(super) fn wait_for_init(init: Pid) -> u8 {
        use rustix::process::WaitOptions;
        let mut set = FORWARDED.to_vec();
        set.push(signal_hook::consts::signal::SIGCHLD);
        let mut signals = match SignalsInfo::<WithOrigin>::new(set) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("kz: --isolate: cannot install signal handlers: {e}");
                let _ = rustix::process::kill_process(init, Signal::KILL);
                return super::SETUP_FAILED;
            }
        };
        loop {
            // Checked before each wait: the init may have ended before the handler was there.
            match rustix::process::waitpid(Some(init), WaitOptions::NOHANG) {
                Ok(Some((_, status))) => return code_of(ExitStatus::from_raw(status.as_raw())),
                Ok(None) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => return exit::ERROR,
            }
            for o in signals.wait() {
                if o.signal != signal_hook::consts::signal::SIGCHLD
                    && matches!(o.cause, Cause::Sent(_))
                    && let Some(sig) = Signal::from_named_raw(o.signal)
                {
                    let _ = rustix::process::kill_process(init, sig);
                }
            }
        }
    }

    /// Step 5, in the init: relay threads, the child, signal forwarding, reaping every orphan
    /// of the namespace; returns the child's exit code. When it returns, the init exits and the
    /// kernel kills every process left in the namespace.
    pub(super) fn run(proxy: Proxy, listeners: Vec<TcpListener>, command: &[OsString]) -> u8 {
        let signals = match SignalsInfo::<WithOrigin>::new(FORWARDED) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("kz: --isolate: cannot install signal handlers: {e}");
                return super::SETUP_FAILED;
            }
        };
        let proxy = Arc::new(proxy);
        for listener in listeners {
            let proxy = Arc::clone(&proxy);
            std::thread::spawn(move || accept_loop(&listener, &proxy));
        }
        let Some((program, args)) = command.split_first() else {
            return super::SETUP_FAILED;
        };
        // The host's temporary directories are replaced by private ones.
        let child = match Command::new(program)
            .args(args)
            .env("TMPDIR", "/tmp")
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                let name = program.to_string_lossy();
                let (code, what) = match e.kind() {
                    std::io::ErrorKind::NotFound => (exit::NOT_FOUND, "command not found"),
                    std::io::ErrorKind::PermissionDenied => {
                        (exit::NOT_EXECUTABLE, "permission denied")
                    }
                    _ => (exit::NOT_EXECUTABLE, "cannot execute"),
                };
                eprintln!("kz: {name}: {what}");
                return code;
            }
        };
        let Some(pid) = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0)) else {
            return exit::ERROR;
        };
        // Reaped below with every other process that ends in the namespace (the init adopts
        // them), not through `Child::wait`, which would leave the orphans as zombies.
        drop(child);
        forward_until_exit(signals, pid, move || {
            loop {
                match rustix::process::wait(rustix::process::WaitOptions::empty()) {
                    Ok(Some((p, status))) if p == pid => {
                        return Some(ExitStatus::from_raw(status.as_raw()));
                    }
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(_) => return None,
                }
            }
        })
    }

    /// Forwards each signal another process sends to `pid` until `wait` (run on its own thread)
    /// reports how `pid` ended; returns its exit code.
    fn forward_until_exit(
        mut signals: SignalsInfo<WithOrigin>,
        pid: Pid,
        wait: impl FnOnce() -> Option<ExitStatus> + Send + 'static,
    ) -> u8 {
        let (tx, rx) = mpsc::channel::<Event>();
        let handle = signals.handle();
        let sig_tx = tx.clone();
        let sig_thread = std::thread::spawn(move || {
            for origin in signals.forever() {
                if sig_tx.send(Event::Signal(origin)).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            let _ = tx.send(Event::Exited(wait()));
        });
        let code = loop {
            match rx.recv() {
                Ok(Event::Exited(Some(status))) => break code_of(status),
                Ok(Event::Signal(o)) => {
                    if matches!(o.cause, Cause::Sent(_))
                        && let Some(sig) = Signal::from_named_raw(o.signal)
                    {
                        let _ = rustix::process::kill_process(pid, sig);
                    }
                }
                Ok(Event::Exited(None)) | Err(_) => break exit::ERROR,
            }
        };
        handle.close();
        let _ = sig_thread.join();
        code
    }

    fn code_of(status: ExitStatus) -> u8 {
        match (status.code(), status.signal()) {
            (Some(c), _) => u8::try_from(c).unwrap_or(exit::ERROR),
            (None, Some(s)) => u8::try_from(128 + s).unwrap_or(exit::ERROR),
            _ => exit::ERROR,
        }
    }

    fn accept_loop(listener: &TcpListener, proxy: &Arc<Proxy>) {
        loop {
            match listener.accept() {
                Ok((tcp, _)) => {
                    let proxy = Arc::clone(proxy);
                    std::thread::spawn(move || relay(tcp, &proxy));
                }
                // Out of descriptors or similar: back off instead of spinning.
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Connects to the proxy and copies both ways until both sides are done.
    fn relay(tcp: TcpStream, proxy: &Proxy) {
        let unix = match UnixStream::connect(&proxy.via_fd) {
            Ok(u) => u,
            Err(e) => {
                eprintln!(
                    "kz: --isolate: cannot reach the proxy at {}: {e}",
                    proxy.shown.display()
                );
                let _ = tcp.shutdown(Shutdown::Both);
                return;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (Ok(tcp_w), Ok(unix_w)) = (tcp.try_clone(), unix.try_clone()) else {
            return;
        };
        let back = std::thread::spawn(move || {
            pump(
                unix,
                tcp_w,
                |s, how| {
                    let _ = UnixStream::shutdown(s, how);
                },
                |s, how| {
                    let _ = TcpStream::shutdown(s, how);
                },
            );
        });
        pump(
            tcp,
            unix_w,
            |s, how| {
                let _ = TcpStream::shutdown(s, how);
            },
            |s, how| {
                let _ = UnixStream::shutdown(s, how);
            },
        );
        let _ = back.join();
    }

    /// Copies `from` to `to`. At end of input, half-closes `to` so the other side sees EOF;
    /// on an error, closes both so the opposite direction stops too.
    fn pump<R: Read, W: Write>(
        mut from: R,
        mut to: W,
        close_from: impl Fn(&R, Shutdown),
        close_to: impl Fn(&W, Shutdown),
    ) {
        match std::io::copy(&mut from, &mut to) {
            Ok(_) => close_to(&to, Shutdown::Write),
            Err(_) => {
                close_from(&from, Shutdown::Both);
                close_to(&to, Shutdown::Both);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn parse_accepts_the_helper_arguments() {
        let p = parse(args(&["/tmp/s.sock", "8123", "--", "sh", "-c", "exit 3"])).unwrap();
        assert_eq!(p.socket, PathBuf::from("/tmp/s.sock"));
        assert_eq!(p.port, 8123);
        assert!(p.hide.is_empty());
        assert_eq!(p.command, args(&["sh", "-c", "exit 3"]));
        // Paths to hide come in pairs; a path may look like a flag or the separator.
        let p = parse(args(&[
            "/tmp/s", "80", "--hide", "/a b", "--hide", "--", "--hide", "--hide", "--", "sh",
        ]))
        .unwrap();
        assert_eq!(
            p.hide,
            [
                PathBuf::from("/a b"),
                PathBuf::from("--"),
                PathBuf::from("--hide")
            ]
        );
        assert_eq!(p.command, args(&["sh"]));
    }

    #[test]
    fn parse_rejects_malformed_arguments() {
        for bad in [
            &[][..],
            &["/tmp/s"][..],
            &["/tmp/s", "80"][..],
            &["/tmp/s", "80", "--"][..],
            &["/tmp/s", "80", "x", "sh"][..],
            &["/tmp/s", "0", "--", "sh"][..],
            &["/tmp/s", "65536", "--", "sh"][..],
            &["/tmp/s", "-1", "--", "sh"][..],
            &["", "80", "--", "sh"][..],
            &["/tmp/s", "80", "--hide"][..],
            &["/tmp/s", "80", "--hide", "", "--", "sh"][..],
            &["/tmp/s", "80", "--hide", "/x", "sh"][..],
        ] {
            assert!(parse(args(bad)).is_err(), "{bad:?} accepted");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_users_runtime_directory_and_the_buses_are_hidden() {
        let dirs = linux::hidden_dirs(1000);
        for d in ["/run/user/1000", "/run/dbus", "/run/systemd", "/run/nscd"] {
            assert!(dirs.contains(&PathBuf::from(d)), "{d} not hidden");
        }
        assert!(!dirs.contains(&PathBuf::from("/run/user/0")));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn existing_resolves_skips_absent_paths_and_each_target_once() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        let canonical = std::fs::canonicalize(&real).unwrap();
        let mut done = Vec::new();
        assert_eq!(
            linux::existing(&link, &mut done).unwrap(),
            Some(canonical.clone())
        );
        // The same directory under its other name is covered already.
        assert_eq!(linux::existing(&real, &mut done).unwrap(), None);
        assert_eq!(done, [canonical]);
        for absent in [tmp.path().join("missing"), file.join("below-a-file")] {
            assert_eq!(
                linux::existing(&absent, &mut done).unwrap(),
                None,
                "{absent:?}"
            );
        }
        // A lookup that fails otherwise (a symlink loop) is an error, not a skip.
        let lp = tmp.path().join("loop");
        std::os::unix::fs::symlink(&lp, &lp).unwrap();
        let err = linux::existing(&lp, &mut done).unwrap_err();
        assert!(
            err.starts_with("cannot look up ") && err.contains("loop"),
            "{err}"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn command_encodes_the_spec_and_only_its_environment() {
        use std::os::unix::ffi::OsStringExt;
        // Any byte but NUL survives in a path to hide.
        let odd = PathBuf::from(OsString::from_vec(b"/h/\xff\n x".to_vec()));
        let spec = Spec {
            socket: PathBuf::from("/run/p.sock"),
            port: 4242,
            hide: vec![PathBuf::from("/h/.vault-token"), odd.clone()],
            command: args(&["npm", "start"]),
            env: vec![("A".into(), "1".into())],
        };
        let cmd = command(&spec).unwrap();
        let got: Vec<_> = cmd.get_args().collect();
        assert_eq!(
            got,
            [
                std::ffi::OsStr::new("__isolate"),
                "/run/p.sock".as_ref(),
                "4242".as_ref(),
                "--hide".as_ref(),
                "/h/.vault-token".as_ref(),
                "--hide".as_ref(),
                odd.as_os_str(),
                "--".as_ref(),
                "npm".as_ref(),
                "start".as_ref()
            ]
        );
        let envs: Vec<_> = cmd.get_envs().collect();
        assert_eq!(
            envs,
            [(std::ffi::OsStr::new("A"), Some(std::ffi::OsStr::new("1")))]
        );
        // The round trip through the helper's parser gives the spec back.
        let p = parse(got.iter().skip(1).map(OsString::from).collect()).unwrap();
        assert_eq!(
            p,
            Parsed {
                socket: spec.socket,
                port: spec.port,
                hide: spec.hide,
                command: spec.command
            }
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn hide_targets_resolve_links_drop_covered_paths_and_refuse_what_cannot_be_hidden() {
        use linux::{Target, hide_targets};
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let ca = root.join("ca");
        let creds = root.join("creds");
        std::fs::create_dir_all(&ca).unwrap();
        std::fs::create_dir_all(&creds).unwrap();
        std::fs::write(creds.join("inner"), "x").unwrap();
        let token = root.join("token");
        std::fs::write(&token, "x").unwrap();
        let link = root.join("link-to-token");
        std::os::unix::fs::symlink(&token, &link).unwrap();
        let got = hide_targets(
            &[
                link.clone(),
                creds.join("inner"),
                creds.clone(),
                token.clone(),
                root.join("missing"),
            ],
            &[],
            &ca,
        )
        .unwrap();
        // The link is followed (its target hidden once), the file inside a hidden directory is
        // covered by it, a missing path is skipped.
        assert_eq!(
            got,
            [
                Target {
                    path: token.clone(),
                    dir: false
                },
                Target {
                    path: creds.clone(),
                    dir: true
                }
            ]
        );
        // A directory that holds the run's CA directory, `/` and a hard-linked file are refused.
        let err = hide_targets(std::slice::from_ref(&root), &[], &ca).unwrap_err();
        assert!(err.contains("CA directory"), "{err}");
        let err = hide_targets(&[PathBuf::from("/")], &[], &ca).unwrap_err();
        assert!(err.contains("root directory"), "{err}");
        std::fs::hard_link(&token, root.join("second-name")).unwrap();
        let err = hide_targets(&[link], &[], &ca).unwrap_err();
        assert!(
            err.contains("1 other hard link") && err.contains(&token.display().to_string()),
            "{err}"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_cover_lands_only_on_the_path_that_was_resolved() {
        use linux::{Target, pinned};
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let dir = root.join("creds");
        std::fs::create_dir(&dir).unwrap();
        let (_fd, at) = pinned(&Target {
            path: dir.clone(),
            dir: true,
        })
        .unwrap();
        assert_eq!(std::fs::read_link(at).unwrap(), dir);
        // Swapped for a symlink (to somewhere else) after it was resolved: refused.
        std::fs::remove_dir(&dir).unwrap();
        std::os::unix::fs::symlink("/etc", &dir).unwrap();
        let err = pinned(&Target {
            path: dir.clone(),
            dir: true,
        })
        .unwrap_err();
        assert!(err.contains("replaced"), "{err}");
        // Swapped for a file: refused too.
        std::fs::remove_file(&dir).unwrap();
        std::fs::write(&dir, "").unwrap();
        let err = pinned(&Target {
            path: dir,
            dir: true,
        })
        .unwrap_err();
        assert!(err.contains("replaced"), "{err}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn swap_paths_are_unescaped() {
        assert_eq!(
            linux::unescape_octal("/swap\\040file"),
            OsString::from("/swap file")
        );
        assert_eq!(
            linux::unescape_octal("/dev/vda2"),
            OsString::from("/dev/vda2")
        );
        assert_eq!(linux::unescape_octal("/a\\09"), OsString::from("/a\\09"));
    }

    #[test]
    fn hidden_paths_cover_kz_dirs_sources_well_known_files_and_hide() {
        let paths = crate::context::Paths {
            home: Some(PathBuf::from("/home/u")),
            config_home: PathBuf::from("/home/u/.config"),
            data_home: PathBuf::from("/data"),
            cache_home: PathBuf::from("/cache"),
            runtime_dir: None,
            cwd: PathBuf::from("/p"),
        };
        let got = hidden_paths(
            &paths,
            &[
                PathBuf::from("/p/.env"),
                PathBuf::from("/home/u/.vault-token"),
            ],
            &[PathBuf::from("/etc/app/key")],
        );
        for want in [
            "/home/u/.config/keyzero",
            "/data/keyzero",
            "/cache/keyzero",
            "/p/.env",
            "/home/u/.vault-token",
            "/home/u/.aws",
            "/home/u/.config/gcloud",
            "/home/u/.netrc",
            "/home/u/.ssh",
            "/home/u/.kube/config",
            "/run/secrets",
            "/etc/app/key",
        ] {
            assert!(
                got.contains(&PathBuf::from(want)),
                "{want} missing: {got:?}"
            );
        }
        // Each path once.
        let mut unique = got.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), got.len());
    }

    #[test]
    fn relative_sources_are_hidden_in_the_working_directory_not_dropped() {
        let paths = crate::context::Paths {
            home: None,
            config_home: PathBuf::from("/c"),
            data_home: PathBuf::from("/d"),
            cache_home: PathBuf::from("/k"),
            runtime_dir: None,
            cwd: PathBuf::from("/work/p"),
        };
        let got = hidden_paths(
            &paths,
            &[PathBuf::from("keys/id.txt")],
            &[PathBuf::from("creds.json")],
        );
        for want in ["/work/p/keys/id.txt", "/work/p/creds.json"] {
            assert!(got.contains(&PathBuf::from(want)), "{want}: {got:?}");
        }
        assert!(got.iter().all(|p| p.is_absolute()), "{got:?}");
    }

    #[test]
    fn the_session_bus_socket_is_found_in_its_address() {
        let bus = |a: &str| bus_socket(Some(std::ffi::OsStr::new(a)));
        assert_eq!(
            bus("unix:path=/tmp/dbus-AbC,guid=123"),
            Some(PathBuf::from("/tmp/dbus-AbC"))
        );
        assert_eq!(
            bus("unix:abstract=/tmp/x;unix:path=/run/user/1/bus"),
            Some(PathBuf::from("/run/user/1/bus"))
        );
        assert_eq!(bus("unix:abstract=/tmp/dbus-1"), None);
        assert_eq!(bus("tcp:host=localhost,port=1"), None);
        assert_eq!(bus_socket(None), None);
    }

    #[test]
    fn the_exposure_line_names_readable_sources_and_roots_memory() {
        let tmp = tempfile::tempdir().unwrap();
        let env = tmp.path().join(".env");
        std::fs::write(&env, "A=1").unwrap();
        let missing = tmp.path().join("missing");
        let line = exposure_line(&[env.clone(), missing.clone()], false, false).unwrap();
        assert!(line.contains(&env.display().to_string()), "{line}");
        assert!(!line.contains("missing"), "{line}");
        assert!(
            line.contains("--isolate") && !line.contains("memory"),
            "{line}"
        );
        assert!(!line.contains("environment"), "{line}");
        assert_eq!(
            exposure_line(std::slice::from_ref(&missing), false, false),
            None
        );
        let line = exposure_line(std::slice::from_ref(&missing), true, false).unwrap();
        assert!(
            line.contains("the environment kz was started with"),
            "{line}"
        );
        let line = exposure_line(&[missing], false, true).unwrap();
        assert!(line.contains("kz's memory"), "{line}");
    }

    #[test]
    fn values_in_the_environment_are_the_env_providers_and_set_credential_variables() {
        use kz_config::catalog::find;
        let ty = |n: &str| find(n).unwrap();
        let names = || ["PATH", "AWS_SECRET_ACCESS_KEY", "EMPTY"].map(String::from);
        let set = |n: &str| n != "EMPTY";
        assert!(values_in_environment([ty("env")], set, names()));
        assert!(values_in_environment(
            [ty("local"), ty("aws")],
            set,
            names()
        ));
        assert!(!values_in_environment(
            [ty("local"), ty("dotenv")],
            set,
            names()
        ));
        // A credential variable that is set but empty holds nothing.
        let only_vault = || ["VAULT_TOKEN"].map(String::from);
        assert!(!values_in_environment(
            [ty("hashicorp")],
            |_| false,
            only_vault()
        ));
        assert!(values_in_environment(
            [ty("hashicorp")],
            |_| true,
            only_vault()
        ));
    }
}
