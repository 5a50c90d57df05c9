//! `hostile`: clients that cost a server without doing anything useful. Some hold one WebSocket
//! message or API request body unfinished (`partial-message`, `trickle`, `partial-body`); others
//! occupy many channels while the channel list is queried (`many-channels`). The report says
//! what they cost the server and whether, how and when it answered them.
//!
//! One process runs it all: the counts involved are a few thousand connections.

mod channels;
mod report;
mod unfinished;
mod wire;

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::{spawn_local, JoinHandle, JoinSet};

use crate::pacing::Pacer;
use crate::plan::{HostilePlan, HostileWork};
use crate::report::Report;
use crate::run::RunError;

pub use channels::{DRAIN_WAIT, MIN_QUIET, QUIET_MARGIN};
pub use report::HostileReport;
pub use unfinished::AFTER_CLOSE_WAIT;

const PRINT_INTERVAL: Duration = Duration::from_secs(1);

pub async fn run_hostile(plan: HostilePlan) -> Result<Report, RunError> {
    match plan.work {
        HostileWork::Unfinished(work) => unfinished::run(plan.common, plan.rate, work).await,
        HostileWork::ManyChannels(work) => channels::run(plan.common, plan.rate, work).await,
    }
}

/// Counts the attempts of a ramp that have got where they were going, or failed on the way.
struct Settling {
    total: u64,
    settled: Cell<u64>,
    all_settled: Notify,
}

impl Settling {
    fn new(total: u64) -> Self {
        Settling {
            total,
            settled: Cell::new(0),
            all_settled: Notify::new(),
        }
    }

    fn settle(&self) {
        self.settled.set(self.settled.get() + 1);
        if self.settled.get() == self.total {
            self.all_settled.notify_one();
        }
    }
}

/// Starts `make(index, permit)` for indices `0..settling.total` at `rate` per second, each
/// holding one of `in_flight` permits until it lets go, then waits until every one has settled.
async fn ramp<F, Attempt>(
    settling: &Settling,
    rate: f64,
    in_flight: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
    mut make: F,
) where
    F: FnMut(u64, OwnedSemaphorePermit) -> Attempt,
    Attempt: Future<Output = ()> + 'static,
{
    let mut pacer = Pacer::new(rate);
    let mut next = 0;
    while next < settling.total {
        for _ in 0..pacer.next_batch().await {
            if next == settling.total {
                break;
            }
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            tasks.spawn_local(make(next, permit));
            next += 1;
        }
    }
    if settling.total > 0 {
        settling.all_settled.notified().await;
    }
}

/// Prints a line on stderr every second while it lives, unless `--quiet`.
struct ProgressLine(Option<JoinHandle<()>>);

impl ProgressLine {
    fn start(show: bool, line: impl Fn() -> String + 'static) -> Self {
        let started = Instant::now();
        ProgressLine(show.then(|| {
            spawn_local(async move {
                let mut ticker =
                    tokio::time::interval_at((started + PRINT_INTERVAL).into(), PRINT_INTERVAL);
                loop {
                    ticker.tick().await;
                    eprintln!("[{:>4}s] {}", started.elapsed().as_secs(), line());
                }
            })
        }))
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}
