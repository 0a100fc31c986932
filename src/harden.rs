//! Process settings applied right after the config loads, before any value is fetched.
//!
//! Outside exec mode, transparent huge pages are turned off for the process
//! (`PR_SET_THP_DISABLE`): the allocator's arenas are 2 MiB-aligned, and on a host whose THP
//! mode is `always` each one becomes a huge page on first touch — 15.6 MiB idle RSS instead
//! of 8.5 (measured, BENCHMARKS.md). Exec mode leaves it alone because the flag is inherited
//! across `execve` by the command.
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
    if !exec_mode && let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("sidekey: cannot turn off transparent huge pages: {e}");
    }
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
