//! Who a control-plane request acts as: the server, and the key the request was
//! authenticated with. Every lookup a handler makes through it finds only that key's things.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::Response;
use sandkit_core::{ListFilter, Result, SandboxInfo, SandboxSpec};
use sandkit_envd::Served;

use crate::keys::Key;
use crate::state::{owned_filter, CreateAdmission, State, Whose, OWNER_KEY};

/// The server, as one key sees it.
#[derive(Clone)]
pub(crate) struct Caller {
    state: Arc<State>,
    /// The key the request was authenticated with.
    pub(crate) key: Arc<Key>,
}

impl Deref for Caller {
    type Target = State;

    fn deref(&self) -> &State {
        &self.state
    }
}

impl FromRequestParts<Arc<State>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<State>,
    ) -> std::result::Result<Self, Response> {
        // Set by the authentication middleware; a route outside it has no caller.
        match parts.extensions.get::<Arc<Key>>() {
            Some(key) => Ok(Caller {
                state: state.clone(),
                key: key.clone(),
            }),
            None => Err(crate::http::api_error(
                StatusCode::UNAUTHORIZED,
                "Invalid API key, please check your E2B_API_KEY",
            )),
        }
    }
}

impl Caller {
    /// This key's tenant, as it is put on what it makes (metadata `sandkit.e2b.owner`).
    pub(crate) fn owner(&self) -> &str {
        &self.key.owner
    }

    /// The namespace of this key's snapshot names: two keys' names never meet.
    pub(crate) fn tenant(&self) -> String {
        crate::state::tenant_of(&self.key.owner)
    }

    /// What the backend says of one of this key's sandboxes (another's is `NotFound`).
    pub(crate) async fn owned_info(&self, id: &str) -> Result<SandboxInfo> {
        self.state.info_for(id, Whose::Key(self.owner())).await
    }

    /// The handle of one of this key's running sandboxes.
    pub(crate) async fn served(&self, id: &str) -> Result<Arc<Served>> {
        self.state.served_for(id, Whose::Key(self.owner())).await
    }

    /// Drops this key's handle of `id` (never another key's).
    pub(crate) async fn forget(&self, id: &str) {
        self.state.forget_for(id, self.owner()).await
    }

    /// The list filter of this key's sandboxes.
    pub(crate) fn owned_filter(&self) -> ListFilter {
        owned_filter(self.owner())
    }

    /// Admits one create under this key's limits (see [`State::admit_create`]).
    pub(crate) async fn admit_create(&self) -> std::result::Result<CreateAdmission, (String, u64)> {
        self.state.admit_create(&self.key).await
    }

    /// Holds a handle to a sandbox this key made or attached.
    pub(crate) async fn insert(&self, sandbox: Box<dyn sandkit_core::Sandbox>) -> Arc<Served> {
        self.state.insert(sandbox, self.owner()).await
    }

    /// A create names a snapshot of another key: refused as E2B refuses a template it cannot
    /// see; `true` when it names one of this key's. Template names without a tag or a slash are
    /// never snapshot ids and cost nothing here. (However a snapshot is named, the backend
    /// refuses another key's: [`sandkit_core::SandboxSpec::snapshot_guard`].)
    pub(crate) async fn check_template(
        &self,
        template: &str,
    ) -> std::result::Result<bool, Response> {
        let state = self;
        if !template.contains(':') && !template.contains('/') {
            return Ok(false);
        }
        if !state.runtime.capabilities().snapshots {
            return Ok(false);
        }
        let all = state
            .runtime
            .snapshots(None)
            .await
            .map_err(|e| crate::http::from_error(&e, ""))?;
        match all
            .iter()
            .find(|s| s.id == template || s.names.iter().any(|n| n == template))
        {
            Some(s) if s.metadata.get(OWNER_KEY).map(String::as_str) != Some(state.owner()) => {
                Err(crate::http::api_error(
                    StatusCode::NOT_FOUND,
                    format!("template '{template}' not found or you don't have access to it"),
                ))
            }
            Some(_) => Ok(true),
            None => Ok(false),
        }
    }

    /// The spec of a sandbox this key makes.
    pub(crate) fn spec_for(
        &self,
        template: &str,
        metadata: BTreeMap<String, String>,
        envs: BTreeMap<String, String>,
        timeout: Option<Duration>,
    ) -> SandboxSpec {
        self.state
            .spec_for(self.owner(), template, metadata, envs, timeout)
    }
}

/// Checks a control-plane request's API key and puts its [`Key`] on the request (`/health`
/// needs none). A key taken out of the keys file is refused from the next request on.
pub(crate) async fn authenticate(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let keys = state.keys();
    let key = if state.config.insecure_no_auth {
        keys.by_owner(crate::keys::ANONYMOUS)
    } else {
        // `X-API-Key`, as the SDKs send it, or a bearer token, as Prometheus sends one.
        let headers = request.headers();
        headers
            .get(sandkit_e2b_protocol::headers::API_KEY)
            .or_else(|| headers.get(axum::http::header::AUTHORIZATION))
            .and_then(|v| v.to_str().ok())
            .map(|v| v.strip_prefix("Bearer ").unwrap_or(v))
            .filter(|given| !given.is_empty())
            .and_then(|given| keys.find(given))
    };
    let Some(key) = key else {
        return crate::http::api_error(
            StatusCode::UNAUTHORIZED,
            "Invalid API key, please check your E2B_API_KEY",
        );
    };
    if !state.config.insecure_no_auth {
        crate::listen::prove(&request);
    }
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    request.extensions_mut().insert(key.clone());
    let response = next.run(request).await;
    let made = response.extensions().get::<Made>().map(|m| m.0.as_str());
    audit(&key, &method, &path, made, response.status());
    response
}

/// The sandbox a request made, put on its answer for the audit log.
#[derive(Debug, Clone)]
pub(crate) struct Made(pub(crate) String);

/// One line of the audit log (target `e2b_local::audit`): which key did what to which
/// sandbox, and how it was answered. Reads (`GET`) are not audited.
fn audit(
    key: &Key,
    method: &axum::http::Method,
    path: &str,
    made: Option<&str>,
    status: StatusCode,
) {
    if method == axum::http::Method::GET {
        return;
    }
    let mut parts = path.trim_start_matches('/').split('/');
    let sandbox = match (parts.next(), parts.next()) {
        (Some("v2"), Some("sandboxes")) => parts.next(),
        (Some("sandboxes"), id) => id,
        _ => None,
    }
    .or(made)
    .unwrap_or("");
    tracing::info!(
        target: "e2b_local::audit",
        key = %key.name,
        %method,
        path,
        sandbox,
        status = status.as_u16(),
        "audit"
    );
}
