//! `/2010-04-01/Accounts`: an account sees itself; the root account also creates, lists and
//! manages its subaccounts (and only through this resource).

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use callflow_engine::clock::now_ms;
use callflow_store::Account;
use serde_json::Value;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::paging::ListQuery;
use crate::params::Params;
use crate::{ApiState, render, strip_suffix};

const MAX_FRIENDLY_NAME: usize = 64;

pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = ListQuery::parse(q.as_deref())?;
    let status = q.get("Status").map(str::to_owned);
    if let Some(s) = &status {
        check_status(s)?;
    }
    let page = state
        .store()
        .list_accounts(
            &caller.0.sid,
            q.get("FriendlyName"),
            status.as_deref(),
            q.request,
        )
        .await?;
    let path = format!("/{}/Accounts.json", render::API_VERSION);
    Ok(Json(q.envelope(&path, "accounts", page, render::account)))
}

pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    params: Params,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if !caller.0.is_root {
        return Err(ApiError::forbidden(
            "Only the root account can create subaccounts",
        ));
    }
    let now = now_ms();
    let name = match params.text("FriendlyName") {
        Some(n) => friendly_name(n)?.to_owned(),
        None => format!(
            "SubAccount Created at {}",
            callflow_engine::clock::rfc2822(now)
        ),
    };
    let account = state
        .store()
        .create_account(Some(&caller.0.sid), &name, now)
        .await?;
    tracing::info!(account = %account.sid, "subaccount created");
    Ok((StatusCode::CREATED, Json(render::account(&account))))
}

pub async fn fetch(
    State(state): State<ApiState>,
    caller: Caller,
    Path(sid): Path<String>,
) -> ApiResult<Json<Value>> {
    let account = visible(&state, &caller, strip_suffix(&sid, ".json")).await?;
    Ok(Json(render::account(&account)))
}

pub async fn update(
    State(state): State<ApiState>,
    caller: Caller,
    Path(sid): Path<String>,
    params: Params,
) -> ApiResult<Json<Value>> {
    let account = visible(&state, &caller, strip_suffix(&sid, ".json")).await?;
    let name = params.text("FriendlyName").map(friendly_name).transpose()?;
    let status = params.text("Status");
    if let Some(s) = status {
        check_status(s)?;
        if account.sid == caller.0.sid {
            return Err(ApiError::param(
                "Status",
                "an account cannot change its own status",
            ));
        }
        if account.status == "closed" {
            return Err(ApiError::param(
                "Status",
                "a closed account cannot be reopened",
            ));
        }
    }
    let updated = state
        .store()
        .update_account(&account.sid, name, status, now_ms())
        .await?;
    Ok(Json(render::account(&updated)))
}

/// The account `sid` if `caller` may see it: itself, or a subaccount of the root caller.
async fn visible(state: &ApiState, caller: &Caller, sid: &str) -> ApiResult<Account> {
    if sid == caller.0.sid {
        return Ok(caller.0.clone());
    }
    match state.store().account(sid).await? {
        Some(a) if caller.0.is_root && a.parent_sid.as_deref() == Some(caller.0.sid.as_str()) => {
            Ok(a)
        }
        _ => Err(ApiError::not_found(&format!("/Accounts/{sid}"))),
    }
}

fn check_status(s: &str) -> ApiResult<()> {
    match s {
        "active" | "suspended" | "closed" => Ok(()),
        _ => Err(ApiError::param(
            "Status",
            "must be active, suspended or closed",
        )),
    }
}

fn friendly_name(n: &str) -> ApiResult<&str> {
    if n.chars().count() > MAX_FRIENDLY_NAME {
        return Err(ApiError::param(
            "FriendlyName",
            "is longer than 64 characters",
        ));
    }
    Ok(n)
}
