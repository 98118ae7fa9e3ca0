//! `/Recordings`: list (account-wide and per call), fetch as JSON, fetch the media (`.wav`, `.mp3`,
//! bare SID → WAV), delete. Media may be fetched without credentials when the operator allows it
//! (Twilio's default); credentials that are sent must be right.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use callflow_store::{Recording, StoreError};
use serde_json::Value;

use crate::auth::{Caller, MaybeCaller, Scoped};
use crate::error::{ApiError, ApiResult};
use crate::paging::ListQuery;
use crate::{ApiState, render};

pub async fn list(
    State(state): State<ApiState>,
    scoped: Scoped,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let account = &scoped.account;
    let q = ListQuery::parse(q.as_deref())?;
    let path = format!("{}/Recordings.json", render::account_path(&account.sid));
    list_page(&state, &account.sid, q.get("CallSid"), &q, &path).await
}

pub async fn list_for_call(
    State(state): State<ApiState>,
    scoped: Scoped,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let (account, call) = (&scoped.account, scoped.raw("call"));
    let q = ListQuery::parse(q.as_deref())?;
    let path = format!(
        "{}/Calls/{call}/Recordings.json",
        render::account_path(&account.sid)
    );
    list_page(&state, &account.sid, Some(call), &q, &path).await
}

async fn list_page(
    state: &ApiState,
    account: &str,
    call: Option<&str>,
    q: &ListQuery,
    path: &str,
) -> ApiResult<Json<Value>> {
    let page = state
        .store()
        .list_recordings(account, call, q.request)
        .await?;
    let public = state.config().public_url.clone();
    Ok(Json(q.envelope(path, "recordings", page, |r| {
        render::recording(r, &public)
    })))
}

/// What a recording URL asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Wav,
    Mp3,
}

fn split_format(sid: &str) -> (&str, Format) {
    if let Some(s) = sid.strip_suffix(".json") {
        (s, Format::Json)
    } else if let Some(s) = sid.strip_suffix(".mp3") {
        (s, Format::Mp3)
    } else {
        (sid.strip_suffix(".wav").unwrap_or(sid), Format::Wav)
    }
}

pub async fn fetch(
    State(state): State<ApiState>,
    caller: MaybeCaller,
    Path((account, sid)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (sid, format) = split_format(&sid);
    let needs_auth = format == Format::Json || !state.config().recordings_public;
    let account = match &caller.0 {
        Some(a) => Caller(a.clone()).scope(&account)?.sid.clone(),
        None if needs_auth => return Err(ApiError::unauthorized()),
        None => account,
    };
    let rec = state
        .store()
        .recording(&account, sid)
        .await?
        .ok_or_else(|| not_found(sid))?;
    match format {
        Format::Json => {
            Ok(Json(render::recording(&rec, &state.config().public_url)).into_response())
        }
        Format::Wav => media(&state, &rec, rec.wav_path.as_deref(), "audio/x-wav").await,
        Format::Mp3 => media(&state, &rec, rec.mp3_path.as_deref(), "audio/mpeg").await,
    }
}

pub async fn fetch_for_call(
    State(state): State<ApiState>,
    scoped: Scoped,
) -> ApiResult<Json<Value>> {
    let (account, call) = (&scoped.account, scoped.raw("call"));
    let (sid, _) = split_format(scoped.raw("sid"));
    match state.store().recording(&account.sid, sid).await? {
        Some(r) if r.call_sid == call => {
            Ok(Json(render::recording(&r, &state.config().public_url)))
        }
        _ => Err(not_found(sid)),
    }
}

pub async fn delete(State(state): State<ApiState>, scoped: Scoped) -> ApiResult<StatusCode> {
    let account = &scoped.account;
    let (sid, _) = split_format(scoped.raw("sid"));
    // under /Calls/{call}/Recordings/{sid} the recording must belong to that call
    let call = scoped.raw("call");
    if !call.is_empty()
        && state
            .store()
            .recording(&account.sid, sid)
            .await?
            .is_none_or(|r| r.call_sid != call)
    {
        return Err(not_found(sid));
    }
    let rec = match state.store().delete_recording(&account.sid, sid).await {
        Ok(r) => r,
        Err(StoreError::NotFound) => return Err(not_found(sid)),
        Err(e) => return Err(e.into()),
    };
    for key in [&rec.wav_path, &rec.mp3_path].into_iter().flatten() {
        if let Err(e) = state.blobs().delete(key).await {
            tracing::warn!(recording = %rec.sid, error = %e, "could not remove recording media");
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn media(
    state: &ApiState,
    rec: &Recording,
    rel: Option<&str>,
    content_type: &'static str,
) -> ApiResult<Response> {
    let key = rel.ok_or_else(|| not_found(&rec.sid))?;
    let (len, stream) = match state.blobs().stream(key).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            tracing::warn!(recording = %rec.sid, %key, "recording media missing");
            return Err(not_found(&rec.sid));
        }
        Err(e) => {
            tracing::warn!(recording = %rec.sid, error = %e, "recording media cannot be read");
            return Err(ApiError::unavailable(
                "the recording cannot be read just now; try again in a moment",
            ));
        }
    };
    let body = Body::from_stream(stream);
    let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, len.into());
    Ok(resp)
}

fn not_found(sid: &str) -> ApiError {
    ApiError::not_found(&format!("/Recordings/{sid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_paths() {
        assert_eq!(split_format("RE1.json"), ("RE1", Format::Json));
        assert_eq!(split_format("RE1.mp3"), ("RE1", Format::Mp3));
        assert_eq!(split_format("RE1.wav"), ("RE1", Format::Wav));
        assert_eq!(split_format("RE1"), ("RE1", Format::Wav));
    }
}
