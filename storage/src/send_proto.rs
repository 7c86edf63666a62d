//! The `btrfs send` stream format, v1 (`fs/btrfs/send.h`): the numbers that
//! both the stream reader (`send_stream`) and the stream generator
//! (`send_gen`) use.
//!
//! A stream is `btrfs-stream\0`, a little-endian u32 version, then commands:
//! `le32 len, le16 cmd, le32 crc` and `len` bytes of attributes
//! `le16 type, le16 len, value`.

pub(crate) const MAGIC: &[u8] = b"btrfs-stream\0";
/// Bytes of a command header: length, command, crc.
pub(crate) const HEADER: usize = 10;

/// Command numbers (`enum btrfs_send_cmd`).
pub(crate) mod cmd {
    pub const SUBVOL: u16 = 1;
    pub const MKFILE: u16 = 3;
    pub const MKDIR: u16 = 4;
    pub const MKNOD: u16 = 5;
    pub const MKFIFO: u16 = 6;
    pub const MKSOCK: u16 = 7;
    pub const SYMLINK: u16 = 8;
    pub const RENAME: u16 = 9;
    pub const LINK: u16 = 10;
    pub const UNLINK: u16 = 11;
    pub const RMDIR: u16 = 12;
    pub const SET_XATTR: u16 = 13;
    pub const REMOVE_XATTR: u16 = 14;
    pub const WRITE: u16 = 15;
    pub const CLONE: u16 = 16;
    pub const TRUNCATE: u16 = 17;
    pub const CHMOD: u16 = 18;
    pub const CHOWN: u16 = 19;
    pub const UTIMES: u16 = 20;
    pub const END: u16 = 21;
    pub const UPDATE_EXTENT: u16 = 22;
}

/// Attribute types (`enum btrfs_send_attr`).
pub(crate) mod attr {
    pub const UUID: u16 = 1;
    pub const CTRANSID: u16 = 2;
    pub const INO: u16 = 3;
    pub const SIZE: u16 = 4;
    pub const MODE: u16 = 5;
    pub const UID: u16 = 6;
    pub const GID: u16 = 7;
    pub const RDEV: u16 = 8;
    pub const CTIME: u16 = 9;
    pub const MTIME: u16 = 10;
    pub const ATIME: u16 = 11;
    pub const XATTR_NAME: u16 = 13;
    pub const XATTR_DATA: u16 = 14;
    pub const PATH: u16 = 15;
    pub const PATH_TO: u16 = 16;
    pub const PATH_LINK: u16 = 17;
    pub const FILE_OFFSET: u16 = 18;
    pub const DATA: u16 = 19;
}
