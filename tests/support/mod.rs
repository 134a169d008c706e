//! Test support shared by the reliability tests: the real binary driven as
//! a process, a fault-injecting TCP proxy, a hostile 1C:Fresh stand-in and
//! file-system helpers.

pub mod daemon;
pub mod evidence;
pub mod fs;
pub mod hostile;
pub mod proxy;
pub mod rig;
