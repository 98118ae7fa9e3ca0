//! Plugin time shared between accounts: one account's looping or waiting plugins never keep
//! another's invocations from running, and a full queue is refused at once.

use std::sync::Arc;
use std::time::Duration;

use callflow_runtime::flow::FlowEvent;
use callflow_runtime::{FairConfig, InvokeError, Limits, Plugin, Runtime, RuntimeConfig};

use super::{ABUSE, ctx};

fn account(n: u8) -> String {
    format!("AC{:032x}", n)
}

/// `plugin` run for `account` with `{"abuse": abuse}` and `deadline_ms`; the invocation is
/// submitted when the future is first polled.
fn invoke(
    rt: &Arc<Runtime>,
    plugin: &Arc<Plugin>,
    account: &str,
    abuse: &str,
    deadline_ms: u64,
) -> impl std::future::Future<Output = Result<(), InvokeError>> + Send + use<> {
    let mut c = ctx(&format!(r#"{{"abuse":"{abuse}"}}"#));
    c.account_sid = account.into();
    let limits = Limits {
        deadline: Duration::from_millis(deadline_ms),
        ..Limits::default()
    };
    let (rt, plugin) = (Arc::clone(rt), Arc::clone(plugin));
    async move {
        rt.call_flow(plugin, c, Vec::new(), FlowEvent::Start, limits)
            .await
            .map(|_| ())
    }
}

/// A runtime with the abuse guest and `hello` compiled, so invocations queue the moment they
/// are made.
fn runtime(config: RuntimeConfig) -> (Arc<Runtime>, Arc<Plugin>, Arc<Plugin>) {
    let rt = Arc::new(Runtime::new(config).unwrap());
    let abuse = rt.load(&std::fs::read(ABUSE).unwrap()).unwrap();
    let hello = rt.load(callflow_runtime::builtin::HELLO).unwrap();
    assert!(!abuse.builtin && hello.builtin);
    (rt, abuse, hello)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusers_queue_behind_themselves_while_others_go_on() {
    let (rt, abuse, hello) = runtime(RuntimeConfig::default());
    // two accounts each start 16 looping invocations of 100 ms: 1.6 s of work apiece, since an
    // account's uploads run one or a few at a time
    let mut abusers = Vec::new();
    for (n, how) in [(1u8, "loop"), (2, "clock-spin")] {
        for _ in 0..16 {
            let (rt, abuse) = (Arc::clone(&rt), Arc::clone(&abuse));
            abusers.push(tokio::spawn(async move {
                invoke(&rt, &abuse, &account(n), how, 100).await
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // a third account's uploaded plugin and built-in plugin answer while most of that backlog
    // still waits: each upload of its waits for one abuser's run at most (its turn comes
    // before theirs, whose debt is larger), the built-in for none (a thread is kept for them)
    for _ in 0..5 {
        invoke(&rt, &abuse, &account(3), "none", 2_000)
            .await
            .unwrap();
        invoke(&rt, &hello, &account(3), "none", 2_000)
            .await
            .unwrap();
    }
    let unfinished = abusers.iter().filter(|h| !h.is_finished()).count();
    assert!(
        unfinished >= 16,
        "the good account waited for the abusers: only {unfinished} of 32 left"
    );
    for h in abusers {
        assert_eq!(
            h.await.unwrap(),
            Err(InvokeError::Timeout { limit_ms: 100 })
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_account_queue_is_refused_at_once_and_others_still_run() {
    let (rt, abuse, _) = runtime(RuntimeConfig {
        scheduling: FairConfig {
            account_queued: 4,
            ..FairConfig::for_threads(3)
        },
        ..RuntimeConfig::default()
    });
    // the first loop is given time to start on the account's one upload thread; the four
    // after it are queued without yielding in between (an invocation is submitted when its
    // future is first polled), so nothing runs or finishes between them and the sixth
    let mut first = Box::pin(invoke(&rt, &abuse, &account(1), "loop", 1_500));
    submit(first.as_mut()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut queued: Vec<_> = (0..4)
        .map(|_| Box::pin(invoke(&rt, &abuse, &account(1), "loop", 50)))
        .collect();
    for q in &mut queued {
        submit(q.as_mut()).await;
    }
    // one runs and four wait: a sixth is refused
    let refused = invoke(&rt, &abuse, &account(1), "loop", 50)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, InvokeError::Overloaded(m) if m.contains("this account")),
        "{refused:?}"
    );
    invoke(&rt, &abuse, &account(2), "none", 2_000)
        .await
        .unwrap();
    assert_eq!(first.await, Err(InvokeError::Timeout { limit_ms: 1_500 }));
    for q in queued {
        assert_eq!(q.await, Err(InvokeError::Timeout { limit_ms: 50 }));
    }
}

/// Polls `f` once, which submits an invocation, and leaves it pending.
async fn submit<F: std::future::Future>(mut f: std::pin::Pin<&mut F>) {
    std::future::poll_fn(|cx| {
        assert!(f.as_mut().poll(cx).is_pending(), "answered at once");
        std::task::Poll::Ready(())
    })
    .await
}
