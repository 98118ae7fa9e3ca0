//! Calls: create with validation, list with filters and paging, fetch, update and end.

use callflow_api::{ApiConfig, CallerIdPolicy};
use callflow_store::text::StoredText;
use callflow_store::{DeliveryState, MachineDetection};

use crate::TestApi;

const FROM: &str = "+15005550006";

async fn ready() -> TestApi {
    let api = TestApi::new().await;
    api.number(&api.root, FROM).await;
    api
}

#[tokio::test]
async fn create_answers_201_queued_in_twilios_shape_and_keeps_every_parameter() {
    let api = ready().await;
    let r = api
        .create_call(
            &api.root,
            &[
                ("To", "+15558675310"),
                ("From", FROM),
                ("Url", "https://example.com/twiml?x=1"),
                ("StatusCallback", "https://example.com/cb"),
                ("StatusCallbackEvent", "initiated"),
                ("StatusCallbackEvent", "answered completed"),
                ("Timeout", "900"),
                ("MachineDetection", "Enable"),
                ("SomethingNew", "kept"),
            ],
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let call = r.json();
    expect_test::expect![[r#"
        {
          "account_sid": "AC[sid]",
          "answered_by": null,
          "api_version": "2010-04-01",
          "caller_name": null,
          "date_created": "[date]",
          "date_updated": "[date]",
          "direction": "outbound-api",
          "duration": null,
          "end_time": null,
          "forwarded_from": null,
          "from": "+15005550006",
          "from_formatted": "+15005550006",
          "group_sid": null,
          "parent_call_sid": null,
          "phone_number_sid": "PN[sid]",
          "price": null,
          "price_unit": "USD",
          "queue_time": "0",
          "sid": "CA[sid]",
          "start_time": null,
          "status": "queued",
          "subresource_uris": {
            "recordings": "/2010-04-01/Accounts/AC[sid]/Calls/CA[sid]/Recordings.json"
          },
          "to": "+15558675310",
          "to_formatted": "+15558675310",
          "trunk_sid": null,
          "uri": "/2010-04-01/Accounts/AC[sid]/Calls/CA[sid].json"
        }
    "#]]
    .assert_eq(&crate::redact(&call));
    let stored = api
        .store
        .call(&api.root.sid, call["sid"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    let stored = stored.instructions;
    assert_eq!(
        stored.status_callback_event.to_text(),
        "initiated answered completed"
    );
    assert_eq!(stored.timeout, 600, "Twilio caps Timeout at 600");
    assert_eq!(
        stored.machine_detection.map(MachineDetection::as_str),
        Some("Enable")
    );
    assert!(
        stored
            .request_params
            .to_text()
            .contains(r#"["SomethingNew","kept"]"#)
    );
}

#[tokio::test]
async fn invalid_create_parameters_get_twilios_codes() {
    let api = ready().await;
    let ok = [
        ("To", "+15558675310"),
        ("From", FROM),
        ("Url", "https://example.com/t"),
    ];
    let with = |k: &'static str, v: &'static str| {
        let mut p: Vec<(&str, &str)> = ok.iter().copied().filter(|(n, _)| *n != k).collect();
        if !v.is_empty() {
            p.push((k, v));
        }
        p
    };
    let cases: Vec<(Vec<(&str, &str)>, u64)> = vec![
        (with("To", ""), 21201),
        (with("To", "hello"), 21211),
        (with("From", ""), 21213),
        (with("From", "nope"), 21212),
        (with("From", "+15005550099"), 21210),
        (with("Url", ""), 21205),
        (with("Url", "notaurl"), 21205),
        (with("Url", "ftp://example.com/x"), 21205),
        (with("Method", "PUT"), 20001),
        (with("Timeout", "ten"), 20001),
        (with("Timeout", "-1"), 20001),
        (with("StatusCallbackEvent", "exploded"), 20001),
        (with("Record", "maybe"), 20001),
        (with("MachineDetection", "Sometimes"), 20001),
        (with("SendDigits", "12;rm"), 20001),
        (with("StatusCallback", "not a url"), 20001),
    ];
    for (params, code) in cases {
        let r = api.create_call(&api.root, &params).await;
        assert_eq!(r.status, 400, "{params:?}");
        assert_eq!(r.json()["code"], code, "{params:?}: {}", r.json());
    }
    let all = api
        .get(
            &format!("/2010-04-01/Accounts/{}/Calls.json", api.root.sid),
            &api.root,
        )
        .await
        .json();
    assert!(
        all["calls"].as_array().unwrap().is_empty(),
        "no invalid request stored a call"
    );
}

#[tokio::test]
async fn any_caller_id_policy_allows_unowned_from() {
    let api = TestApi::with_config(ApiConfig {
        caller_id: CallerIdPolicy::Any,
        ..Default::default()
    })
    .await;
    let r = api
        .create_call(
            &api.root,
            &[
                ("To", "+15558675310"),
                ("From", "+15005550099"),
                ("Twiml", "<Response/>"),
            ],
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["phone_number_sid"], serde_json::Value::Null);
}

#[tokio::test]
async fn list_pages_newest_first_and_filters() {
    let api = ready().await;
    let mut sids = Vec::new();
    for i in 0..7 {
        let to = format!("+1555000000{i}");
        let r = api
            .create_call(
                &api.root,
                &[("To", &to), ("From", FROM), ("Twiml", "<Response/>")],
            )
            .await;
        sids.push(r.json()["sid"].as_str().unwrap().to_owned());
    }
    sids.reverse();
    let base = format!("/2010-04-01/Accounts/{}/Calls.json", api.root.sid);
    let mut seen = Vec::new();
    let mut next = Some(format!("{base}?PageSize=3"));
    let mut pages = 0;
    while let Some(uri) = next {
        let page = api.get(&uri, &api.root).await.json();
        assert_eq!(page["page_size"], 3);
        assert_eq!(page["page"], pages);
        seen.extend(
            page["calls"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["sid"].as_str().unwrap().to_owned()),
        );
        next = page["next_page_uri"].as_str().map(str::to_owned);
        pages += 1;
        assert!(pages <= 3);
    }
    assert_eq!((seen, pages), (sids.clone(), 3));
    // and backwards: page 1's previous page is page 0
    let p0 = api
        .get(&format!("{base}?PageSize=3"), &api.root)
        .await
        .json();
    let p1 = api
        .get(p0["next_page_uri"].as_str().unwrap(), &api.root)
        .await
        .json();
    let back = api
        .get(p1["previous_page_uri"].as_str().unwrap(), &api.root)
        .await
        .json();
    assert_eq!(back["calls"], p0["calls"]);
    assert_eq!(back["page"], 0);
    assert!(p0["previous_page_uri"].is_null());

    let to = api
        .get(&format!("{base}?To=%2B15550000003"), &api.root)
        .await
        .json();
    assert_eq!(to["calls"].as_array().unwrap().len(), 1);
    let queued = api
        .get(&format!("{base}?Status=queued&PageSize=2"), &api.root)
        .await
        .json();
    assert!(
        queued["next_page_uri"]
            .as_str()
            .unwrap()
            .contains("Status=queued")
    );
    let done = api
        .get(&format!("{base}?Status=completed"), &api.root)
        .await
        .json();
    assert!(done["calls"].as_array().unwrap().is_empty());
    api.get(&format!("{base}?Status=happy"), &api.root)
        .await
        .assert_error(400, 20001);
    // queued calls have not started, so a StartTime filter excludes them
    let started = api
        .get(&format!("{base}?StartTime%3E=2000-01-01"), &api.root)
        .await
        .json();
    assert!(started["calls"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn update_redirects_a_queued_call_then_cancel_ends_it_with_one_status_callback() {
    let api = ready().await;
    let r = api
        .create_call(
            &api.root,
            &[
                ("To", "+15558675310"),
                ("From", FROM),
                ("Url", "https://example.com/a"),
                ("StatusCallback", "https://example.com/cb?k=v"),
            ],
        )
        .await;
    let sid = r.json()["sid"].as_str().unwrap().to_owned();
    let path = format!("/2010-04-01/Accounts/{}/Calls/{sid}.json", api.root.sid);

    let up = api
        .post(
            &path,
            &api.root,
            &[("Url", "https://example.com/b"), ("Method", "GET")],
        )
        .await;
    assert_eq!(up.status, 200);
    let stored = api.store.call(&api.root.sid, &sid).await.unwrap().unwrap();
    assert_eq!(
        (
            stored.instructions.url.as_deref(),
            stored.instructions.method.as_str()
        ),
        (Some("https://example.com/b"), "GET")
    );

    // an unanswered call asked to complete ends canceled: unanswered calls never complete
    let ended = api
        .post(&path, &api.root, &[("Status", "completed")])
        .await
        .json();
    assert_eq!(ended["status"], "canceled");
    assert_eq!(ended["duration"], "0");
    assert!(ended["end_time"].is_string());

    let hooks = api.store.call_deliveries(&sid).await.unwrap();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].state, DeliveryState::Pending);
    assert_eq!(hooks[0].webhook.url, "https://example.com/cb?k=v");
    let param = |k: &str| {
        hooks[0]
            .webhook
            .params
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(param("CallStatus").as_deref(), Some("canceled"));
    assert_eq!(param("SequenceNumber").as_deref(), Some("0"));

    // a finished call cannot be changed: 21220, and nothing more is enqueued
    api.post(&path, &api.root, &[("Status", "canceled")])
        .await
        .assert_error(400, 21220);
    api.post(&path, &api.root, &[("Url", "https://example.com/c")])
        .await
        .assert_error(400, 21220);
    assert_eq!(api.store.call_deliveries(&sid).await.unwrap().len(), 1);
    api.post(&path, &api.root, &[("Status", "busy")])
        .await
        .assert_error(400, 20001);

    let events: Vec<String> = api
        .store
        .call_events(&sid)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(events, ["created", "updated", "canceled"]);
}

#[tokio::test]
async fn unknown_and_foreign_calls_are_404() {
    let api = ready().await;
    let sub = api.account().await;
    let r = api
        .create_call(
            &api.root,
            &[
                ("To", "+15558675310"),
                ("From", FROM),
                ("Twiml", "<Response/>"),
            ],
        )
        .await;
    let sid = r.json()["sid"].as_str().unwrap().to_owned();
    let unknown = format!(
        "/2010-04-01/Accounts/{}/Calls/CA{}.json",
        api.root.sid,
        "0".repeat(32)
    );
    api.get(&unknown, &api.root).await.assert_error(404, 20404);
    api.post(&unknown, &api.root, &[("Status", "canceled")])
        .await
        .assert_error(404, 20404);
    api.get(
        &format!("/2010-04-01/Accounts/{}/Calls/{sid}.json", sub.sid),
        &sub,
    )
    .await
    .assert_error(404, 20404);
    api.get(
        &format!("/2010-04-01/Accounts/{}/Calls/{sid}.json", api.root.sid),
        &sub,
    )
    .await
    .assert_error(404, 20404);
    assert_eq!(
        api.get(
            &format!("/2010-04-01/Accounts/{}/Calls/{sid}.json", api.root.sid),
            &api.root
        )
        .await
        .status,
        200
    );
}
