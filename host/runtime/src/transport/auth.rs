//! Bearer tokens for ARM. The emulator needs none; real Azure gets an Entra ID token from the
//! Azure identity crate (client secret, workload identity or managed identity) for the scope of
//! AZURE-WIRE.md section 1.2. Tokens are cached and refreshed before they expire, and never
//! logged: [`BearerToken`]'s `Debug` prints no secret.

use super::config::ARM_SCOPE;
use azure_core::credentials::TokenCredential;
use azure_core::http::{AsyncRawResponse, HttpClient, Request, Transport};
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// A bearer token; its `Debug` and `Display` never show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    pub fn new(secret: impl Into<String>) -> Self {
        BearerToken(secret.into())
    }
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

#[derive(Clone, Debug, Error)]
pub enum AuthError {
    #[error("credential could not be created: {0}")]
    Setup(String),
    #[error("no access token: {0}")]
    Token(String),
}

pub type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<Option<BearerToken>, AuthError>> + Send + 'a>>;

/// Supplies the `Authorization: Bearer` token of each request, or none.
pub trait TokenSource: Send + Sync + 'static {
    fn token(&self) -> TokenFuture<'_>;
}

/// No authentication (the emulator).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoAuth;

impl TokenSource for NoAuth {
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(async { Ok(None) })
    }
}

/// A fixed token (tests, or a token minted outside the process).
#[derive(Clone, Debug)]
pub struct StaticToken(pub BearerToken);

impl TokenSource for StaticToken {
    fn token(&self) -> TokenFuture<'_> {
        let t = self.0.clone();
        Box::pin(async move { Ok(Some(t)) })
    }
}

/// Which Entra ID credential to use (AZURE-WIRE.md section 1.2, first three kinds).
#[derive(Clone, PartialEq, Eq)]
pub enum AzureCredentialConfig {
    ClientSecret {
        tenant_id: String,
        client_id: String,
        client_secret: String,
    },
    /// `None` fields fall back to `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE`.
    WorkloadIdentity {
        tenant_id: Option<String>,
        client_id: Option<String>,
        token_file: Option<PathBuf>,
    },
    /// `user_assigned_id` is an ARM resource ID if it contains `/subscriptions/`, else a client ID.
    ManagedIdentity {
        user_assigned_id: Option<String>,
    },
}

impl fmt::Debug for AzureCredentialConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AzureCredentialConfig::ClientSecret { tenant_id, client_id, .. } => f
                .debug_struct("ClientSecret")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .field("client_secret", &"<redacted>")
                .finish(),
            AzureCredentialConfig::WorkloadIdentity { tenant_id, client_id, token_file } => f
                .debug_struct("WorkloadIdentity")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .field("token_file", token_file)
                .finish(),
            AzureCredentialConfig::ManagedIdentity { user_assigned_id } => {
                f.debug_struct("ManagedIdentity").field("user_assigned_id", user_assigned_id).finish()
            }
        }
    }
}

impl AzureCredentialConfig {
    /// Picks a credential from the environment the way the upstream provider does: workload
    /// identity when `AZURE_FEDERATED_TOKEN_FILE` is set, a client secret when
    /// `AZURE_CLIENT_SECRET` is set (with `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`), otherwise the
    /// managed identity (user-assigned when `AZURE_CLIENT_ID` is set).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if var("AZURE_FEDERATED_TOKEN_FILE").is_some() {
            return AzureCredentialConfig::WorkloadIdentity { tenant_id: None, client_id: None, token_file: None };
        }
        if let (Some(secret), Some(tenant), Some(client)) = (var("AZURE_CLIENT_SECRET"), var("AZURE_TENANT_ID"), var("AZURE_CLIENT_ID")) {
            return AzureCredentialConfig::ClientSecret { tenant_id: tenant, client_id: client, client_secret: secret };
        }
        AzureCredentialConfig::ManagedIdentity { user_assigned_id: var("AZURE_CLIENT_ID") }
    }
}

/// The identity crate's HTTP pipeline, carried by this project's reqwest client (so the process
/// has one TLS stack).
#[derive(Debug)]
struct ReqwestForIdentity(reqwest::Client);

#[async_trait::async_trait]
impl HttpClient for ReqwestForIdentity {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        use azure_core::error::{Error, ErrorKind};
        use azure_core::http::headers::{HeaderName, HeaderValue, Headers};
        let method = reqwest::Method::from_bytes(request.method().as_str().as_bytes())
            .map_err(|e| Error::with_message(ErrorKind::Other, format!("bad method: {e}")))?;
        let mut req = self.0.request(method, request.url().as_str());
        for (name, value) in request.headers().iter() {
            req = req.header(name.as_str(), value.as_str());
        }
        match request.body() {
            azure_core::http::Body::Bytes(b) => req = req.body(b.to_vec()),
            #[allow(unreachable_patterns)]
            _ => return Err(Error::with_message(ErrorKind::Other, "streamed bodies are not supported")),
        }
        let rsp = req.send().await.map_err(|e| {
            let kind = if e.is_connect() { ErrorKind::Connection } else { ErrorKind::Io };
            Error::with_message(kind, format!("token request failed: {e}"))
        })?;
        let status = rsp.status().as_u16();
        let mut headers = Headers::new();
        for (k, v) in rsp.headers() {
            if let Ok(v) = v.to_str() {
                headers.insert(HeaderName::from(k.as_str().to_owned()), HeaderValue::from(v.to_owned()));
            }
        }
        let body = rsp.bytes().await.map_err(|e| Error::with_message(ErrorKind::Io, format!("token response: {e}")))?;
        Ok(AsyncRawResponse::from_bytes(status.into(), headers, body))
    }
}

struct Cached {
    token: BearerToken,
    refresh_at: Instant,
}

/// An Azure identity credential with a token cache. A token is refreshed once less than
/// `refresh_margin` (default 5 minutes) of its life is left.
pub struct AzureIdentityTokens {
    credential: Arc<dyn TokenCredential>,
    scope: String,
    refresh_margin: Duration,
    cache: tokio::sync::Mutex<Option<Cached>>,
}

impl fmt::Debug for AzureIdentityTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureIdentityTokens").field("scope", &self.scope).finish_non_exhaustive()
    }
}

impl AzureIdentityTokens {
    /// Wraps any credential of the identity crate.
    pub fn from_credential(credential: Arc<dyn TokenCredential>, scope: impl Into<String>) -> Self {
        AzureIdentityTokens {
            credential,
            scope: scope.into(),
            refresh_margin: Duration::from_secs(300),
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// Builds the credential of `config` for the ARM scope.
    pub fn new(config: &AzureCredentialConfig) -> Result<Self, AuthError> {
        use azure_identity::{
            ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
            ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| AuthError::Setup(format!("HTTP client: {e}")))?;
        let transport = Some(Transport::new(Arc::new(ReqwestForIdentity(http))));
        let setup = |e: azure_core::Error| AuthError::Setup(e.to_string());
        let credential: Arc<dyn TokenCredential> = match config {
            AzureCredentialConfig::ClientSecret { tenant_id, client_id, client_secret } => {
                let mut options = ClientSecretCredentialOptions::default();
                options.client_options.transport = transport;
                ClientSecretCredential::new(
                    tenant_id,
                    client_id.clone(),
                    azure_core::credentials::Secret::new(client_secret.clone()),
                    Some(options),
                )
                .map_err(setup)?
            }
            AzureCredentialConfig::WorkloadIdentity { tenant_id, client_id, token_file } => {
                let mut credential_options = ClientAssertionCredentialOptions::default();
                credential_options.client_options.transport = transport;
                let options = WorkloadIdentityCredentialOptions {
                    credential_options,
                    client_id: client_id.clone(),
                    tenant_id: tenant_id.clone(),
                    token_file_path: token_file.clone(),
                };
                WorkloadIdentityCredential::new(Some(options)).map_err(setup)?
            }
            AzureCredentialConfig::ManagedIdentity { user_assigned_id } => {
                let mut options = ManagedIdentityCredentialOptions::default();
                options.client_options.transport = transport;
                options.user_assigned_id = user_assigned_id.as_ref().map(|id| {
                    if id.contains("/subscriptions/") {
                        UserAssignedId::ResourceId(id.clone())
                    } else {
                        UserAssignedId::ClientId(id.clone())
                    }
                });
                ManagedIdentityCredential::new(Some(options)).map_err(setup)?
            }
        };
        Ok(Self::from_credential(credential, ARM_SCOPE))
    }

    pub fn with_refresh_margin(mut self, margin: Duration) -> Self {
        self.refresh_margin = margin;
        self
    }
}

impl TokenSource for AzureIdentityTokens {
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            let mut cache = self.cache.lock().await;
            if let Some(c) = cache.as_ref() {
                if Instant::now() < c.refresh_at {
                    return Ok(Some(c.token.clone()));
                }
            }
            let scopes = [self.scope.as_str()];
            let access = self.credential.get_token(&scopes, None).await.map_err(|e| AuthError::Token(e.to_string()))?;
            let left = access.expires_on - azure_core::time::OffsetDateTime::now_utc();
            let left = Duration::from_secs(left.whole_seconds().max(0) as u64);
            let token = BearerToken::new(access.token.secret());
            *cache = Some(Cached { token: token.clone(), refresh_at: Instant::now() + left.saturating_sub(self.refresh_margin) });
            Ok(Some(token))
        })
    }
}
