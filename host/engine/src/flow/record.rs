//! Recordings: `<Record>` through the media layer, the call's pinned recording plugin on the
//! finished audio, and every recording (`<Record>`, a bridged conversation, a whole call)
//! written as WAV and MP3 and made a Recording resource before anyone hears of it.

use std::path::PathBuf;
use std::sync::Arc;

use callflow_media::record::{RecordOptions, StopReason};
use callflow_media::spool::{self, Taped};
use callflow_media::worker::MediaEvent;
use callflow_runtime::flow::{FlowEvent, RecordResult};
use callflow_runtime::{World, recording};
use callflow_store::{
    Call, CallLogEntry, FlowFailure, NewDelivery, NewRecording, NotifyFailure, RecordingCallback,
    RecordingStored, Sid, SidKind,
};

use super::{FlowRunner, Next, Outcome, Session};
use crate::clock::now_ms;
use crate::plugins::{method_name, pinned};

/// A recording being made: its sid (chosen at the start, so an `in-progress` callback can name
/// it), when it started, its source (`RecordVerb`, `DialVerb`, `OutboundAPI`), its channels
/// (2: interleaved), and the recording status callback it tells, if any.
pub(super) struct Take {
    sid: String,
    started: i64,
    source: String,
    channels: u16,
    told: Option<RecordingCallback>,
}

impl Take {
    /// A mono recording from `source` starting now, telling nobody.
    pub(super) fn new(source: &str) -> Take {
        Take {
            sid: Sid::generate(SidKind::Recording).as_str().to_owned(),
            started: now_ms(),
            source: source.to_owned(),
            channels: 1,
            told: None,
        }
    }

    /// Its spool file's name, which says what the recovery after a crash needs:
    /// `<account>.<call>.<source>.<started>`, and `.2` when on two channels.
    pub(super) fn tape_name(&self, call: &Call) -> String {
        let name = format!(
            "{}.{}.{}.{}",
            call.account_sid, call.sid, self.source, self.started
        );
        match self.channels {
            1 => name,
            n => format!("{name}.{n}"),
        }
    }

    /// The account, the call and the recording a [`Take::tape_name`] names (under a new sid).
    fn from_tape_name(name: &str) -> Option<(String, String, Take)> {
        let mut parts = name.split('.');
        let (account, call, source) = (parts.next()?, parts.next()?, parts.next()?);
        let started = parts.next()?.parse().ok()?;
        let channels = match parts.next() {
            None => 1,
            Some(n) => n.parse().ok().filter(|n| (1..=2).contains(n))?,
        };
        if parts.next().is_some() {
            return None;
        }
        let take = Take {
            started,
            channels,
            ..Take::new(source)
        };
        Some((account.into(), call.into(), take))
    }

    /// Twilio's recording status callback for `status` (`in-progress`, `completed` with its
    /// duration, `absent`), signed like every webhook; none unless the call asked for it.
    fn row(
        &self,
        call: &Call,
        url: &str,
        status: &str,
        duration_ms: Option<u64>,
    ) -> Option<NewDelivery> {
        let cb = self.told.as_ref().filter(|cb| cb.wants(status))?;
        let mut params: Vec<(String, String)> = vec![
            ("AccountSid".into(), call.account_sid.clone()),
            ("CallSid".into(), call.sid.clone()),
            ("RecordingSid".into(), self.sid.clone()),
            ("RecordingUrl".into(), url.to_owned()),
            ("RecordingStatus".into(), status.to_owned()),
            ("RecordingChannels".into(), self.channels.to_string()),
            (
                "RecordingStartTime".into(),
                crate::clock::rfc2822(self.started),
            ),
            ("RecordingSource".into(), self.source.clone()),
            ("RecordingTrack".into(), "both".into()),
        ];
        if let Some(ms) = duration_ms {
            params.push(("RecordingDuration".into(), ms.div_ceil(1000).to_string()));
        }
        if status == "absent" {
            params.push(("ErrorCode".into(), "0".into()));
        }
        Some(NewDelivery {
            account_sid: call.account_sid.clone(),
            call_sid: Some(call.sid.clone()),
            kind: "recording-status-callback".into(),
            url: cb.url.clone(),
            method: cb.method.as_str().into(),
            params,
            ..NewDelivery::default()
        })
    }
}

impl FlowRunner {
    /// A conversation recording once the media hands it over: ended off the async threads,
    /// stored as a Recording of `call` with its recording-ready event. `None` when there was
    /// nothing (told as `absent` if asked) or it could not be stored (logged on the call).
    pub(super) async fn store_conversation(
        &self,
        call: &Call,
        done: tokio::sync::oneshot::Receiver<Box<callflow_media::record::Conversation>>,
        take: Take,
    ) -> Option<callflow_runtime::flow::DialRecording> {
        let taped = match done.await {
            // ending the tape may wait for the spool's writer
            Ok(conversation) => tokio::task::spawn_blocking(move || conversation.finish())
                .await
                .ok(),
            Err(_) => None,
        };
        let Some(taped) = taped.filter(|t| t.samples() > 0) else {
            let url = self.recording_url(call, &take.sid);
            if let Some(row) = take.row(call, &url, "absent", None) {
                self.tell(call, row).await;
            }
            return None;
        };
        self.store_taped(call, taped, take).await
    }

    /// `Record=true` on create: the whole call, both sides, from now; stored when the call's
    /// media closes (by a task of its own: the flow may be gone by then), its recording status
    /// callback told as the call asked (`in-progress` now, `completed` with the recording in
    /// one transaction, or `absent`).
    pub(super) fn record_call(&self, call: &Call, media: &callflow_media::worker::CallMedia) {
        let limit_ms = u64::try_from(call.instructions.time_limit).unwrap_or(0) * 1000;
        let take = Take {
            channels: call.instructions.recording_channels(),
            told: call.instructions.recording_callback(),
            ..Take::new("OutboundAPI")
        };
        let done = media.record_conversation(limit_ms, take.tape_name(call), take.channels == 2);
        let (me, call) = (self.clone(), call.clone());
        tokio::spawn(async move {
            let url = me.recording_url(&call, &take.sid);
            if let Some(row) = take.row(&call, &url, "in-progress", None) {
                me.tell(&call, row).await;
            }
            me.store_conversation(&call, done, take).await
        });
    }

    /// The API URL of recording `sid` of `call`.
    fn recording_url(&self, call: &Call, sid: &str) -> String {
        format!(
            "{}/2010-04-01/Accounts/{}/Recordings/{sid}",
            self.inner.config.public_url.trim_end_matches('/'),
            call.account_sid,
        )
    }

    /// Stores `row` in the outbox now.
    async fn tell(&self, call: &Call, row: NewDelivery) {
        match self.inner.engine.enqueue(&[row], now_ms()).await {
            Ok(()) => self.wake_outbox(),
            Err(e) => {
                let entry = not_sent(None, format!("the recording status callback: {e}"));
                self.inner.store.log_call_event(&call.sid, now_ms(), &entry);
            }
        }
    }

    /// Stores the whole of `taped` as `take`, a Recording of `call` with its recording-ready
    /// event, logged on the call, and removes its spool file once stored (one that cannot be
    /// stored is left for the next start to try again).
    async fn store_taped(
        &self,
        call: &Call,
        mut taped: Taped,
        take: Take,
    ) -> Option<callflow_runtime::flow::DialRecording> {
        let stored = match taped.read(0..u64::MAX).await {
            Ok(pcm) => {
                let duration_ms = pcm.len() as u64 / 8 / u64::from(take.channels);
                let url = self.recording_url(call, &take.sid);
                let notify = take
                    .row(call, &url, "completed", Some(duration_ms))
                    .into_iter()
                    .collect();
                self.store_recording(call, &take, pcm, duration_ms, notify)
                    .await
                    .map(|(sid, url)| (sid, url, duration_ms))
            }
            Err(e) => Err(e),
        };
        let entry = match &stored {
            Ok((sid, _, _)) => CallLogEntry::RecordingStored(RecordingStored {
                recording_sid: sid.clone(),
                source: take.source.clone(),
            }),
            Err(why) => CallLogEntry::FlowError(FlowFailure::Recording {
                error: why.clone(),
                source: Some(take.source.clone()),
            }),
        };
        self.inner.store.log_call_event(&call.sid, now_ms(), &entry);
        let Ok((sid, url, duration_ms)) = stored else {
            taped.leave();
            return None;
        };
        taped.discard();
        Some(callflow_runtime::flow::DialRecording {
            sid,
            url,
            duration_s: u32::try_from(duration_ms.div_ceil(1000)).unwrap_or(u32::MAX),
        })
    }

    /// Makes a Recording of each spool file in `dir` a previous run left (it crashed while
    /// recording): all that reached the disk, up to a second before the crash. A file whose
    /// call is unknown is removed; one that cannot be stored stays for the next start.
    pub async fn recover_recordings(self, dir: PathBuf) {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some(spool::EXTENSION) {
                continue;
            }
            let Some((account, call_sid, take)) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(Take::from_tape_name)
            else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            let call = match self.inner.store.call(&account, &call_sid).await {
                Ok(Some(call)) => call,
                Ok(None) => {
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "a recording left by a crash waits for the next start");
                    continue;
                }
            };
            let Ok(taped) = Taped::left_over(path.clone()) else {
                continue;
            };
            if taped.samples() == 0 {
                taped.discard();
                continue;
            }
            let seconds = taped.samples() / 8000 / u64::from(take.channels);
            match self.store_taped(&call, taped, take).await {
                Some(r) => {
                    tracing::info!(call = %call.sid, recording = %r.sid, seconds, "kept a recording a crash interrupted")
                }
                None => {
                    tracing::warn!(call = %call.sid, file = %path.display(), "a recording a crash interrupted could not be stored; it waits for the next start")
                }
            }
        }
    }

    /// Writes `take`'s WAV and MP3 (of `pcm`, `duration_ms` long), then creates its Recording
    /// resource together with `notify` (a recording plugin's requests, the `completed`
    /// callback) and the call's recording-ready event, in one transaction: nobody can list or
    /// hear of a recording whose media is not there. Returns the sid and the URL.
    async fn store_recording(
        &self,
        call: &Call,
        take: &Take,
        pcm: Vec<i16>,
        duration_ms: u64,
        notify: Vec<callflow_store::NewDelivery>,
    ) -> Result<(String, String), String> {
        let sid = take.sid.clone();
        let (wav, mp3) = (
            format!("recordings/{sid}.wav"),
            format!("recordings/{sid}.mp3"),
        );
        let channels = take.channels;
        let (wav_bytes, mp3_bytes) =
            tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, Vec<u8>), String> {
                Ok((
                    callflow_media::files::wav_bytes_of(&pcm, channels)
                        .map_err(|e| e.to_string())?,
                    callflow_media::files::mp3_bytes_of(&pcm, channels)
                        .map_err(|e| e.to_string())?,
                ))
            })
            .await
            .map_err(|e| e.to_string())??;
        let blobs = &self.inner.config.blobs;
        blobs
            .put(&wav, wav_bytes)
            .await
            .map_err(|e| e.to_string())?;
        blobs
            .put(&mp3, mp3_bytes)
            .await
            .map_err(|e| e.to_string())?;
        let url = self.recording_url(call, &sid);
        let new = NewRecording {
            call_sid: call.sid.clone(),
            status: "completed".into(),
            source: take.source.clone(),
            channels: i64::from(channels),
            duration: i64::try_from(duration_ms.div_ceil(1000)).unwrap_or(i64::MAX),
            start_time: take.started,
            wav_path: Some(wav),
            mp3_path: Some(mp3),
        };
        let now = now_ms();
        let mut rows = notify;
        rows.extend(crate::events::recording_event(call, &url, now));
        self.inner
            .store
            .store_recording(&call.account_sid, &sid, &new, now, &rows)
            .await
            .map_err(|e| e.to_string())?;
        if !rows.is_empty() {
            self.wake_outbox();
        }
        Ok((sid, url))
    }
}

impl Session {
    pub(super) async fn record(&mut self, r: callflow_runtime::flow::Record) -> Outcome {
        let take = Take::new("RecordVerb");
        let opts = RecordOptions {
            max_length_ms: u64::from(r.max_length_ms.max(1000)),
            silence_timeout_ms: u64::from(r.timeout_ms),
            finish_on_key: r.finish_on_key,
            trim: r.trim_silence,
            tape: take.tape_name(&self.call),
        };
        let beep = r
            .play_beep
            .then(|| Arc::new(callflow_media::prompt::beep()));
        self.media.record(opts, beep);
        let rec = loop {
            match self.next_media().await {
                Next::Gone => return Outcome::Gone,
                Next::Redirected(r) => return Outcome::Redirected(r),
                Next::Media(MediaEvent::Recorded(rec)) => break rec,
                Next::Media(_) => {}
            }
        };
        let callflow_media::record::Recording {
            mut tape,
            keep,
            heard_audio,
            reason,
            digit,
            ..
        } = *rec;
        let digits = match (digit, reason) {
            (Some(d), _) => d.to_string(),
            (None, StopReason::Hangup) => "hangup".into(),
            _ => String::new(),
        };
        let nothing = |digits: String| {
            Outcome::Event(FlowEvent::Recorded(RecordResult {
                recording_sid: None,
                recording_url: None,
                duration_ms: 0,
                digits,
                empty: true,
            }))
        };
        if !heard_audio || keep.is_empty() {
            tape.discard();
            return nothing(digits);
        }
        // what is kept, read back from the spool once (the recording plugin and the encoders
        // take it whole)
        let mut pcm = match tape.read(keep).await {
            Ok(pcm) => pcm,
            Err(why) => {
                self.log(CallLogEntry::FlowError(FlowFailure::Recording {
                    error: why,
                    source: None,
                }))
                .await;
                tape.discard();
                return nothing(digits);
            }
        };
        // the spool file goes when `tape` does, at the end, unless the recording could not
        // be stored: then the next start makes one of all of it
        // The account's recording plugin, if it binds one, decides what is kept.
        let mut notify = Vec::new();
        match self.recording_plan(&pcm, reason, digit).await {
            Ok(None) => {}
            Ok(Some(plan)) => {
                notify = plan.notify;
                match plan.action {
                    recording::Action::Keep(k) => {
                        pcm.truncate(k.end as usize);
                        pcm.drain(..k.start as usize);
                    }
                    recording::Action::Discard(why) => {
                        self.log(CallLogEntry::RecordingDiscarded { reason: why })
                            .await;
                        let rows = self.notification_rows(notify).await;
                        self.enqueue(rows).await;
                        return nothing(digits);
                    }
                }
            }
            // A failing plugin must not lose the caller's message: keep it all.
            Err(why) => {
                self.log(CallLogEntry::FlowError(FlowFailure::RecordingPlugin {
                    error: why,
                }))
                .await;
            }
        }
        let rows = self.notification_rows(notify).await;
        if pcm.is_empty() {
            self.enqueue(rows).await;
            return nothing(digits);
        }
        let duration_ms = pcm.len() as u64 / 8;
        let stored = self
            .runner
            .store_recording(&self.call, &take, pcm, duration_ms, rows)
            .await;
        match stored {
            Ok((sid, url)) => Outcome::Event(FlowEvent::Recorded(RecordResult {
                recording_sid: Some(sid),
                recording_url: Some(url),
                duration_ms: u32::try_from(duration_ms).unwrap_or(u32::MAX),
                digits,
                empty: false,
            })),
            Err(why) => {
                tape.leave();
                self.log(CallLogEntry::FlowError(FlowFailure::Recording {
                    error: why,
                    source: None,
                }))
                .await;
                Outcome::Event(FlowEvent::Recorded(RecordResult {
                    recording_sid: None,
                    recording_url: None,
                    duration_ms: 0,
                    digits,
                    empty: true,
                }))
            }
        }
    }

    /// Runs the call's pinned recording plugin on a finished recording; `None` when the call
    /// has none.
    async fn recording_plan(
        &self,
        pcm: &[i16],
        reason: StopReason,
        digit: Option<char>,
    ) -> Result<Option<recording::RecordingPlan>, String> {
        let Some(pin) = pinned(&self.call, World::Recording) else {
            return Ok(None);
        };
        let ctx = recording::RecordingContext {
            account_sid: self.call.account_sid.clone(),
            call_sid: self.call.sid.clone(),
            now_ms: now_ms(),
            seed: rand::random(),
            config: pin.config.clone(),
            sample_rate: 8_000,
            reason: match reason {
                StopReason::MaxLength => "max-length",
                StopReason::Silence => "silence",
                StopReason::FinishKey(_) => "key",
                StopReason::Hangup | StopReason::Stopped => "hangup",
            }
            .into(),
            digits: digit.map(String::from).unwrap_or_default(),
        };
        // the caller waits for this: a failure of the moment (plugin threads busy) is tried
        // again twice, shortly; a failure that stays keeps the whole recording
        let mut pause = std::time::Duration::from_millis(200);
        let mut retries = 0;
        loop {
            match self
                .inner()
                .plugins
                .process_recording(&pin, ctx.clone(), pcm.to_vec())
                .await
            {
                Ok(plan) => return Ok(Some(plan)),
                Err(e) if e.is_transient() && retries < 2 => {
                    retries += 1;
                    tracing::warn!(call = %self.call.sid, error = %e, "recording plugin could not run; trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 4;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// A recording plugin's notifications as outbox rows (at most as many as an event may ask
    /// for; one the host cannot make is logged on the call and left out).
    async fn notification_rows(
        &self,
        requests: Vec<recording::HttpRequest>,
    ) -> Vec<callflow_store::NewDelivery> {
        if requests.len() > crate::events::MAX_REQUESTS_PER_EVENT {
            let error = format!(
                "the recording plugin asked for {} notifications (at most {}); none is sent",
                requests.len(),
                crate::events::MAX_REQUESTS_PER_EVENT
            );
            self.log(not_sent(None, error)).await;
            return Vec::new();
        }
        let mut rows = Vec::new();
        for r in requests {
            let request = (r.url.clone(), method_name(r.method).to_owned());
            match crate::events::plugin_request(&self.call, r) {
                Ok(row) => rows.push(row),
                Err(e) => self.log(not_sent(Some(request), e)).await,
            }
        }
        rows
    }

    /// Notifications with no recording to go with (it was discarded, or nothing was kept).
    async fn enqueue(&self, rows: Vec<callflow_store::NewDelivery>) {
        if rows.is_empty() {
            return;
        }
        let enqueued = self
            .inner()
            .engine
            .enqueue(&rows, now_ms())
            .await
            .map_err(|e| e.to_string());
        if let Err(e) = enqueued {
            self.log(not_sent(None, e)).await;
        }
    }
}

/// `recording.notify`: notifications not sent, and why (`request`: which, by URL and method).
fn not_sent(request: Option<(String, String)>, error: String) -> CallLogEntry {
    let (url, method) = request.unzip();
    CallLogEntry::RecordingNotify(NotifyFailure { url, method, error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::call;
    use callflow_store::CallStatus;

    #[test]
    fn a_spool_file_name_gives_back_its_call_and_recording() {
        let c = call(CallStatus::InProgress, "completed");
        for channels in [1, 2] {
            let take = Take {
                channels,
                ..Take::new("OutboundAPI")
            };
            let (account, sid, back) = Take::from_tape_name(&take.tape_name(&c)).unwrap();
            assert_eq!((account, sid), (c.account_sid.clone(), c.sid.clone()));
            assert_eq!(
                (back.source.as_str(), back.started, back.channels),
                ("OutboundAPI", take.started, channels)
            );
        }
        for bad in [
            "",
            "AC.CA.Record",
            "AC.CA.Record.x",
            "AC.CA.Record.1.3",
            "AC.CA.R.1.2.9",
        ] {
            assert!(Take::from_tape_name(bad).is_none(), "{bad}");
        }
    }
}
