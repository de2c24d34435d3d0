//! Frame sources: image files, folders and globs, decoded into a [`FrameBuf`].
//!
//! Stage zero of the data path: bytes → **frame** → tensor → activations → score → gate →
//! signal. [`expand_sources`] turns command-line sources into an ordered list of files once at
//! start-up; [`FileReader`] reads each file into a buffer allocated once, and [`decode_into`]
//! decodes it into the caller's [`FrameBuf`].
//!
//! # Important notes
//! - Limits are checked against the file size and the image header before any pixel is
//!   decoded, so a header that claims 100 000 × 100 000 pixels costs nothing.
//! - EXIF orientation is not applied: frames are scored as stored, the way the reference
//!   preprocessing (PIL without `exif_transpose`) reads them.
//!
//! [`FrameBuf`]: crate::frame::FrameBuf

mod decode;
mod files;

pub use decode::{decode_into, DecodeError};
pub use files::{expand_sources, FileReader, ReadError, SourceError, IMAGE_EXTENSIONS};
