//! How the donor's data has been arriving on one connection: whether the donor owes it data,
//! the gaps between its bytes by stage, excuses when the recipient held the data up, and the
//! check of the flow under way. The stall watch ([`crate::recovery::stall`]) judges it; the
//! session view shows its longest gaps.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::StallSettings;

/// Whether the donor owes a connection data, and how its data has been arriving.
#[derive(Debug, Default)]
pub struct DataFlow {
    owed: bool,
    /// The clone is in FILE COPY: the donor streams without pause.
    streaming: bool,
    last_byte: Option<Instant>,
    /// The latest moment the recipient, not the donor, held the data up.
    excused_at: Option<Instant>,
    /// The last donor byte before the silence last reported as slow.
    reported: Option<Instant>,
    /// A check of the flow's TCP under way: the silence and the probe's time that led to it,
    /// and when it began.
    check: Option<(Duration, Option<Duration>, Instant)>,
    longest_gap: Duration,
    /// The longest gaps over the connection's life: in FILE COPY, and elsewhere while owed data.
    longest_streaming_gap: Duration,
    longest_other_gap: Duration,
}

/// A silence noticed without a suspicion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slowness {
    /// The donor paused past the stage's floor, within the pace it has shown so far.
    Donor,
    /// The donor was silent past the threshold while the recipient had not taken the bytes the
    /// relay held for it.
    Recipient,
}

impl DataFlow {
    /// Bytes arrived from the donor.
    pub fn on_donor_bytes(&mut self, now: Instant) {
        if self.owed
            && let Some(last) = self.last_byte
        {
            let gap = now.duration_since(last);
            self.longest_gap = self.longest_gap.max(gap);
            let lifetime = match self.streaming {
                true => &mut self.longest_streaming_gap,
                false => &mut self.longest_other_gap,
            };
            *lifetime = (*lifetime).max(gap);
        }
        self.last_byte = Some(now);
    }

    /// The recipient sent `COM_EXECUTE`: the donor owes data from now on.
    pub fn on_execute(&mut self, now: Instant) {
        self.owed = true;
        self.last_byte = Some(now);
    }

    /// The clone entered or left FILE COPY. The gaps seen so far belong to the stage before and
    /// are forgotten.
    pub fn set_streaming(&mut self, streaming: bool) {
        if self.streaming != streaming {
            self.streaming = streaming;
            self.longest_gap = Duration::ZERO;
        }
    }

    /// The longest gap between donor bytes seen in the current stage.
    pub fn longest_gap(&self) -> Duration {
        self.longest_gap
    }

    /// The longest gaps between donor bytes over the connection's life while it was owed data:
    /// in FILE COPY, and in the other stages.
    pub fn longest_gaps(&self) -> (Duration, Duration) {
        (self.longest_streaming_gap, self.longest_other_gap)
    }

    /// The donor answered with COMPLETE or ERROR: it owes nothing more.
    pub fn on_done(&mut self) {
        self.owed = false;
    }

    /// Counts the present as progress: the recipient, not the donor, is holding the data up.
    pub fn excuse(&mut self, now: Instant) {
        if self.owed {
            self.excused_at = Some(now);
        }
    }

    pub fn owed(&self) -> bool {
        self.owed
    }

    /// Whether donor bytes arrived after `since`.
    pub fn bytes_since(&self, since: Instant) -> bool {
        self.last_byte.is_some_and(|t| t > since)
    }

    /// A check of the flow's TCP begins, after `silence` and a probe of the donor's path that
    /// took `probe` (none when the clone's other connections showed the path up).
    pub fn begin_check(&mut self, silence: Duration, probe: Option<Duration>) {
        self.check = Some((silence, probe, Instant::now()));
    }

    /// The check under way, if any, now over.
    pub fn end_check(&mut self) -> Option<(Duration, Option<Duration>, Instant)> {
        self.check.take()
    }

    /// Marks the current silence as reported: true the first time only, so each silence is
    /// reported once.
    pub fn first_report(&mut self) -> bool {
        if self.reported == self.last_byte {
            return false;
        }
        self.reported = self.last_byte;
        true
    }

    /// The least silence the stage allows: `min_streaming` in FILE COPY (never above `min`),
    /// `min` elsewhere.
    pub fn floor(&self, settings: &StallSettings) -> Duration {
        match self.streaming {
            true => settings.min_streaming.min(settings.min),
            false => settings.min,
        }
    }

    /// The silence that raises a suspicion: the floor in FILE COPY (a suspicion there costs a
    /// check of the flow, never a reset on its own, and MySQL's own bandwidth throttle leaves
    /// gaps of about a second, which the factor would stretch past the floor); elsewhere
    /// `factor` times the longest gap seen in this stage, within `[floor, max]`.
    pub fn threshold(&self, settings: &StallSettings) -> Duration {
        match self.streaming {
            true => self.floor(settings),
            false => (self.longest_gap * settings.factor).clamp(settings.min, settings.max),
        }
    }

    /// How long the donor has been silent while owing data, if that is longer than the
    /// threshold. The silence counts from the last donor byte or the last excuse, whichever is
    /// later.
    pub fn stalled(&self, now: Instant, settings: &StallSettings) -> Option<Duration> {
        let silence = self.judged_silence(now)?;
        (silence > self.threshold(settings)).then_some(silence)
    }

    /// How long the donor has been silent while owing data, counted from the last donor byte
    /// or the last excuse, whichever is later.
    pub fn judged_silence(&self, now: Instant) -> Option<Duration> {
        let last = self.last_byte?;
        let since = self.excused_at.map_or(last, |excused| excused.max(last));
        self.owed.then(|| now.duration_since(since))
    }

    /// How long the donor has been silent on a connection it owes data, excuses aside.
    pub fn silence(&self, now: Instant) -> Option<Duration> {
        let last = self.last_byte?;
        self.owed.then(|| now.duration_since(last))
    }
}
