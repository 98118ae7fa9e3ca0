//! `/Calls`: create (queued for the dispatcher), list with Twilio's filters, fetch, and update
//! (new instructions, or ending the call).

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use callflow_engine::clock::now_ms;
use callflow_engine::{EndRequest, EngineError, Redirect};
use callflow_store::{
    CallFilter, CallInstructions, CallStatus, CallTemplate, CallUpdate, CallbackEvent,
    CallbackEvents, StoreError, TIME_LIMIT_DEFAULT, TIMEOUT_DEFAULT,
};
use chrono::{NaiveDate, NaiveTime};
use serde_json::Value;

use crate::auth::Scoped;
use crate::error::{ApiError, ApiResult};
use crate::paging::ListQuery;
use crate::params::{Params, destination, e164};
use crate::{ApiState, CallerIdPolicy, render};

/// Twilio's ring timeout cap, in seconds (the defaults are the store's).
const TIMEOUT_MAX: i64 = 600;
/// Twilio's maximum call length cap (24 h), in seconds.
const TIME_LIMIT_MAX: i64 = 86_400;
/// Twilio's limit on an inline `Twiml` parameter.
const TWIML_MAX: usize = 4_000;

pub async fn create(
    State(state): State<ApiState>,
    scoped: Scoped,
    params: Params,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let account = &scoped.account;
    let to = params
        .text("To")
        .ok_or_else(|| ApiError::invalid(21201, "No 'To' number is specified"))?;
    let to = destination(to)
        .ok_or_else(|| ApiError::invalid(21211, format!("Invalid 'To' Phone Number: {to}")))?;
    let template = call_template(&state, &account.sid, &params).await?;
    let plugins =
        crate::plugins::pin_for_call(&state, &account.sid, template.phone_number_sid.as_deref())
            .await?;
    let call = state
        .store()
        .create_call(&account.sid, &template.call_to(&to, plugins), now_ms())
        .await?;
    state.engine().calls_queued();
    metrics::counter!("callflow_calls_created_total").increment(1);
    tracing::info!(call = %call.sid, account = %account.sid, "call queued");
    Ok((StatusCode::CREATED, Json(render::call(&call))))
}

/// The call a request describes, without its `To`: the parameters and validation of Calls.json,
/// shared by a callout's attempts (`From` must be the account's unless any caller ID is allowed).
pub(crate) async fn call_template(
    state: &ApiState,
    account: &str,
    params: &Params,
) -> ApiResult<CallTemplate> {
    let from = params
        .text("From")
        .ok_or_else(|| ApiError::invalid(21213, "'From' phone number is required"))?;
    let from_e164 = e164(from);
    let from = if from.starts_with("client:") {
        Some(from.to_owned())
    } else {
        from_e164.clone()
    }
    .ok_or_else(|| ApiError::invalid(21212, format!("Invalid 'From' Phone Number: {from}")))?;
    let owned = match &from_e164 {
        Some(f) => state.store().number_by_phone(account, f).await?,
        None => None,
    };
    if owned.is_none() && state.config().caller_id == CallerIdPolicy::Owned {
        return Err(ApiError::invalid(
            21210,
            format!(
                "The source phone number provided, {from}, is not yet verified for your account"
            ),
        ));
    }
    let url = params.url("Url", 21205)?;
    let twiml = params.text("Twiml").map(str::to_owned);
    if params.text("ApplicationSid").is_some() {
        return Err(ApiError::param(
            "ApplicationSid",
            "applications are not supported; use Url or Twiml",
        ));
    }
    if url.is_none() && twiml.is_none() {
        return Err(ApiError::invalid(21205, "Url or Twiml is required"));
    }
    if twiml.as_ref().is_some_and(|t| t.len() > TWIML_MAX) {
        return Err(ApiError::param("Twiml", "is longer than 4000 characters"));
    }
    let send_digits = params.text("SendDigits").map(str::to_owned);
    let dtmf = |c: char| c.is_ascii_digit() || matches!(c, '*' | '#' | 'w' | 'W');
    if send_digits
        .as_ref()
        .is_some_and(|d| d.len() > 32 || !d.chars().all(dtmf))
    {
        return Err(ApiError::param(
            "SendDigits",
            "may contain only 0-9, *, # and w",
        ));
    }
    let machine_detection = params
        .text("MachineDetection")
        .map(|m| {
            m.parse().map_err(|_| {
                ApiError::param("MachineDetection", "must be Enable or DetectMessageEnd")
            })
        })
        .transpose()?;
    // kept in the request's parameters, as received; checked here
    for (name, min, max) in callflow_store::AMD_TUNING {
        params.int(name, min, max)?;
    }
    if let Some(a) = params.text("AsyncAmd")
        && a != "true"
        && a != "false"
    {
        return Err(ApiError::param("AsyncAmd", "must be true or false"));
    }
    params.url("AsyncAmdStatusCallback", 20001)?;
    params.method("AsyncAmdStatusCallbackMethod")?;
    if params
        .text("RecordingChannels")
        .is_some_and(|c| c != "mono" && c != "dual")
    {
        return Err(ApiError::param("RecordingChannels", "must be mono or dual"));
    }
    params.url("RecordingStatusCallback", 20001)?;
    let request_params = params.request_params();
    let pairs = request_params
        .0
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()));
    if let Err((name, why)) = callflow_store::RecordingCallback::from_params(pairs) {
        return Err(ApiError::param(name, &why));
    }
    Ok(CallTemplate {
        from,
        phone_number_sid: owned.map(|n| n.sid),
        instructions: CallInstructions {
            method: params.method("Method")?.unwrap_or_default(),
            url,
            twiml,
            fallback_url: params.url("FallbackUrl", 21205)?,
            fallback_method: params.method("FallbackMethod")?.unwrap_or_default(),
            status_callback: params.url("StatusCallback", 20001)?,
            status_callback_method: params.method("StatusCallbackMethod")?.unwrap_or_default(),
            status_callback_event: callback_events(params)?,
            timeout: params
                .int("Timeout", 1, TIMEOUT_MAX)?
                .unwrap_or(TIMEOUT_DEFAULT),
            time_limit: params
                .int("TimeLimit", 1, TIME_LIMIT_MAX)?
                .unwrap_or(TIME_LIMIT_DEFAULT),
            send_digits,
            record: params.bool("Record")?.unwrap_or(false),
            machine_detection,
            request_params,
        },
    })
}

/// `StatusCallbackEvent`, repeated or space-separated, in the order given; default
/// `completed`.
fn callback_events(p: &Params) -> ApiResult<CallbackEvents> {
    let mut events = CallbackEvents::default();
    for e in p.all("StatusCallbackEvent").flat_map(str::split_whitespace) {
        let e = e.parse().map_err(|_| {
            ApiError::param(
                "StatusCallbackEvent",
                "must be initiated, ringing, answered or completed",
            )
        })?;
        events.insert(e);
    }
    if events.is_empty() {
        events.insert(CallbackEvent::Completed);
    }
    Ok(events)
}

pub async fn list(
    State(state): State<ApiState>,
    scoped: Scoped,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let account = &scoped.account;
    let q = ListQuery::parse(q.as_deref())?;
    let number = |name: &str| {
        q.get(name)
            .map(|v| destination(v).unwrap_or_else(|| v.to_owned()))
    };
    let status = q
        .get("Status")
        .map(|s| {
            s.parse::<CallStatus>()
                .map_err(|_| ApiError::param("Status", "is not a call status"))
        })
        .transpose()?;
    let (start_after, start_before) = time_bounds(&q, "StartTime")?;
    let (end_after, end_before) = time_bounds(&q, "EndTime")?;
    let filter = CallFilter {
        to: number("To"),
        from: number("From"),
        status,
        parent_call_sid: q.get("ParentCallSid").map(str::to_owned),
        start_after,
        start_before,
        end_after,
        end_before,
    };
    let page = state
        .store()
        .list_calls(&account.sid, &filter, q.request)
        .await?;
    let path = format!("{}/Calls.json", render::account_path(&account.sid));
    Ok(Json(q.envelope(&path, "calls", page, render::call)))
}

/// Twilio's time filters: `StartTime=D` (that day), `StartTime>=D` (sent as key `StartTime>`)
/// and `StartTime<=D` (key `StartTime<`), with D a date or an RFC 3339 date-time.
fn time_bounds(q: &ListQuery, name: &str) -> ApiResult<(Option<i64>, Option<i64>)> {
    let parse = |key: String| -> ApiResult<Option<(i64, i64)>> {
        q.get(&key)
            .map(|v| {
                parse_time(v)
                    .ok_or_else(|| ApiError::param(&key, "must be YYYY-MM-DD or an RFC 3339 time"))
            })
            .transpose()
    };
    let exact = parse(name.to_owned())?;
    let after = parse(format!("{name}>"))?;
    let before = parse(format!("{name}<"))?;
    let lo = [exact.map(|r| r.0), after.map(|r| r.0)]
        .into_iter()
        .flatten()
        .max();
    let hi = [exact.map(|r| r.1), before.map(|r| r.1)]
        .into_iter()
        .flatten()
        .min();
    Ok((lo, hi))
}

/// The inclusive range of milliseconds `v` names: a whole day for a date, one instant otherwise.
fn parse_time(v: &str) -> Option<(i64, i64)> {
    let v = v.trim_start_matches('=');
    if let Ok(d) = NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        let start = d.and_time(NaiveTime::MIN).and_utc().timestamp_millis();
        return Some((start, start + 86_400_000 - 1));
    }
    let t = chrono::DateTime::parse_from_rfc3339(v)
        .ok()?
        .timestamp_millis();
    Some((t, t))
}

pub async fn fetch(State(state): State<ApiState>, scoped: Scoped) -> ApiResult<Json<Value>> {
    let (account, sid) = (&scoped.account, scoped.sid("sid"));
    let call = state
        .store()
        .call(&account.sid, sid)
        .await?
        .ok_or_else(|| not_found(sid))?;
    Ok(Json(render::call(&call)))
}

/// A call's event log (ours, not Twilio's Call Events): status changes, and what its flow
/// received, asked for and logged, oldest first.
pub async fn events(State(state): State<ApiState>, scoped: Scoped) -> ApiResult<Json<Value>> {
    let (account, sid) = (&scoped.account, scoped.sid("sid"));
    state
        .store()
        .call(&account.sid, sid)
        .await?
        .ok_or_else(|| not_found(sid))?;
    let events: Vec<Value> = state
        .store()
        .call_events(sid)
        .await?
        .into_iter()
        .map(|e| {
            let detail: Value = serde_json::from_str(&e.detail).unwrap_or(Value::Null);
            serde_json::json!({ "at": e.at, "kind": e.kind, "detail": detail })
        })
        .collect();
    Ok(Json(
        serde_json::json!({ "call_sid": sid, "events": events }),
    ))
}

pub async fn update(
    State(state): State<ApiState>,
    scoped: Scoped,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    params: Params,
) -> ApiResult<axum::response::Response> {
    let (account, sid) = (&scoped.account, scoped.sid("sid"));
    // a live call another node drives is changed there, where its leg is (issue 17)
    if let Some(call) = state.store().call(&account.sid, sid).await?
        && let Some(owner) = crate::forward::owner_elsewhere(&state, &call, &headers).await?
    {
        return crate::forward::forward(&owner, &uri, &headers, &params).await;
    }
    let end = match params.text("Status") {
        None => None,
        Some("canceled") => Some(EndRequest::Canceled),
        Some("completed") => Some(EndRequest::Completed),
        Some(_) => return Err(ApiError::param("Status", "must be canceled or completed")),
    };
    let twiml = params.text("Twiml").map(str::to_owned);
    if twiml.as_ref().is_some_and(|t| t.len() > TWIML_MAX) {
        return Err(ApiError::param("Twiml", "is longer than 4000 characters"));
    }
    let update = CallUpdate {
        url: params.url("Url", 21205)?,
        method: params.method("Method")?,
        twiml,
        fallback_url: params.url("FallbackUrl", 21205)?,
        fallback_method: params.method("FallbackMethod")?,
        status_callback: params.url("StatusCallback", 20001)?,
        status_callback_method: params.method("StatusCallbackMethod")?,
        time_limit: params.int("TimeLimit", 1, TIME_LIMIT_MAX)?,
        answered_by: None,
    };
    let mut call = state
        .store()
        .call(&account.sid, sid)
        .await?
        .ok_or_else(|| not_found(sid))?;
    if call.status().is_final() {
        return Err(not_live());
    }
    let changes = update.url.is_some()
        || update.method.is_some()
        || update.twiml.is_some()
        || update.fallback_url.is_some()
        || update.fallback_method.is_some()
        || update.status_callback.is_some()
        || update.status_callback_method.is_some()
        || update.time_limit.is_some();
    if changes {
        call = match state
            .store()
            .update_call(&account.sid, sid, &update, now_ms())
            .await
        {
            Ok(c) => c,
            Err(StoreError::Conflict(_)) => return Err(not_live()),
            Err(e) => return Err(e.into()),
        };
    }
    if (update.url.is_some() || update.twiml.is_some()) && end.is_none() {
        // A live call abandons what it is doing and follows the new instructions.
        state.engine().redirect_call(
            sid,
            Redirect {
                url: update.url.clone(),
                method: call.instructions.method,
                twiml: update.twiml.clone(),
            },
        );
    }
    if let Some(end) = end {
        call = match state
            .engine()
            .end_call(&account.sid, sid, end, now_ms())
            .await
        {
            Ok(c) => c,
            Err(EngineError::NotFound) => return Err(not_found(sid)),
            Err(EngineError::NotLive(_)) => return Err(not_live()),
            Err(EngineError::Store(e)) => return Err(e.into()),
        };
    }
    Ok(Json(render::call(&call)).into_response())
}

fn not_found(sid: &str) -> ApiError {
    ApiError::not_found(&format!("/Calls/{sid}"))
}

fn not_live() -> ApiError {
    ApiError::invalid(21220, "Call is not in-progress. Cannot redirect.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_filters_cover_days_and_instants() {
        assert_eq!(
            parse_time("1970-01-02"),
            Some((86_400_000, 2 * 86_400_000 - 1))
        );
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some((1_000, 1_000)));
        assert_eq!(parse_time("yesterday"), None);
        let q = ListQuery::parse(Some("StartTime%3E=1970-01-02&StartTime%3C=1970-01-03")).unwrap();
        assert_eq!(
            time_bounds(&q, "StartTime").unwrap(),
            (Some(86_400_000), Some(3 * 86_400_000 - 1))
        );
        let bad = ListQuery::parse(Some("EndTime=nope")).unwrap();
        assert_eq!(time_bounds(&bad, "EndTime").unwrap_err().code, 20001);
    }
}
