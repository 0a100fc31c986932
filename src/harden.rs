//! Process hardening applied right after the config loads, before any value is fetched.
//!
//! Unless `process.core_dumps = true`: the process is made non-dumpable (`PR_SET_DUMPABLE` 0:
//! no core file, and processes of the same user can neither ptrace it nor read its
//! `/proc/PID/mem` or `environ`), and `RLIMIT_CORE` is set to 0 as a second lock. Exec mode
//! sets only the first: the limit would be inherited by the command, whose own crash
//! behaviour is not sidekey's to change (the dumpable flag resets on `execve`).

use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};

/// Applies the hardening the config asks for; failures are reported on stderr (logging is not
/// set up yet), never fatal.
pub fn apply(core_dumps: bool, exec_mode: bool) {
    if core_dumps {
        return;
    }
    if let Err(e) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        eprintln!("sidekey: cannot make the process non-dumpable: {e}");
    }
    if !exec_mode {
        let none = Rlimit {
            current: Some(0),
            maximum: Some(0),
        };
        if let Err(e) = setrlimit(Resource::Core, none) {
            eprintln!("sidekey: cannot disable core dumps: {e}");
        }
    }
}
