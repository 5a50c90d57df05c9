//! `fanout`: subscribe connections over channels, then count and time every test event that
//! arrives until told to stop.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::task::JoinSet;

use super::{progress_ticker, serve_until_stopped, Ramp, WorkerContext, CLOSE_WAIT};
use crate::histogram::LatencyHistogram;
use crate::link::{ChannelPublished, FromWorker, Progress, ToWorker, WorkerLink};
use crate::payload::{unix_micros, ReceivedStamp};
use crate::pusher::{Opened, ServerEvent};
use crate::sequence::SequenceTracker;
use crate::tally::{AffectedSubscriber, FanoutTally, MAX_AFFECTED_LISTED};

struct Fanout {
    ramp: Ramp,
    channels: Vec<String>,
    event: String,
    subscribed_per_channel: RefCell<Vec<u64>>,
    deliveries: Cell<u64>,
    malformed: Cell<u64>,
    last_delivery_unix_micros: Cell<u64>,
    latency: RefCell<LatencyHistogram>,
}

impl Fanout {
    fn progress(&self) -> Progress {
        Progress {
            deliveries: self.deliveries.get(),
            ..self.ramp.progress()
        }
    }

    /// Counts a test event for a subscriber of `channel`; returns whether `text` was one.
    fn receive(&self, text: &str, channel: &str, tracker: &mut SequenceTracker) -> bool {
        let Some(event) = ServerEvent::parse(text) else {
            return false;
        };
        if event.event != self.event {
            return false;
        }
        let now = unix_micros();
        self.deliveries.set(self.deliveries.get() + 1);
        self.last_delivery_unix_micros.set(now);
        let stamp = if event.channel.as_deref() == Some(channel) {
            event
                .data_string()
                .and_then(|data| serde_json::from_str::<ReceivedStamp>(&data).ok())
        } else {
            None
        };
        match stamp {
            Some(stamp) if stamp.seq > 0 => {
                tracker.record(stamp.seq);
                self.latency
                    .borrow_mut()
                    .record_micros(now.saturating_sub(stamp.sent_us));
            }
            _ => self.malformed.set(self.malformed.get() + 1),
        }
        true
    }
}

struct SubscriberOutcome {
    index: u64,
    channel_index: usize,
    tracker: SequenceTracker,
}

pub async fn run(
    context: Rc<WorkerContext>,
    first: u64,
    count: u64,
    rate: f64,
    channels: Vec<String>,
    event: String,
    link: &mut WorkerLink,
) -> FanoutTally {
    let state = Rc::new(Fanout {
        ramp: Ramp::new(count),
        subscribed_per_channel: RefCell::new(vec![0; channels.len()]),
        channels,
        event,
        deliveries: Cell::new(0),
        malformed: Cell::new(0),
        last_delivery_unix_micros: Cell::new(0),
        latency: RefCell::new(LatencyHistogram::default()),
    });
    let (stop_sender, stop) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut ticker = progress_ticker();
    let published = {
        let starting = state
            .ramp
            .run(&context, first, rate, &mut tasks, |index, permit| {
                subscribe_and_listen(context.clone(), state.clone(), index, permit, stop.clone())
            });
        tokio::pin!(starting);
        let mut all_started = false;
        let mut ready_sent = false;
        loop {
            tokio::select! {
                () = &mut starting, if !all_started => all_started = true,
                () = state.ramp.all_settled.notified(), if !ready_sent => {
                    ready_sent = true;
                    link.send(FromWorker::Progress(state.progress()));
                    let subscribed_per_channel = state.subscribed_per_channel.borrow().clone();
                    link.send(FromWorker::Ready { subscribed_per_channel });
                }
                _ = ticker.tick() => link.send(FromWorker::Progress(state.progress())),
                command = link.commands.recv() => match command {
                    Some(ToWorker::Finish { published }) => break published,
                    None => break None,
                },
            }
        }
    };
    // Fails only when no subscriber is left to tell.
    let _ = stop_sender.send(true);
    let mut outcomes = Vec::new();
    let collecting = async {
        while let Some(joined) = tasks.join_next().await {
            if let Ok(Some(outcome)) = joined {
                outcomes.push(outcome);
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_WAIT + Duration::from_secs(5), collecting).await;
    tasks.abort_all();
    tally(&state, outcomes, published.unwrap_or_default())
}

fn tally(
    state: &Fanout,
    outcomes: Vec<SubscriberOutcome>,
    published: Vec<ChannelPublished>,
) -> FanoutTally {
    let ramp = &state.ramp;
    let mut tally = FanoutTally {
        attempted: ramp.attempted.get(),
        subscribed: state.subscribed_per_channel.borrow().iter().sum(),
        failures: ramp.failures.take(),
        drops: ramp.drops.take(),
        deliveries: state.deliveries.get(),
        malformed: state.malformed.get(),
        latency: state.latency.take(),
        connect_latency: ramp.connect_latency.take(),
        handshake_latency: ramp.handshake_latency.take(),
        last_delivery_unix_micros: state.last_delivery_unix_micros.get(),
        ..FanoutTally::default()
    };
    for outcome in outcomes {
        let tracker = &outcome.tracker;
        let lost = published.get(outcome.channel_index).map_or(0, |channel| {
            tracker.lost(channel.published, &channel.failed)
        });
        tally.lost += lost;
        tally.duplicated += tracker.duplicated;
        tally.out_of_order += tracker.out_of_order;
        tally.subscribers_with_loss += u64::from(lost > 0);
        tally.subscribers_with_duplicates += u64::from(tracker.duplicated > 0);
        tally.subscribers_out_of_order += u64::from(tracker.out_of_order > 0);
        let affected = lost > 0 || tracker.duplicated > 0 || tracker.out_of_order > 0;
        if affected && tally.affected.len() < MAX_AFFECTED_LISTED {
            tally.affected.push(AffectedSubscriber {
                subscriber: outcome.index,
                channel: state
                    .channels
                    .get(outcome.channel_index)
                    .cloned()
                    .unwrap_or_default(),
                lost,
                duplicated: tracker.duplicated,
                out_of_order: tracker.out_of_order,
            });
        }
    }
    tally
}

async fn subscribe_and_listen(
    context: Rc<WorkerContext>,
    state: Rc<Fanout>,
    index: u64,
    permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) -> Option<SubscriberOutcome> {
    let channel_index = (index % state.channels.len() as u64) as usize;
    let channel = state.channels.get(channel_index)?;
    let opened = match context.open(index).await {
        Ok(opened) => opened,
        Err(cause) => {
            state.ramp.failed(&cause, false);
            return None;
        }
    };
    state.ramp.opened(&opened);
    let Opened {
        mut socket,
        activity_timeout,
        ..
    } = opened;
    // Boxed for the reason `WorkerContext::open` is: it is over long before the connection is.
    let subscribed = Box::pin(socket.subscribe(channel, context.step_timeout)).await;
    drop(permit);
    if let Err(cause) = subscribed {
        state.ramp.failed(&cause, true);
        return None;
    }
    if let Some(subscribers) = state
        .subscribed_per_channel
        .borrow_mut()
        .get_mut(channel_index)
    {
        *subscribers += 1;
    }
    state.ramp.settle();
    let mut tracker = SequenceTracker::default();
    let ended = serve_until_stopped(&mut socket, activity_timeout, &mut stop, |text| {
        state.receive(text, channel, &mut tracker)
    })
    .await;
    match ended {
        Ok(()) => {
            state.ramp.closed(None);
            let _ = socket.close(CLOSE_WAIT).await;
        }
        Err(cause) => state.ramp.closed(Some(&cause)),
    }
    Some(SubscriberOutcome {
        index,
        channel_index,
        tracker,
    })
}
