//! The copy path: both directions at once, generic over `AsyncRead + AsyncWrite` so that any
//! decorated stream goes through it. When one side finishes sending, the other side's write half
//! is shut down and the opposite direction carries on (half-close).

use tokio::io::{AsyncRead, AsyncWrite, copy_bidirectional_with_sizes};

use crate::error::RelayError;
use crate::io::{Legs, Metered, violation_of};

/// Copies between `downstream` and `upstream` until both directions have ended or one leg fails.
/// The error says which leg failed, or which peer broke the protocol; the byte counts stay
/// readable in `legs` either way.
pub async fn relay<D, U>(
    downstream: D,
    upstream: U,
    buffer_bytes: usize,
    legs: &Legs,
) -> Result<(), RelayError>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut down = Metered::new(downstream, legs.downstream.clone());
    let mut up = Metered::new(upstream, legs.upstream.clone());
    let Err(e) =
        copy_bidirectional_with_sizes(&mut down, &mut up, buffer_bytes, buffer_bytes).await
    else {
        return Ok(());
    };
    if let Some(violation) = violation_of(&e) {
        return Err(RelayError::Protocol(violation.clone()));
    }
    if legs.upstream.failed() && !legs.downstream.failed() {
        Err(RelayError::Upstream(e))
    } else {
        Err(RelayError::Downstream(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn carries_both_ways_and_half_closes() {
        let (recipient, relay_down) = duplex(1024);
        let (relay_up, donor) = duplex(1024);
        let legs = Legs::default();
        let task = tokio::spawn({
            let legs = legs.clone();
            async move { relay(relay_down, relay_up, 4096, &legs).await }
        });

        let (mut recipient_rx, mut recipient_tx) = tokio::io::split(recipient);
        let (mut donor_rx, mut donor_tx) = tokio::io::split(donor);
        let block: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();

        recipient_tx.write_all(b"COM_CLONE").await.unwrap();
        recipient_tx.shutdown().await.unwrap();
        let mut got = Vec::new();
        donor_rx.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"COM_CLONE");

        // The recipient has half-closed; the donor's data still flows back.
        let sender = tokio::spawn(async move {
            donor_tx.write_all(&block).await.unwrap();
            donor_tx.shutdown().await.unwrap();
            block
        });
        let mut back = Vec::new();
        recipient_rx.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, sender.await.unwrap());

        task.await.unwrap().unwrap();
        assert_eq!(legs.downstream.bytes_read(), 9);
        assert_eq!(legs.upstream.bytes_read(), 100_000);
    }

    #[tokio::test]
    async fn names_the_leg_that_failed() {
        let (recipient, relay_down) = duplex(64);
        let (relay_up, donor) = duplex(64);
        drop(donor);
        let legs = Legs::default();
        let (_rx, mut tx) = tokio::io::split(recipient);
        tx.write_all(b"data for a donor that is gone")
            .await
            .unwrap();
        let err = relay(relay_down, relay_up, 4096, &legs).await.unwrap_err();
        assert!(matches!(err, RelayError::Upstream(_)), "{err:?}");
    }
}
