//! Inbound admission: an INVITE is matched to a trunk by its source and to an account by the
//! number it calls, given a media port and a trunk channel, recorded as a ringing call, and
//! handed to a leg. Anything that fails refuses it with the SIP status that says why.

use std::time::Duration;

use callflow_runtime::World;
use callflow_sip::ua::{CallKey, Incoming, UaEvent};
use callflow_store::{CallInstructions, CallStatus, Direction, NewCall};
use tokio::sync::mpsc;

use super::{LegSetup, Telephony};
use crate::clock::now_ms;
use crate::leg::{CallLeg, Origin};
use crate::live::LegInput;

impl Telephony {
    /// Admits or refuses the inbound call `inc`; its leg's channel is already routed.
    pub(super) async fn admit(
        self,
        inc: Incoming,
        to_leg: mpsc::UnboundedSender<LegInput>,
        mut inbox: mpsc::UnboundedReceiver<LegInput>,
    ) {
        let key = inc.call;
        let refuse = |code: u16, why: &'static str| {
            let me = self.clone();
            async move {
                tracing::info!(%key, code, why, "inbound call refused");
                let _ = me.inner.sip.reject(key, code).await;
            }
        };
        let Some(trunk) = self.inner.trunks.by_source(inc.source.ip()).cloned() else {
            refuse(403, "unknown source").await;
            return self.close_refused(key, &mut inbox).await;
        };
        let to = inc.to_user.as_deref().map(|u| trunk.inbound.apply(u));
        let from = inc.from_user.as_deref().map(|u| trunk.inbound.apply(u));
        let number = match &to {
            Some(to) => self.store().number_owner(to).await,
            None => Ok(None),
        };
        let number = match number {
            Ok(Some(n)) => n,
            Ok(None) => {
                refuse(404, "unknown number").await;
                return self.close_refused(key, &mut inbox).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "number lookup failed");
                refuse(500, "store error").await;
                return self.close_refused(key, &mut inbox).await;
            }
        };
        if inc.offer.is_err() {
            refuse(488, "no usable SDP offer").await;
            return self.close_refused(key, &mut inbox).await;
        }
        let (reservation, local) = match self.reserve_media() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "no media for an inbound call");
                refuse(503, "no media port").await;
                return self.close_refused(key, &mut inbox).await;
            }
        };
        if !self.take_channel(&trunk) {
            refuse(503, "trunk channels full").await;
            return self.close_refused(key, &mut inbox).await;
        }
        let created = async {
            let plugins = crate::plugins::pin_for_call(
                self.store(),
                &number.account_sid,
                Some(&number.sid),
                None,
            )
            .await?;
            let new = NewCall {
                direction: Direction::Inbound,
                parent_call_sid: None,
                to: number.phone_number.clone(),
                from: from.unwrap_or_else(|| "anonymous".into()),
                phone_number_sid: Some(number.sid.clone()),
                status: CallStatus::Ringing,
                // the number's voice settings, with Twilio's defaults for the rest
                instructions: CallInstructions {
                    url: number.voice_url.clone(),
                    method: number.voice_method,
                    fallback_url: number.voice_fallback_url.clone(),
                    fallback_method: number.voice_fallback_method,
                    status_callback: number.status_callback.clone(),
                    status_callback_method: number.status_callback_method,
                    ..CallInstructions::default()
                },
                plugins,
                node: Some(self.inner.engine.node.to_string()),
            };
            // created ringing: its first event goes to a call-events plugin with it
            let store = self.store();
            if new.plugins.get(World::CallEvents.as_str()).is_some() {
                store
                    .create_call_with(&number.account_sid, &new, now_ms(), |c| {
                        crate::events::call_event(c, c.date_created)
                            .into_iter()
                            .collect()
                    })
                    .await
            } else {
                store.create_call(&number.account_sid, &new, now_ms()).await
            }
        }
        .await;
        let call = match created {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "could not record an inbound call");
                self.release_channel(Some(&trunk.name));
                refuse(500, "store error").await;
                return self.close_refused(key, &mut inbox).await;
            }
        };
        tracing::info!(call = %call.sid, account = %call.account_sid, %key, "inbound call");
        if crate::events::has_plugin(&call) {
            self.inner.engine.wake_outbox();
        }
        self.inner.engine.live.register(&call.sid, to_leg.clone());
        let origin = Origin::Inbound {
            answer_with: local,
            flow_answers: self.inner.media.flow_answers,
        };
        let setup = LegSetup {
            key,
            trunk: Some(trunk.name.clone()),
            reservation,
            near: None,
            flow: None,
            inbox,
            to_leg,
        };
        self.drive(CallLeg::new(call, origin), setup).await;
    }

    /// Forgets a refused inbound call's route once the SIP stack has reported it ended (its
    /// `Ended` follows the refusal), so no event is left behind in `early`.
    async fn close_refused(&self, key: CallKey, inbox: &mut mpsc::UnboundedReceiver<LegInput>) {
        let ended = async {
            while let Some(input) = inbox.recv().await {
                if matches!(input, LegInput::Sip(UaEvent::Ended { .. })) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), ended).await;
        self.unregister_route(key);
    }
}
