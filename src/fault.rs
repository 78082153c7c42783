//! fault: deliberate faults, for test builds only (`--features fault-injection`).
//!
//! Owns one question: is the fault named in `CONSENT_DROP_FAULT` this one?
//! The power-cut test switches one fsync off with it to
//! prove that it notices. Without the feature the answer is always no and
//! the variable is never read: a shipped build has no fault to switch on.

/// Whether the fault `name` is switched on for this process.
#[cfg(feature = "fault-injection")]
pub fn active(name: &str) -> bool {
    std::env::var("CONSENT_DROP_FAULT").is_ok_and(|fault| fault == name)
}

/// Whether the fault `name` is switched on: never, in this build.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn active(_name: &str) -> bool {
    false
}
