//! Child reaping for exec mode, where sidekey is the init of its process tree.
//!
//! As PID 1 (or a child subreaper, which exec mode makes sidekey otherwise) every orphan in the
//! tree becomes sidekey's child, so the supervisor collects every exited child with
//! `waitpid(-1)`. That also collects children tokio spawned for template commands; their runner
//! then finds `ECHILD` and claims the status the supervisor kept for it here, so both kinds of
//! children keep an exact exit status and no zombie outlives a SIGCHLD.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Mutex;

use rustix::process::WaitOptions;

/// Statuses of reaped children other than the command, oldest first. Orphans' statuses are
/// never claimed, so the list keeps only the newest few.
static REAPED: Mutex<Vec<(u32, i32)>> = Mutex::new(Vec::new());
const KEEP: usize = 64;

/// Makes orphaned descendants re-parent to this process instead of the host's init.
pub fn become_subreaper() {
    if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        tracing::debug!(error = %e, "Cannot become a child subreaper; orphans go to init.");
    }
}

/// Reaps every exited child without blocking; returns `child`'s exit code (128 + signal when
/// it was killed) if it was among them.
pub fn reap_all(child: u32) -> Option<i32> {
    // Held across wait and record, so a claimant that saw ECHILD finds the status.
    let mut reaped = REAPED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut code = None;
    while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
        let pid = pid.as_raw_nonzero().get().unsigned_abs();
        if pid == child {
            code = status
                .exit_status()
                .or_else(|| status.terminating_signal().map(|s| 128 + s));
        } else {
            if reaped.len() == KEEP {
                reaped.remove(0);
            }
            reaped.push((pid, status.as_raw()));
        }
    }
    code
}

/// The exit status of `pid` if the supervisor reaped it before its own waiter could.
pub fn claim(pid: u32) -> Option<ExitStatus> {
    let mut reaped = REAPED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let i = reaped.iter().position(|(p, _)| *p == pid)?;
    Some(ExitStatus::from_raw(reaped.remove(i).1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The only unit test in the crate that spawns processes, so nothing else's child is reaped.
    #[test]
    fn a_status_reaped_first_by_the_supervisor_is_claimed_once() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "exit 5"])
            .spawn()
            .unwrap();
        let pid = child.id();
        let zombie = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
        };
        for _ in 0..500 {
            if zombie() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(reap_all(u32::MAX), None, "not the supervised command");
        let own_wait = child.try_wait().unwrap_err();
        assert_eq!(
            own_wait.raw_os_error(),
            Some(rustix::io::Errno::CHILD.raw_os_error())
        );
        assert_eq!(claim(pid).and_then(|s| s.code()), Some(5));
        assert_eq!(claim(pid), None);
    }
}
