//! The one start-up path of every binary: config → tracing → admin endpoints → etcd with
//! backoff → run → drain, and the exit code that tells a script what happened (0 done, 1 a
//! failure, 2 a bad setting).

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use etcd_client::Client;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admin::Readiness;
use crate::backoff::Backoff;
use crate::config::{EtcdArgs, QueueProcessArgs, RuntimeArgs};
use crate::etcd::{ConnectError, EtcdError};
use crate::keys::Keys;
use crate::queue::PartitionsError;

/// A setting the user gave cannot work (a missing file, a taken port, a partition count that
/// disagrees with the queue). The process stops with exit code 2 and this one-line message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadSetting(pub String);

/// etcd never answered before the start-up deadline or a shutdown request.
#[derive(Debug, thiserror::Error)]
#[error("etcd at {endpoints} did not answer within {waited:?} (ETCD_STARTUP_TIMEOUT); last error: {last}")]
pub struct EtcdUnreachable {
    /// The endpoints tried.
    pub endpoints: String,
    /// How long we waited.
    pub waited: Duration,
    /// The last connection error.
    pub last: String,
}

/// The exit code for a failed run: 2 when a setting is at fault anywhere in the error's
/// chain, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> ExitCode {
    let setting = |e: &(dyn std::error::Error + 'static)| {
        e.is::<BadSetting>()
            || matches!(e.downcast_ref(), Some(ConnectError::Setting(_)))
            || matches!(e.downcast_ref(), Some(StartError::Setting(_)))
    };
    if err.chain().any(setting) {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

/// A binary's whole `main`: `telemetry::main!(Config, run)` parses `Config` (a clap parser with
/// `validate` and `runtime` methods) and hands it to [`main`] with `run`, on a tokio runtime.
/// One line in each binary, so that the start-up path is written here once.
#[macro_export]
macro_rules! main {
    ($config:ty, $run:expr) => {
        #[::tokio::main]
        async fn main() -> ::std::process::ExitCode {
            $crate::service::main(
                <$config as ::clap::Parser>::parse(),
                <$config>::validate,
                <$config>::runtime,
                $run,
            )
            .await
        }
    };
}

/// What every `main` does around its own work: validate the settings (exit 2 with a one-line
/// error), set up tracing, run, and turn the outcome into an exit code.
pub async fn main<C, F, Fut>(
    mut cfg: C,
    validate: fn(&mut C) -> Result<(), String>,
    runtime: fn(&C) -> &RuntimeArgs,
    run: F,
) -> ExitCode
where
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = anyhow::Result<ExitCode>>,
{
    if let Err(e) = validate(&mut cfg) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    crate::logging::init(&runtime(&cfg).log_format);
    match run(cfg).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit_code(&e)
        }
    }
}

/// The admin endpoints of a running process, served until [`AdminServer::stop`].
#[derive(Debug)]
pub struct AdminServer {
    /// What `/ready` reports.
    pub readiness: Readiness,
    /// Where they are served (none: not served).
    pub addr: Option<std::net::SocketAddr>,
    stop: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl AdminServer {
    /// Starts serving on `listener` (none: readiness is still kept, for the gateway's own port).
    pub fn start(listener: Option<TcpListener>) -> Self {
        let readiness = Readiness::new();
        let stop = CancellationToken::new();
        crate::admin::metrics_handle();
        let addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let task =
            listener.map(|l| tokio::spawn(crate::admin::serve(l, readiness.clone(), stop.clone())));
        Self {
            readiness,
            addr,
            stop,
            task,
        }
    }

    /// Stops serving. A finite run calls this when its work is done, so the process exits
    /// at once instead of waiting for a signal that never comes.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How long start-up keeps trying etcd: growing pauses between tries, until
/// `ETCD_STARTUP_TIMEOUT` after the first (0: no deadline) or a signal. Connecting and agreeing
/// on the queue both wait this way.
struct Patience<'a> {
    started: Instant,
    deadline: Option<Instant>,
    backoff: Backoff,
    shutdown: &'a CancellationToken,
}

impl<'a> Patience<'a> {
    fn new(runtime: &RuntimeArgs, shutdown: &'a CancellationToken) -> Self {
        let started = Instant::now();
        Self {
            started,
            deadline: (!runtime.etcd_startup_timeout.is_zero())
                .then(|| started + runtime.etcd_startup_timeout),
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
            shutdown,
        }
    }

    /// The pause before the next try; `None` when the try after it would come past the deadline.
    fn next_pause(&mut self) -> Option<Duration> {
        let pause = self.backoff.next_delay();
        let late = self.deadline.is_some_and(|d| Instant::now() + pause >= d);
        (!late).then_some(pause)
    }

    /// Sleeps `pause`; false when a signal came first.
    async fn sleep(&self, pause: Duration) -> bool {
        crate::shutdown::or_cancel(self.shutdown, tokio::time::sleep(pause))
            .await
            .is_some()
    }
}

/// Connects to etcd, retrying with backoff until it answers, `shutdown` fires, or the
/// runtime's start-up deadline passes. Meanwhile `readiness` says why the process is not
/// ready; once connected, a background task keeps the "etcd" condition current until `stop`.
pub async fn connect_etcd(
    args: &EtcdArgs,
    runtime: &RuntimeArgs,
    readiness: &Readiness,
    shutdown: &CancellationToken,
    stop: CancellationToken,
) -> Result<Client, StartError> {
    let mut patience = Patience::new(runtime, shutdown);
    let endpoints = args.endpoints.join(",");
    loop {
        let last = match crate::etcd::connect(args).await {
            Err(ConnectError::Setting(refused)) => return Err(refused.into()),
            Ok(client) => {
                readiness.clear("etcd");
                tokio::spawn(crate::etcd::track_health(
                    client.clone(),
                    readiness.clone(),
                    stop,
                ));
                return Ok(client);
            }
            Err(ConnectError::Etcd(e)) => e.to_string(),
        };
        readiness.block(
            "etcd",
            format!("etcd at {endpoints} is not reachable: {last}"),
        );
        let started = patience.started;
        let give_up = |last| EtcdUnreachable {
            endpoints: endpoints.clone(),
            waited: started.elapsed(),
            last,
        };
        let Some(pause) = patience.next_pause() else {
            return Err(give_up(last).into());
        };
        tracing::warn!(%endpoints, error = %last, retry_in = ?pause, "etcd is not reachable yet");
        if !patience.sleep(pause).await {
            return Err(give_up(last).into());
        }
    }
}

/// Why a queue process (streamer or collector) could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting cannot work (exit 2).
    #[error(transparent)]
    Setting(#[from] BadSetting),
    /// etcd never answered.
    #[error(transparent)]
    NoEtcd(#[from] EtcdUnreachable),
    /// etcd failed while reading the queue's shape.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

impl From<PartitionsError> for StartError {
    fn from(e: PartitionsError) -> Self {
        match e {
            PartitionsError::Mismatch(s) => Self::Setting(s),
            PartitionsError::Etcd(e) => Self::Etcd(e),
        }
    }
}

/// The start-up was stopped by a signal before it could finish `what`.
fn stopped_while(what: &'static str) -> EtcdError {
    EtcdError::new(
        what,
        etcd_client::Error::InvalidArgs("stopped by a signal during start-up".into()),
    )
}

/// A queue process that has started: its admin endpoints, and a connected etcd client.
pub struct Started {
    /// The admin endpoints, serving since the first step.
    pub admin: AdminServer,
    /// Connected; the "etcd" readiness condition is kept current in the background.
    pub client: Client,
    health: CancellationToken,
}

impl Started {
    /// Stops the background etcd probe and the admin endpoints.
    pub async fn stop(self) {
        self.health.cancel();
        self.admin.stop().await;
    }
}

/// Steps 1 to 3 of a streamer or collector: serve the admin endpoints (at `admin_listen`, or
/// `default_admin`, or a free port when that is taken), connect to etcd, and agree on the
/// queue's partition count (`queue` is set to the queue's own).
pub async fn start_queue_process(
    args: &mut QueueProcessArgs,
    default_admin: &str,
    shutdown: &CancellationToken,
) -> Result<Started, StartError> {
    let QueueProcessArgs {
        etcd,
        queue,
        runtime,
        admin_listen,
    } = args;
    let admin =
        AdminServer::start(crate::admin::bind(admin_listen.as_deref(), default_admin).await?);
    let health = CancellationToken::new();
    // Created before connecting: one deadline covers both steps.
    let mut patience = Patience::new(runtime, shutdown);
    let client = connect_etcd(etcd, runtime, &admin.readiness, shutdown, health.clone()).await?;
    let keys = Keys::new(&etcd.prefix);
    loop {
        // A new queue in a full etcd waits for room; a signal meanwhile stops the start-up.
        let agreed = tokio::select! {
            agreed = crate::queue::agree(&client, &keys, queue) => agreed,
            _ = shutdown.cancelled() => return Err(stopped_while("agreeing on the queue").into()),
        };
        let e = match agreed {
            Ok(_) => break,
            Err(PartitionsError::Etcd(e)) if e.is_transient() => e,
            Err(e) => return Err(e.into()),
        };
        // A member that has just restarted answers the status probe before it has a leader:
        // the first read can still fail, and that is no reason to exit.
        let Some(pause) = patience.next_pause() else {
            return Err(e.into());
        };
        admin
            .readiness
            .block("queue", format!("cannot read the queue's shape yet: {e}"));
        tracing::warn!(error = %e, retry_in = ?pause, "cannot read the queue's shape yet");
        if !patience.sleep(pause).await {
            return Err(stopped_while("agreeing on the queue").into());
        }
    }
    admin.readiness.clear("queue");
    Ok(Started {
        admin,
        client,
        health,
    })
}
