//! `/v1/Accounts/{account}/Callouts`: creating a callout (the call every attempt makes, with
//! Calls.json's parameters and checks, plus pacing, calling hours and the retry configuration),
//! loading its participants from JSON or CSV, starting, pausing and stopping it, and reading its
//! progress, participants and results. Scheduling is the engine's; this module only validates,
//! stores and wakes it.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use callflow_callout_rules::config::Config as RetryConfig;
use callflow_callout_rules::hours::{parse_calling_hours, parse_time_zone};
use callflow_engine::EndRequest;
use callflow_engine::clock::{now_ms, rfc2822};
use callflow_store::{
    CallTemplate, CallbackEvent, Callout, CalloutStatus, MachineDetection, NewCallout,
    NewParticipant, Participant, ParticipantFilter, ParticipantState, StoreError,
};
use serde_json::{Map, Value, json};

use crate::ApiState;
use crate::auth::Scoped;
use crate::calls::call_template;
use crate::error::{ApiError, ApiResult};
use crate::paging::ListQuery;
use crate::params::{Params, e164, read_body};

const MAX_NAME: usize = 100;
/// `RetryConfig` and `Metadata` are bounded: the engine hands them to plugins.
const MAX_JSON_PARAM: usize = 16 << 10;
const MAX_CALLS_PER_SECOND: f64 = 1000.0;
/// The engine's own default when `MaxConcurrent` is absent is 50 calls.
const MAX_CONCURRENT: i64 = 100_000;
const MAX_PRIORITY: i64 = 100;
/// One participant's metadata, serialised: it travels with every attempt's retry decision.
const MAX_PARTICIPANT_METADATA: usize = 4 << 10;
/// Invalid rows listed in an upload's answer (`invalid_count` has them all).
const MAX_INVALID_LISTED: usize = 1000;
/// Participants per store read while exporting results.
const EXPORT_CHUNK: u32 = 1000;
/// The built-in retry policy's binding name: its configuration can be checked here.
const BUILTIN_RETRY: &str = "builtin:retry";

const RESULTS_HEADER: [&str; 12] = [
    "participant_sid",
    "phone_number",
    "time_zone",
    "status",
    "outcome",
    "attempts",
    "last_call_sid",
    "last_call_status",
    "last_call_duration",
    "last_sip_response_code",
    "reason",
    "metadata",
];

fn base(account: &str) -> String {
    format!("/v1/Accounts/{account}/Callouts")
}

fn not_found(sid: &str) -> ApiError {
    ApiError::not_found(&format!("/Callouts/{sid}"))
}

fn conflict(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, 20409, message)
}

/// The callout's JSON; `summary` and `analysis` are added by the handlers that read them.
fn render_callout(c: &Callout) -> Value {
    let uri = format!("{}/{}", base(&c.account_sid), c.sid);
    let object = |text: &str| serde_json::from_str::<Value>(text).unwrap_or(Value::Null);
    let call = c.template().map_or(Value::Null, |t| render_template(&t));
    json!({
        "sid": c.sid,
        "account_sid": c.account_sid,
        "name": c.name,
        "status": c.status().as_str(),
        "call": call,
        "calls_per_second": c.calls_per_second,
        "max_concurrent": c.max_concurrent,
        "calling_hours": c.calling_hours.as_deref().map(object),
        "time_zone": c.time_zone,
        "start_time": c.start_at.map(rfc2822),
        "priority": c.priority,
        "retry_config": object(&c.retry_config),
        "metadata": object(&c.metadata),
        "date_created": rfc2822(c.date_created),
        "date_updated": rfc2822(c.date_updated),
        "date_started": c.date_started.map(rfc2822),
        "date_finished": c.date_finished.map(rfc2822),
        "uri": uri,
        "subresource_uris": {
            "participants": format!("{uri}/Participants"),
            "results": format!("{uri}/Results.csv"),
        },
    })
}

fn render_template(t: &CallTemplate) -> Value {
    let i = &t.instructions;
    json!({
        "from": t.from,
        "phone_number_sid": t.phone_number_sid,
        "url": i.url,
        "method": i.method.as_str(),
        "twiml": i.twiml,
        "fallback_url": i.fallback_url,
        "fallback_method": i.fallback_method.as_str(),
        "status_callback": i.status_callback,
        "status_callback_method": i.status_callback_method.as_str(),
        "status_callback_event": i.status_callback_event.iter().map(CallbackEvent::as_str).collect::<Vec<_>>(),
        "timeout": i.timeout,
        "time_limit": i.time_limit,
        "send_digits": i.send_digits,
        "record": i.record,
        "machine_detection": i.machine_detection.map(MachineDetection::as_str),
    })
}

/// A participant's `status`: where it is, or how it ended once done.
fn participant_status(p: &Participant) -> &str {
    match (p.state(), p.outcome.as_deref()) {
        (ParticipantState::Done, Some(outcome)) => outcome,
        (state, _) => state.as_str(),
    }
}

fn render_participant(p: &Participant) -> Value {
    let metadata: Value = serde_json::from_str(&p.metadata).unwrap_or_else(|_| json!({}));
    json!({
        "sid": p.sid,
        "callout_sid": p.callout_sid,
        "account_sid": p.account_sid,
        "phone_number": p.phone,
        "time_zone": p.time_zone,
        "metadata": metadata,
        "status": participant_status(p),
        "outcome": p.outcome,
        "reason": p.reason,
        "attempts": p.attempts,
        "next_attempt_at": (p.state() == ParticipantState::Pending).then(|| rfc2822(p.next_at)),
        "call_sid": p.call_sid,
        "date_created": rfc2822(p.date_created),
        "date_updated": rfc2822(p.date_updated),
        "uri": format!("{}/{}/Participants/{}", base(&p.account_sid), p.callout_sid, p.sid),
    })
}

/// The callout's JSON with its participant counts.
async fn with_summary(state: &ApiState, c: &Callout) -> ApiResult<Value> {
    let summary = state.store().callout_summary(&c.sid).await?;
    let mut v = render_callout(c);
    v["summary"] = serde_json::to_value(&summary).map_err(|_| ApiError::internal())?;
    Ok(v)
}

async fn load(state: &ApiState, account: &str, sid: &str) -> ApiResult<Callout> {
    state
        .store()
        .callout(account, sid)
        .await?
        .ok_or_else(|| not_found(sid))
}

/// An integer within `min..=max` (unlike `Params::int`, too large is an error, not capped).
fn int_in(params: &Params, name: &str, min: i64, max: i64) -> ApiResult<Option<i64>> {
    params
        .text(name)
        .map(|v| match v.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::param(
                name,
                &format!("must be an integer from {min} to {max}"),
            )),
        })
        .transpose()
}

/// A JSON object parameter under `MAX_JSON_PARAM` bytes, `{}` when absent.
fn json_object(params: &Params, name: &str) -> ApiResult<String> {
    let text = params.text(name).unwrap_or("{}");
    if text.len() > MAX_JSON_PARAM {
        return Err(ApiError::param(name, "is larger than 16 KiB"));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v) if v.is_object() => Ok(v.to_string()),
        _ => Err(ApiError::param(name, "must be a JSON object")),
    }
}

/// `CallingHours` as `HH:MM-HH:MM` or `{"start", "end", "days"}`, stored as the object with the
/// callout's time zone, checked by the shared parser (`callflow-callout-rules`) the engine and the
/// built-in retry policy read it with.
fn calling_hours(text: &str, time_zone: &str) -> Result<String, String> {
    let mut hours = if text.starts_with('{') {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            _ => return Err("must be HH:MM-HH:MM or a JSON object".into()),
        }
    } else {
        let (start, end) = text
            .split_once('-')
            .ok_or("must be HH:MM-HH:MM or a JSON object")?;
        let mut m = Map::new();
        m.insert("start".into(), start.trim().into());
        m.insert("end".into(), end.trim().into());
        m
    };
    if hours.contains_key("time_zone") {
        return Err("takes no time_zone: the callout's TimeZone is used".into());
    }
    hours.insert("time_zone".into(), time_zone.into());
    let json = Value::Object(hours).to_string();
    parse_calling_hours(&json)?;
    Ok(json)
}

pub async fn create(
    State(state): State<ApiState>,
    scoped: Scoped,
    params: Params,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let account = &scoped.account;
    let name = params
        .text("Name")
        .ok_or_else(|| ApiError::param("Name", "is required"))?;
    if name.chars().count() > MAX_NAME {
        return Err(ApiError::param("Name", "is longer than 100 characters"));
    }
    if params.text("To").is_some() {
        return Err(ApiError::param(
            "To",
            "a callout calls its participants; add them with POST …/Participants",
        ));
    }
    let call = call_template(&state, &account.sid, &params).await?;
    let calls_per_second = params
        .text("CallsPerSecond")
        .map(|v| match v.parse::<f64>() {
            Ok(x) if x > 0.0 && x <= MAX_CALLS_PER_SECOND => Ok(x),
            _ => Err(ApiError::param(
                "CallsPerSecond",
                "must be a number above 0 and at most 1000",
            )),
        })
        .transpose()?;
    let max_concurrent = int_in(&params, "MaxConcurrent", 1, MAX_CONCURRENT)?;
    let time_zone = parse_time_zone(params.text("TimeZone").unwrap_or("UTC"))
        .map_err(|e| ApiError::param("TimeZone", &e))?
        .name()
        .to_owned();
    let calling_hours = params
        .text("CallingHours")
        .map(|h| calling_hours(h, &time_zone).map_err(|e| ApiError::param("CallingHours", &e)))
        .transpose()?;
    let start_at = params
        .text("StartTime")
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| t.timestamp_millis())
                .map_err(|_| ApiError::param("StartTime", "must be an RFC 3339 time"))
        })
        .transpose()?;
    let priority = int_in(&params, "Priority", -MAX_PRIORITY, MAX_PRIORITY)?.unwrap_or(0);
    let retry_config = json_object(&params, "RetryConfig")?;
    // Only the built-in policy's configuration is known here; a plugin's is the plugin's business.
    let policy = state
        .store()
        .resolve_binding(
            &account.sid,
            "retry-policy",
            call.phone_number_sid.as_deref(),
            None,
        )
        .await?;
    if policy.is_none_or(|b| b.plugin == BUILTIN_RETRY) {
        RetryConfig::parse(&retry_config).map_err(|e| ApiError::param("RetryConfig", &e))?;
    }
    let metadata = json_object(&params, "Metadata")?;
    let new = NewCallout {
        name: name.to_owned(),
        call,
        calls_per_second,
        max_concurrent,
        calling_hours,
        time_zone,
        start_at,
        priority,
        retry_config,
        metadata,
    };
    let callout = state
        .store()
        .create_callout(&account.sid, &new, now_ms())
        .await?;
    tracing::info!(callout = %callout.sid, account = %account.sid, "callout created");
    Ok((
        StatusCode::CREATED,
        Json(with_summary(&state, &callout).await?),
    ))
}

pub async fn list(
    State(state): State<ApiState>,
    scoped: Scoped,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let account = &scoped.account;
    let q = ListQuery::parse(q.as_deref())?;
    let page = state.store().list_callouts(&account.sid, q.request).await?;
    Ok(Json(q.envelope(
        &base(&account.sid),
        "callouts",
        page,
        render_callout,
    )))
}

pub async fn fetch(State(state): State<ApiState>, scoped: Scoped) -> ApiResult<Json<Value>> {
    let callout = load(&state, &scoped.account.sid, scoped.sid("sid")).await?;
    let analysis = state.store().callout_analysis(&callout.sid).await?;
    let mut v = with_summary(&state, &callout).await?;
    v["analysis"] = json!({
        "answer_rate": analysis.answer_rate,
        "attempts_per_answered": analysis.attempts_per_answered,
        "durations": analysis.durations.iter()
            .map(|(bucket, count)| json!({ "bucket": bucket, "count": count }))
            .collect::<Vec<_>>(),
        "by_hour": analysis.by_hour.iter()
            .map(|(hour, status, count)| json!({ "hour": rfc2822(*hour), "status": status, "count": count }))
            .collect::<Vec<_>>(),
    });
    Ok(Json(v))
}

/// `Status=running` starts or resumes, `paused` pauses, `stopped` stops for good: its pending
/// participants end `canceled` and its queued attempts are canceled.
pub async fn update(
    State(state): State<ApiState>,
    scoped: Scoped,
    params: Params,
) -> ApiResult<Json<Value>> {
    let (account, sid) = (&scoped.account, scoped.sid("sid"));
    let to = match params.text("Status") {
        Some("running") => CalloutStatus::Running,
        Some("paused") => CalloutStatus::Paused,
        Some("stopped") => CalloutStatus::Stopped,
        _ => {
            return Err(ApiError::param(
                "Status",
                "must be running, paused or stopped",
            ));
        }
    };
    let callout = match state
        .store()
        .set_callout_status(&account.sid, sid, to, now_ms())
        .await
    {
        Ok(c) => c,
        Err(StoreError::NotFound) => return Err(not_found(sid)),
        Err(StoreError::Conflict(m)) => {
            return Err(conflict(format!("Callout {sid} cannot change: {m}")));
        }
        Err(e) => return Err(e.into()),
    };
    match to {
        CalloutStatus::Running => state.engine().callouts_changed(),
        CalloutStatus::Stopped => cancel_queued(&state, &account.sid, sid).await?,
        _ => {}
    }
    tracing::info!(callout = %sid, account = %account.sid, status = %to, "callout status set");
    Ok(Json(with_summary(&state, &callout).await?))
}

/// Cancels the stopped callout's attempts that have not started; ones already ringing or
/// answered finish on their own.
async fn cancel_queued(state: &ApiState, account: &str, callout: &str) -> ApiResult<()> {
    for call in state.store().queued_callout_calls(callout).await? {
        match state
            .engine()
            .end_call(account, &call.sid, EndRequest::Canceled, now_ms())
            .await
        {
            Ok(_) | Err(callflow_engine::EngineError::NotLive(_)) => {}
            Err(callflow_engine::EngineError::NotFound) => {}
            Err(callflow_engine::EngineError::Store(e)) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Where a rejected row was: a CSV file line (1-based, the header is line 1) or a JSON index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowAt {
    Line(u64),
    Index(usize),
}

/// A parsed upload: the valid rows, and the rejected ones (the first `MAX_INVALID_LISTED`).
#[derive(Debug, Default)]
struct Upload {
    people: Vec<NewParticipant>,
    invalid: Vec<(RowAt, String)>,
    invalid_count: usize,
}

impl Upload {
    fn reject(&mut self, at: RowAt, error: impl Into<String>) {
        self.invalid_count += 1;
        if self.invalid.len() < MAX_INVALID_LISTED {
            self.invalid.push((at, error.into()));
        }
    }

    fn row(
        &mut self,
        at: RowAt,
        phone: &str,
        time_zone: Option<&str>,
        metadata: Map<String, Value>,
    ) {
        match participant(phone, time_zone, metadata) {
            Ok(p) => self.people.push(p),
            Err(e) => self.reject(at, e),
        }
    }
}

/// A participant's number in E.164: punctuation removed, a leading `00` read as `+`, `+`
/// assumed when missing, then 6 to 15 digits. No country code starts with 0, so a number that
/// still does is national (`0712…`) and refused rather than called at a wrong number.
fn participant_phone(v: &str) -> Option<String> {
    let v = v.trim();
    let v = match v.strip_prefix("00") {
        Some(rest) => format!("+{rest}"),
        None => v.to_owned(),
    };
    e164(&v).filter(|n| n.len() > 6 && !n.starts_with("+0"))
}

fn participant(
    phone: &str,
    time_zone: Option<&str>,
    metadata: Map<String, Value>,
) -> Result<NewParticipant, String> {
    let phone = participant_phone(phone).ok_or_else(|| {
        format!("{phone:?} is not an international phone number (a country code and number, 6 to 15 digits)")
    })?;
    let time_zone = match time_zone.map(str::trim).filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => Some(parse_time_zone(t)?.name().to_owned()),
    };
    let metadata = Value::Object(metadata).to_string();
    if metadata.len() > MAX_PARTICIPANT_METADATA {
        return Err("metadata is larger than 4 KiB".into());
    }
    Ok(NewParticipant {
        phone,
        time_zone,
        metadata,
    })
}

/// A CSV upload: a header row naming `phone_number` (or `phone`), optionally `time_zone`; every
/// other column goes into the metadata as strings. Rows that cannot be used are reported by line.
fn parse_csv(body: &[u8]) -> Result<Upload, String> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(body);
    // Metadata keeps the column names as written; the two known columns match in any case.
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| format!("the header row cannot be read: {e}"))?
        .iter()
        .map(str::to_owned)
        .collect();
    let find = |name: &str| header.iter().position(|h| h.eq_ignore_ascii_case(name));
    let phone_col = find("phone_number")
        .or_else(|| find("phone"))
        .ok_or("the header row names no phone_number (or phone) column")?;
    let tz_col = find("time_zone");
    let mut up = Upload::default();
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map_or(0, csv::Position::line);
                if record.len() != header.len() {
                    up.reject(
                        RowAt::Line(line),
                        format!("{} fields, the header has {}", record.len(), header.len()),
                    );
                    continue;
                }
                let metadata: Map<String, Value> = header
                    .iter()
                    .zip(record.iter())
                    .enumerate()
                    .filter(|(i, _)| *i != phone_col && Some(*i) != tz_col)
                    .map(|(_, (k, v))| (k.clone(), Value::from(v)))
                    .collect();
                let tz = tz_col.map(|i| &record[i]);
                up.row(RowAt::Line(line), &record[phone_col], tz, metadata);
            }
            // A row that is not UTF-8: the reader has moved past it.
            Err(e) => match e.position() {
                Some(p) => up.reject(RowAt::Line(p.line()), format!("unreadable row: {e}")),
                None => return Err(format!("the file cannot be read: {e}")),
            },
        }
    }
    Ok(up)
}

/// A JSON upload: an array of `{"phone_number" (or "phone"), "time_zone", "metadata"}`.
/// Entries that cannot be used are reported by index.
fn parse_json(body: &[u8]) -> Result<Upload, String> {
    let rows: Vec<Value> = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not a JSON array of participants: {e}"))?;
    let mut up = Upload::default();
    for (i, row) in rows.into_iter().enumerate() {
        let at = RowAt::Index(i);
        let Value::Object(mut row) = row else {
            up.reject(at, "not a JSON object");
            continue;
        };
        let phone = match row.remove("phone_number").or_else(|| row.remove("phone")) {
            Some(Value::String(s)) => s,
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                up.reject(at, "phone_number is missing or not a string");
                continue;
            }
        };
        let tz = match row.remove("time_zone") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => {
                up.reject(at, "time_zone is not a string");
                continue;
            }
        };
        let metadata = match row.remove("metadata") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m,
            Some(_) => {
                up.reject(at, "metadata is not a JSON object");
                continue;
            }
        };
        if let Some(key) = row.keys().next() {
            up.reject(
                at,
                format!("unknown field {key:?} (phone_number, time_zone, metadata)"),
            );
            continue;
        }
        up.row(at, &phone, tz.as_deref(), metadata);
    }
    Ok(up)
}

/// Loads participants: a JSON array (`Content-Type: application/json`) or a CSV file
/// (`text/csv`), up to `api.max_upload_bytes`. Numbers already in the callout are merged.
pub async fn add_participants(
    State(state): State<ApiState>,
    scoped: Scoped,
    req: Request,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (account, sid) = (&scoped.account, scoped.sid("callout"));
    let callout = load(&state, &account.sid, sid).await?;
    if callout.status() == CalloutStatus::Stopped {
        return Err(conflict(format!(
            "Callout {sid} is stopped: it takes no more participants"
        )));
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let parse: fn(&[u8]) -> Result<Upload, String> = match content_type.as_str() {
        "application/json" => parse_json,
        "text/csv" | "application/csv" => parse_csv,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                20001,
                "Send participants as application/json (an array) or text/csv (with a header row)",
            ));
        }
    };
    let body = read_body(req, state.config().max_upload_bytes).await?;
    // 200,000 rows parse in well under a second, but off the async threads all the same.
    let upload = tokio::task::spawn_blocking(move || parse(&body))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(|e| ApiError::param("Participants", &e))?;
    let added = state
        .store()
        .add_participants(&account.sid, sid, &upload.people, now_ms())
        .await?;
    // Re-read: the scheduler may have completed the callout while the rows went in.
    let callout = load(&state, &account.sid, sid).await?;
    if callout.status() == CalloutStatus::Completed && added.added > 0 {
        match state
            .store()
            .set_callout_status(&account.sid, sid, CalloutStatus::Running, now_ms())
            .await
        {
            Ok(_) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    state.engine().callouts_changed();
    let total = state.store().callout_summary(sid).await?.total;
    let invalid: Vec<Value> = upload
        .invalid
        .iter()
        .map(|(at, error)| match at {
            RowAt::Line(l) => json!({ "line": l, "error": error }),
            RowAt::Index(i) => json!({ "index": i, "error": error }),
        })
        .collect();
    tracing::info!(callout = %sid, added = added.added, merged = added.merged, invalid = upload.invalid_count, "participants loaded");
    let status = if added.added > 0 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({
            "added": added.added,
            "merged": added.merged,
            "invalid": invalid,
            "invalid_count": upload.invalid_count,
            "total": total,
        })),
    ))
}

/// `Status` names a state (pending, calling, settling, done) or an outcome.
fn participant_filter(q: &ListQuery) -> ApiResult<ParticipantFilter> {
    const OUTCOMES: [&str; 6] = [
        "completed",
        "busy",
        "no-answer",
        "failed",
        "canceled",
        "errored",
    ];
    let mut f = ParticipantFilter::default();
    if let Some(s) = q.get("Status") {
        if let Ok(state) = s.parse::<ParticipantState>() {
            f.state = Some(state);
        } else if OUTCOMES.contains(&s) {
            f.outcome = Some(s.to_owned());
        } else {
            return Err(ApiError::param(
                "Status",
                "must be pending, calling, settling, done, completed, busy, no-answer, failed, canceled or errored",
            ));
        }
    }
    f.phone = q
        .get("PhoneNumber")
        .map(|p| participant_phone(p).unwrap_or_else(|| p.to_owned()));
    Ok(f)
}

pub async fn list_participants(
    State(state): State<ApiState>,
    scoped: Scoped,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let (account, sid) = (&scoped.account, scoped.sid("callout"));
    let q = ListQuery::parse(q.as_deref())?;
    let filter = participant_filter(&q)?;
    let callout = load(&state, &account.sid, sid).await?;
    let page = state
        .store()
        .list_participants(&account.sid, &callout.sid, &filter, q.request)
        .await?;
    Ok(Json(q.envelope(
        &format!("{}/{}/Participants", base(&account.sid), callout.sid),
        "participants",
        page,
        render_participant,
    )))
}

pub async fn fetch_participant(
    State(state): State<ApiState>,
    scoped: Scoped,
) -> ApiResult<Json<Value>> {
    let (account, callout, sid) = (&scoped.account, scoped.sid("callout"), scoped.sid("sid"));
    let p = state
        .store()
        .participant(&account.sid, callout, sid)
        .await?
        .ok_or_else(|| ApiError::not_found(&format!("/Callouts/{callout}/Participants/{sid}")))?;
    let calls = state.store().participant_calls(&p.sid).await?;
    let mut v = render_participant(&p);
    v["attempts"] = calls.iter().map(crate::render::call).collect();
    v["attempt_count"] = p.attempts.into();
    Ok(Json(v))
}

/// `Results.csv`: one row per participant in load order with its last attempt, streamed a
/// thousand participants at a time (a 200,000-row callout is never held in memory).
pub async fn results(State(state): State<ApiState>, scoped: Scoped) -> ApiResult<Response> {
    let callout = load(&state, &scoped.account.sid, scoped.sid("callout")).await?;
    let disposition = format!("attachment; filename=\"{}.csv\"", callout.sid);
    let stream = futures_util::stream::try_unfold(
        (state, callout, Some(0i64)),
        |(state, callout, after)| async move {
            let Some(after) = after else {
                return Ok(None);
            };
            let rows = state
                .store()
                .participants_after(&callout.sid, after, EXPORT_CHUNK)
                .await
                .map_err(export_error)?;
            let mut out = csv::Writer::from_writer(Vec::new());
            if after == 0 {
                out.write_record(RESULTS_HEADER).map_err(export_error)?;
            }
            // every last attempt of the page in one statement
            let sids: Vec<&str> = rows.iter().filter_map(|p| p.call_sid.as_deref()).collect();
            let last: std::collections::HashMap<String, callflow_store::Call> = state
                .store()
                .calls_by_sid(&sids)
                .await
                .map_err(export_error)?
                .into_iter()
                .filter(|c| c.account_sid == callout.account_sid)
                .map(|c| (c.sid.clone(), c))
                .collect();
            for p in &rows {
                let last = p.call_sid.as_ref().and_then(|c| last.get(c));
                out.write_record(results_row(p, last))
                    .map_err(export_error)?;
            }
            let bytes = out.into_inner().map_err(|e| export_error(e.error()))?;
            let next = match rows.last() {
                Some(p) if rows.len() == EXPORT_CHUNK as usize => Some(p.seq),
                _ => None,
            };
            Ok::<_, std::io::Error>(Some((Bytes::from(bytes), (state, callout, next))))
        },
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

fn results_row(p: &Participant, last: Option<&callflow_store::Call>) -> [String; 12] {
    let opt = |v: Option<String>| v.unwrap_or_default();
    [
        p.sid.clone(),
        p.phone.clone(),
        opt(p.time_zone.clone()),
        participant_status(p).to_owned(),
        opt(p.outcome.clone()),
        p.attempts.to_string(),
        opt(last.map(|c| c.sid.clone())),
        opt(last.map(|c| c.status().as_str().to_owned())),
        opt(last.and_then(|c| c.duration).map(|d| d.to_string())),
        opt(last
            .and_then(|c| c.sip_response_code)
            .map(|d| d.to_string())),
        opt(p.reason.clone()),
        p.metadata.clone(),
    ]
}

/// An export that fails midway ends the response early (its status was sent already).
fn export_error(e: impl std::fmt::Display) -> std::io::Error {
    tracing::error!(error = %e, "results export failed");
    std::io::Error::other("results export failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(up: &Upload) -> Vec<(RowAt, &str)> {
        up.invalid.iter().map(|(a, e)| (*a, e.as_str())).collect()
    }

    #[test]
    fn numbers_are_normalised_to_e164() {
        for (given, want) in [
            ("+254 700-000.001", Some("+254700000001")),
            ("(254) 700000001", Some("+254700000001")),
            ("00254700000001", Some("+254700000001")),
            ("254700000001", Some("+254700000001")),
            ("+12345", None),
            ("123456", Some("+123456")),
            ("0712345678", None),
            ("+0712345678", None),
            ("\u{feff}", None),
            ("+1234567890123456", None),
            ("call me", None),
            ("", None),
        ] {
            assert_eq!(participant_phone(given).as_deref(), want, "{given}");
        }
    }

    #[test]
    fn csv_rows_are_checked_and_reported_by_file_line() {
        let body = "\u{feff}Phone,Time_Zone,Name,ward\n\
                    +254700000001,Africa/Nairobi,Amina,3\n\
                    not a number,,Baraka,4\n\
                    \"+254 700 000 003\",,\"Chao, Jr.\",5\n\
                    +254700000004,Mars/Olympus,Dede,6\n\
                    +254700000005,,Eli\n";
        let up = parse_csv(body.as_bytes()).unwrap();
        let phones: Vec<&str> = up.people.iter().map(|p| p.phone.as_str()).collect();
        assert_eq!(phones, ["+254700000001", "+254700000003"]);
        assert_eq!(up.people[0].time_zone.as_deref(), Some("Africa/Nairobi"));
        assert_eq!(up.people[0].metadata, r#"{"Name":"Amina","ward":"3"}"#);
        assert_eq!(up.people[1].time_zone, None);
        assert_eq!(up.people[1].metadata, r#"{"Name":"Chao, Jr.","ward":"5"}"#);
        expect_test::expect![[r#"
            [
                (
                    Line(
                        3,
                    ),
                    "\"not a number\" is not an international phone number (a country code and number, 6 to 15 digits)",
                ),
                (
                    Line(
                        5,
                    ),
                    "\"Mars/Olympus\" is not an IANA time zone name such as Africa/Nairobi",
                ),
                (
                    Line(
                        6,
                    ),
                    "3 fields, the header has 4",
                ),
            ]
        "#]]
        .assert_debug_eq(&errors(&up));
        assert_eq!(
            parse_csv(b"name,ward\nx,1\n").unwrap_err(),
            "the header row names no phone_number (or phone) column"
        );
    }

    #[test]
    fn json_rows_are_checked_and_reported_by_index() {
        let body = r#"[
            {"phone_number": "+254700000001", "time_zone": "Africa/Nairobi", "metadata": {"a": 1}},
            {"phone": "0025470000000 2"},
            {"phone_number": "+1"},
            {"phone_number": "+254700000004", "metadata": [1]},
            "+254700000005",
            {"phone_number": "+254700000006", "name": "x"}
        ]"#;
        let up = parse_json(body.as_bytes()).unwrap();
        let phones: Vec<&str> = up.people.iter().map(|p| p.phone.as_str()).collect();
        assert_eq!(phones, ["+254700000001", "+254700000002"]);
        assert_eq!(up.people[0].metadata, r#"{"a":1}"#);
        assert_eq!(up.people[1].metadata, "{}");
        let at: Vec<RowAt> = up.invalid.iter().map(|e| e.0).collect();
        assert_eq!(at, [2, 3, 4, 5].map(RowAt::Index), "{:?}", errors(&up));
        assert!(parse_json(b"{}").is_err());
    }

    #[test]
    fn invalid_rows_listed_are_capped_but_counted() {
        let mut body = String::from("phone\n");
        for _ in 0..1500 {
            body.push_str("x\n");
        }
        let up = parse_csv(body.as_bytes()).unwrap();
        assert_eq!((up.invalid.len(), up.invalid_count), (1000, 1500));
    }

    #[test]
    fn calling_hours_take_both_forms_and_the_callout_time_zone() {
        assert_eq!(
            calling_hours("08:00-20:00", "Africa/Nairobi").unwrap(),
            r#"{"end":"20:00","start":"08:00","time_zone":"Africa/Nairobi"}"#
        );
        let with_days = calling_hours(
            r#"{"start":"08:00","end":"20:00","days":["mon","tue"]}"#,
            "UTC",
        )
        .unwrap();
        assert!(with_days.contains(r#""days":["mon","tue"]"#), "{with_days}");
        assert!(calling_hours("8-20", "UTC").is_err());
        assert!(calling_hours(r#"{"start":"08:00"}"#, "UTC").is_err());
        assert!(
            calling_hours(
                r#"{"start":"08:00","end":"20:00","days":["monday"]}"#,
                "UTC"
            )
            .is_err()
        );
        assert!(
            calling_hours(
                r#"{"start":"08:00","end":"20:00","time_zone":"UTC"}"#,
                "UTC"
            )
            .is_err()
        );
    }
}
