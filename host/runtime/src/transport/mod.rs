//! The ARM/NRP transport: performs the engine's [`CloudCall`](difftracker_engine::io::CloudCall)s
//! over HTTP with Azure Resource Manager's conventions (AZURE-WIRE.md).
//!
//! - [`config`]: a tenant's coordinates ([`TenantAzureConfig`]) and the only place URLs and
//!   resource IDs are built; names are validated so the engine can never leave its subscription
//!   and resource group.
//! - [`wire`]: request bodies and response decoding (shared with the in-process emulator).
//! - [`auth`]: [`TokenSource`]: none for the emulator, Azure identity credentials for Azure.
//! - [`client`]: [`ArmTransport`], the [`CloudBackend`](crate::backend::CloudBackend).
//! - [`pacing`]: the per-subscription write pacer every tenant of a subscription shares.

pub mod auth;
pub mod client;
pub mod config;
pub mod pacing;
pub mod wire;

pub use auth::{AuthError, AzureCredentialConfig, AzureIdentityTokens, BearerToken, NoAuth, StaticToken, TokenSource};
pub use client::{retry_after, ArmTransport, TransportOptions};
pub use config::{
    validate_name, NameError, ResourceKind, SgwOperation, TenantAzureConfig, API_VERSION, ARM_SCOPE, DEFAULT_ARM_ENDPOINT,
    SERVICE_GATEWAY_NAME,
};

#[cfg(test)]
mod tests;
