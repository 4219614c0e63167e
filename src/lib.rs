//! kvfs: an Azure Key Vault as a read-only FUSE filesystem.
//!
//! Reading order: `cli` (flags) -> `run` (startup, mount, shutdown; `mountpoint` checks where
//! it mounts, `notify` tells systemd) -> `fuse` (thin fuser adapter) -> `fs` (inodes,
//! attributes, listings as plain Results) -> `cache` (LRU, TTLs, single flight, stale serving)
//! and `refresh` (keeps secrets in use fresh, pushes changes to the kernel) -> `store` (the
//! `SecretStore` seam: Key Vault, in-memory, retries) -> `auth` and `transport` (identity, the
//! one HTTP client, the request budget). `access` (owners, include/exclude) shapes what `fs`
//! shows; `audit` records opens. `hardening` locks the process's memory and keeps it out of
//! core dumps before any secret arrives; `sandbox` drops privileges once the mount is up, and
//! `unmount_guard` is the small process that unmounts for it.
//! `handoff` passes the live FUSE connection to a new kvfs on restart or upgrade.
//! `views` turns a secret's value into what an application reads: decoded bytes, a JSON
//! object's keys as files, names apps expect, an env file.
//! `metrics` serves Prometheus and health probes; `logs` and `log_limit` are the logging and
//! what readers cannot repeat in it; `mount_helper` is the binary as `mount.kvfs`. `secret` and
//! `error` are the types all of them share. `emulator` is a Key Vault for tests and demos;
//! `testing` holds what the integration tests and the benchmark share: both only with the
//! `emulator` feature (on by default), which production builds leave out.

pub mod access;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod cli;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod error;
pub mod forest;
pub mod fs;
pub mod fuse;
pub mod handoff;
pub mod hardening;
pub mod log_limit;
pub mod logs;
pub mod metrics;
pub mod mount_helper;
pub mod mountpoint;
pub mod notify;
pub mod refresh;
pub mod run;
pub mod sandbox;
pub mod secret;
pub mod store;
#[cfg(feature = "emulator")]
pub mod testing;
pub mod transport;
pub mod unmount_guard;
pub mod views;
