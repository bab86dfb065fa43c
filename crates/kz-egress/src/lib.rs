//! keyzero's one egress path: where a credential-carrying request may go and how it gets there.
//!
//! Blind mode's proxy uses it today; MCP `fetch` and the credential proxy are to use it too
//! (issue 12), so the hard parts exist once:
//!
//! - [`addr`]: special addresses (loopback, private, link-local, CGNAT, cloud metadata, and the
//!   IPv4 embedded in IPv6 forms) and metadata service names;
//! - [`dest`]: destinations taken from requests, hosts normalised to one form;
//! - [`resolve`]: name resolution whose every answer is checked, reused for a few seconds;
//! - [`connect`] (feature `client`): a connector that asks the caller's [`connect::Gate`], then
//!   connects to exactly the checked addresses, under a rustls client that follows no redirect.
//!
//! **Invariant:** nothing connects to an address that was not checked after DNS for this
//! destination, and a name is never looked up a second time between check and connect.

pub mod addr;
#[cfg(feature = "client")]
pub mod connect;
pub mod dest;
pub mod resolve;

pub use addr::{classify, forbidden_name};
pub use dest::{
    Destination, destination_from_absolute, destination_from_authority, host_port, normalize_host,
};
pub use resolve::{CheckedResolver, RESOLVE_TTL, resolve_checked};
