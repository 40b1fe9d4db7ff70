//! [`Limited`]: a stream whose reads are paid for from a [`Chain`] of buckets. Bytes read are
//! paid before the next read, so the peer's sending slows through TCP's own flow control, and
//! reads are bounded to a slice while a cap applies, so no read runs far ahead of its payment. Writes pass
//! untouched. Under TLS it wraps the TCP socket, so what is paid is what crosses the wire.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::chain::{Chain, pay};
use crate::io::forward_write;

type Payment = Pin<Box<dyn Future<Output = Vec<u64>> + Send>>;

/// A stream whose reads draw from `chain`.
pub struct Limited<S> {
    inner: S,
    chain: Chain,
    owed: Vec<u64>,
    unpaid: u64,
    paying: Option<Payment>,
}

impl<S> std::fmt::Debug for Limited<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limited")
            .field("unpaid", &self.unpaid)
            .field("paying", &self.paying.is_some())
            .finish_non_exhaustive()
    }
}

impl<S> Limited<S> {
    pub fn new(inner: S, chain: Chain) -> Self {
        Limited {
            inner,
            chain,
            owed: Vec::new(),
            unpaid: 0,
            paying: None,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Completes the payment for the bytes read so far.
    fn poll_paid(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if let Some(payment) = &mut self.paying {
                self.owed = ready!(payment.as_mut().poll(cx));
                self.paying = None;
            }
            if self.unpaid == 0 {
                return Poll::Ready(());
            }
            let buckets = self.chain.buckets();
            let mut owed = std::mem::take(&mut self.owed);
            if owed.len() != buckets.len() {
                // The chain changed (the session joined): what was owed below a cell is let go.
                owed = vec![0; buckets.len()];
            }
            let bytes = std::mem::take(&mut self.unpaid);
            self.paying = Some(Box::pin(async move {
                pay(&buckets, &mut owed, bytes).await;
                owed
            }));
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_paid(cx));
        let bound = this.chain.read_bound().filter(|&b| buf.remaining() > b);
        let read = if let Some(bound) = bound {
            let mut bounded = ReadBuf::new(buf.initialize_unfilled_to(bound));
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut bounded))?;
            let read = bounded.filled().len();
            buf.advance(read);
            read
        } else {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            buf.filled().len() - before
        };
        this.unpaid += read as u64;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    forward_write!();
}
