//! `connect`: open connections at a rate, hold them idle until told to stop, close them.

use std::rc::Rc;
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::task::JoinSet;

use super::{progress_ticker, serve_until_stopped, Ramp, WorkerContext, CLOSE_WAIT};
use crate::link::{FromWorker, ToWorker, WorkerLink};
use crate::pusher::Opened;
use crate::tally::ConnectTally;

pub async fn run(
    context: Rc<WorkerContext>,
    first: u64,
    count: u64,
    rate: f64,
    link: &mut WorkerLink,
) -> ConnectTally {
    let ramp = Rc::new(Ramp::new(count));
    let (stop_sender, stop) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut ticker = progress_ticker();
    {
        let starting = ramp.run(&context, first, rate, &mut tasks, |index, permit| {
            hold(context.clone(), ramp.clone(), index, permit, stop.clone())
        });
        tokio::pin!(starting);
        let mut all_started = false;
        let mut ready_sent = false;
        loop {
            tokio::select! {
                () = &mut starting, if !all_started => all_started = true,
                () = ramp.all_settled.notified(), if !ready_sent => {
                    ready_sent = true;
                    link.send(FromWorker::Progress(ramp.progress()));
                    link.send(FromWorker::Ready { subscribed_per_channel: Vec::new() });
                }
                _ = ticker.tick() => link.send(FromWorker::Progress(ramp.progress())),
                command = link.commands.recv() => match command {
                    Some(ToWorker::Finish { .. }) | None => break,
                },
            }
        }
    }
    let held = ramp.open.get();
    // Fails only when no connection is left to tell.
    let _ = stop_sender.send(true);
    let closing = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(CLOSE_WAIT + Duration::from_secs(1), closing).await;
    tasks.abort_all();
    ConnectTally {
        attempted: ramp.attempted.get(),
        established: ramp.established.get(),
        peak_open: ramp.peak_open.get(),
        held,
        failures: ramp.failures.take(),
        drops: ramp.drops.take(),
        ramp_micros: ramp
            .finished_after
            .get()
            .unwrap_or_else(|| ramp.started.elapsed())
            .as_micros()
            .try_into()
            .unwrap_or(u64::MAX),
        connect_latency: ramp.connect_latency.take(),
        handshake_latency: ramp.handshake_latency.take(),
    }
}

async fn hold(
    context: Rc<WorkerContext>,
    ramp: Rc<Ramp>,
    index: u64,
    permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    let opened = context.open(index).await;
    drop(permit);
    let opened = match opened {
        Ok(opened) => opened,
        Err(cause) => return ramp.failed(&cause, false),
    };
    ramp.opened(&opened);
    ramp.settle();
    let Opened {
        mut socket,
        activity_timeout,
        ..
    } = opened;
    match serve_until_stopped(&mut socket, activity_timeout, &mut stop, |_| false).await {
        Ok(()) => {
            ramp.closed(None);
            let _ = socket.close(CLOSE_WAIT).await;
        }
        Err(cause) => ramp.closed(Some(&cause)),
    }
}
