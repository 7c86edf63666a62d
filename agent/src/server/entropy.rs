//! `Reseed`: mix host-provided entropy into the kernel RNG (after a VM fork
//! two guests would otherwise share RNG state).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::AsRawFd;

use super::OpError;
use crate::protocol::Response;

/// `_IOW('R', 0x03, int[2])` from `<linux/random.h>`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
const URANDOM: &str = "/dev/urandom";

/// Credits the entropy with RNDADDENTROPY, or (without CAP_SYS_ADMIN) mixes
/// it in uncredited by writing it to `/dev/urandom`.
pub async fn reseed(entropy: Vec<u8>) -> Result<Response, OpError> {
    tokio::task::spawn_blocking(move || add_entropy(&entropy))
        .await
        .map_err(|e| OpError::BadRequest(format!("reseed task failed: {e}")))??;
    Ok(Response::Ok)
}

fn add_entropy(entropy: &[u8]) -> Result<(), OpError> {
    let mut urandom = OpenOptions::new()
        .write(true)
        .open(URANDOM)
        .map_err(OpError::io("open", URANDOM))?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + entropy.len());
    info.extend_from_slice(&((entropy.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(entropy.len() as i32).to_ne_bytes());
    info.extend_from_slice(entropy);
    // SAFETY: `info` is a valid rand_pool_info: the header is followed by
    // exactly buf_size bytes, and it outlives the call.
    let rc = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(OpError::io("RNDADDENTROPY", URANDOM)(err));
    }
    urandom
        .write_all(entropy)
        .map_err(OpError::io("write", URANDOM))
}
