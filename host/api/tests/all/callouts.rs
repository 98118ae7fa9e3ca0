//! Callouts: creation and its checks, participant uploads (JSON and CSV), status changes, the
//! participant list's filters, the results export, and other accounts' callouts looking missing.

use axum::body::Body;
use axum::http::Request;
use callflow_store::{Account, CalloutStatus, NewAttempt, PageRequest, ParticipantFilter, Pins};
use serde_json::Value;

use crate::{Resp, TestApi, basic, redact};

const FROM: &str = "+15005550006";

fn callouts(who: &Account) -> String {
    format!("/v1/Accounts/{}/Callouts", who.sid)
}

impl TestApi {
    async fn create_callout(&self, who: &Account, extra: &[(&str, &str)]) -> Resp {
        let mut form = vec![
            ("Name", "flood warning"),
            ("From", FROM),
            ("Url", "http://127.0.0.1:9/flow"),
        ];
        form.extend_from_slice(extra);
        self.post(&format!("{}.json", callouts(who)), who, &form)
            .await
    }

    /// A new callout of `who` (who gets the From number first); its sid.
    async fn callout(&self, who: &Account) -> String {
        self.number(who, FROM).await;
        let r = self.create_callout(who, &[]).await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        r.json()["sid"].as_str().unwrap().to_owned()
    }

    async fn load_participants(
        &self,
        who: &Account,
        callout: &str,
        content_type: &str,
        body: &str,
    ) -> Resp {
        let req = Request::post(format!("{}/{callout}/Participants", callouts(who)))
            .header("Authorization", basic(&who.sid, &who.auth_token))
            .header("Content-Type", content_type)
            .body(Body::from(body.to_owned()))
            .unwrap();
        self.raw(req).await
    }

    async fn set_status(&self, who: &Account, callout: &str, status: &str) -> Resp {
        self.post(
            &format!("{}/{callout}", callouts(who)),
            who,
            &[("Status", status)],
        )
        .await
    }

    async fn participants(&self, who: &Account, callout: &str, query: &str) -> Vec<Value> {
        let r = self
            .get(
                &format!("{}/{callout}/Participants.json?{query}", callouts(who)),
                who,
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["participants"].as_array().unwrap().clone()
    }
}

#[tokio::test]
async fn create_checks_every_parameter_like_calls_do() {
    let api = TestApi::new().await;
    let root = api.root.clone();
    // From must be the account's own number, as for Calls.json.
    api.create_callout(&root, &[])
        .await
        .assert_error(400, 21210);
    api.number(&root, FROM).await;
    let cases: &[(&[(&str, &str)], u64)] = &[
        (&[("Name", "")], 20001),
        (&[("Name", &"x".repeat(101))], 20001),
        (&[("From", "")], 21213),
        (&[("From", "nope")], 21212),
        (&[("Url", "")], 21205),
        (&[("Url", "ftp://x")], 21205),
        (&[("Method", "PUT")], 20001),
        (&[("Timeout", "0")], 20001),
        (&[("StatusCallbackEvent", "hungup")], 20001),
        (&[("MachineDetection", "Maybe")], 20001),
        (&[("To", "+15005550007")], 20001),
        (&[("CallsPerSecond", "0")], 20001),
        (&[("CallsPerSecond", "1001")], 20001),
        (&[("CallsPerSecond", "fast")], 20001),
        (&[("MaxConcurrent", "0")], 20001),
        (&[("MaxConcurrent", "100001")], 20001),
        (&[("Priority", "101")], 20001),
        (&[("Priority", "-101")], 20001),
        (&[("TimeZone", "Mars/Olympus")], 20001),
        (&[("CallingHours", "8-20")], 20001),
        (
            &[(
                "CallingHours",
                r#"{"start":"08:00","end":"20:00","days":[]}"#,
            )],
            20001,
        ),
        (&[("StartTime", "tomorrow")], 20001),
        (&[("RetryConfig", r#"{"max_attempts": 0}"#)], 20001),
        (&[("RetryConfig", "[1]")], 20001),
        (&[("Metadata", "not json")], 20001),
    ];
    for (extra, code) in cases {
        let mut form: Vec<(&str, &str)> = extra.to_vec();
        for (k, v) in [
            ("Name", "n"),
            ("From", FROM),
            ("Url", "http://127.0.0.1:9/flow"),
        ] {
            if !extra.iter().any(|(n, _)| *n == k) {
                form.push((k, v));
            }
        }
        let r = api
            .post(&format!("{}.json", callouts(&root)), &root, &form)
            .await;
        r.assert_error(400, *code);
        let message = r.json()["message"].as_str().unwrap().to_owned();
        assert!(!message.is_empty(), "{extra:?}");
    }
    let r = api
        .create_callout(
            &root,
            &[
                ("CallsPerSecond", "2.5"),
                ("MaxConcurrent", "10"),
                ("CallingHours", "08:00-20:00"),
                ("TimeZone", "Africa/Nairobi"),
                ("StartTime", "2030-01-01T08:00:00+03:00"),
                ("Priority", "5"),
                ("RetryConfig", r#"{"max_attempts": 2}"#),
                ("Metadata", r#"{"campaign": "rains"}"#),
                ("StatusCallback", "http://127.0.0.1:9/status"),
                ("StatusCallbackEvent", "answered completed"),
            ],
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    expect_test::expect![[r#"
        {
          "account_sid": "AC[sid]",
          "call": {
            "fallback_method": "POST",
            "fallback_url": null,
            "from": "+15005550006",
            "machine_detection": null,
            "method": "POST",
            "phone_number_sid": "PN[sid]",
            "record": false,
            "send_digits": null,
            "status_callback": "http://127.0.0.1:9/status",
            "status_callback_event": [
              "answered",
              "completed"
            ],
            "status_callback_method": "POST",
            "time_limit": 14400,
            "timeout": 60,
            "twiml": null,
            "url": "http://127.0.0.1:9/flow"
          },
          "calling_hours": {
            "end": "20:00",
            "start": "08:00",
            "time_zone": "Africa/Nairobi"
          },
          "calls_per_second": 2.5,
          "date_created": "[date]",
          "date_finished": null,
          "date_started": null,
          "date_updated": "[date]",
          "max_concurrent": 10,
          "metadata": {
            "campaign": "rains"
          },
          "name": "flood warning",
          "priority": 5,
          "retry_config": {
            "max_attempts": 2
          },
          "sid": "CO[sid]",
          "start_time": "[date]",
          "status": "draft",
          "subresource_uris": {
            "participants": "/v1/Accounts/AC[sid]/Callouts/CO[sid]/Participants",
            "results": "/v1/Accounts/AC[sid]/Callouts/CO[sid]/Results.csv"
          },
          "summary": {
            "attempts": 0,
            "busy": 0,
            "canceled": 0,
            "completed": 0,
            "errored": 0,
            "failed": 0,
            "in_progress": 0,
            "no_answer": 0,
            "pending": 0,
            "total": 0
          },
          "time_zone": "Africa/Nairobi",
          "uri": "/v1/Accounts/AC[sid]/Callouts/CO[sid]"
        }
    "#]]
    .assert_eq(&redact(&r.json()));
    let v = r.json();
    assert_eq!(v["start_time"], "Tue, 01 Jan 2030 05:00:00 +0000");

    let list = api.get(&callouts(&root), &root).await.json();
    assert_eq!(list["callouts"].as_array().unwrap().len(), 1);
    assert_eq!(list["callouts"][0]["sid"], v["sid"]);
}

#[tokio::test]
async fn uploads_report_bad_rows_by_line_and_merge_duplicates() {
    let api = TestApi::new().await;
    let root = api.root.clone();
    let co = api.callout(&root).await;
    let csv = "phone_number,time_zone,name\n\
               +254700000001,Africa/Nairobi,Amina\n\
               0712,,Short\n\
               +254 700 000 002,,Baraka\n\
               00254700000001,,Amina again\n\
               +254700000003,Nowhere/Land,Chao\n";
    let r = api.load_participants(&root, &co, "text/csv", csv).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    expect_test::expect![[r#"{"added":2,"invalid":[{"error":"\"0712\" is not an international phone number (a country code and number, 6 to 15 digits)","line":3},{"error":"\"Nowhere/Land\" is not an IANA time zone name such as Africa/Nairobi","line":6}],"invalid_count":2,"merged":1,"total":2}"#]]
        .assert_eq(&r.json().to_string());
    // the later row's non-empty metadata won; the time zone stayed
    let amina = api
        .participants(&root, &co, "PhoneNumber=%2B254700000001")
        .await;
    assert_eq!(amina.len(), 1);
    assert_eq!(
        amina[0]["metadata"],
        serde_json::json!({"name": "Amina again"})
    );
    assert_eq!(amina[0]["time_zone"], "Africa/Nairobi");
    assert_eq!(amina[0]["status"], "pending");

    let json = r#"[
        {"phone_number": "+254700000002", "metadata": {"ward": 7}},
        {"phone": "+254700000004", "time_zone": "Africa/Kampala"},
        {"phone_number": "+254700000005", "metadata": "ward 7"},
        42
    ]"#;
    let r = api
        .load_participants(&root, &co, "application/json", json)
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(
        (v["added"].as_u64(), v["merged"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(v["total"], 3);
    let at: Vec<&Value> = v["invalid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["index"])
        .collect();
    assert_eq!(at, [2, 3]);

    // bodies that are not a participant list at all
    api.load_participants(&root, &co, "text/csv", "name\nx\n")
        .await
        .assert_error(400, 20001);
    api.load_participants(&root, &co, "application/json", "{\"phone\": 1}")
        .await
        .assert_error(400, 20001);
    let r = api
        .load_participants(&root, &co, "text/plain", "+254700000001")
        .await;
    assert_eq!(r.status, 415);
}

#[tokio::test]
async fn uploads_are_bounded_by_max_upload_bytes() {
    let config = callflow_api::ApiConfig {
        max_upload_bytes: 4096,
        ..Default::default()
    };
    let api = TestApi::with_config(config).await;
    let root = api.root.clone();
    let co = api.callout(&root).await;
    let mut csv = String::from("phone\n");
    for i in 0..400 {
        csv.push_str(&format!("+2547{i:08}\n"));
    }
    api.load_participants(&root, &co, "text/csv", &csv)
        .await
        .assert_error(413, 20001);
}

#[tokio::test]
async fn status_moves_as_allowed_and_conflicts_are_409() {
    let api = TestApi::new().await;
    let root = api.root.clone();
    let co = api.callout(&root).await;
    api.set_status(&root, &co, "paused")
        .await
        .assert_error(409, 20409);
    api.set_status(&root, &co, "done")
        .await
        .assert_error(400, 20001);
    let r = api.set_status(&root, &co, "running").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], "running");
    assert!(r.json()["date_started"].is_string());
    assert_eq!(
        api.set_status(&root, &co, "paused").await.json()["status"],
        "paused"
    );
    assert_eq!(
        api.set_status(&root, &co, "running").await.json()["status"],
        "running"
    );

    api.load_participants(
        &root,
        &co,
        "text/csv",
        "phone\n+254700000001\n+254700000002\n",
    )
    .await;
    // One participant has an attempt queued (as the scheduler would), the other is pending.
    let store = &api.store;
    let callout = store.callout(&root.sid, &co).await.unwrap().unwrap();
    let due = store.due_participants(&co, i64::MAX, 1).await.unwrap();
    let attempts: Vec<NewAttempt> = due
        .iter()
        .map(|p| NewAttempt {
            participant_sid: p.sid.clone(),
            call: callout
                .template()
                .unwrap()
                .call_to(&p.phone, Pins::default()),
        })
        .collect();
    let calls = store
        .start_attempts(&root.sid, &callout, &attempts, 50, 5_000)
        .await
        .unwrap();
    assert_eq!(calls.len(), 1);
    let call = api
        .get(
            &format!(
                "/2010-04-01/Accounts/{}/Calls/{}.json",
                root.sid, calls[0].sid
            ),
            &root,
        )
        .await
        .json();
    assert_eq!(call["callout_sid"], co.as_str());
    assert_eq!(call["attempt"], 1);

    let r = api.set_status(&root, &co, "stopped").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], "stopped");
    let call = store.call(&root.sid, &calls[0].sid).await.unwrap().unwrap();
    assert_eq!(
        call.status().as_str(),
        "canceled",
        "the queued attempt is canceled"
    );
    let canceled = api.participants(&root, &co, "Status=canceled").await;
    assert_eq!(canceled.len(), 1);
    assert_eq!(canceled[0]["status"], "canceled");
    assert_eq!(canceled[0]["reason"], "the callout was stopped");

    let r = api.set_status(&root, &co, "running").await;
    r.assert_error(409, 20409);
    assert!(
        r.json()["message"].as_str().unwrap().contains("stopped"),
        "{}",
        r.json()
    );
    api.load_participants(&root, &co, "text/csv", "phone\n+254700000003\n")
        .await
        .assert_error(409, 20409);
}

#[tokio::test]
async fn a_completed_callout_runs_again_when_participants_are_added() {
    let api = TestApi::new().await;
    let root = api.root.clone();
    let co = api.callout(&root).await;
    api.set_status(&root, &co, "running").await;
    api.store
        .set_callout_status(&root.sid, &co, CalloutStatus::Completed, 10)
        .await
        .unwrap();
    let r = api
        .load_participants(
            &root,
            &co,
            "application/json",
            r#"[{"phone": "+254700000001"}]"#,
        )
        .await;
    assert_eq!(r.status, 201);
    let v = api
        .get(&format!("{}/{co}", callouts(&root)), &root)
        .await
        .json();
    assert_eq!(v["status"], "running");
}

#[tokio::test]
async fn participants_list_filters_and_fetch_shows_attempts() {
    let api = TestApi::new().await;
    let root = api.root.clone();
    let co = api.callout(&root).await;
    let mut csv = String::from("phone,name\n");
    for i in 1..=5 {
        csv.push_str(&format!("+25470000000{i},p{i}\n"));
    }
    api.load_participants(&root, &co, "text/csv", &csv).await;
    assert_eq!(api.participants(&root, &co, "").await.len(), 5);
    assert_eq!(
        api.participants(&root, &co, "Status=pending").await.len(),
        5
    );
    assert_eq!(api.participants(&root, &co, "Status=done").await.len(), 0);
    assert_eq!(
        api.participants(&root, &co, "Status=no-answer").await.len(),
        0
    );
    let one = api
        .participants(&root, &co, "PhoneNumber=254-700-000-003")
        .await;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["metadata"]["name"], "p3");
    let page = api
        .get(
            &format!("{}/{co}/Participants?PageSize=2", callouts(&root)),
            &root,
        )
        .await
        .json();
    assert_eq!(page["participants"].as_array().unwrap().len(), 2);
    assert!(page["next_page_uri"].is_string());
    api.get(
        &format!("{}/{co}/Participants?Status=ringing", callouts(&root)),
        &root,
    )
    .await
    .assert_error(400, 20001);

    let sid = one[0]["sid"].as_str().unwrap();
    let p = api
        .get(
            &format!("{}/{co}/Participants/{sid}.json", callouts(&root)),
            &root,
        )
        .await;
    assert_eq!(p.status, 200, "{}", String::from_utf8_lossy(&p.body));
    let p = p.json();
    assert_eq!(p["attempts"], serde_json::json!([]));
    assert_eq!(p["attempt_count"], 0);
    assert_eq!(p["phone_number"], "+254700000003");
    assert!(p["next_attempt_at"].is_string());
    assert_eq!(
        p["uri"],
        format!("/v1/Accounts/{}/Callouts/{co}/Participants/{sid}", root.sid)
    );
}

#[tokio::test]
async fn results_export_is_csv_with_one_row_per_participant() {
    let api = TestApi::new().await;
    let root = api.root.clone();
    let co = api.callout(&root).await;
    api.load_participants(
        &root,
        &co,
        "text/csv",
        "phone,time_zone,name\n+254700000001,Africa/Nairobi,\"Amina, \"\"A\"\"\"\n+254700000002,,Baraka\n",
    )
    .await;
    for path in ["Results.csv", "Results"] {
        let r = api
            .get(&format!("{}/{co}/{path}", callouts(&root)), &root)
            .await;
        assert_eq!(r.status, 200);
        assert!(
            r.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/csv")
        );
        let text = String::from_utf8(r.body).unwrap();
        let sids: Vec<String> = api
            .participants(&root, &co, "")
            .await
            .iter()
            .map(|p| p["sid"].as_str().unwrap().to_owned())
            .collect();
        let mut text = text;
        for s in &sids {
            text = text.replace(s, "CP[sid]");
        }
        expect_test::expect![[r#"
            participant_sid,phone_number,time_zone,status,outcome,attempts,last_call_sid,last_call_status,last_call_duration,last_sip_response_code,reason,metadata
            CP[sid],+254700000001,Africa/Nairobi,pending,,0,,,,,,"{""name"":""Amina, \""A\""""}"
            CP[sid],+254700000002,,pending,,0,,,,,,"{""name"":""Baraka""}"
        "#]]
        .assert_eq(&text);
    }
}

#[tokio::test]
async fn results_export_pages_through_large_callouts() {
    let api = TestApi::new().await;
    let root = api.root.clone();
    let co = api.callout(&root).await;
    let mut csv = String::from("phone\n");
    for i in 0..2_500 {
        csv.push_str(&format!("+2547{i:08}\n"));
    }
    let r = api.load_participants(&root, &co, "text/csv", &csv).await;
    assert_eq!(r.json()["added"], 2_500);
    let r = api
        .get(&format!("{}/{co}/Results.csv", callouts(&root)), &root)
        .await;
    let text = String::from_utf8(r.body).unwrap();
    assert_eq!(text.lines().count(), 2_501);
    assert!(text.lines().nth(2_500).unwrap().contains("+254700002499"));
}

#[tokio::test]
async fn another_accounts_callout_looks_missing() {
    let api = TestApi::new().await;
    let root = api.root.clone();
    let sub = api.account().await;
    let co = api.callout(&root).await;
    api.load_participants(&root, &co, "text/csv", "phone\n+254700000001\n")
        .await;
    let p = api.participants(&root, &co, "").await;
    let psid = p[0]["sid"].as_str().unwrap();
    // through the subaccount's own path
    for path in [
        format!("{}/{co}", callouts(&sub)),
        format!("{}/{co}/Participants", callouts(&sub)),
        format!("{}/{co}/Participants/{psid}", callouts(&sub)),
        format!("{}/{co}/Results.csv", callouts(&sub)),
    ] {
        api.get(&path, &sub).await.assert_error(404, 20404);
    }
    api.set_status(&sub, &co, "running")
        .await
        .assert_error(404, 20404);
    api.load_participants(&sub, &co, "text/csv", "phone\n+254700000002\n")
        .await
        .assert_error(404, 20404);
    // through the root account's path, with the subaccount's credentials
    api.get(&format!("{}/{co}", callouts(&root)), &sub)
        .await
        .assert_error(404, 20404);
    assert!(
        api.get(&callouts(&sub), &sub).await.json()["callouts"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // nothing was added or changed
    let all = api
        .store
        .list_participants(
            &root.sid,
            &co,
            &ParticipantFilter::default(),
            PageRequest::first(10),
        )
        .await
        .unwrap();
    assert_eq!(all.items.len(), 1);
}
