//! Accounts: own account, subaccounts managed by root, isolation.

use crate::TestApi;

#[tokio::test]
async fn fetch_own_account_in_twilios_shape() {
    let api = TestApi::new().await;
    let r = api
        .get(
            &format!("/2010-04-01/Accounts/{}.json", api.root.sid),
            &api.root,
        )
        .await;
    assert_eq!(r.status, 200);
    expect_test::expect![[r#"
        {
          "auth_token": "[token]",
          "date_created": "[date]",
          "date_updated": "[date]",
          "friendly_name": "callflow root account",
          "owner_account_sid": "AC[sid]",
          "sid": "AC[sid]",
          "status": "active",
          "subresource_uris": {
            "calls": "/2010-04-01/Accounts/AC[sid]/Calls.json",
            "incoming_phone_numbers": "/2010-04-01/Accounts/AC[sid]/IncomingPhoneNumbers.json",
            "recordings": "/2010-04-01/Accounts/AC[sid]/Recordings.json"
          },
          "type": "Full",
          "uri": "/2010-04-01/Accounts/AC[sid].json"
        }
    "#]]
    .assert_eq(&crate::redact(&r.json()));
}

#[tokio::test]
async fn root_creates_lists_fetches_and_suspends_subaccounts() {
    let api = TestApi::new().await;
    let r = api
        .post(
            "/2010-04-01/Accounts.json",
            &api.root,
            &[("FriendlyName", "field team")],
        )
        .await;
    assert_eq!(r.status, 201);
    let sub = r.json();
    assert_eq!(sub["friendly_name"], "field team");
    assert_eq!(sub["owner_account_sid"], api.root.sid.as_str());
    let sub_sid = sub["sid"].as_str().unwrap().to_owned();
    let token = sub["auth_token"].as_str().unwrap().to_owned();
    assert_ne!(token, api.root.auth_token);

    let list = api.get("/2010-04-01/Accounts.json", &api.root).await.json();
    let sids: Vec<&str> = list["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["sid"].as_str().unwrap())
        .collect();
    assert_eq!(sids, [sub_sid.as_str(), api.root.sid.as_str()]);

    let fetched = api
        .get(&format!("/2010-04-01/Accounts/{sub_sid}.json"), &api.root)
        .await;
    assert_eq!(fetched.json()["sid"], sub_sid.as_str());

    // the subaccount's own credentials work, and see only itself
    let sub_acc = api.store.account(&sub_sid).await.unwrap().unwrap();
    assert_eq!(
        api.get(&format!("/2010-04-01/Accounts/{sub_sid}.json"), &sub_acc)
            .await
            .status,
        200
    );
    api.get(
        &format!("/2010-04-01/Accounts/{}.json", api.root.sid),
        &sub_acc,
    )
    .await
    .assert_error(404, 20404);
    let own = api.get("/2010-04-01/Accounts.json", &sub_acc).await.json();
    assert_eq!(own["accounts"].as_array().unwrap().len(), 1);
    api.post("/2010-04-01/Accounts.json", &sub_acc, &[])
        .await
        .assert_error(403, 20403);

    // suspending shuts its credentials out
    let r = api
        .post(
            &format!("/2010-04-01/Accounts/{sub_sid}.json"),
            &api.root,
            &[("Status", "suspended")],
        )
        .await;
    assert_eq!(r.json()["status"], "suspended");
    api.get(&format!("/2010-04-01/Accounts/{sub_sid}.json"), &sub_acc)
        .await
        .assert_error(401, 20005);
    api.post(
        &format!("/2010-04-01/Accounts/{}.json", api.root.sid),
        &api.root,
        &[("Status", "closed")],
    )
    .await
    .assert_error(400, 20001);
}

#[tokio::test]
async fn root_cannot_reach_into_a_subaccount_outside_the_accounts_api() {
    let api = TestApi::new().await;
    let sub = api.account().await;
    api.get(
        &format!("/2010-04-01/Accounts/{}/Calls.json", sub.sid),
        &api.root,
    )
    .await
    .assert_error(404, 20404);
    let other = api.account().await;
    api.get(&format!("/2010-04-01/Accounts/{}.json", other.sid), &sub)
        .await
        .assert_error(404, 20404);
}
