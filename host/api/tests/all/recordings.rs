//! Recordings: list, fetch as JSON, media by extension, delete, access rules.

use callflow_api::ApiConfig;
use callflow_store::NewRecording;

use crate::TestApi;

async fn seed(api: &TestApi, account: &str, call: &str) -> String {
    let dir = api.dir.path().join("recordings");
    std::fs::create_dir_all(&dir).unwrap();
    let rec = api
        .store
        .create_recording(
            account,
            &NewRecording {
                call_sid: call.into(),
                status: "completed".into(),
                source: "RecordVerb".into(),
                channels: 1,
                duration: 7,
                start_time: 5_000,
                wav_path: None,
                mp3_path: None,
            },
            6_000,
        )
        .await
        .unwrap();
    std::fs::write(dir.join(format!("{}.wav", rec.sid)), b"RIFF-wav-bytes").unwrap();
    std::fs::write(dir.join(format!("{}.mp3", rec.sid)), b"ID3-mp3-bytes").unwrap();
    set_media(api, &rec.sid).await;
    rec.sid
}

/// The media paths are written by the media layer once the files exist; emulate that.
async fn set_media(api: &TestApi, sid: &str) {
    api.store
        .set_recording_media(
            sid,
            Some(&format!("recordings/{sid}.wav")),
            Some(&format!("recordings/{sid}.mp3")),
            6_500,
            &[],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn list_fetch_media_and_delete() {
    let api = TestApi::new().await;
    let call = "CA0123456789abcdef0123456789abcdef";
    let sid = seed(&api, &api.root.sid, call).await;
    let base = format!("/2010-04-01/Accounts/{}", api.root.sid);

    let all = api
        .get(&format!("{base}/Recordings.json"), &api.root)
        .await
        .json();
    assert_eq!(all["recordings"].as_array().unwrap().len(), 1);
    let per_call = api
        .get(&format!("{base}/Calls/{call}/Recordings.json"), &api.root)
        .await
        .json();
    assert_eq!(per_call["recordings"][0]["sid"], sid.as_str());
    let other_call = api
        .get(
            &format!("{base}/Calls/CA{}/Recordings.json", "f".repeat(32)),
            &api.root,
        )
        .await
        .json();
    assert!(other_call["recordings"].as_array().unwrap().is_empty());

    let json = api
        .get(&format!("{base}/Recordings/{sid}.json"), &api.root)
        .await
        .json();
    assert_eq!(json["duration"], "7");
    assert_eq!(json["call_sid"], call);
    assert_eq!(
        json["media_url"],
        format!("http://127.0.0.1:8080{base}/Recordings/{sid}")
    );
    assert_eq!(
        api.get(
            &format!("{base}/Calls/{call}/Recordings/{sid}.json"),
            &api.root
        )
        .await
        .status,
        200
    );

    for (suffix, body, ctype) in [
        ("", "RIFF-wav-bytes", "audio/x-wav"),
        (".wav", "RIFF-wav-bytes", "audio/x-wav"),
        (".mp3", "ID3-mp3-bytes", "audio/mpeg"),
    ] {
        // public by default, like Twilio; with credentials too
        for who in [None, Some(&api.root)] {
            let r = api
                .call("GET", &format!("{base}/Recordings/{sid}{suffix}"), who, &[])
                .await;
            assert_eq!(r.status, 200, "{suffix}");
            assert_eq!(r.body, body.as_bytes());
            assert_eq!(r.headers["content-type"], ctype);
        }
    }
    // JSON always needs credentials; wrong credentials are refused even for media
    api.call("GET", &format!("{base}/Recordings/{sid}.json"), None, &[])
        .await
        .assert_error(401, 20003);
    let sub = api.account().await;
    api.get(
        &format!("/2010-04-01/Accounts/{}/Recordings/{sid}.json", sub.sid),
        &sub,
    )
    .await
    .assert_error(404, 20404);

    // deleting through another call's recordings finds nothing
    let elsewhere = format!("{base}/Calls/CA{}/Recordings/{sid}.json", "f".repeat(32));
    api.call("DELETE", &elsewhere, Some(&api.root), &[])
        .await
        .assert_error(404, 20404);
    assert_eq!(
        api.call(
            "DELETE",
            &format!("{base}/Recordings/{sid}.json"),
            Some(&api.root),
            &[]
        )
        .await
        .status,
        204
    );
    assert!(
        !api.dir
            .path()
            .join(format!("recordings/{sid}.wav"))
            .exists()
    );
    api.get(&format!("{base}/Recordings/{sid}.json"), &api.root)
        .await
        .assert_error(404, 20404);
    api.call("GET", &format!("{base}/Recordings/{sid}.mp3"), None, &[])
        .await
        .assert_error(404, 20404);
}

#[tokio::test]
async fn private_media_needs_credentials() {
    let api = TestApi::with_config(ApiConfig {
        recordings_public: false,
        ..Default::default()
    })
    .await;
    let sid = seed(&api, &api.root.sid, "CA0123456789abcdef0123456789abcdef").await;
    let path = format!("/2010-04-01/Accounts/{}/Recordings/{sid}.mp3", api.root.sid);
    api.call("GET", &path, None, &[])
        .await
        .assert_error(401, 20003);
    assert_eq!(api.get(&path, &api.root).await.status, 200);
}
