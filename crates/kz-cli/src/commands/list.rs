//! `kz list`: the mappings of the active environment, without resolving anything.

use serde_json::json;

use crate::cli::{ReportArgs, ReportFormat};
use crate::commands::print_out;
use crate::commands::status::table;
use crate::context::Ctx;
use crate::report::{CmdResult, exit};

/// Runs the command.
pub fn run(ctx: &Ctx, args: &ReportArgs) -> CmdResult {
    let config = ctx.load()?;
    let text = match args.format {
        ReportFormat::Json => {
            let mut secrets = serde_json::Map::new();
            for s in &config.secrets {
                let mut v = json!({"provider": s.provider, "resolver": s.provider, "type": s.ty.name, "ref": s.reference});
                if let Some(m) = v.as_object_mut() {
                    if !s.hosts.is_empty() {
                        m.insert(
                            "hosts".into(),
                            s.hosts
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .into(),
                        );
                    }
                    if let Some(d) = &s.description {
                        m.insert("description".into(), d.clone().into());
                    }
                    if let Some(f) = &s.field {
                        m.insert("field".into(), f.clone().into());
                    }
                    if s.optional {
                        m.insert("optional".into(), true.into());
                    }
                }
                secrets.insert(s.name.clone(), v);
            }
            format!(
                "{}\n",
                json!({"version": 1, "environment": config.environment, "secrets": secrets})
            )
        }
        ReportFormat::Text => {
            let mut rows = vec![[
                "NAME".to_string(),
                "PROVIDER".into(),
                "REF".into(),
                "HOSTS".into(),
                "DESCRIPTION".into(),
            ]];
            for s in &config.secrets {
                let r = match &s.field {
                    Some(f) => format!("{} (field {f})", s.reference),
                    None => s.reference.clone(),
                };
                rows.push([
                    s.name.clone(),
                    format!("{} ({})", s.provider, s.ty.name),
                    r,
                    s.hosts
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                    s.description.clone().unwrap_or_default(),
                ]);
            }
            format!("environment: {}\n{}", config.environment, table(&rows))
        }
    };
    print_out(&text)?;
    Ok(exit::OK)
}
