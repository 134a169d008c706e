//! Integration tests: the real store on a temporary SQLite file, the real
//! scheduler, inbox and downloads, and the simulator over loopback HTTP.
//! Tests never sleep to synchronise: they step the scheduler or wait for a
//! condition with a deadline.

mod helpers;
mod support;

mod accounts_check;
mod api;
mod atol;
mod browser;
mod crash;
mod daemon;
mod dashboard;
mod durability;
mod faults;
mod files;
mod fresh;
mod fuzz;
mod hostile;
mod inbox;
mod kontur_diadoc;
mod kontur_extern;
mod kontur_extern_once;
mod multi_instance;
mod next_run;
mod ofd;
mod schedules;
mod secrets;
mod security;
mod store;
mod store_contract;
mod store_full;
