//! Building a set of provider instances at once, ready for the engine (`kz run` builds the
//! instances its secrets use; the server builds its bundle's backends once at start).

use std::collections::HashMap;

use kz_config::ProviderInstance;
use kz_resolve::{Instance, ProviderError};

use crate::BuildContext;

/// Builds every given instance ([`crate::build`], so each is wrapped in
/// [`kz_resolve::Redacting`]) with its `timeout` and `concurrency` options; each gets its own
/// concurrency limit, shared by every resolve that uses it. The ones that fail are returned with
/// their error, in the order given, and are absent from the map. Builds do no network I/O.
pub fn build_instances<'a>(
    insts: impl IntoIterator<Item = &'a ProviderInstance>,
    ctx: &BuildContext,
) -> (HashMap<String, Instance>, Vec<(String, ProviderError)>) {
    let mut built = HashMap::new();
    let mut failed = Vec::new();
    for inst in insts {
        match crate::build(inst, ctx) {
            Ok(p) => {
                built.insert(
                    inst.name.clone(),
                    Instance::new(p, inst.timeout(), inst.concurrency()),
                );
            }
            Err(e) => failed.push((inst.name.clone(), e)),
        }
    }
    (built, failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kz_resolve::ErrorKind;
    use std::sync::Arc;

    fn ctx() -> BuildContext {
        BuildContext {
            home: None,
            config_home: "/nonexistent/config".into(),
            data_home: "/nonexistent/data".into(),
            runtime_dir: None,
            project_dir: "/nonexistent/project".into(),
            getenv: Arc::new(|_| None),
            verbose: false,
            interactive: false,
        }
    }

    fn implicit(ty: &str) -> ProviderInstance {
        ProviderInstance::implicit(kz_config::catalog::find(ty).unwrap())
    }

    #[test]
    fn builds_what_it_can_and_names_each_failure() {
        let env = implicit("env");
        let exec = implicit("exec"); // no `command`: cannot be built
        let mut other_env = implicit("env");
        other_env.name = "env2".into();
        let (built, failed) = build_instances([&env, &exec, &other_env], &ctx());
        let mut names: Vec<&str> = built.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["env", "env2"]);
        let i = &built["env"];
        assert_eq!(
            (i.timeout, i.concurrency),
            (env.timeout(), env.concurrency())
        );
        assert_eq!(i.provider.describe().type_name, "env");
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, "exec");
        assert_eq!(failed[0].1.kind, ErrorKind::Config);
        assert!(failed[0].1.message.contains("command"), "{}", failed[0].1);
    }

    #[test]
    fn nothing_given_nothing_built() {
        let (built, failed) = build_instances([], &ctx());
        assert!(built.is_empty() && failed.is_empty());
    }
}
