//! The migration runner: the one binary in each runner Job. It reads the plan the operator mounted,
//! walks the guide's phases (see [`phases`]), moves every byte itself and patches the VMMigration
//! status as it goes.
//!
//! Two traits carry the variety: [`provider::Provider`] (libvirt, vSphere, Proxmox) and
//! [`storage::Stage`] (S3, HTTP, NFS). The pipeline knows neither hypervisors nor storage protocols.

pub mod credentials;
pub mod error;
pub mod progress;
pub mod provider;
pub mod storage;
pub mod stream;

pub use error::{Error, Result};
