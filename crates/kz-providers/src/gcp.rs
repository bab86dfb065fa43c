//! Stub: being written.
use kz_config::ProviderInstance;
use kz_resolve::{BoxFuture, Description, ErrorKind, Item, Provider, ProviderError};
use kz_secret::Resolved;

use crate::BuildContext;

/// Stub.
#[derive(Debug)]
pub struct GcpProvider;

impl GcpProvider {
    /// Stub.
    pub fn new(_inst: &ProviderInstance, _ctx: &BuildContext) -> Result<Self, ProviderError> {
        Err(ProviderError::new(ErrorKind::Unsupported, "not yet"))
    }
}

impl Provider for GcpProvider {
    fn resolve<'a>(&'a self, _items: &'a [Item]) -> BoxFuture<'a, Vec<Result<Resolved, ProviderError>>> {
        Box::pin(async { Vec::new() })
    }
    fn describe(&self) -> Description {
        Description { instance: String::new(), type_name: "stub", details: vec![] }
    }
}
