//! Zombie reaping for an agent that is PID 1 (or a child subreaper).
//!
//! On every SIGCHLD the reaper collects *all* exited children with
//! `waitpid(-1, WNOHANG)`. Exit statuses of processes started through
//! [`Reaper::spawn`] go to their waiters; everything else (orphans that were
//! reparented to us) is just reaped. Spawning and reaping share one lock, so
//! a child can never be reaped before its waiter is registered — and
//! `std::process::Command::spawn`'s own internal `waitpid` after a failed
//! `exec` cannot race with us.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// Collects exited children and hands their statuses to waiters.
#[derive(Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<i32, oneshot::Sender<WaitStatus>>>,
}

impl Reaper {
    /// Installs the SIGCHLD handler and starts the reaping task.
    pub fn start() -> io::Result<Arc<Self>> {
        let reaper = Arc::new(Self::default());
        let mut sigchld = signal(SignalKind::child())?;
        let task_reaper = Arc::clone(&reaper);
        tokio::spawn(async move {
            task_reaper.reap_all();
            while sigchld.recv().await.is_some() {
                task_reaper.reap_all();
            }
        });
        Ok(reaper)
    }

    /// Spawns `cmd` and returns the child with a receiver for its exit
    /// status. Never call `wait` on the returned child.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(Child, oneshot::Receiver<WaitStatus>)> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        waiters.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    /// Reaps every child that has exited so far.
    pub fn reap_all(&self) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    match waiters.remove(&pid.as_raw()) {
                        Some(tx) => {
                            let _ = tx.send(status);
                        }
                        None => tracing::debug!(pid = pid.as_raw(), "reaped orphan"),
                    }
                }
            }
        }
    }
}
