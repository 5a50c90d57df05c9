//! How the coordinator and its workers talk. The messages are the same whether a worker is a
//! task in the coordinator's own process (`--workers 1`) or a child process, where they travel
//! as JSON lines over the child's stdin and stdout.

use std::net::IpAddr;
use std::ops::AddAssign;
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::task::spawn_local;

use crate::pusher::TargetSettings;
use crate::tally::WorkerTally;

/// One worker's share of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub index: u32,
    pub target: TargetSettings,
    pub source_ips: Vec<IpAddr>,
    pub step_timeout_ms: u64,
    pub max_in_flight: usize,
    /// The worker gives up after this long, whatever the coordinator says.
    pub lifetime_ms: u64,
    pub task: WorkerTask,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WorkerTask {
    /// Open connections `first..first + count` (global numbering) at `rate` per second.
    Connect { first: u64, count: u64, rate: f64 },
    /// Open and subscribe connections `first..first + count`; connection `i` joins channel
    /// `i % channels.len()` and counts the events named `event`.
    Fanout {
        first: u64,
        count: u64,
        rate: f64,
        channels: Vec<String>,
        event: String,
    },
    /// Start cycles at `rate` per second for `duration_ms`, at most `concurrency` at once.
    /// Cycle `k` is connection `k * stride + offset` in the global numbering.
    Churn {
        stride: u64,
        offset: u64,
        concurrency: u64,
        rate: f64,
        duration_ms: u64,
        channels: Vec<String>,
    },
}

/// What a fanout publisher sent on one channel.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChannelPublished {
    /// Sequence numbers 1..=published were attempted.
    pub published: u64,
    /// Those whose publish request failed.
    pub failed: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToWorker {
    /// Close everything and report; fanout workers first count what `published` says should
    /// have arrived.
    Finish {
        published: Option<Vec<ChannelPublished>>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromWorker {
    Progress(Progress),
    /// Every connection attempt has succeeded or failed.
    Ready {
        subscribed_per_channel: Vec<u64>,
    },
    /// Boxed: the tally is large and sent once, progress is small and sent often.
    Done(Box<WorkerTally>),
    Failed(String),
}

/// Running counters, sent every few hundred milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Progress {
    pub attempted: u64,
    pub open: u64,
    pub failed: u64,
    pub dropped: u64,
    pub deliveries: u64,
    pub cycles_succeeded: u64,
    pub cycles_failed: u64,
    pub throttled: u64,
}

impl AddAssign for Progress {
    fn add_assign(&mut self, other: Progress) {
        self.attempted += other.attempted;
        self.open += other.open;
        self.failed += other.failed;
        self.dropped += other.dropped;
        self.deliveries += other.deliveries;
        self.cycles_succeeded += other.cycles_succeeded;
        self.cycles_failed += other.cycles_failed;
        self.throttled += other.throttled;
    }
}

/// The worker's end.
pub struct WorkerLink {
    pub commands: UnboundedReceiver<ToWorker>,
    events: UnboundedSender<FromWorker>,
}

impl WorkerLink {
    pub fn send(&self, event: FromWorker) {
        // Only fails when the coordinator is gone, and then nobody is left to tell.
        let _ = self.events.send(event);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot start worker process: {0}")]
    Spawn(std::io::Error),
    #[error("worker process has no {0} pipe")]
    MissingPipe(&'static str),
    #[error("cannot send the worker its task: {0}")]
    SendSpec(std::io::Error),
    #[error("cannot read the task from stdin: {0}")]
    ReadSpec(std::io::Error),
    #[error("stdin ended before the task arrived")]
    NoSpec,
    #[error("unreadable task: {0}")]
    BadSpec(serde_json::Error),
}

/// The coordinator's end: every worker's events, tagged with its index.
pub struct WorkerPool {
    commands: Vec<UnboundedSender<ToWorker>>,
    events: UnboundedReceiver<(usize, FromWorker)>,
    /// Held so that the children are killed if the coordinator ends early.
    _children: Vec<Child>,
}

impl WorkerPool {
    /// One spec runs as a task of this process; more run as child processes of this binary.
    pub async fn start(specs: Vec<WorkerSpec>) -> Result<Self, LinkError> {
        let (event_sender, events) = unbounded_channel();
        let mut commands = Vec::with_capacity(specs.len());
        let mut children = Vec::new();
        if specs.len() == 1 {
            for spec in specs {
                let (command_sender, command_receiver) = unbounded_channel();
                let (worker_events, mut worker_event_receiver) = unbounded_channel();
                commands.push(command_sender);
                spawn_local(crate::worker::run(
                    spec,
                    WorkerLink {
                        commands: command_receiver,
                        events: worker_events,
                    },
                ));
                let event_sender = event_sender.clone();
                spawn_local(async move {
                    while let Some(event) = worker_event_receiver.recv().await {
                        if event_sender.send((0, event)).is_err() {
                            break;
                        }
                    }
                });
            }
        } else {
            for (index, spec) in specs.into_iter().enumerate() {
                let (child, command_sender) =
                    spawn_child(index, spec, event_sender.clone()).await?;
                children.push(child);
                commands.push(command_sender);
            }
        }
        Ok(WorkerPool {
            commands,
            events,
            _children: children,
        })
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn broadcast(&self, command: &ToWorker) {
        for sender in &self.commands {
            // A worker that is gone reports that through its event stream.
            let _ = sender.send(command.clone());
        }
    }

    pub async fn next_event(&mut self) -> Option<(usize, FromWorker)> {
        self.events.recv().await
    }
}

async fn spawn_child(
    index: usize,
    spec: WorkerSpec,
    events: UnboundedSender<(usize, FromWorker)>,
) -> Result<(Child, UnboundedSender<ToWorker>), LinkError> {
    let executable = std::env::current_exe().map_err(LinkError::Spawn)?;
    let mut child = Command::new(executable)
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(LinkError::Spawn)?;
    let mut stdin = child.stdin.take().ok_or(LinkError::MissingPipe("stdin"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or(LinkError::MissingPipe("stdout"))?;
    stdin
        .write_all(json_line(&spec).as_bytes())
        .await
        .map_err(LinkError::SendSpec)?;
    let (command_sender, mut command_receiver) = unbounded_channel::<ToWorker>();
    spawn_local(async move {
        while let Some(command) = command_receiver.recv().await {
            if stdin
                .write_all(json_line(&command).as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
        // Dropping stdin here tells the child that the coordinator is done with it.
    });
    spawn_local(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut finished = false;
        while let Ok(Some(line)) = lines.next_line().await {
            let event = serde_json::from_str::<FromWorker>(&line).unwrap_or_else(|error| {
                FromWorker::Failed(format!("unreadable message from worker {index}: {error}"))
            });
            finished |= matches!(event, FromWorker::Done(_) | FromWorker::Failed(_));
            if events.send((index, event)).is_err() {
                return;
            }
        }
        if !finished {
            let _ = events.send((
                index,
                FromWorker::Failed(format!("worker {index} exited without a result")),
            ));
        }
    });
    Ok((child, command_sender))
}

fn json_line<T: Serialize>(value: &T) -> String {
    // These types hold only strings, numbers and sequences, which always serialize.
    let mut line = serde_json::to_string(value).unwrap_or_default();
    line.push('\n');
    line
}

/// The body of `loadtest worker`: read the task from stdin, run it, answer on stdout.
pub async fn serve_as_child() -> Result<(), LinkError> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let spec_line = lines
        .next_line()
        .await
        .map_err(LinkError::ReadSpec)?
        .ok_or(LinkError::NoSpec)?;
    let spec: WorkerSpec = serde_json::from_str(&spec_line).map_err(LinkError::BadSpec)?;
    let (command_sender, commands) = unbounded_channel();
    let (events, mut event_receiver) = unbounded_channel::<FromWorker>();
    spawn_local(async move {
        // Stdin ending (the coordinator is gone) drops the sender, which the worker sees.
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(command) = serde_json::from_str::<ToWorker>(&line) else {
                break;
            };
            if command_sender.send(command).is_err() {
                break;
            }
        }
    });
    let writer = spawn_local(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(event) = event_receiver.recv().await {
            let written = stdout.write_all(json_line(&event).as_bytes()).await;
            if written.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    crate::worker::run(spec, WorkerLink { commands, events }).await;
    // The worker dropped its sender, so the writer ends once everything is written.
    let _ = writer.await;
    Ok(())
}
