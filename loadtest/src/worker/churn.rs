//! `churn`: connect, subscribe and disconnect, over and over, at a rate.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::{progress_ticker, WorkerContext, CLOSE_WAIT};
use crate::cause::FailureCause;
use crate::histogram::LatencyHistogram;
use crate::link::{FromWorker, Progress, ToWorker, WorkerLink};
use crate::pacing::Pacer;
use crate::tally::{count_key, CauseCounts, ChurnTally};

pub struct Schedule {
    pub stride: u64,
    pub offset: u64,
    pub concurrency: u64,
    pub rate: f64,
    pub duration: Duration,
}

#[derive(Default)]
struct Churn {
    attempted: Cell<u64>,
    succeeded: Cell<u64>,
    failed: Cell<u64>,
    throttled: Cell<u64>,
    failures: RefCell<CauseCounts>,
    cycle_latency: RefCell<LatencyHistogram>,
    connect_latency: RefCell<LatencyHistogram>,
    handshake_latency: RefCell<LatencyHistogram>,
}

impl Churn {
    fn progress(&self, open: u64) -> Progress {
        Progress {
            attempted: self.attempted.get(),
            open,
            cycles_succeeded: self.succeeded.get(),
            cycles_failed: self.failed.get(),
            throttled: self.throttled.get(),
            ..Progress::default()
        }
    }

    /// Failures are keyed by the step that failed: `connect:refused`, `subscribe:timeout`,
    /// `close:eof`, ...
    fn failed(&self, step: &str, cause: &FailureCause) {
        self.failed.set(self.failed.get() + 1);
        count_key(
            &mut self.failures.borrow_mut(),
            format!("{step}:{}", cause.key()),
        );
    }
}

pub async fn run(
    context: Rc<WorkerContext>,
    schedule: Schedule,
    channels: Vec<String>,
    link: &mut WorkerLink,
) -> ChurnTally {
    let state = Rc::new(Churn::default());
    let channels: Rc<[String]> = channels.into();
    let mut tasks = JoinSet::new();
    let mut ticker = progress_ticker();
    let mut pacer = Pacer::new(schedule.rate);
    let end = Instant::now() + schedule.duration;
    let mut cycle: u64 = 0;
    let mut coordinator_gone = false;
    loop {
        tokio::select! {
            batch = pacer.next_batch() => {
                if Instant::now() >= end {
                    break;
                }
                for _ in 0..batch {
                    while tasks.try_join_next().is_some() {}
                    if tasks.len() as u64 >= schedule.concurrency {
                        state.throttled.set(state.throttled.get() + 1);
                        continue;
                    }
                    let index = cycle * schedule.stride + schedule.offset;
                    let channel = channels[(cycle % channels.len() as u64) as usize].clone();
                    state.attempted.set(state.attempted.get() + 1);
                    tasks.spawn_local(run_cycle(context.clone(), state.clone(), index, channel));
                    cycle += 1;
                }
            }
            () = tokio::time::sleep_until(end.into()) => break,
            _ = ticker.tick() => link.send(FromWorker::Progress(state.progress(tasks.len() as u64))),
            command = link.commands.recv() => match command {
                Some(ToWorker::Finish { .. }) => break,
                None => {
                    coordinator_gone = true;
                    break;
                }
            },
        }
    }
    if !coordinator_gone {
        // Cycles in progress finish within their own timeouts; keep reporting meanwhile.
        let longest_cycle = context.step_timeout * 3 + CLOSE_WAIT;
        let deadline = tokio::time::Instant::now() + longest_cycle;
        loop {
            tokio::select! {
                joined = tasks.join_next() => if joined.is_none() { break },
                _ = ticker.tick() => link.send(FromWorker::Progress(state.progress(tasks.len() as u64))),
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
    tasks.abort_all();
    link.send(FromWorker::Progress(state.progress(0)));
    ChurnTally {
        attempted: state.attempted.get(),
        succeeded: state.succeeded.get(),
        throttled: state.throttled.get(),
        failures: state.failures.take(),
        cycle_latency: state.cycle_latency.take(),
        connect_latency: state.connect_latency.take(),
        handshake_latency: state.handshake_latency.take(),
    }
}

async fn run_cycle(context: Rc<WorkerContext>, state: Rc<Churn>, index: u64, channel: String) {
    let started = Instant::now();
    let opened = match context.open(index).await {
        Ok(opened) => opened,
        Err(cause) => return state.failed("connect", &cause),
    };
    state
        .connect_latency
        .borrow_mut()
        .record(opened.connect_time);
    state
        .handshake_latency
        .borrow_mut()
        .record(opened.handshake_time);
    let mut socket = opened.socket;
    if let Err(cause) = socket.subscribe(&channel, context.step_timeout).await {
        return state.failed("subscribe", &cause);
    }
    if let Err(cause) = socket.close(CLOSE_WAIT).await {
        return state.failed("close", &cause);
    }
    state.succeeded.set(state.succeeded.get() + 1);
    state.cycle_latency.borrow_mut().record(started.elapsed());
}
