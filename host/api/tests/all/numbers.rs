//! IncomingPhoneNumbers CRUD.

use crate::TestApi;

#[tokio::test]
async fn create_fetch_update_list_delete() {
    let api = TestApi::new().await;
    let base = format!("/2010-04-01/Accounts/{}/IncomingPhoneNumbers", api.root.sid);
    let r = api
        .post(
            &format!("{base}.json"),
            &api.root,
            &[
                ("PhoneNumber", "+1 500-555-0006"),
                ("VoiceUrl", "https://example.com/voice"),
                ("VoiceMethod", "get"),
            ],
        )
        .await;
    assert_eq!(r.status, 201);
    let n = r.json();
    assert_eq!(n["phone_number"], "+15005550006");
    assert_eq!(n["friendly_name"], "+15005550006");
    assert_eq!(n["voice_url"], "https://example.com/voice");
    assert_eq!(n["voice_method"], "GET");
    let sid = n["sid"].as_str().unwrap();
    assert!(sid.starts_with("PN") && sid.len() == 34);

    let upd = api
        .post(
            &format!("{base}/{sid}.json"),
            &api.root,
            &[("FriendlyName", "hotline"), ("VoiceUrl", "")],
        )
        .await
        .json();
    assert_eq!(upd["friendly_name"], "hotline");
    assert_eq!(upd["voice_url"], serde_json::Value::Null);
    assert_eq!(upd["voice_method"], "GET");

    let list = api
        .get(
            &format!("{base}.json?PhoneNumber=%2B15005550006"),
            &api.root,
        )
        .await
        .json();
    assert_eq!(list["incoming_phone_numbers"].as_array().unwrap().len(), 1);
    let none = api
        .get(
            &format!("{base}.json?PhoneNumber=%2B15005550007"),
            &api.root,
        )
        .await
        .json();
    assert!(
        none["incoming_phone_numbers"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    assert_eq!(
        api.call(
            "DELETE",
            &format!("{base}/{sid}.json"),
            Some(&api.root),
            &[]
        )
        .await
        .status,
        204
    );
    api.get(&format!("{base}/{sid}.json"), &api.root)
        .await
        .assert_error(404, 20404);
    api.call(
        "DELETE",
        &format!("{base}/{sid}.json"),
        Some(&api.root),
        &[],
    )
    .await
    .assert_error(404, 20404);
}

#[tokio::test]
async fn invalid_and_duplicate_numbers_are_refused() {
    let api = TestApi::new().await;
    let path = format!(
        "/2010-04-01/Accounts/{}/IncomingPhoneNumbers.json",
        api.root.sid
    );
    api.post(&path, &api.root, &[])
        .await
        .assert_error(400, 21421);
    api.post(&path, &api.root, &[("PhoneNumber", "abc")])
        .await
        .assert_error(400, 21421);
    api.post(
        &path,
        &api.root,
        &[("PhoneNumber", "+15005550006"), ("VoiceUrl", "nope")],
    )
    .await
    .assert_error(400, 20001);
    api.post(
        &path,
        &api.root,
        &[("PhoneNumber", "+15005550006"), ("VoiceMethod", "PUT")],
    )
    .await
    .assert_error(400, 20001);
    api.number(&api.root, "+15005550006").await;
    api.post(&path, &api.root, &[("PhoneNumber", "+15005550006")])
        .await
        .assert_error(400, 21422);
    // another account cannot take it either, nor see it
    let sub = api.account().await;
    let sub_path = format!("/2010-04-01/Accounts/{}/IncomingPhoneNumbers.json", sub.sid);
    api.post(&sub_path, &sub, &[("PhoneNumber", "+15005550006")])
        .await
        .assert_error(400, 21422);
    assert!(
        api.get(&sub_path, &sub).await.json()["incoming_phone_numbers"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}
