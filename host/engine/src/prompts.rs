//! Audio for `<Play>` and `<Say>`: URLs fetched through the [`WebhookClient`] (so the egress
//! policy, timeouts and redirect refusal apply) and revalidated with their HTTP validators,
//! speech synthesised by the configured [`Tts`], both decoded once and kept in the shared
//! [`AudioCache`].
//!
//! Decoding and synthesis are CPU work and run under `spawn_blocking`. Requests for the same
//! URL or the same speech take turns (one in-flight lock per key, removed when the last holder
//! lets go), so a prompt that many calls start at once is fetched once. Time is an argument:
//! callers pass `clock::now_ms()`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Once, PoisonError};

use callflow_media::Audio;
use callflow_media::prompt::{
    self, AudioCache, CacheKey, Lookup, PromptError, SpeechKey, Validators,
};
use callflow_media::tts::{Flite, Tts, TtsError, VoiceChoice, speech_key};
use tokio::sync::OwnedMutexGuard;

use crate::webhook::{DEFAULT_MAX_MEDIA_BYTES, FetchError, Fetched, WebhookClient, WebhookError};

/// The default budget of the audio cache: 64 MiB of [`Audio::bytes`], about 70 minutes of
/// audio (both laws are kept).
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptsConfig {
    /// Bound of the shared cache, in [`Audio::bytes`].
    pub cache_bytes: usize,
    /// Bound of one fetched media body.
    pub max_fetch_bytes: usize,
}

impl Default for PromptsConfig {
    fn default() -> Self {
        PromptsConfig {
            cache_bytes: DEFAULT_CACHE_BYTES,
            max_fetch_bytes: DEFAULT_MAX_MEDIA_BYTES,
        }
    }
}

/// Why a `<Play>` or `<Say>` has no audio. Messages never carry the URL (it may hold
/// credentials).
#[derive(Debug, thiserror::Error)]
pub enum PromptsError {
    #[error("fetching the audio failed: {0}")]
    Fetch(#[source] WebhookError),
    #[error("fetching the audio returned HTTP status {0}")]
    Status(u16),
    #[error("the audio could not be decoded: {0}")]
    Decode(#[source] PromptError),
    #[error("speech is unavailable: no speech engine is configured")]
    SpeechUnavailable,
    #[error("speech failed: {0}")]
    Speech(#[source] TtsError),
}

impl From<FetchError> for PromptsError {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::Request(e) => PromptsError::Fetch(e),
            FetchError::Status(s) => PromptsError::Status(s),
        }
    }
}

/// Prompts and speech for every call of the process. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Prompts {
    inner: Arc<Inner>,
}

struct Inner {
    cache: AudioCache,
    client: WebhookClient,
    tts: Option<Arc<dyn Tts>>,
    max_fetch_bytes: usize,
    /// One lock per key being looked up; an entry lives only while someone holds or awaits its
    /// lock, so the map is bounded by the requests in progress.
    in_flight: Mutex<HashMap<CacheKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Prompts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prompts")
            .field("cache_bytes", &self.inner.cache.budget_bytes())
            .field("tts", &self.inner.tts.as_ref().map(|t| t.name().to_owned()))
            .finish_non_exhaustive()
    }
}

/// flite if it can be loaded; otherwise `None`, with one warning per process saying why.
pub fn flite() -> Option<Arc<dyn Tts>> {
    match Flite::load() {
        Ok(flite) => Some(Arc::new(flite)),
        Err(e) => {
            static WARNED: Once = Once::new();
            WARNED.call_once(|| tracing::warn!(error = %e, "<Say> has no speech engine"));
            None
        }
    }
}

impl Prompts {
    pub fn new(client: WebhookClient, tts: Option<Arc<dyn Tts>>, config: PromptsConfig) -> Self {
        Prompts {
            inner: Arc::new(Inner {
                cache: AudioCache::new(config.cache_bytes),
                client,
                tts,
                max_fetch_bytes: config.max_fetch_bytes,
                in_flight: Mutex::default(),
            }),
        }
    }

    /// With flite for speech when it is installed (see [`flite`]).
    pub fn with_flite(client: WebhookClient, config: PromptsConfig) -> Self {
        Prompts::new(client, flite(), config)
    }

    pub fn cache(&self) -> &AudioCache {
        &self.inner.cache
    }

    /// The audio at `url`: from the cache while fresh; when stale, revalidated with a
    /// conditional GET (a 304 keeps the cached audio); when missing, fetched and decoded.
    ///
    /// If revalidation fails for a reason that may pass (timeout, connection), the stale audio
    /// plays; if the server answers with an error status, the entry is dropped and this fails.
    pub async fn play_url(&self, url: &str, now_ms: u64) -> Result<Arc<Audio>, PromptsError> {
        let key = CacheKey::Url(url.to_owned());
        let _turn = self.turn(&key).await;
        let inner = &*self.inner;
        match inner.cache.lookup(&key, now_ms) {
            Lookup::Fresh(audio) => Ok(audio),
            Lookup::Missing => match self.fetch(url, &Validators::default()).await? {
                // A 304 to an unconditional GET is the server's mistake.
                Fetched::NotModified { .. } => Err(PromptsError::Status(304)),
                Fetched::Body {
                    content_type,
                    body,
                    validators,
                    max_age_ms,
                } => {
                    let audio =
                        decode(body, content_type.unwrap_or_else(|| url.to_owned())).await?;
                    Ok(inner
                        .cache
                        .insert_url(url, audio, validators, max_age_ms, now_ms))
                }
            },
            Lookup::Stale { audio, validators } => match self.fetch(url, &validators).await {
                Ok(Fetched::NotModified { max_age_ms }) => Ok(inner
                    .cache
                    .refresh(url, max_age_ms, now_ms)
                    // Evicted while we asked: the audio we hold is still the current one.
                    .unwrap_or_else(|| {
                        inner
                            .cache
                            .insert_url(url, audio, validators, max_age_ms, now_ms)
                    })),
                Ok(Fetched::Body {
                    content_type,
                    body,
                    validators,
                    max_age_ms,
                }) => {
                    let fresh = decode(body, content_type.unwrap_or_else(|| url.to_owned())).await;
                    match fresh {
                        Ok(fresh) => Ok(inner
                            .cache
                            .insert_url(url, fresh, validators, max_age_ms, now_ms)),
                        Err(e) => {
                            inner.cache.remove(&key);
                            Err(e)
                        }
                    }
                }
                Err(PromptsError::Fetch(e)) if e.is_transient() => {
                    tracing::warn!(error = %e, "revalidating a prompt failed; playing the cached copy");
                    Ok(audio)
                }
                Err(e) => {
                    inner.cache.remove(&key);
                    Err(e)
                }
            },
        }
    }

    /// `text` spoken as `<Say voice language>` asks (Twilio's names; see
    /// [`VoiceChoice::from_twilio`]), synthesised once and then served from the cache.
    pub async fn say(
        &self,
        voice: Option<&str>,
        language: Option<&str>,
        text: &str,
    ) -> Result<Arc<Audio>, PromptsError> {
        let tts = self
            .inner
            .tts
            .clone()
            .ok_or(PromptsError::SpeechUnavailable)?;
        let choice = VoiceChoice::from_twilio(voice, language);
        let speech: SpeechKey = speech_key(tts.as_ref(), &choice, text);
        let key = CacheKey::Speech(speech.clone());
        let _turn = self.turn(&key).await;
        // Speech never goes stale, so the time does not matter.
        if let Lookup::Fresh(audio) = self.inner.cache.lookup(&key, 0) {
            return Ok(audio);
        }
        let text = text.to_owned();
        let audio = tokio::task::spawn_blocking(move || {
            tts.synthesize(&choice, &text)
                .map(|pcm| Audio::from_pcm(&pcm))
        })
        .await
        .map_err(|e| PromptsError::Speech(TtsError::Engine(format!("synthesis panicked: {e}"))))?
        .map_err(PromptsError::Speech)?;
        Ok(self.inner.cache.insert_speech(speech, audio))
    }

    async fn fetch(&self, url: &str, validators: &Validators) -> Result<Fetched, PromptsError> {
        Ok(self
            .inner
            .client
            .fetch(url, validators, self.inner.max_fetch_bytes)
            .await?)
    }

    /// Waits for this key's turn: whoever holds it may be filling the cache.
    async fn turn(&self, key: &CacheKey) -> Turn<'_> {
        let lock = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .clone();
        // Built before waiting, so that a cancelled wait still cleans up the map.
        let mut turn = Turn {
            inner: &self.inner,
            key: key.clone(),
            lock,
            guard: None,
        };
        turn.guard = Some(turn.lock.clone().lock_owned().await);
        turn
    }
}

/// One request's turn at a key; dropping it passes the turn on, and the last one out removes
/// the key from the in-flight map.
struct Turn<'a> {
    inner: &'a Inner,
    key: CacheKey,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.guard = None;
        let mut map = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Clones are made under this lock: two (the map's and ours) means nobody else waits.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.key);
        }
    }
}

/// Decodes fetched media off the async threads; `hint` is the Content-Type or the URL.
async fn decode(body: bytes::Bytes, hint: String) -> Result<Audio, PromptsError> {
    tokio::task::spawn_blocking(move || {
        prompt::decode(&body, Some(&hint)).map(|pcm| Audio::from_pcm(&pcm))
    })
    .await
    .map_err(|e| PromptsError::Decode(PromptError::Malformed(format!("decoding panicked: {e}"))))?
    .map_err(PromptsError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use callflow_media::g711::Law;

    use crate::webhook::{EgressPolicy, WebhookConfig};

    const ETAG: &str = "\"v1\"";

    #[derive(Default)]
    struct Seen {
        requests: AtomicUsize,
        if_none_match: Mutex<Vec<Option<String>>>,
    }

    fn tone(samples: usize) -> Vec<i16> {
        (0..samples)
            .map(|i| ((i as f32 * 0.3).sin() * 8000.0) as i16)
            .collect()
    }

    fn wav(pcm: &[i16]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.wav");
        callflow_media::files::write_wav(&path, pcm).unwrap();
        std::fs::read(path).unwrap()
    }

    /// A loopback server: `/p.wav` (ETag, `cache_control`, 304 on a matching If-None-Match,
    /// 100 ms slow so that concurrent requests overlap), `/missing` (404), `/garbage` (200, not
    /// audio).
    async fn server(body: Vec<u8>, cache_control: &'static str) -> (String, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        let app = axum::Router::new()
            .route(
                "/p.wav",
                get(move |headers: HeaderMap| {
                    let seen = s.clone();
                    let body = body.clone();
                    async move {
                        seen.requests.fetch_add(1, Ordering::SeqCst);
                        let inm = headers
                            .get(header::IF_NONE_MATCH)
                            .map(|v| v.to_str().unwrap().to_owned());
                        seen.if_none_match.lock().unwrap().push(inm.clone());
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        let common = [(header::ETAG, ETAG), (header::CACHE_CONTROL, cache_control)];
                        if inm.as_deref() == Some(ETAG) {
                            (StatusCode::NOT_MODIFIED, common).into_response()
                        } else {
                            (common, [(header::CONTENT_TYPE, "audio/wav")], body).into_response()
                        }
                    }
                }),
            )
            .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
            .route(
                "/garbage",
                get(|| async { ([(header::CONTENT_TYPE, "audio/wav")], "RIFF nonsense") }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), seen)
    }

    fn prompts(allow_private: bool, tts: Option<Arc<dyn Tts>>) -> Prompts {
        let client = WebhookClient::new(WebhookConfig {
            egress: EgressPolicy { allow_private },
            ..WebhookConfig::default()
        })
        .unwrap();
        Prompts::new(client, tts, PromptsConfig::default())
    }

    #[tokio::test]
    async fn a_prompt_is_fetched_once_then_revalidated_with_its_etag() {
        let pcm = tone(4000);
        let (base, seen) = server(wav(&pcm), "max-age=0").await;
        let p = prompts(true, None);
        let url = format!("{base}/p.wav");
        let first = p.play_url(&url, 1_000).await.unwrap();
        assert_eq!(
            first.samples(Law::Mu),
            Audio::from_pcm(&pcm).samples(Law::Mu)
        );
        // max-age=0: stale at once, so this asks again, conditionally, and the 304 keeps it.
        let second = p.play_url(&url, 1_000).await.unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(seen.requests.load(Ordering::SeqCst), 2);
        assert_eq!(
            *seen.if_none_match.lock().unwrap(),
            [None, Some(ETAG.to_owned())]
        );
        assert_eq!(p.cache().len(), 1);
    }

    #[tokio::test]
    async fn concurrent_plays_of_one_url_fetch_it_once() {
        let (base, seen) = server(wav(&tone(800)), "max-age=60").await;
        let p = prompts(true, None);
        let url = format!("{base}/p.wav");
        let plays: Vec<_> = (0..8)
            .map(|_| {
                let (p, url) = (p.clone(), url.clone());
                tokio::spawn(async move { p.play_url(&url, 5).await })
            })
            .collect();
        let mut got = Vec::new();
        for play in plays {
            got.push(play.await.unwrap().unwrap());
        }
        // The first fills the cache while the others wait their turn, then find it fresh.
        assert!(got.iter().all(|a| Arc::ptr_eq(a, &got[0])));
        assert_eq!(seen.requests.load(Ordering::SeqCst), 1);
        assert!(p.inner.in_flight.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn error_statuses_and_garbage_are_errors() {
        let (base, _) = server(vec![], "max-age=0").await;
        let p = prompts(true, None);
        let err = p.play_url(&format!("{base}/missing"), 0).await.unwrap_err();
        assert!(matches!(err, PromptsError::Status(404)), "{err:?}");
        let err = p.play_url(&format!("{base}/garbage"), 0).await.unwrap_err();
        assert!(matches!(err, PromptsError::Decode(_)), "{err:?}");
        let err = p.play_url("ftp://example.com/x.wav", 0).await.unwrap_err();
        assert!(
            matches!(err, PromptsError::Fetch(WebhookError::InvalidUrl(_))),
            "{err:?}"
        );
        assert!(p.cache().is_empty());
    }

    #[tokio::test]
    async fn the_egress_policy_applies_to_prompts() {
        let (base, seen) = server(wav(&tone(800)), "max-age=0").await;
        let p = prompts(false, None);
        let err = p.play_url(&format!("{base}/p.wav"), 0).await.unwrap_err();
        assert!(
            matches!(err, PromptsError::Fetch(WebhookError::Denied(_))),
            "{err:?}"
        );
        let port = base.rsplit(':').next().unwrap();
        let err = p
            .play_url(&format!("http://localhost:{port}/p.wav"), 0)
            .await
            .unwrap_err();
        assert!(
            matches!(err, PromptsError::Fetch(WebhookError::Denied(_))),
            "{err:?}"
        );
        assert_eq!(seen.requests.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_media_body_over_the_bound_is_refused() {
        let (base, _) = server(wav(&tone(8000)), "max-age=0").await;
        let client = WebhookClient::new(WebhookConfig {
            egress: EgressPolicy {
                allow_private: true,
            },
            ..WebhookConfig::default()
        })
        .unwrap();
        let config = PromptsConfig {
            max_fetch_bytes: 1000,
            ..PromptsConfig::default()
        };
        let p = Prompts::new(client, None, config);
        let err = p.play_url(&format!("{base}/p.wav"), 0).await.unwrap_err();
        assert!(
            matches!(err, PromptsError::Fetch(WebhookError::TooLarge(1000))),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn say_speaks_with_flite_once_per_text() {
        let flite = Flite::load().expect("flite (tests/run installs libflite1)");
        let p = prompts(false, Some(Arc::new(flite)));
        let first = p
            .say(Some("woman"), None, "Press one for sales")
            .await
            .unwrap();
        assert!(first.len() > 4000, "{} samples", first.len());
        let mut pcm = Vec::new();
        callflow_media::g711::decode(Law::Mu, first.samples(Law::Mu), &mut pcm);
        let peak = pcm.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!(peak > 3000, "speech, not silence (peak {peak})");
        let again = p
            .say(Some("woman"), Some("en-US"), "Press one for sales")
            .await
            .unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second <Say> is a cache hit"
        );
    }

    #[tokio::test]
    async fn say_without_an_engine_is_unavailable() {
        let err = prompts(false, None)
            .say(None, None, "hi")
            .await
            .unwrap_err();
        assert!(matches!(err, PromptsError::SpeechUnavailable), "{err:?}");
    }
}
