//! `kz server start`: flags to [`kz_server::Options`], logs to stderr, bundle problems through
//! the reporter. Everything else is the `kz-server` library.

use std::num::NonZeroU32;

use crate::cli::ServerStartArgs;
use crate::context::Ctx;
use crate::report::{CmdResult, Failure};

/// Runs the server until SIGTERM/SIGINT.
pub fn start(ctx: &Ctx, args: &ServerStartArgs) -> CmdResult {
    init_logging(ctx.global.verbose);
    let dir = args
        .bundle
        .parent()
        .map_or_else(|| ctx.paths.cwd.clone(), std::path::Path::to_path_buf);
    let mut build = ctx.build_context(&dir);
    build.interactive = false;
    let opts = kz_server::Options {
        bundle: args.bundle.clone(),
        listen: args.listen,
        tls: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(kz_server::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        },
        audit: args.audit.clone(),
        rate_limit: NonZeroU32::new(args.rate_limit),
        build,
        drain: args.drain,
        watch: Some(kz_server::DEFAULT_WATCH),
        timeouts: kz_server::Timeouts::default(),
        signing_key: args.signing_key.clone(),
        proxy_url: args.proxy_url.clone(),
        mcp: (args.mcp || args.mcp_listen.is_some()).then(|| kz_server::McpOptions {
            identity_token_file: args.identity_token_file.clone(),
            listen: args.mcp_listen,
            resource: args.mcp_resource.clone(),
        }),
        proxy_public_key: if args.proxy {
            Some(args.public_key.clone().ok_or_else(|| {
                Failure::usage(
                    "--proxy needs the public key that verifies short-lived tokens",
                    "pass --public-key PATH or set KEYZERO_PUBLIC_KEY_PATH (the public half of the issuing server's --signing-key)",
                )
            })?)
        } else {
            None
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Failure::msg(
                "server::runtime",
                format!("cannot start the async runtime: {e}"),
                "check the process limits (threads, file descriptors)",
            )
        })?;
    let out = &ctx.out;
    let result = if args.mcp {
        runtime.block_on(kz_server::run_mcp_until_signalled(opts))
    } else {
        runtime.block_on(kz_server::run_until_signalled(opts, |addr| {
            out.note(&format!("kz server listening on {addr}"));
        }))
    };
    match result {
        Ok(()) => Ok(0),
        Err(kz_server::StartError::Bundle(diags)) => Err(Failure::many(diags)),
        Err(kz_server::StartError::Audit(e)) => {
            Err(Failure::msg("server::audit", e.to_string(), e.help()))
        }
        Err(kz_server::StartError::Bind(addr, e)) => Err(Failure::msg(
            "server::bind",
            format!("cannot listen on {addr}: {e}"),
            "choose a free address with --listen (a port under 1024 needs privileges)",
        )),
        Err(e @ kz_server::StartError::Runtime(_)) => Err(Failure::msg(
            "server::runtime",
            e.to_string(),
            "check the process limits (threads, file descriptors)",
        )),
    }
}

/// Server events go to stderr, one line each; `-v` adds kz's debug events. Libraries kz uses
/// speak only of warnings and errors, whatever `-v` says: their debug events print whole
/// messages (an MCP library's print tool calls, `jwt` arguments included).
fn init_logging(verbose: u8) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let ours = if verbose > 0 {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::WARN)
        .with_targets(
            [
                "kz",
                "kz_server",
                "kz_cli",
                "kz_audit",
                "kz_identity",
                "kz_resolve",
                "kz_providers",
                "kz_egress",
                "kz_policy",
                "kz_bundle",
            ]
            .map(|t| (t, ours)),
        );
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::DEBUG)
        .with_target(false)
        .with_ansi(false)
        .finish()
        .with(filter)
        .try_init();
}
