//! Heap allocations per frame on the stream path, counted through a global allocator.
//!
//! The MJPEG and raw stream parsers fill the caller's buffer, and raw conversion and
//! preprocessing write into the pipeline's buffers, so none of them may allocate per frame.
//! JPEG decoding allocates inside the decoder (measured in tests/alloc.rs).
//!
//! This file contains one test so that no other test thread allocates while it counts.

use gradgate::frame::{FrameBuf, FrameLimits};
use gradgate::source::raw::raw_to_frame;
use gradgate::source::stream::{MjpegStream, RawStream};
use gradgate::source::{FrameSource, Next, RawFormat};
use gradgate::tensor::{InputTensor, Preprocessor};
use gradgate::Model;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

struct CountingAllocator;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to the system allocator with the same arguments; the counter
// is an atomic and never affects the returned memory.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn allocations<T>(stage: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let value = stage();
    (value, ALLOCATIONS.load(Ordering::Relaxed) - before)
}

const MAX_FRAME_BYTES: usize = 1 << 20;

#[test]
fn stream_path_allocates_nothing_per_frame() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let jpeg = std::fs::read(root.join("tests/data/id/espresso-cup.jpg")).unwrap();
    let model = Model::load(&root.join("models/efficientnet-lite0-int8.onnx")).unwrap();
    let limits = FrameLimits::default();
    let mut preprocessor = Preprocessor::new(model.info().preprocess, &limits);
    let mut input = InputTensor::new(model.info().preprocess.size_px);
    let mut frame = FrameBuf::new(limits.pixel_buffer_bytes());
    let mut out = Vec::with_capacity(MAX_FRAME_BYTES);

    // MJPEG: eight frames back to back; the first call may set up lazily.
    let stream_bytes: Vec<u8> = (0..8).flat_map(|_| jpeg.iter().copied()).collect();
    let mut mjpeg = MjpegStream::new(Cursor::new(stream_bytes), "-".into(), MAX_FRAME_BYTES);
    assert!(matches!(mjpeg.next_into(&mut out), Next::Frame(_)));
    for _ in 1..8 {
        let (next, count) = allocations(|| mjpeg.next_into(&mut out));
        assert!(matches!(next, Next::Frame(_)));
        assert_eq!(count, 0, "the MJPEG parser allocated");
    }
    assert_eq!(out.capacity(), MAX_FRAME_BYTES);

    // Raw: a 64 × 48 YUYV frame, parsed, converted and preprocessed.
    let (width, height) = (64u32, 48u32);
    let size = RawFormat::Yuyv.frame_bytes(width, height).unwrap();
    let raw_bytes = vec![128u8; 4 * size];
    let mut raw = RawStream::new(
        Cursor::new(raw_bytes),
        "-".into(),
        RawFormat::Yuyv,
        width,
        height,
        MAX_FRAME_BYTES,
    )
    .unwrap();
    assert!(matches!(raw.next_into(&mut out), Next::Frame(_)));
    raw_to_frame(&out, RawFormat::Yuyv, width, height, &mut frame).unwrap();
    preprocessor.fill(&frame, &mut input);
    for _ in 1..4 {
        let (next, count) = allocations(|| raw.next_into(&mut out));
        assert!(matches!(next, Next::Frame(_)));
        assert_eq!(count, 0, "the raw parser allocated");
        let (converted, count) =
            allocations(|| raw_to_frame(&out, RawFormat::Yuyv, width, height, &mut frame));
        converted.unwrap();
        assert_eq!(count, 0, "raw conversion allocated");
        let ((), count) = allocations(|| preprocessor.fill(&frame, &mut input));
        assert_eq!(count, 0, "preprocessing allocated");
    }
}
