//! The engine's wiring, in the one order that works, done once: the plugin host, the outbox
//! (which runs call-events plugins with it), the engine, the flow runner, telephony (which
//! starts flows and gives them a dialer), the callout scheduler. Nothing is attached later;
//! every part gets what it needs when it is built. [`Running::shutdown`] stops them in order.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use callflow_media::worker::Media;
use callflow_runtime::{Limits, Runtime};
use callflow_sip::driver::Sip;
use callflow_sip::trunk::Trunks;
use callflow_sip::ua::UaEvent;
use callflow_store::Store;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::blobs::Blobs;
use crate::callouts::Scheduler;
use crate::cluster::Member;
use crate::flow::{FlowConfig, FlowRunner};
use crate::node::NodeConfig;
use crate::plugins::PluginHost;
use crate::telephony::{DispatchLimits, MediaSetup, Telephony};
use crate::webhook::WebhookClient;
use crate::{Engine, EngineError, Outbox, OutboxConfig, Prompts};

/// What the engine is built from.
pub struct EngineParts {
    pub store: Store,
    pub runtime: Arc<Runtime>,
    pub webhooks: WebhookClient,
    pub outbox: OutboxConfig,
    pub prompts: Prompts,
    /// The API's public base URL (RecordingUrl is built on it).
    pub public_url: String,
    /// Uploaded plugins are under `plugins/`, recordings go under `recordings/`.
    pub blobs: Blobs,
    /// Every plugin invocation's limits (a binding may set its own deadline).
    pub plugin_limits: Limits,
    /// SIP and media, when calls are placed and received.
    pub sip: Option<SipParts>,
    /// Who this node is among those sharing the database.
    pub node: NodeConfig,
}

/// The SIP stack and the media workers calls use.
pub struct SipParts {
    pub sip: Sip,
    pub events: mpsc::UnboundedReceiver<UaEvent>,
    pub trunks: Trunks,
    pub media: Arc<Media>,
    /// The address in our SDP.
    pub advertised_ip: IpAddr,
    pub dispatch: DispatchLimits,
}

/// The engine running: its handle, and its tasks until [`Running::shutdown`].
pub struct Running {
    pub engine: Engine,
    /// Turns true if the cluster declared this node dead: the process must stop (its calls
    /// were ended by another node).
    pub fenced: watch::Receiver<bool>,
    sip: Option<Sip>,
    stop: watch::Sender<bool>,
    outbox: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

/// How long shutdown waits for live calls to end, and for webhook deliveries in flight.
const DRAIN_CALLS: Duration = Duration::from_secs(5);
/// How often the database is pinged for SIP's sake.
const DATABASE_PING: Duration = Duration::from_secs(1);
const DRAIN_DELIVERIES: Duration = Duration::from_secs(10);

impl Engine {
    /// Builds and starts every part of the engine. Calls a previous run left live are ended
    /// before the callout scheduler's first pass, so their participants are settled on it.
    pub async fn start(parts: EngineParts) -> Result<Running, EngineError> {
        let EngineParts {
            store,
            runtime,
            webhooks,
            outbox,
            prompts,
            public_url,
            blobs,
            plugin_limits,
            sip,
            node,
        } = parts;
        let (stop, stopped) = watch::channel(false);
        // first: the name is this process's (on PostgreSQL, no other live process has it), so
        // what it held before is this node's previous run's to end and free
        let member = Member::join(store.clone(), node).await?;
        let plugins = PluginHost::new(runtime, store.clone(), blobs.clone(), plugin_limits);
        let outbox = OutboxConfig {
            node: member.name().into(),
            ..outbox
        };
        let outbox =
            Outbox::new(store.clone(), webhooks.clone(), outbox).with_plugins(plugins.clone());
        let engine = Engine::new(store, outbox.clone());
        let outbox_task = tokio::spawn(outbox.run(stopped.clone()));
        let flows = FlowRunner::new(
            plugins.clone(),
            engine.clone(),
            prompts,
            webhooks,
            FlowConfig { public_url, blobs },
        );
        // before telephony handles the first INVITE (SIP queues what arrives meanwhile) and
        // before the caller opens the API
        plugins.warm_up().await;
        let mut tasks = Vec::new();
        let mut telephony = None;
        let sip_handle = match sip {
            Some(s) => {
                // what a crash left in the spool, now that the calls it belonged to are ended
                tasks.push(tokio::spawn(
                    flows
                        .clone()
                        .recover_recordings(s.media.spool().dir().to_owned()),
                ));
                let media = MediaSetup {
                    media: s.media,
                    advertised_ip: s.advertised_ip,
                    flow: flows.flow(),
                    flow_answers: true,
                };
                let handle = s.sip.clone();
                tasks.push(tokio::spawn(watch_database(
                    engine.store.clone(),
                    s.sip.clone(),
                    stopped.clone(),
                )));
                let (tel, telephony_tasks) = Telephony::start(
                    s.sip,
                    s.events,
                    engine.clone(),
                    s.trunks,
                    media,
                    s.dispatch,
                    stopped.clone(),
                )
                .await?;
                tasks.extend(telephony_tasks);
                telephony = Some(tel);
                Some(handle)
            }
            None => None,
        };
        let (fence, fenced) = watch::channel(false);
        tasks.push(tokio::spawn(member.run(
            telephony,
            engine.clone(),
            stopped.clone(),
            fence,
        )));
        tasks.extend(Scheduler::new(engine.clone(), plugins).start(stopped));
        Ok(Running {
            engine,
            fenced,
            sip: sip_handle,
            stop,
            outbox: outbox_task,
            tasks,
        })
    }
}

impl Running {
    /// Stops in order: SIP drains (OPTIONS and new INVITEs get 503), live calls get a few
    /// seconds to end, SIP stops, the tasks end, and webhook deliveries in flight finish (what
    /// does not is retried on the next start).
    pub async fn shutdown(self) {
        if let Some(sip) = &self.sip {
            tracing::info!("shutting down: draining SIP (OPTIONS and new INVITEs get 503)");
            sip.set_draining(true);
        }
        let _ = self.stop.send(true);
        let drain_until = tokio::time::Instant::now() + DRAIN_CALLS;
        while self.engine.live_calls() > 0 && tokio::time::Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some(sip) = &self.sip {
            sip.shutdown();
        }
        for t in self.tasks {
            t.abort();
        }
        tracing::info!("finishing webhook deliveries in flight");
        if tokio::time::timeout(DRAIN_DELIVERIES, self.outbox)
            .await
            .is_err()
        {
            tracing::warn!(
                "webhook deliveries still in flight after 10 s; they will be retried on next start"
            );
        }
    }
}

/// Pings the database every [`DATABASE_PING`]: while it cannot be reached, SIP answers OPTIONS
/// and new INVITEs with 503 (a SIP edge's health check takes this node out; a caller gets a
/// clear refusal, not a call nobody can record), and takes calls again once it answers.
async fn watch_database(store: Store, sip: Sip, mut stopped: watch::Receiver<bool>) {
    let mut down = false;
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            () = tokio::time::sleep(DATABASE_PING) => {}
        }
        let ok = match tokio::time::timeout(DATABASE_PING * 5, store.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                if !down {
                    tracing::error!(error = %e, "the database is unreachable: SIP refuses new calls with 503");
                }
                false
            }
            Err(_) => {
                if !down {
                    tracing::error!("the database does not answer: SIP refuses new calls with 503");
                }
                false
            }
        };
        if ok == down {
            down = !ok;
            sip.set_unavailable(down);
            if ok {
                tracing::info!("the database is back: SIP takes calls again");
            }
        }
    }
}
