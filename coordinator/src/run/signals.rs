//! The signals that interrupt a run: Ctrl-C, a scheduler's SIGTERM or SIGHUP, and SIGUSR1 (what
//! `sbatch --signal=B:USR1@300` sends before a job's time limit). Listened to for the whole
//! launch, so one that arrives between two generations is not lost.

use tokio::signal::unix::{SignalKind, signal};

/// A signal that interrupts a run.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Signal {
    Interrupt,
    Terminate,
    HangUp,
    User1,
}

impl Signal {
    /// Its name, for messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
            Signal::HangUp => "SIGHUP",
            Signal::User1 => "SIGUSR1",
        }
    }

    /// 128 + the signal number, as a shell reports a process the signal ended.
    pub(crate) fn exit_code(self) -> u8 {
        128 + match self {
            Signal::Interrupt => 2,
            Signal::Terminate => 15,
            Signal::HangUp => 1,
            Signal::User1 => 10,
        }
    }
}

/// The run's signal handlers, installed once per launch.
pub(crate) struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hang_up: tokio::signal::unix::Signal,
    user1: tokio::signal::unix::Signal,
}

impl Signals {
    /// Takes SIGINT, SIGTERM, SIGHUP and SIGUSR1 over from their default action (ending the process).
    pub(crate) fn install() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hang_up: signal(SignalKind::hangup())?,
            user1: signal(SignalKind::user_defined1())?,
        })
    }

    /// The next signal (one that came while nobody waited is delivered now).
    pub(crate) async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::Interrupt,
            _ = self.terminate.recv() => Signal::Terminate,
            _ = self.hang_up.recv() => Signal::HangUp,
            _ = self.user1.recv() => Signal::User1,
        }
    }
}
