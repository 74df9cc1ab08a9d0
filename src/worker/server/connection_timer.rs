//! The timer hyper uses on one client connection (for the header-read timeout, which it arms
//! afresh before every request head). hyper asks for a new sleep each time; this timer hands
//! out the connection's one tokio timer instead, moved to the new deadline. Moving a registered
//! tokio timer later is an atomic store, where a new timer costs a trip to the runtime's timer
//! wheel and its removal again (and often a wake-up of the runtime's event loop) per request.
//!
//! Uses: nothing else of the crate and hyper, tokio.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::time::Sleep;

type Spare = Arc<Mutex<Option<Pin<Box<Sleep>>>>>;

/// Hands out sleeps that reuse one tokio timer: a sleep takes it, and gives it back when
/// dropped. A second sleep asked for while the first is alive gets a timer of its own.
#[derive(Clone, Default)]
pub(crate) struct ConnectionTimer {
    spare: Spare,
}

impl hyper::rt::Timer for ConnectionTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let deadline = tokio::time::Instant::from_std(deadline);
        let reused = self.spare.lock().unwrap_or_else(|p| p.into_inner()).take();
        let sleep = match reused {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Box::pin(ReusedSleep {
            sleep: Some(sleep),
            spare: self.spare.clone(),
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<ReusedSleep>() {
            Some(mut reused) => {
                if let Some(inner) = reused.sleep.as_mut() {
                    inner
                        .as_mut()
                        .reset(tokio::time::Instant::from_std(new_deadline));
                }
            }
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

struct ReusedSleep {
    /// Always `Some` until dropped.
    sleep: Option<Pin<Box<Sleep>>>,
    spare: Spare,
}

impl Future for ReusedSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.sleep.as_mut() {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl hyper::rt::Sleep for ReusedSleep {}

impl Drop for ReusedSleep {
    fn drop(&mut self) {
        if let Some(sleep) = self.sleep.take() {
            let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
            if spare.is_none() {
                *spare = Some(sleep);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    fn in_ms(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    /// Whether `sleep` is still pending after `ms` milliseconds.
    async fn pending_after(sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, ms: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(ms), sleep)
            .await
            .is_err()
    }

    #[tokio::test]
    async fn sleeps_fire_at_their_own_deadline_whether_reused_earlier_or_later() {
        let timer = ConnectionTimer::default();
        drop(timer.sleep_until(in_ms(60_000)));
        assert!(timer.spare.lock().unwrap().is_some(), "the timer came back");

        // Reused for an earlier deadline than it had.
        let start = Instant::now();
        let sooner = timer.sleep_until(in_ms(50));
        assert!(timer.spare.lock().unwrap().is_none(), "taken again");
        sooner.await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        assert!(waited < Duration::from_secs(30), "{waited:?}");

        // And for a later one, moved while pending.
        let start = Instant::now();
        let mut later = timer.sleep_until(in_ms(1));
        timer.reset(&mut later, in_ms(300));
        assert!(
            pending_after(&mut later, 100).await,
            "not before its new deadline"
        );
        later.await;
        assert!(start.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn two_live_sleeps_do_not_share_a_timer() {
        let timer = ConnectionTimer::default();
        let mut long = timer.sleep_until(in_ms(60_000));
        let short = timer.sleep_until(in_ms(20));
        short.await;
        assert!(
            pending_after(&mut long, 100).await,
            "the long sleep kept its deadline"
        );
    }
}
