//! The few libvirt calls the `virt` crate does not wrap: sparse streams and block jobs. Each function
//! is a thin, checked wrapper around one C call; the handles come from the crate's safe types, which
//! keep them alive for the duration of the call.

use std::ffi::CString;
use std::os::raw::{c_char, c_longlong, c_uint};

use virt::domain::Domain;
use virt::error::Error as VirtError;
use virt::stream::Stream;
use virt::sys;

/// What a sparse stream delivered.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// `n` bytes of data at the start of the buffer.
    Data(usize),
    /// A hole of this many bytes (reads as zeros).
    Hole(u64),
    /// End of stream.
    End,
}

/// Reads from a stream opened with `VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM`, stopping at holes.
pub fn recv_sparse(stream: &Stream, buf: &mut [u8]) -> Result<Received, VirtError> {
    // SAFETY: the stream handle is valid while `stream` lives; `buf` is writable for its length.
    let n = unsafe {
        sys::virStreamRecvFlags(
            stream.as_ptr(),
            buf.as_mut_ptr() as *mut c_char,
            buf.len(),
            sys::VIR_STREAM_RECV_STOP_AT_HOLE as c_uint,
        )
    };
    match n {
        0 => Ok(Received::End),
        n if n > 0 => Ok(Received::Data(n as usize)),
        -3 => {
            let mut len: c_longlong = 0;
            // SAFETY: as above; `len` is a valid out-pointer.
            if unsafe { sys::virStreamRecvHole(stream.as_ptr(), &mut len, 0) } < 0 {
                return Err(VirtError::last_error());
            }
            Ok(Received::Hole(len.max(0) as u64))
        }
        _ => Err(VirtError::last_error()),
    }
}

/// Sends a hole of `len` bytes on a stream opened with `VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM`.
pub fn send_hole(stream: &Stream, len: u64) -> Result<(), VirtError> {
    let len = c_longlong::try_from(len).unwrap_or(c_longlong::MAX);
    // SAFETY: the stream handle is valid while `stream` lives.
    if unsafe { sys::virStreamSendHole(stream.as_ptr(), len, 0) } < 0 {
        return Err(VirtError::last_error());
    }
    Ok(())
}

/// Starts an active block commit of `disk`'s top image into its immediate backing image.
pub fn block_commit_active(dom: &Domain, disk: &str) -> Result<(), VirtError> {
    let disk = cstring(disk);
    let flags = sys::VIR_DOMAIN_BLOCK_COMMIT_ACTIVE | sys::VIR_DOMAIN_BLOCK_COMMIT_SHALLOW;
    // SAFETY: valid domain handle and NUL-terminated disk name; NULL base/top mean "backing of the
    // top image" and "the active image" (with the SHALLOW and ACTIVE flags).
    let rc = unsafe {
        sys::virDomainBlockCommit(
            dom.as_ptr(),
            disk.as_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            0,
            flags as c_uint,
        )
    };
    if rc < 0 {
        return Err(VirtError::last_error());
    }
    Ok(())
}

/// Progress of the block job on `disk`: `Some((cur, end))`, `None` when no job runs. libvirt reports
/// `cur == end` for a mirroring job (active commit) only once it is ready to pivot.
pub fn block_job_progress(dom: &Domain, disk: &str) -> Result<Option<(u64, u64)>, VirtError> {
    let disk = cstring(disk);
    let mut info = sys::virDomainBlockJobInfo {
        type_: 0,
        bandwidth: 0,
        cur: 0,
        end: 0,
    };
    // SAFETY: valid domain handle, NUL-terminated disk name, `info` is a valid out-pointer.
    let rc = unsafe { sys::virDomainGetBlockJobInfo(dom.as_ptr(), disk.as_ptr(), &mut info, 0) };
    match rc {
        0 => Ok(None),
        rc if rc > 0 => Ok(Some((info.cur, info.end))),
        _ => Err(VirtError::last_error()),
    }
}

/// Ends the ready mirroring job on `disk` by switching the disk to the job's target (pivot). Waits for
/// the switch.
pub fn block_job_pivot(dom: &Domain, disk: &str) -> Result<(), VirtError> {
    let disk = cstring(disk);
    // SAFETY: valid domain handle and NUL-terminated disk name.
    let rc = unsafe {
        sys::virDomainBlockJobAbort(
            dom.as_ptr(),
            disk.as_ptr(),
            sys::VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT as c_uint,
        )
    };
    if rc < 0 {
        return Err(VirtError::last_error());
    }
    Ok(())
}

/// Cancels the block job on `disk` (no pivot), leaving the disk on its current image.
pub fn block_job_cancel(dom: &Domain, disk: &str) -> Result<(), VirtError> {
    let disk = cstring(disk);
    // SAFETY: valid domain handle and NUL-terminated disk name.
    if unsafe { sys::virDomainBlockJobAbort(dom.as_ptr(), disk.as_ptr(), 0) } < 0 {
        return Err(VirtError::last_error());
    }
    Ok(())
}

/// A C string for a disk target name. Names come from libvirt's own XML, which cannot hold NUL; were
/// one there, the empty name makes libvirt report an unknown disk.
fn cstring(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}
