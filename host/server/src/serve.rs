//! `callflow serve`: opens the store, makes sure the root account exists, and runs the API and
//! the webhook outbox until SIGINT or SIGTERM.

use std::time::Duration;

use anyhow::Context;
use std::sync::Arc;

use callflow_api::{ApiConfig, ApiParts, ApiState, CallerIdPolicy, RateLimit};
use callflow_engine::blobs::Blobs;
use callflow_engine::clock::now_ms;
use callflow_engine::node::NodeConfig;
use callflow_engine::prompts::PromptsConfig;
use callflow_engine::telephony::DispatchLimits;
use callflow_engine::webhook::{EgressPolicy, WebhookClient, WebhookConfig};
use callflow_engine::{Backoff, Engine, EngineParts, OutboxConfig, Prompts, SipParts};
use callflow_media::worker::{Media, MediaConfig};
use callflow_runtime::{Limits, Runtime, RuntimeConfig};
use callflow_sip::driver::Sip;
use callflow_sip::trunk::{TrunkSpec, Trunks};
use callflow_sip::ua::UaConfig;
use callflow_store::{RootOutcome, Sid, SidKind, Store};

use crate::config::{CallerId, Config, LogFormat};

pub async fn run(config: Config) -> anyhow::Result<()> {
    init_logging(config.log_format);
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let store = Store::open(&config.database_url())
        .await
        .context("opening the database")?;
    ensure_root(&store).await?;
    store_trunks(&store, &config.trunks).await?;

    let extra_roots_pem = match &config.webhooks.ca_file {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("reading webhooks.ca_file {}", path.display()))?,
        ),
        None => None,
    };
    let webhooks = WebhookClient::new(WebhookConfig {
        connect_timeout: Duration::from_millis(config.webhooks.connect_timeout_ms),
        timeout: Duration::from_millis(config.webhooks.timeout_ms),
        max_response_bytes: config.webhooks.max_response_bytes,
        egress: EgressPolicy {
            allow_private: config.webhooks.allow_private,
        },
        extra_roots_pem,
    })?;
    let runtime = Arc::new(
        Runtime::new(RuntimeConfig {
            cache_dir: Some(config.data_dir.join("plugins").join("cache")),
            scheduling: config.plugins.scheduling(),
            ..RuntimeConfig::default()
        })
        .context("starting the plugin runtime")?,
    );
    let blobs = Blobs::open(&config.storage.engine(), &config.data_dir)
        .with_context(|| "opening the storage for plugins and recordings")?;
    tracing::info!(storage = %blobs.place(), "plugins and recordings are kept here");
    let sip = start_sip(&config).await?;
    let sip_handle = sip.sip.clone();
    let running = Engine::start(EngineParts {
        store: store.clone(),
        runtime: runtime.clone(),
        prompts: Prompts::with_flite(webhooks.clone(), PromptsConfig::default()),
        webhooks,
        outbox: OutboxConfig {
            backoff: Backoff {
                base_ms: i64::try_from(config.webhooks.retry_base_ms)?,
                max_ms: i64::try_from(config.webhooks.retry_max_ms)?,
                max_attempts: config.webhooks.max_attempts,
            },
            // longer than any one request can take, so a live attempt is never claimed twice
            lease: Duration::from_millis(config.webhooks.timeout_ms + 30_000),
            ..OutboxConfig::default()
        },
        public_url: config.public_url(),
        blobs: blobs.clone(),
        plugin_limits: Limits::default(),
        sip: Some(sip),
        node: NodeConfig {
            name: config.node_name(),
            http_url: config.node_url(),
            dead_after: Duration::from_millis(config.cluster.dead_after_ms),
        },
    })
    .await
    .context("starting the engine")?;
    let engine = running.engine.clone();
    let mut fenced = running.fenced.clone();
    let upkeep = {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                metrics.run_upkeep();
            }
        })
    };

    let api = ApiConfig {
        max_body_bytes: config.api.max_body_bytes,
        max_upload_bytes: config.api.max_upload_bytes,
        rate_limit: (config.api.rate_limit > 0.0).then(|| RateLimit {
            per_second: config.api.rate_limit,
            burst: if config.api.rate_limit_burst > 0.0 {
                config.api.rate_limit_burst
            } else {
                config.api.rate_limit.max(1.0)
            },
        }),
        caller_id: match config.api.caller_id {
            CallerId::Owned => CallerIdPolicy::Owned,
            CallerId::Any => CallerIdPolicy::Any,
        },
        public_url: config.public_url(),
        recordings_public: config.api.recordings_public,
        metrics_token: config.metrics.token.as_ref().map(|t| t.expose().to_owned()),
    };
    if api.metrics_token.is_none() {
        tracing::info!(
            "/metrics is open to anyone who reaches the HTTP port (set [metrics] token or CALLFLOW_METRICS_TOKEN to require a bearer token)"
        );
    }
    let parts = ApiParts {
        store: store.clone(),
        engine: engine.clone(),
        runtime,
        blobs,
        metrics: Some(metrics),
    };
    let state = ApiState::new(parts, api);
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding the HTTP API to {}", config.http_addr))?;
    tracing::info!(
        http = %listener.local_addr()?,
        sip = %sip_handle.local_addr(),
        data = %config.data_dir.display(),
        trunks = config.trunks.len(),
        "callflow is ready"
    );
    let service = callflow_api::service(state);
    let make = axum::ServiceExt::<axum::extract::Request>::into_make_service(service);
    let fence = async move {
        while !*fenced.borrow() {
            if fenced.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let declared_dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dead = Arc::clone(&declared_dead);
    axum::serve(listener, make)
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = shutdown_signal() => {}
                () = fence => dead.store(true, std::sync::atomic::Ordering::SeqCst),
            }
        })
        .await?;

    running.shutdown().await;
    upkeep.abort();
    store.close().await;
    if declared_dead.load(std::sync::atomic::Ordering::SeqCst) {
        anyhow::bail!("this node was declared dead by the cluster and stopped");
    }
    Ok(())
}

/// Binds SIP (UDP and TCP on `sip_addr`) and starts the media workers: what telephony needs
/// for inbound calls from the trunks' sources and queued calls out through the default trunk.
async fn start_sip(config: &Config) -> anyhow::Result<SipParts> {
    let trunks = Trunks::new(config.trunks.clone()).context("invalid [[trunks]]")?;
    let filter = trunks.clone();
    let advertised = config.sip.advertised_addr.unwrap_or(config.sip_addr);
    let ua = UaConfig {
        advertised,
        seed: seed(),
        ..UaConfig::default()
    };
    let (sip, events) =
        Sip::start_with_limits(config.sip_addr, ua, config.sip.tcp_limits(), move |ip| {
            filter.by_source(ip).is_some()
        })
        .await
        .with_context(|| format!("binding SIP to {}", config.sip_addr))?;
    let media_ip = if advertised.ip().is_unspecified() {
        sip.local_addr().ip()
    } else {
        advertised.ip()
    };
    let workers = Media::start(&MediaConfig {
        ip: config.sip_addr.ip(),
        port_min: config.sip.rtp_port_min,
        port_max: config.sip.rtp_port_max,
        workers: 0,
        spool_dir: config.data_dir.join("spool"),
    })
    .context("starting media")?;
    Ok(SipParts {
        sip,
        events,
        trunks,
        media: Arc::new(workers),
        advertised_ip: media_ip,
        dispatch: DispatchLimits {
            max_calls: config.dispatch.max_calls,
            account_calls_per_second: config.dispatch.account_calls_per_second,
            account_max_calls: config.dispatch.account_max_calls,
            sip_uris: EgressPolicy {
                allow_private: config.sip.dial_private_uris,
            },
        },
    })
}

/// Entropy for SIP tags, branches and Call-IDs (they must be unique, not secret).
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// Makes sure the root account exists. Its credentials come from `CALLFLOW_ROOT_ACCOUNT_SID` and
/// `CALLFLOW_ROOT_AUTH_TOKEN`, or are generated on first start and printed once, to stdout only.
async fn ensure_root(store: &Store) -> anyhow::Result<()> {
    let sid = std::env::var("CALLFLOW_ROOT_ACCOUNT_SID")
        .ok()
        .filter(|s| !s.is_empty());
    let token = std::env::var("CALLFLOW_ROOT_AUTH_TOKEN")
        .ok()
        .filter(|s| !s.is_empty());
    let configured = match (&sid, &token) {
        (Some(sid), Some(token)) => {
            anyhow::ensure!(
                Sid::parse(SidKind::Account, sid).is_some_and(|s| s.as_str() == sid),
                "CALLFLOW_ROOT_ACCOUNT_SID must be AC followed by 32 lower-case hex digits"
            );
            anyhow::ensure!(
                token.len() >= 16,
                "CALLFLOW_ROOT_AUTH_TOKEN must be at least 16 characters"
            );
            Some((sid.as_str(), token.as_str()))
        }
        (None, None) => None,
        _ => anyhow::bail!(
            "set both CALLFLOW_ROOT_ACCOUNT_SID and CALLFLOW_ROOT_AUTH_TOKEN, or neither"
        ),
    };
    let (root, outcome) = store.ensure_root(configured, now_ms()).await?;
    match outcome {
        RootOutcome::Created if configured.is_none() => {
            // printed once, on purpose not through the logger: secrets never go to logs
            println!(
                "callflow: created the root account. These credentials are shown only this once:"
            );
            println!("  AccountSid: {}", root.sid);
            println!("  AuthToken:  {}", root.auth_token);
        }
        RootOutcome::Created => {
            tracing::info!(account = %root.sid, "root account created from the environment")
        }
        RootOutcome::TokenRotated => {
            tracing::info!(account = %root.sid, "root auth token replaced from the environment")
        }
        RootOutcome::Existing => tracing::info!(account = %root.sid, "root account"),
    }
    Ok(())
}

/// Records every configured trunk in the store under its name (the sid stays across restarts).
/// Only names are logged: a spec holds the trunk's password.
async fn store_trunks(store: &Store, trunks: &[TrunkSpec]) -> anyhow::Result<()> {
    for spec in trunks {
        let json = serde_json::to_string(spec)?;
        store
            .upsert_trunk(&spec.name, &json, now_ms())
            .await
            .with_context(|| format!("storing trunk {:?}", spec.name))?;
    }
    if !trunks.is_empty() {
        let names: Vec<&str> = trunks.iter().map(|t| t.name.as_str()).collect();
        tracing::info!(trunks = ?names, "trunks configured");
    }
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn configured_trunks_are_stored_by_name_and_keep_their_sid() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let spec = |host: &str| TrunkSpec {
            name: "carrier".into(),
            host: host.into(),
            ..TrunkSpec::default()
        };
        store_trunks(&store, &[spec("a.example")]).await.unwrap();
        let first = store.trunk_by_name("carrier").await.unwrap().unwrap();
        store_trunks(&store, &[spec("b.example")]).await.unwrap();
        let all = store.list_trunks().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].sid, first.sid);
        let back: TrunkSpec = serde_json::from_str(&all[0].spec).unwrap();
        assert_eq!(back, spec("b.example"));
    }
}
