//! `/v1/Accounts/{account}/Plugins` and `/PluginBindings`: uploading plugin versions (validated
//! and compiled by the runtime before they are stored) and choosing which plugin serves each world
//! for the account, one of its numbers, or one of its callouts.

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, Request, State};
use axum::http::{StatusCode, header};
use callflow_engine::clock::{now_ms, rfc2822};
use callflow_runtime::{LoadError, Plugin, World};
use callflow_store::{
    Binding, BindingScope, NewBinding, NewPlugin, Pins, PluginVersion, StoreError,
};
use serde_json::{Value, json};

use crate::ApiState;
use crate::auth::Scoped;
use crate::error::{ApiError, ApiResult};
use crate::paging::ListQuery;
use crate::params::{Params, read_body};

/// Configuration handed to a plugin is bounded: it travels in every invocation's context.
const MAX_CONFIG_BYTES: usize = 64 << 10;
/// The largest `Secrets` of a binding.
const MAX_SECRETS_BYTES: usize = 16 << 10;
const MAX_NAME: usize = 64;
/// Per-event deadlines a binding may ask for, in milliseconds (larger values are capped).
const DEFAULT_DEADLINE_MS: i64 = 10;
const MAX_DEADLINE_MS: i64 = 100;

fn base(account: &str) -> String {
    format!("/v1/Accounts/{account}")
}

fn render_plugin(p: &PluginVersion) -> Value {
    json!({
        "sid": p.sid,
        "account_sid": p.account_sid,
        "name": p.name,
        "world": p.world,
        "sha256": p.sha256,
        "size": p.size,
        "date_created": rfc2822(p.date_created),
        "uri": format!("{}/Plugins/{}", base(&p.account_sid), p.sid),
    })
}

fn render_binding(b: &Binding) -> Value {
    let config: Value = serde_json::from_str(&b.config).unwrap_or(Value::Null);
    // the names of the secrets, never their values
    let secrets: Vec<String> = serde_json::from_str::<serde_json::Map<String, Value>>(&b.secrets)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    json!({
        "sid": b.sid,
        "account_sid": b.account_sid,
        "world": b.world,
        "plugin": b.plugin,
        "phone_number_sid": (b.scope == "number").then_some(&b.scope_sid),
        "callout_sid": (b.scope == "callout").then_some(&b.scope_sid),
        "config": config,
        "secrets": secrets,
        "deadline_ms": b.deadline_ms,
        "date_created": rfc2822(b.date_created),
        "date_updated": rfc2822(b.date_updated),
        "uri": format!("{}/PluginBindings/{}", base(&b.account_sid), b.sid),
    })
}

/// Uploads a plugin version: the raw `.wasm` as the body (`Name` in the query), or
/// `multipart/form-data` with a `File` part (and optionally a `Name` part).
pub async fn create(
    State(state): State<ApiState>,
    scoped: Scoped,
    req: Request,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let account = scoped.account;
    let query_name = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "Name")
            .map(|(_, v)| v.into_owned())
    });
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // room for the multipart framing around the largest plugin
    let limit = state.runtime().config().max_plugin_bytes + (64 << 10);
    let body = read_body(req, limit).await?;
    let (wasm, part_name) = match content_type
        .as_deref()
        .and_then(|c| multer::parse_boundary(c).ok())
    {
        Some(boundary) => from_multipart(body, boundary).await?,
        None => (body.to_vec(), None),
    };
    if wasm.is_empty() {
        return Err(ApiError::param(
            "File",
            "the upload is empty; send the .wasm file as the body or a File part",
        ));
    }
    let name = part_name.or(query_name).unwrap_or_else(|| "plugin".into());
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(ApiError::param("Name", "must be 1 to 64 characters"));
    }
    let (plugin, wasm) = load(&state, wasm).await?;
    store_bytes(&state, &plugin.sha256, &wasm).await?;
    let new = NewPlugin {
        name,
        world: plugin.world.as_str().to_owned(),
        sha256: plugin.sha256.clone(),
        size: i64::try_from(wasm.len()).unwrap_or(i64::MAX),
    };
    let (version, created) = state
        .store()
        .create_plugin(&account.sid, &new, now_ms())
        .await?;
    if created {
        tracing::info!(account = %account.sid, plugin = %version.sid, world = %version.world, "plugin version uploaded");
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(render_plugin(&version))))
}

async fn from_multipart(
    body: axum::body::Bytes,
    boundary: String,
) -> ApiResult<(Vec<u8>, Option<String>)> {
    let stream = futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let bad = |e: multer::Error| ApiError::param("File", &format!("malformed multipart body: {e}"));
    let (mut wasm, mut name, mut file_name) = (None, None, None);
    while let Some(field) = form.next_field().await.map_err(bad)? {
        match field.name() {
            Some("File") | Some("file") => {
                file_name = field
                    .file_name()
                    .map(|f| f.trim_end_matches(".wasm").to_owned());
                wasm = Some(field.bytes().await.map_err(bad)?.to_vec());
            }
            Some("Name") => name = Some(field.text().await.map_err(bad)?),
            _ => {}
        }
    }
    let wasm =
        wasm.ok_or_else(|| ApiError::param("File", "the multipart body has no File part"))?;
    Ok((wasm, name.or(file_name)))
}

/// Validates and compiles `wasm` with the runtime, off the async threads (compiling takes tens of
/// milliseconds), and hands the bytes back with the plugin.
async fn load(state: &ApiState, wasm: Vec<u8>) -> ApiResult<(Arc<Plugin>, Vec<u8>)> {
    let runtime = state.runtime().clone();
    tokio::task::spawn_blocking(move || runtime.load(&wasm).map(|p| (p, wasm)))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(load_error)
}

fn load_error(e: LoadError) -> ApiError {
    match e {
        LoadError::TooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, 20001, e.to_string())
        }
        e => ApiError::param("File", &e.to_string()),
    }
}

/// Where a version's bytes live in the shared storage (`callflow_engine::blobs`):
/// `plugins/<sha256>.wasm`, shared by every account that uploaded the same bytes.
pub fn plugin_key(sha256: &str) -> String {
    format!("plugins/{sha256}.wasm")
}

async fn store_bytes(state: &ApiState, sha256: &str, wasm: &[u8]) -> ApiResult<()> {
    let key = plugin_key(sha256);
    let blobs = state.blobs();
    let write = async {
        if !blobs.exists(&key).await? {
            blobs.put(&key, wasm.to_vec()).await?;
        }
        Ok::<(), callflow_engine::blobs::BlobError>(())
    };
    write.await.map_err(|e| {
        tracing::error!(error = %e, %key, "cannot store plugin bytes");
        ApiError::unavailable("the plugin could not be stored; try again in a moment")
    })
}

pub async fn list(
    State(state): State<ApiState>,
    scoped: Scoped,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let account = &scoped.account;
    let q = ListQuery::parse(q.as_deref())?;
    let world = q.get("World").map(check_world).transpose()?;
    let page = state
        .store()
        .list_plugins(&account.sid, q.get("Name"), world, q.request)
        .await?;
    Ok(Json(q.envelope(
        &format!("{}/Plugins", base(&account.sid)),
        "plugins",
        page,
        render_plugin,
    )))
}

pub async fn fetch(State(state): State<ApiState>, scoped: Scoped) -> ApiResult<Json<Value>> {
    let (account, sid) = (&scoped.account, scoped.sid("sid"));
    let p = state
        .store()
        .plugin(&account.sid, sid)
        .await?
        .ok_or_else(|| ApiError::not_found(&format!("/Plugins/{sid}")))?;
    Ok(Json(render_plugin(&p)))
}

pub async fn delete(State(state): State<ApiState>, scoped: Scoped) -> ApiResult<StatusCode> {
    let (account, sid) = (&scoped.account, scoped.sid("sid"));
    match state.store().delete_plugin(&account.sid, sid).await {
        Ok((version, still_used)) => {
            if !still_used && let Err(e) = state.blobs().delete(&plugin_key(&version.sha256)).await
            {
                tracing::warn!(error = %e, plugin = %version.sid, "could not remove plugin bytes");
            }
            Ok(StatusCode::NO_CONTENT)
        }
        Err(StoreError::NotFound) => Err(ApiError::not_found(&format!("/Plugins/{sid}"))),
        Err(StoreError::Conflict(m)) => Err(ApiError::new(StatusCode::CONFLICT, 20409, m)),
        Err(e) => Err(e.into()),
    }
}

fn check_world(w: &str) -> ApiResult<&str> {
    World::parse(w).map(World::as_str).ok_or_else(|| {
        ApiError::param(
            "World",
            "must be call-flow, retry-policy, recording or call-events",
        )
    })
}

/// Binds a plugin (`Plugin`: a version sid of this account, or `builtin:<name>`) to a world for
/// the account, or for one number (`PhoneNumberSid`) or callout (`CalloutSid`), with `Config`
/// (a JSON object) handed to the plugin, and `Secrets` (a JSON object merged over `Config` when
/// the plugin runs, whose values are never returned, logged or copied into calls: only their
/// names are shown). Replaces the binding that was in that place.
pub async fn bind(
    State(state): State<ApiState>,
    scoped: Scoped,
    params: Params,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let account = &scoped.account;
    let plugin = params
        .text("Plugin")
        .ok_or_else(|| ApiError::param("Plugin", "is required"))?;
    let plugin_world = if let Some(name) = plugin.strip_prefix("builtin:") {
        let bytes = callflow_runtime::builtin::get(name).ok_or_else(|| {
            ApiError::param(
                "Plugin",
                &format!("there is no built-in plugin called {name}"),
            )
        })?;
        let (loaded, _) = load(&state, bytes.to_vec()).await.inspect_err(|e| {
            tracing::error!(error = %e.message, "a built-in plugin does not load");
        })?;
        loaded.world.as_str().to_owned()
    } else {
        state
            .store()
            .plugin(&account.sid, plugin)
            .await?
            .ok_or_else(|| {
                ApiError::param(
                    "Plugin",
                    &format!("{plugin} is not a plugin version of this account"),
                )
            })?
            .world
    };
    let world = match params.text("World") {
        Some(w) => check_world(w)?.to_owned(),
        None => plugin_world.clone(),
    };
    if world != plugin_world {
        return Err(ApiError::param(
            "World",
            &format!("the plugin implements {plugin_world}, not {world}"),
        ));
    }
    let config = params
        .get("Config")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .unwrap_or("{}");
    if config.len() > MAX_CONFIG_BYTES {
        return Err(ApiError::param("Config", "is larger than 64 KiB"));
    }
    let Ok(Value::Object(config_map)) = serde_json::from_str::<Value>(config) else {
        return Err(ApiError::param("Config", "must be a JSON object"));
    };
    // values the plugin gets at every invocation but that are never shown again or copied
    // into the calls the binding pins (an API token, a password)
    let secrets = params
        .get("Secrets")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .unwrap_or("{}");
    if secrets.len() > MAX_SECRETS_BYTES {
        return Err(ApiError::param("Secrets", "is larger than 16 KiB"));
    }
    let Ok(Value::Object(secrets_map)) = serde_json::from_str::<Value>(secrets) else {
        return Err(ApiError::param("Secrets", "must be a JSON object"));
    };
    if let Some(both) = secrets_map.keys().find(|k| config_map.contains_key(*k)) {
        return Err(ApiError::param(
            "Secrets",
            &format!("{both} is in Config too; give each value in one of them"),
        ));
    }
    let scope = match (params.text("PhoneNumberSid"), params.text("CalloutSid")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::param(
                "PhoneNumberSid",
                "give PhoneNumberSid or CalloutSid, not both",
            ));
        }
        (Some(n), None) => {
            state
                .store()
                .number(&account.sid, n)
                .await?
                .ok_or_else(|| {
                    ApiError::param(
                        "PhoneNumberSid",
                        &format!("{n} is not a number of this account"),
                    )
                })?;
            BindingScope::Number(n.to_owned())
        }
        (None, Some(c)) => {
            state
                .store()
                .callout(&account.sid, c)
                .await?
                .ok_or_else(|| {
                    ApiError::param(
                        "CalloutSid",
                        &format!("{c} is not a callout of this account"),
                    )
                })?;
            BindingScope::Callout(c.to_owned())
        }
        (None, None) => BindingScope::Account,
    };
    // an account may give its plugin more (or less) time per event than the default 10 ms
    let deadline_ms = params
        .int("DeadlineMs", 1, MAX_DEADLINE_MS)?
        .unwrap_or(DEFAULT_DEADLINE_MS);
    let new = NewBinding {
        world,
        plugin: plugin.to_owned(),
        scope,
        config: config.to_owned(),
        secrets: Value::Object(secrets_map).to_string(),
        deadline_ms,
    };
    let (binding, created) = state
        .store()
        .put_binding(&account.sid, &new, now_ms())
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(render_binding(&binding))))
}

pub async fn list_bindings(
    State(state): State<ApiState>,
    scoped: Scoped,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let account = &scoped.account;
    let q = ListQuery::parse(q.as_deref())?;
    let world = q.get("World").map(check_world).transpose()?;
    let page = state
        .store()
        .list_bindings(&account.sid, world, q.request)
        .await?;
    Ok(Json(q.envelope(
        &format!("{}/PluginBindings", base(&account.sid)),
        "bindings",
        page,
        render_binding,
    )))
}

pub async fn fetch_binding(
    State(state): State<ApiState>,
    scoped: Scoped,
) -> ApiResult<Json<Value>> {
    let (account, sid) = (&scoped.account, scoped.sid("sid"));
    let b = state
        .store()
        .binding(&account.sid, sid)
        .await?
        .ok_or_else(|| ApiError::not_found(&format!("/PluginBindings/{sid}")))?;
    Ok(Json(render_binding(&b)))
}

pub async fn delete_binding(
    State(state): State<ApiState>,
    scoped: Scoped,
) -> ApiResult<StatusCode> {
    let (account, sid) = (&scoped.account, scoped.sid("sid"));
    match state.store().delete_binding(&account.sid, sid).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(StoreError::NotFound) => Err(ApiError::not_found(&format!("/PluginBindings/{sid}"))),
        Err(e) => Err(e.into()),
    }
}

/// The plugin versions a new call will run with (see [`callflow_engine::plugins::pin_for_call`]).
pub async fn pin_for_call(
    state: &ApiState,
    account: &str,
    number_sid: Option<&str>,
) -> ApiResult<Pins> {
    Ok(callflow_engine::plugins::pin_for_call(state.store(), account, number_sid, None).await?)
}

/// Runs one event through an uploaded call-flow plugin in the real sandbox and answers with what
/// it did, so plugin authors can see the host run their plugin before any call does.
///
/// `Event` is `start`, `prompt-done`, `gathered` (with `Digits`, `TimedOut`), `fetched` (with
/// `Status`, `Body`) or `hangup`; `State` is the `state` a previous invocation returned; `Config`
/// the JSON object the binding would pass.
pub async fn invoke(
    State(state): State<ApiState>,
    scoped: Scoped,
    params: Params,
) -> ApiResult<Json<Value>> {
    use callflow_runtime::flow::{
        CallContext, FetchResponse, FetchResult, FlowEvent, GatherResult, HttpMethod,
    };
    let (account, sid) = (&scoped.account, scoped.sid("sid"));
    let version = state
        .store()
        .plugin(&account.sid, sid)
        .await?
        .ok_or_else(|| ApiError::not_found(&format!("/Plugins/{sid}")))?;
    if version.world != World::CallFlow.as_str() {
        return Err(ApiError::param(
            "Plugin",
            &format!(
                "only call-flow plugins can be invoked here; this one is {}",
                version.world
            ),
        ));
    }
    let event = match params.text("Event").unwrap_or("start") {
        "start" => FlowEvent::Start,
        "prompt-done" => FlowEvent::PromptDone,
        "hangup" => FlowEvent::Hangup,
        "gathered" => FlowEvent::Gathered(GatherResult {
            digits: params.get("Digits").unwrap_or("").to_owned(),
            timed_out: params.bool("TimedOut")?.unwrap_or(false),
        }),
        "fetched" => FlowEvent::Fetched(FetchResult::Response(FetchResponse {
            status: u16::try_from(params.int("Status", 100, 599)?.unwrap_or(200)).unwrap_or(200),
            content_type: Some("application/xml".into()),
            body: params.get("Body").unwrap_or("").to_owned(),
            url: "https://example.invalid/".into(),
        })),
        _ => {
            return Err(ApiError::param(
                "Event",
                "must be start, prompt-done, gathered, fetched or hangup",
            ));
        }
    };
    let config = params
        .get("Config")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .unwrap_or("{}")
        .to_owned();
    if config.len() > MAX_CONFIG_BYTES
        || !serde_json::from_str::<Value>(&config).is_ok_and(|v| v.is_object())
    {
        return Err(ApiError::param(
            "Config",
            "must be a JSON object of at most 64 KiB",
        ));
    }
    let plugin_state = params.get("State").unwrap_or("").as_bytes().to_vec();
    let wasm = match state.blobs().get(&plugin_key(&version.sha256)).await {
        Ok(Some(bytes)) => bytes.to_vec(),
        Ok(None) => {
            tracing::error!(plugin = %version.sid, "plugin bytes missing");
            return Err(ApiError::internal());
        }
        Err(e) => {
            tracing::error!(error = %e, plugin = %version.sid, "plugin bytes cannot be read");
            return Err(ApiError::unavailable(
                "the plugin's bytes cannot be read; try again in a moment",
            ));
        }
    };
    let (plugin, _) = load(&state, wasm).await?;
    let now = now_ms();
    let ctx = CallContext {
        account_sid: account.sid.clone(),
        call_sid: "CA00000000000000000000000000000000".into(),
        parent_call_sid: None,
        direction: "outbound-api".into(),
        from: params.get("From").unwrap_or("+15005550006").to_owned(),
        to: params.get("To").unwrap_or("+15558675310").to_owned(),
        status: "in-progress".into(),
        answered_by: None,
        now_ms: now,
        seed: u64::try_from(now).unwrap_or(0),
        config,
        url: None,
        method: HttpMethod::Post,
        fallback_url: None,
        fallback_method: HttpMethod::Post,
        document: None,
    };
    let limits = callflow_runtime::Limits::default();
    match state
        .runtime()
        .call_flow(plugin, ctx, plugin_state, event, limits)
        .await
    {
        Ok(step) => Ok(Json(json!({
            "plugin": version.sid,
            "commands": step.commands,
            "state": String::from_utf8_lossy(&step.state),
            "logs": step.logs,
        }))),
        Err(e @ callflow_runtime::InvokeError::Overloaded(_)) => Err(ApiError::unavailable(
            format!("the plugin could not run now: {e}"),
        )),
        Err(e) => Err(ApiError::invalid(20001, format!("the plugin failed: {e}"))),
    }
}
