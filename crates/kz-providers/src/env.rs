//! The `env` provider: a variable of kz's own environment (`ref` = the variable's name).

use kz_config::ProviderInstance;
use kz_resolve::{BoxFuture, Description, Item, Provider, ProviderError};
use kz_secret::{Resolved, SecretValue};

use crate::{BuildContext, GetEnv};

/// Reads kz's environment.
pub struct EnvProvider {
    instance: String,
    getenv: GetEnv,
}

impl std::fmt::Debug for EnvProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvProvider")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl EnvProvider {
    /// Builds the provider.
    pub fn new(inst: &ProviderInstance, ctx: &BuildContext) -> Self {
        Self {
            instance: inst.name.clone(),
            getenv: ctx.getenv.clone(),
        }
    }
}

impl Provider for EnvProvider {
    fn resolve<'a>(
        &'a self,
        items: &'a [Item],
    ) -> BoxFuture<'a, Vec<Result<Resolved, ProviderError>>> {
        Box::pin(async move {
            items
                .iter()
                .map(|i| match (self.getenv)(&i.reference) {
                    Some(v) => Ok(Resolved::Single(SecretValue::from_string(v))),
                    None => Err(ProviderError::not_found(format!(
                        "the variable `{}` is not set in kz's environment",
                        i.reference
                    ))
                    .help(format!(
                        "export {} before running kz, or map the secret to another provider",
                        i.reference
                    ))),
                })
                .collect()
        })
    }

    fn max_batch(&self) -> usize {
        usize::MAX
    }

    fn describe(&self) -> Description {
        Description {
            instance: self.instance.clone(),
            type_name: "env",
            details: vec![("source".into(), "kz's own environment".into())],
        }
    }
}
