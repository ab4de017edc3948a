//! DNS resolution for validation. STUB: being written.

use std::net::IpAddr;

use async_trait::async_trait;

use super::ValidationError;

/// Looks names up for validation.
#[async_trait]
pub trait DnsResolver: Send + Sync + 'static {
    /// A and AAAA records of `name`.
    async fn lookup_ip(&self, name: &str) -> Result<Vec<IpAddr>, ValidationError>;
    /// TXT records of `name`, each record's strings joined.
    async fn lookup_txt(&self, name: &str) -> Result<Vec<String>, ValidationError>;
}

/// The hickory-resolver implementation.
#[derive(Clone, Debug)]
pub struct HickoryResolver;
