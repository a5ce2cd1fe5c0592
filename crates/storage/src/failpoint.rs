//! Failpoints: named steps inside multi-step storage operations (rollback then snapshot
//! install, the physical format's data commit then log commit) where a test stops the
//! operation as a crash would, to show the node restarts consistent.
//!
//! Two ways to arm one, both off unless asked for:
//! - `TERN_FAILPOINTS=name,name` in a process's environment: reaching a named step ends
//!   the process at once (exit code 75, no cleanup), as a `kill -9` there would.
//! - [`arm`] on the current thread (storage tests): reaching the step returns an error and
//!   the test drops the engine without any further write, then reopens it.

use crate::engine::{Result, StorageError};
use std::cell::RefCell;
use std::sync::OnceLock;

/// Exit code of a process stopped by a failpoint.
pub const CRASH_EXIT_CODE: i32 = 75;

thread_local! {
    static ARMED: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
}

fn from_environment() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        std::env::var("TERN_FAILPOINTS")
            .map(|names| names.split(',').map(|name| name.trim().to_owned()).filter(|name| !name.is_empty()).collect())
            .unwrap_or_default()
    })
}

/// Makes `name` fail on this thread until [`disarm_all`].
pub fn arm(name: &'static str) {
    ARMED.with(|armed| armed.borrow_mut().push(name));
}

pub fn disarm_all() {
    ARMED.with(|armed| armed.borrow_mut().clear());
}

/// A step named `name` is reached.
///
/// # Errors
/// If the failpoint is armed on this thread.
pub fn hit(name: &'static str) -> Result<()> {
    if from_environment().iter().any(|armed| armed == name) {
        eprintln!("failpoint {name}: stopping the process here (TERN_FAILPOINTS)");
        std::process::exit(CRASH_EXIT_CODE);
    }
    if ARMED.with(|armed| armed.borrow().contains(&name)) {
        return Err(StorageError::new(format!("failpoint {name}")));
    }
    Ok(())
}
