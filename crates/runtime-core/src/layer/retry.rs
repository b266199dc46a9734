//! [`RetryLayer`]: runs again what failed and may work later.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{Call, Layer, Next};
use crate::Result;

/// Runs an operation again when it failed with a [retryable](crate::Error::is_retryable) error
/// (the backend was unreachable or busy, or asked to slow down), waiting as the backend asked
/// ([`Error::retry_after`](crate::Error::retry_after)) or with a jittered exponential backoff.
///
/// Never runs again what must not run twice ([`Call::repeatable`]): a spawn (a command
/// that may have started), a fork, a write of a stream. Errors that are not retryable — a
/// command's timeout, a read-only file system, a missing file — come back at once.
///
/// ```
/// use std::time::Duration;
/// use sandkit_core::layer::RetryLayer;
///
/// let retry = RetryLayer::default().attempts(5).max_wait(Duration::from_secs(2));
/// # let _ = retry;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct RetryLayer {
    attempts: u32,
    base: Duration,
    max_wait: Duration,
}

impl Default for RetryLayer {
    /// Four attempts, waits from 100 ms doubling up to 10 s (E2B's SDK's policy).
    fn default() -> Self {
        RetryLayer {
            attempts: 4,
            base: Duration::from_millis(100),
            max_wait: Duration::from_secs(10),
        }
    }
}

impl RetryLayer {
    /// How many times an operation runs at most, the first included (at least 1).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// The first wait; each later one doubles it, with jitter.
    pub fn base_wait(mut self, wait: Duration) -> Self {
        self.base = wait;
        self
    }

    /// The longest wait. A backend that asks for a longer one gets its error back instead.
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// `min(base * 2^attempt, max) * (0.5 .. 1.0)`.
    fn backoff(&self, attempt: u32) -> Duration {
        let full = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_wait);
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(attempt);
        let jitter = 0.5 + 0.5 * (hasher.finish() as f64 / u64::MAX as f64);
        full.mul_f64(jitter)
    }
}

impl Layer for RetryLayer {
    fn call<'a, T: Send + 'a>(
        &'a self,
        op: &'a Call<'a>,
        next: Next<'a, T>,
    ) -> BoxFuture<'a, Result<T>> {
        async move {
            let mut attempt = 0;
            loop {
                let error = match next.run().await {
                    Ok(value) => return Ok(value),
                    Err(e) => e,
                };
                attempt += 1;
                if !op.repeatable() || !error.is_retryable() {
                    return Err(error);
                }
                if attempt >= self.attempts {
                    // Tried as often as this layer tries: the error is final now, so that a
                    // layer or a client above (e2b-local's, then an E2B client's) does not
                    // multiply the attempts.
                    return Err(error.with_retryable(false));
                }
                let wait = error
                    .retry_after()
                    .unwrap_or_else(|| self.backoff(attempt - 1));
                if wait > self.max_wait {
                    return Err(error);
                }
                tracing::debug!(
                    backend = op.backend(),
                    op = op.operation().as_str(),
                    attempt,
                    ?wait,
                    %error,
                    "trying again"
                );
                tokio::time::sleep(wait).await;
            }
        }
        .boxed()
    }
}
