//! `/IncomingPhoneNumbers`: the numbers an account receives calls on.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use callflow_engine::clock::now_ms;
use callflow_store::{NewNumber, NumberFilter, NumberUpdate, StoreError};
use serde_json::Value;

use crate::auth::Scoped;
use crate::error::{ApiError, ApiResult};
use crate::paging::ListQuery;
use crate::params::{Params, check_url, e164};
use crate::{ApiState, render};

pub async fn list(
    State(state): State<ApiState>,
    scoped: Scoped,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let account = &scoped.account;
    let q = ListQuery::parse(q.as_deref())?;
    let filter = NumberFilter {
        phone_number: q
            .get("PhoneNumber")
            .map(|p| e164(p).unwrap_or_else(|| p.to_owned())),
        friendly_name: q.get("FriendlyName").map(str::to_owned),
    };
    let page = state
        .store()
        .list_numbers(&account.sid, &filter, q.request)
        .await?;
    let path = format!(
        "{}/IncomingPhoneNumbers.json",
        render::account_path(&account.sid)
    );
    Ok(Json(q.envelope(
        &path,
        "incoming_phone_numbers",
        page,
        render::number,
    )))
}

pub async fn create(
    State(state): State<ApiState>,
    scoped: Scoped,
    params: Params,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let account = &scoped.account;
    let phone = params
        .text("PhoneNumber")
        .ok_or_else(|| ApiError::invalid(21421, "PhoneNumber is required"))?;
    let phone = e164(phone)
        .ok_or_else(|| ApiError::invalid(21421, format!("PhoneNumber is invalid: {phone}")))?;
    let u = update_fields(&params)?;
    let n = NewNumber {
        friendly_name: u.friendly_name.unwrap_or_else(|| phone.clone()),
        phone_number: phone,
        voice_url: u.voice_url.flatten(),
        voice_method: u.voice_method.unwrap_or_default(),
        voice_fallback_url: u.voice_fallback_url.flatten(),
        voice_fallback_method: u.voice_fallback_method.unwrap_or_default(),
        status_callback: u.status_callback.flatten(),
        status_callback_method: u.status_callback_method.unwrap_or_default(),
    };
    match state
        .store()
        .create_number(&account.sid, &n, now_ms())
        .await
    {
        Ok(number) => Ok((StatusCode::CREATED, Json(render::number(&number)))),
        Err(StoreError::Conflict(_)) => Err(ApiError::invalid(
            21422,
            format!("PhoneNumber {} is not available", n.phone_number),
        )),
        Err(e) => Err(e.into()),
    }
}

pub async fn fetch(State(state): State<ApiState>, scoped: Scoped) -> ApiResult<Json<Value>> {
    let (account, sid) = (&scoped.account, scoped.sid("sid"));
    let n = state
        .store()
        .number(&account.sid, sid)
        .await?
        .ok_or_else(|| not_found(sid))?;
    Ok(Json(render::number(&n)))
}

pub async fn update(
    State(state): State<ApiState>,
    scoped: Scoped,
    params: Params,
) -> ApiResult<Json<Value>> {
    let (account, sid) = (&scoped.account, scoped.sid("sid"));
    let u = update_fields(&params)?;
    match state
        .store()
        .update_number(&account.sid, sid, &u, now_ms())
        .await
    {
        Ok(n) => Ok(Json(render::number(&n))),
        Err(StoreError::NotFound) => Err(not_found(sid)),
        Err(e) => Err(e.into()),
    }
}

pub async fn delete(State(state): State<ApiState>, scoped: Scoped) -> ApiResult<StatusCode> {
    let (account, sid) = (&scoped.account, scoped.sid("sid"));
    match state.store().delete_number(&account.sid, sid).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(StoreError::NotFound) => Err(not_found(sid)),
        Err(e) => Err(e.into()),
    }
}

fn not_found(sid: &str) -> ApiError {
    ApiError::not_found(&format!("/IncomingPhoneNumbers/{sid}"))
}

/// The settable fields; an empty URL parameter clears that URL.
fn update_fields(p: &Params) -> ApiResult<NumberUpdate> {
    let url = |name: &str| -> ApiResult<Option<Option<String>>> {
        match p.get(name).map(str::trim) {
            None => Ok(None),
            Some("") => Ok(Some(None)),
            Some(v) => check_url(name, v, 20001).map(|u| Some(Some(u))),
        }
    };
    let friendly_name = p.text("FriendlyName").map(str::to_owned);
    if friendly_name
        .as_ref()
        .is_some_and(|n| n.chars().count() > 64)
    {
        return Err(ApiError::param(
            "FriendlyName",
            "is longer than 64 characters",
        ));
    }
    Ok(NumberUpdate {
        friendly_name,
        voice_url: url("VoiceUrl")?,
        voice_method: p.method("VoiceMethod")?,
        voice_fallback_url: url("VoiceFallbackUrl")?,
        voice_fallback_method: p.method("VoiceFallbackMethod")?,
        status_callback: url("StatusCallback")?,
        status_callback_method: p.method("StatusCallbackMethod")?,
    })
}
