//! The migration runner: the one binary in each runner Job. It reads the plan the operator mounted
//! ([`plan`]), walks the guide's phases ([`phases`]), moves every byte itself and patches the
//! VMMigration status as it goes ([`status`]).
//!
//! Two traits carry the variety: [`provider::Provider`] (libvirt, vSphere, Proxmox) and
//! [`storage::Stage`] (S3, HTTP, NFS). The pipeline knows neither hypervisors nor storage protocols.
//! Disk images are inspected and converted by qemu-img ([`disk`]); every staged byte passes through
//! one hashing, counting stream ([`stream`]).

pub mod credentials;
pub mod disk;
pub mod endpoint;
pub mod error;
pub mod phases;
pub mod plan;
pub mod progress;
pub mod provider;
pub mod status;
pub mod storage;
pub mod stream;
pub mod vmdk;
#[cfg(feature = "test-doubles")]
pub mod world_env;

pub use error::{Error, Result};
