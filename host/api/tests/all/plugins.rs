//! Plugin upload (raw and multipart), validation errors, versions, bindings.

use axum::body::Body;
use axum::http::Request;
use callflow_store::text::StoredText;
use serde_json::Value;

use crate::{TestApi, basic};

const HELLO: &[u8] = callflow_runtime::builtin::HELLO;
const FS_IMPORT: &str = callflow_runtime::test_guests::FS_IMPORT;

impl TestApi {
    async fn upload(
        &self,
        who: &callflow_store::Account,
        query: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> crate::Resp {
        let req = Request::post(format!("/v1/Accounts/{}/Plugins{query}", who.sid))
            .header("Authorization", basic(&who.sid, &who.auth_token))
            .header("Content-Type", content_type)
            .body(Body::from(body))
            .unwrap();
        self.raw(req).await
    }
}

#[tokio::test]
async fn raw_upload_validates_compiles_and_stores_an_immutable_version() {
    let api = TestApi::new().await;
    let r = api
        .upload(
            &api.root,
            "?Name=greeter",
            HELLO.to_vec(),
            "application/wasm",
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["world"], "call-flow");
    assert_eq!(v["name"], "greeter");
    assert_eq!(v["sha256"], callflow_runtime::sha256_hex(HELLO));
    assert_eq!(v["size"], HELLO.len());
    let sid = v["sid"].as_str().unwrap().to_owned();
    let stored = api
        .dir
        .path()
        .join(format!("plugins/{}.wasm", v["sha256"].as_str().unwrap()));
    assert_eq!(std::fs::read(&stored).unwrap(), HELLO);

    // the same bytes again: the same version, 200
    let again = api
        .upload(&api.root, "?Name=other", HELLO.to_vec(), "application/wasm")
        .await;
    assert_eq!(
        (again.status.as_u16(), again.json()["sid"].as_str()),
        (200, Some(sid.as_str()))
    );

    let list = api
        .get(
            &format!("/v1/Accounts/{}/Plugins?World=call-flow", api.root.sid),
            &api.root,
        )
        .await
        .json();
    assert_eq!(list["plugins"].as_array().unwrap().len(), 1);
    assert_eq!(
        api.get(
            &format!("/v1/Accounts/{}/Plugins/{sid}", api.root.sid),
            &api.root
        )
        .await
        .status,
        200
    );
    // another account sees nothing of it
    let sub = api.account().await;
    api.get(&format!("/v1/Accounts/{}/Plugins/{sid}", sub.sid), &sub)
        .await
        .assert_error(404, 20404);

    assert_eq!(
        api.call(
            "DELETE",
            &format!("/v1/Accounts/{}/Plugins/{sid}", api.root.sid),
            Some(&api.root),
            &[]
        )
        .await
        .status,
        204
    );
    assert!(!stored.exists(), "unused bytes are removed");
}

#[tokio::test]
async fn multipart_upload_takes_the_file_part_and_its_name() {
    let api = TestApi::new().await;
    let boundary = "XyZ123";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"File\"; filename=\"menu.wasm\"\r\nContent-Type: application/wasm\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(HELLO);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let r = api
        .upload(
            &api.root,
            "",
            body,
            &format!("multipart/form-data; boundary={boundary}"),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["name"], "menu");
}

#[tokio::test]
async fn bad_uploads_say_what_is_wrong() {
    let api = TestApi::new().await;
    let msg = |r: crate::Resp| r.json()["message"].as_str().unwrap().to_owned();
    let r = api
        .upload(
            &api.root,
            "",
            std::fs::read(FS_IMPORT).unwrap(),
            "application/wasm",
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(msg(r).contains("wasi:filesystem"));
    let r = api
        .upload(
            &api.root,
            "",
            b"\0asm\x01\0\0\0".to_vec(),
            "application/wasm",
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(msg(r).contains("core WebAssembly module"));
    let r = api
        .upload(&api.root, "", b"MZ not wasm".to_vec(), "application/wasm")
        .await;
    assert!(msg(r).contains("not WebAssembly"));
    let r = api
        .upload(&api.root, "", Vec::new(), "application/wasm")
        .await;
    r.assert_error(400, 20001);
    let r = api
        .upload(&api.root, "", vec![0u8; 5 << 20], "application/wasm")
        .await;
    assert_eq!(r.status, 413);
    let r = api
        .upload(
            &api.root,
            "",
            b"--x\r\nnonsense".to_vec(),
            "multipart/form-data; boundary=x",
        )
        .await;
    r.assert_error(400, 20001);
    let list = api
        .get(&format!("/v1/Accounts/{}/Plugins", api.root.sid), &api.root)
        .await
        .json();
    assert!(
        list["plugins"].as_array().unwrap().is_empty(),
        "nothing was stored"
    );
}

#[tokio::test]
async fn a_bindings_secrets_are_never_shown_again() {
    let api = TestApi::new().await;
    let base = format!("/v1/Accounts/{}/PluginBindings", api.root.sid);
    let r = api
        .post(
            &base,
            &api.root,
            &[
                ("Plugin", "builtin:rapidpro"),
                ("Config", r#"{"url": "https://rapidpro.example.org"}"#),
                ("Secrets", r#"{"token": "tok-7f3e9a"}"#),
            ],
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let b = r.json();
    assert_eq!(b["secrets"], serde_json::json!(["token"]));
    assert!(!String::from_utf8_lossy(&r.body).contains("tok-7f3e9a"));
    let listed = api.get(&base, &api.root).await;
    assert!(!String::from_utf8_lossy(&listed.body).contains("tok-7f3e9a"));
    let one = api
        .get(&format!("{base}/{}", b["sid"].as_str().unwrap()), &api.root)
        .await;
    assert_eq!(one.json()["secrets"], serde_json::json!(["token"]));
    assert!(!String::from_utf8_lossy(&one.body).contains("tok-7f3e9a"));
    // kept in the binding itself, for the host to merge in at each invocation
    let stored = api
        .store
        .binding(&api.root.sid, b["sid"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.secrets, r#"{"token":"tok-7f3e9a"}"#);
    // a value in both, or secrets that are not an object, are refused
    for secrets in [r#"{"url": "x"}"#, "[1]", "nope"] {
        api.post(
            &base,
            &api.root,
            &[
                ("Plugin", "builtin:rapidpro"),
                ("Config", r#"{"url": "https://rapidpro.example.org"}"#),
                ("Secrets", secrets),
            ],
        )
        .await
        .assert_error(400, 20001);
    }
}

#[tokio::test]
async fn bindings_choose_a_plugin_per_world_and_scope() {
    let api = TestApi::new().await;
    let base = format!("/v1/Accounts/{}/PluginBindings", api.root.sid);
    let v = api
        .upload(
            &api.root,
            "?Name=greeter",
            HELLO.to_vec(),
            "application/wasm",
        )
        .await
        .json();
    let plugin = v["sid"].as_str().unwrap();

    let r = api
        .post(
            &base,
            &api.root,
            &[("Plugin", plugin), ("Config", r#"{"greeting":"hi"}"#)],
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let b = r.json();
    assert_eq!(
        (b["world"].as_str(), b["config"]["greeting"].as_str()),
        (Some("call-flow"), Some("hi"))
    );
    assert_eq!(b["phone_number_sid"], Value::Null);
    assert_eq!(b["deadline_ms"], 10);
    let slow = api
        .post(
            &base,
            &api.root,
            &[("Plugin", plugin), ("DeadlineMs", "500")],
        )
        .await
        .json();
    assert_eq!(slow["deadline_ms"], 100, "capped at 100 ms");
    api.post(&base, &api.root, &[("Plugin", plugin), ("DeadlineMs", "0")])
        .await
        .assert_error(400, 20001);
    // the same place again replaces it
    let r = api
        .post(&base, &api.root, &[("Plugin", "builtin:hello")])
        .await;
    assert_eq!(
        (r.status.as_u16(), r.json()["sid"].clone()),
        (200, b["sid"].clone())
    );
    // a number of the account gets its own
    let number = api.number(&api.root, "+15005550006").await;
    let n = number["sid"].as_str().unwrap();
    let r = api
        .post(
            &base,
            &api.root,
            &[("Plugin", plugin), ("PhoneNumberSid", n)],
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.json()["phone_number_sid"].as_str()),
        (201, Some(n))
    );
    let list = api.get(&base, &api.root).await.json();
    assert_eq!(list["bindings"].as_array().unwrap().len(), 2);

    // a bound version cannot be deleted
    api.call(
        "DELETE",
        &format!("/v1/Accounts/{}/Plugins/{plugin}", api.root.sid),
        Some(&api.root),
        &[],
    )
    .await
    .assert_error(409, 20409);

    for (params, what) in [
        (vec![("Plugin", "builtin:nope")], "no built-in"),
        (
            vec![("Plugin", "ZP00000000000000000000000000000000")],
            "not a plugin version",
        ),
        (
            vec![("Plugin", plugin), ("World", "recording")],
            "implements call-flow",
        ),
        (
            vec![("Plugin", plugin), ("World", "dance")],
            "must be call-flow",
        ),
        (vec![("Plugin", plugin), ("Config", "[1,2]")], "JSON object"),
        (vec![("Plugin", plugin), ("Config", "{oops")], "JSON object"),
        (
            vec![
                ("Plugin", plugin),
                ("PhoneNumberSid", "PN00000000000000000000000000000000"),
            ],
            "not a number",
        ),
        (
            vec![("Plugin", plugin), ("CalloutSid", "nope")],
            "not a callout of this account",
        ),
        (
            vec![
                ("Plugin", plugin),
                ("CalloutSid", "CO00000000000000000000000000000000"),
            ],
            "not a callout of this account",
        ),
        (vec![], "required"),
    ] {
        let r = api.post(&base, &api.root, &params).await;
        assert_eq!(r.status, 400, "{params:?}");
        let m = r.json()["message"].as_str().unwrap().to_owned();
        assert!(m.contains(what), "{params:?}: {m}");
    }
    // another account cannot bind this account's version
    let sub = api.account().await;
    let r = api
        .post(
            &format!("/v1/Accounts/{}/PluginBindings", sub.sid),
            &sub,
            &[("Plugin", plugin)],
        )
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn a_call_pins_the_plugins_bound_when_it_was_created() {
    let api = TestApi::new().await;
    let number = api.number(&api.root, "+15005550006").await;
    let base = format!("/v1/Accounts/{}/PluginBindings", api.root.sid);
    let v = api
        .upload(&api.root, "", HELLO.to_vec(), "application/wasm")
        .await
        .json();
    let plugin = v["sid"].as_str().unwrap();
    api.post(
        &base,
        &api.root,
        &[
            ("Plugin", "builtin:hello"),
            ("Config", r#"{"greeting":"account"}"#),
        ],
    )
    .await;
    api.post(
        &base,
        &api.root,
        &[
            ("Plugin", plugin),
            ("PhoneNumberSid", number["sid"].as_str().unwrap()),
            ("Config", r#"{"greeting":"number"}"#),
        ],
    )
    .await;

    let call = api
        .create_call(
            &api.root,
            &[
                ("To", "+15558675310"),
                ("From", "+15005550006"),
                ("Twiml", "<Response/>"),
            ],
        )
        .await
        .json();
    let sid = call["sid"].as_str().unwrap();
    let pinned = |api: &TestApi| {
        let store = api.store.clone();
        let (account, sid) = (api.root.sid.clone(), sid.to_owned());
        async move {
            let c = store.call(&account, &sid).await.unwrap().unwrap();
            serde_json::from_str::<Value>(&c.plugins.to_text()).unwrap()
        }
    };
    let pins = pinned(&api).await;
    assert_eq!(
        pins["call-flow"]["plugin"], plugin,
        "the number's binding wins: {pins}"
    );
    assert_eq!(
        pins["call-flow"]["sha256"],
        callflow_runtime::sha256_hex(HELLO)
    );
    assert_eq!(pins["call-flow"]["config"]["greeting"], "number");
    assert_eq!(pins["call-flow"]["deadline_ms"], 10);

    // rebinding later does not change a call that exists
    api.post(
        &base,
        &api.root,
        &[
            ("Plugin", "builtin:hello"),
            ("PhoneNumberSid", number["sid"].as_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(pinned(&api).await, pins);
}

#[tokio::test]
async fn an_uploaded_flow_can_be_run_through_the_sandbox() {
    let api = TestApi::new().await;
    let wasm = std::fs::read(callflow_runtime::test_guests::ABUSE).unwrap();
    let v = api
        .upload(&api.root, "", wasm, "application/wasm")
        .await
        .json();
    let path = format!(
        "/v1/Accounts/{}/Plugins/{}/Invocations",
        api.root.sid,
        v["sid"].as_str().unwrap()
    );
    let r = api.post(&path, &api.root, &[("Event", "start")]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let step = r.json();
    assert_eq!(
        step["commands"][0]["Say"]["text"], "event for CA00000000000000000000000000000000",
        "{step}"
    );
    assert_eq!(step["state"], r#""""#);
    // a plugin that loops is stopped and reported
    let r = api
        .post(
            &path,
            &api.root,
            &[("Event", "start"), ("Config", r#"{"abuse":"loop"}"#)],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().unwrap().contains("deadline"));
    api.post(&path, &api.root, &[("Event", "dance")])
        .await
        .assert_error(400, 20001);
}
