//! What the drill shows while it runs, on stderr: progress bars (indicatif) on a terminal, plain
//! lines when stderr is a file or a pipe (CI logs), nothing with `--quiet`. The final table goes
//! to stdout and is not drawn here.

use std::borrow::Cow;
use std::io::Write;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bars redrawn in place (stderr is a terminal).
    Bars,
    /// One line per finished step.
    Lines,
    /// Nothing.
    Quiet,
}

/// The drill's progress display; cheap to clone.
#[derive(Debug, Clone)]
pub struct Progress {
    multi: MultiProgress,
    mode: Mode,
}

impl Progress {
    /// Bars when `quiet` is off and stderr is a terminal, lines when it is not, nothing when
    /// quiet.
    pub fn for_stderr(quiet: bool) -> Self {
        use std::io::IsTerminal;
        let mode = match (quiet, std::io::stderr().is_terminal()) {
            (true, _) => Mode::Quiet,
            (false, true) => Mode::Bars,
            (false, false) => Mode::Lines,
        };
        Self::new(mode)
    }

    pub fn new(mode: Mode) -> Self {
        let target = match mode {
            Mode::Bars => ProgressDrawTarget::stderr(),
            Mode::Lines | Mode::Quiet => ProgressDrawTarget::hidden(),
        };
        Progress {
            multi: MultiProgress::with_draw_target(target),
            mode,
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether the bars are drawn (the drill polls the recipient's `clone_progress` only then).
    pub fn drawn(&self) -> bool {
        self.mode == Mode::Bars
    }

    /// A line above the bars, or on stderr in line mode.
    pub fn note(&self, line: impl AsRef<str>) {
        match self.mode {
            Mode::Bars => {
                let _ = self.multi.println(line.as_ref());
            }
            Mode::Lines => eprintln!("{}", line.as_ref()),
            Mode::Quiet => {}
        }
    }

    /// A spinner for a step of unknown length.
    pub fn spinner(&self, message: impl Into<Cow<'static, str>>) -> Step {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner:.cyan} {msg} {elapsed:.dim}")
                .expect("a valid template"),
        );
        bar.set_message(message);
        if self.drawn() {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        Step {
            bar,
            progress: self.clone(),
        }
    }

    /// A bar counting bytes towards `total`.
    pub fn bytes(&self, prefix: impl Into<Cow<'static, str>>, total: u64) -> Step {
        let bar = self.multi.add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:<26} [{bar:28.cyan/blue}] {bytes:>10}/{total_bytes:<10} {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(prefix);
        Step {
            bar,
            progress: self.clone(),
        }
    }

    /// A writer for log lines that keeps them from tearing the bars.
    pub fn log_writer(&self) -> LogWriter {
        LogWriter {
            multi: self.multi.clone(),
            buffer: Vec::new(),
        }
    }
}

/// One bar or spinner.
#[derive(Debug)]
pub struct Step {
    bar: ProgressBar,
    progress: Progress,
}

impl Step {
    pub fn set(&self, position: u64) {
        self.bar.set_position(position);
    }

    pub fn set_length(&self, length: u64) {
        self.bar.set_length(length);
    }

    pub fn message(&self, message: impl Into<Cow<'static, str>>) {
        self.bar.set_message(message);
    }

    /// Ends the step: the bar goes and `line` is printed in its place (above the bars still
    /// running, or on stderr in line mode).
    pub fn finish(self, line: impl Into<String>) {
        self.bar.finish_and_clear();
        self.progress.multi.remove(&self.bar);
        self.progress.note(format!("  {}", line.into()));
    }
}

/// Log output written above the bars, a whole line at a time.
#[derive(Debug)]
pub struct LogWriter {
    multi: MultiProgress,
    buffer: Vec<u8>,
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buffer.is_empty() {
            let buffer = std::mem::take(&mut self.buffer);
            self.multi
                .suspend(|| std::io::stderr().lock().write_all(&buffer))?;
        }
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}
