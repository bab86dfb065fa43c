//! `kz status`: resolve every secret and report per secret: provider, ref, ok/error, latency.
//! Never prints any part of a value.

use serde_json::json;

use crate::cli::{ReportFormat, StatusArgs};
use crate::commands::print_out;
use crate::context::{CacheUse, Ctx};
use crate::report::{CmdResult, exit};

/// Runs the command.
pub fn run(ctx: &Ctx, args: &StatusArgs) -> CmdResult {
    let config = ctx.load()?;
    let selected = ctx.select(&config, &args.only)?;
    let results = ctx.resolve_cached(&config, &selected)?;
    let all_ok = !results.iter().any(|(o, _)| o.is_failure());
    let text = match args.format {
        ReportFormat::Json => {
            let secrets: Vec<_> = results
                .iter()
                .map(|(o, cache)| {
                    let mut v = json!({
                        "name": o.name,
                        "provider": o.provider,
                        "resolver": o.provider,
                        "type": o.type_name,
                        "ref": o.reference,
                        "status": if o.result.is_ok() { "ok" } else { "error" },
                        "latency_ms": u64::try_from(o.latency.as_millis()).unwrap_or(u64::MAX),
                        "cache": cache.label(),
                    });
                    if let (Err(e), Some(m)) = (&o.result, v.as_object_mut()) {
                        m.insert(
                            "error".into(),
                            format!("{}: {}", e.kind.label(), e.message).into(),
                        );
                        m.insert("optional".into(), o.skipped.into());
                        if let Some(h) = &e.help {
                            m.insert("help".into(), h.clone().into());
                        }
                    }
                    v
                })
                .collect();
            let doc = json!({"version": 1, "environment": config.environment, "all_ok": all_ok, "secrets": secrets});
            format!("{doc}\n")
        }
        ReportFormat::Text => {
            let mut rows = vec![[
                "NAME".to_string(),
                "PROVIDER".into(),
                "REF".into(),
                "STATUS".into(),
                "LATENCY".into(),
                "CACHE".into(),
            ]];
            for (o, cache) in &results {
                let status = match &o.result {
                    Ok(_) => "ok".to_string(),
                    Err(e) if o.skipped => format!("skipped (optional): {}", e.kind.label()),
                    Err(e) => format!("error: {}: {}", e.kind.label(), e.message),
                };
                rows.push([
                    o.name.clone(),
                    format!("{} ({})", o.provider, o.type_name),
                    o.reference.clone(),
                    status,
                    format!("{}ms", o.latency.as_millis()),
                    match cache {
                        CacheUse::Hit(age) | CacheUse::Fallback(age) => {
                            format!("{} ({} old)", cache.label(), crate::cache::human_age(*age))
                        }
                        other => other.label().to_string(),
                    },
                ]);
            }
            let mut t = format!("environment: {}\n", config.environment);
            t.push_str(&table(&rows));
            t.push_str(&help_lines(&results));
            t
        }
    };
    print_out(&text)?;
    Ok(if all_ok { exit::OK } else { exit::ERROR })
}

/// The `help:` lines `kz run` would show for the failed secrets, one per distinct help (a
/// problem several secrets share, such as a missing store key, is explained once).
fn help_lines(results: &[(kz_resolve::Outcome, CacheUse)]) -> String {
    let mut helps: Vec<(&str, Vec<&str>)> = Vec::new();
    for (o, _) in results {
        let Err(e) = &o.result else { continue };
        let Some(h) = e.help.as_deref().filter(|_| !o.skipped) else {
            continue;
        };
        match helps.iter_mut().find(|(x, _)| *x == h) {
            Some((_, names)) => names.push(&o.name),
            None => helps.push((h, vec![&o.name])),
        }
    }
    helps
        .iter()
        .map(|(h, names)| format!("help: {}: {h}\n", names.join(", ")))
        .collect()
}

/// Left-aligned columns separated by two spaces; the last column is not padded. Cells are
/// escaped ([`crate::report::escape`]): refs, descriptions and messages come from files.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|r| r.clone().map(|c| crate::report::escape(&c).into_owned()))
        .collect();
    let rows = rows.as_slice();
    let mut widths = [0usize; N];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
