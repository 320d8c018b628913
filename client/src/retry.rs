//! Calling again what failed because the server could not be reached.
//!
//! `UNAVAILABLE` means the call did not get an answer: the connection broke,
//! or the server is restarting or changing leaders. A call that changes
//! nothing, or changes nothing twice (a deploy of the same definition, a
//! start with a `request_id`), is made again after a pause that doubles
//! each time, with jitter so that many clients do not come back at once.
//! Any other status is the server's answer and is returned as it is.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// How often and how patiently a call that found the server unavailable is
/// made again (see [`crate::ConnectOptions::retries`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Retry {
    /// Calls after the first one.
    pub(crate) retries: u32,
    /// The pause before the first retry; each next one doubles it.
    pub(crate) first_pause: Duration,
    /// The longest pause.
    pub(crate) longest_pause: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            retries: 4,
            first_pause: Duration::from_millis(100),
            longest_pause: Duration::from_secs(2),
        }
    }
}

impl Retry {
    /// `call()`'s answer; made again after a pause while it fails with
    /// `UNAVAILABLE` and retries are left.
    pub(crate) async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, tonic::Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut attempt = 0;
        loop {
            match call().await {
                Err(status)
                    if status.code() == tonic::Code::Unavailable && attempt < self.retries =>
                {
                    tokio::time::sleep(self.pause(attempt)).await;
                    attempt += 1;
                }
                answer => return answer.map(tonic::Response::into_inner),
            }
        }
    }

    /// The pause before retry `attempt` (0: the first): between half and
    /// all of `first_pause * 2^attempt`, at most `longest_pause`.
    fn pause(&self, attempt: u32) -> Duration {
        let full = self
            .first_pause
            .saturating_mul(1 << attempt.min(16))
            .min(self.longest_pause);
        let half = full / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_nanos(random() % nanos)
    }
}

/// A random number from the standard library's per-process hash keys.
fn random() -> u64 {
    RandomState::new().build_hasher().finish()
}

/// `self.retry.call(..)` for a unary call on `self.inner` with a request
/// that is cloned for each attempt.
macro_rules! retried {
    ($self:ident . $method:ident ( $request:expr )) => {{
        let request = $request;
        $self
            .retry
            .call(|| {
                let mut inner = $self.inner.clone();
                let request = request.clone();
                async move { inner.$method(request).await }
            })
            .await
    }};
}

pub(crate) use retried;

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn quick(retries: u32) -> Retry {
        Retry {
            retries,
            first_pause: Duration::from_millis(1),
            longest_pause: Duration::from_millis(4),
        }
    }

    #[tokio::test]
    async fn an_unavailable_server_is_asked_again_until_it_answers() {
        let calls = AtomicU32::new(0);
        let answer = quick(4)
            .call(|| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        Err(tonic::Status::unavailable("connection refused"))
                    } else {
                        Ok(tonic::Response::new(n))
                    }
                }
            })
            .await;
        assert_eq!(answer.expect("the third call answers"), 2);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn retries_stop_at_the_limit_and_other_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let answer: Result<(), _> = quick(2)
            .call(|| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(tonic::Status::unavailable("down")) }
            })
            .await;
        assert_eq!(
            answer.expect_err("still down").code(),
            tonic::Code::Unavailable
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "the first call and 2 retries"
        );

        let calls = AtomicU32::new(0);
        let answer: Result<(), _> = quick(5)
            .call(|| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(tonic::Status::not_found("run r does not exist")) }
            })
            .await;
        assert_eq!(answer.expect_err("not found").code(), tonic::Code::NotFound);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn pauses_double_with_jitter_up_to_the_longest() {
        let retry = Retry::default();
        for attempt in 0..8 {
            let full = (Duration::from_millis(100) * (1 << attempt)).min(Duration::from_secs(2));
            for _ in 0..20 {
                let pause = retry.pause(attempt);
                assert!(
                    pause >= full / 2 && pause <= full,
                    "{pause:?} for attempt {attempt}"
                );
            }
        }
    }
}
