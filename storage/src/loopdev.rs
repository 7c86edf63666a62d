//! Attaching an image file to a free loop device (the `losetup -f` part of
//! `mount -o loop`), with autoclear so unmounting releases the device.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

nix::ioctl_none!(loop_ctl_get_free, 0x4C, 0x82);
nix::ioctl_write_int_bad!(loop_set_fd, 0x4C00);
nix::ioctl_write_ptr_bad!(loop_set_status64, 0x4C04, LoopInfo64);

/// An attached loop device; the device stays attached while this is open or
/// while it is mounted.
pub(crate) struct LoopDevice {
    pub path: PathBuf,
    _fd: OwnedFd,
}

/// Attaches `image` to a free loop device, retrying when another process
/// grabs the same free device first.
pub(crate) fn attach(image: &Path) -> io::Result<LoopDevice> {
    let backing = OpenOptions::new().read(true).write(true).open(image)?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    for _ in 0..16 {
        // SAFETY: `control` is an open fd of /dev/loop-control; the ioctl takes no argument.
        let n = unsafe { loop_ctl_get_free(control.as_raw_fd()) }.map_err(io::Error::from)?;
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = OpenOptions::new().read(true).write(true).open(&path)?;
        // SAFETY: both fds are open for the call; LOOP_SET_FD takes the backing fd by value.
        match unsafe { loop_set_fd(dev.as_raw_fd(), backing.as_raw_fd()) } {
            Ok(_) => {
                set_autoclear(&dev)?;
                return Ok(LoopDevice {
                    path,
                    _fd: OwnedFd::from(dev),
                });
            }
            Err(nix::errno::Errno::EBUSY) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::ResourceBusy,
        "no free loop device after 16 tries",
    ))
}

fn set_autoclear(dev: &File) -> io::Result<()> {
    let info = LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: LO_FLAGS_AUTOCLEAR,
        lo_file_name: [0; 64],
        lo_crypt_name: [0; 64],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    };
    // SAFETY: `dev` is an open loop device fd and `info` has the kernel's
    // `struct loop_info64` layout; the kernel only reads it.
    unsafe { loop_set_status64(dev.as_raw_fd(), &info) }.map_err(io::Error::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_info64_has_kernel_layout() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
    }
}
