//! Twilio's JSON for each resource. Field names follow Twilio's OpenAPI description; fields
//! callflow has no value for are present and `null`, as Twilio's clients expect them.

use callflow_engine::clock::rfc2822;
use callflow_store::{Account, Call, IncomingNumber, Recording};
use serde_json::{Value, json};

pub const API_VERSION: &str = "2010-04-01";

pub fn account_path(sid: &str) -> String {
    format!("/{API_VERSION}/Accounts/{sid}")
}

pub fn account(a: &Account) -> Value {
    let base = account_path(&a.sid);
    json!({
        "auth_token": a.auth_token,
        "date_created": rfc2822(a.date_created),
        "date_updated": rfc2822(a.date_updated),
        "friendly_name": a.friendly_name,
        "owner_account_sid": a.parent_sid.as_deref().unwrap_or(&a.sid),
        "sid": a.sid,
        "status": a.status,
        "subresource_uris": {
            "calls": format!("{base}/Calls.json"),
            "incoming_phone_numbers": format!("{base}/IncomingPhoneNumbers.json"),
            "recordings": format!("{base}/Recordings.json"),
        },
        "type": "Full",
        "uri": format!("{base}.json"),
    })
}

pub fn call(c: &Call) -> Value {
    let uri = format!("{}/Calls/{}", account_path(&c.account_sid), c.sid);
    let mut v = json!({
        "sid": c.sid,
        "date_created": rfc2822(c.date_created),
        "date_updated": rfc2822(c.date_updated),
        "parent_call_sid": c.parent_call_sid,
        "account_sid": c.account_sid,
        "to": c.to_number,
        "to_formatted": c.to_number,
        "from": c.from_number,
        "from_formatted": c.from_number,
        "phone_number_sid": c.phone_number_sid,
        "status": c.status().as_str(),
        "start_time": c.start_time.map(rfc2822),
        "end_time": c.end_time.map(rfc2822),
        "duration": c.duration.map(|d| d.to_string()),
        "price": null,
        "price_unit": "USD",
        "direction": c.direction,
        "answered_by": c.answered_by,
        "api_version": API_VERSION,
        "forwarded_from": null,
        "group_sid": null,
        "caller_name": null,
        "queue_time": "0",
        "trunk_sid": null,
        "uri": format!("{uri}.json"),
        "subresource_uris": {
            "recordings": format!("{uri}/Recordings.json"),
        },
    });
    // A callout's attempt says whose it is (fields Twilio's clients ignore; absent otherwise).
    if let (Some(callout), Value::Object(m)) = (&c.callout_sid, &mut v) {
        m.insert("callout_sid".into(), callout.as_str().into());
        m.insert("participant_sid".into(), c.participant_sid.clone().into());
        m.insert("attempt".into(), c.attempt.into());
    }
    v
}

pub fn number(n: &IncomingNumber) -> Value {
    json!({
        "account_sid": n.account_sid,
        "address_sid": null,
        "address_requirements": "none",
        "api_version": API_VERSION,
        "beta": false,
        "capabilities": { "voice": true, "sms": false, "mms": false, "fax": false },
        "date_created": rfc2822(n.date_created),
        "date_updated": rfc2822(n.date_updated),
        "friendly_name": n.friendly_name,
        "identity_sid": null,
        "phone_number": n.phone_number,
        "origin": "hosted",
        "sid": n.sid,
        "sms_application_sid": null,
        "sms_fallback_method": "POST",
        "sms_fallback_url": null,
        "sms_method": "POST",
        "sms_url": null,
        "status_callback": n.status_callback,
        "status_callback_method": n.status_callback_method,
        "trunk_sid": null,
        "uri": format!("{}/IncomingPhoneNumbers/{}.json", account_path(&n.account_sid), n.sid),
        "voice_receive_mode": "voice",
        "voice_application_sid": null,
        "voice_caller_id_lookup": false,
        "voice_fallback_method": n.voice_fallback_method,
        "voice_fallback_url": n.voice_fallback_url,
        "voice_method": n.voice_method,
        "voice_url": n.voice_url,
        "emergency_status": "Inactive",
        "emergency_address_sid": null,
        "emergency_address_status": "unregistered",
        "bundle_sid": null,
        "status": "in-use",
    })
}

/// `public_url` is the server's externally reachable base, for the absolute `media_url`.
pub fn recording(r: &Recording, public_url: &str) -> Value {
    let path = format!("{}/Recordings/{}", account_path(&r.account_sid), r.sid);
    json!({
        "account_sid": r.account_sid,
        "api_version": API_VERSION,
        "call_sid": r.call_sid,
        "conference_sid": null,
        "date_created": rfc2822(r.date_created),
        "date_updated": rfc2822(r.date_updated),
        "start_time": rfc2822(r.start_time),
        "duration": r.duration.to_string(),
        "sid": r.sid,
        "price": null,
        "price_unit": "USD",
        "status": r.status,
        "channels": r.channels,
        "source": r.source,
        "error_code": r.error_code,
        "uri": format!("{path}.json"),
        "encryption_details": null,
        "subresource_uris": {},
        "media_url": format!("{}{path}", public_url.trim_end_matches('/')),
    })
}
