//! Heap allocations per frame, counted stage by stage through a global allocator.
//!
//! gradgate's own stages (file read, preprocessing, feature copy, head, scores, decision,
//! debounced gate) must allocate nothing after start-up. Two stages run code that is not
//! gradgate's and do allocate: the image crate's decoders (their internal state) and tract's
//! `run` (each node's output tensor). Those are measured and checked for being bounded, not for being zero.
//!
//! This file contains one test so that no other test thread allocates while it counts.

use gradgate::frame::FrameLimits;
use gradgate::gate::{DebounceConfig, DebouncedGate, EnterRule, FrameRef, Verdict};
use gradgate::{Gate, Model, Pipeline, Scorer, ScorerKind};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

struct CountingAllocator;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static ALLOCATED_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to the system allocator with the same arguments; the
// counters are atomics and never affect the returned memory.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Allocation count and bytes of one stage, summed over frames.
#[derive(Default, Clone, Copy, Debug, PartialEq)]
struct Tally {
    allocations: usize,
    bytes: usize,
}

fn counted<T>(tally: &mut Tally, stage: impl FnOnce() -> T) -> T {
    let (count_before, bytes_before) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        ALLOCATED_BYTES.load(Ordering::Relaxed),
    );
    let value = stage();
    tally.allocations += ALLOCATIONS.load(Ordering::Relaxed) - count_before;
    tally.bytes += ALLOCATED_BYTES.load(Ordering::Relaxed) - bytes_before;
    value
}

#[derive(Default, Debug)]
struct Pass {
    read: Tally,
    decode: Tally,
    preprocess: Tally,
    backbone: Tally,
    activations: Tally,
    decide: Tally,
    debounce: Tally,
}

fn run_pass(pipeline: &mut Pipeline, gate: &mut DebouncedGate, frames: &[PathBuf]) -> Pass {
    let mut pass = Pass::default();
    let now = std::time::SystemTime::now();
    for (index, path) in frames.iter().enumerate() {
        counted(&mut pass.read, || pipeline.read_file(path)).unwrap();
        counted(&mut pass.decode, || pipeline.decode_file()).unwrap();
        counted(&mut pass.preprocess, || pipeline.preprocess());
        counted(&mut pass.backbone, || pipeline.infer_backbone()).unwrap();
        counted(&mut pass.activations, || pipeline.cache_activations()).unwrap();
        let result = counted(&mut pass.decide, || pipeline.decide());
        assert!(result.verdict.score.is_finite());
        // Two out-of-distribution frames in three, so that events open and close.
        let verdict = Verdict {
            ood: index % 3 != 0,
            ..result.verdict
        };
        let frame = FrameRef {
            index: index as u64,
            time: now,
            source: "tests/data",
        };
        counted(&mut pass.debounce, || gate.step(frame, verdict));
    }
    pass
}

fn frames() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    [
        "id/espresso-cup.jpg",
        "id/airliner-cutout.png",
        "formats",
        "ood/texture",
    ]
    .iter()
    .map(|p| root.join(p))
    .flat_map(|p| gradgate::source::expand_sources(&[p]).unwrap())
    .collect()
}

#[test]
fn frame_stages_allocate_only_in_dependencies() {
    let model_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/efficientnet-lite0-int8.onnx");
    let model = Model::load(&model_path).unwrap();
    let mut pipeline = Pipeline::new(
        model,
        Scorer::new(ScorerKind::GradNorm),
        Gate::new(0.0),
        FrameLimits::default(),
    );
    let frames = frames();
    let debounce = DebounceConfig {
        enter: EnterRule::Consecutive { frames: 1 },
        leave_frames: 1,
    };
    let mut gate = DebouncedGate::new(debounce, 0.0).unwrap();

    // Warm up: first calls may initialize lazily (thread-locals, kernel selection).
    run_pass(&mut pipeline, &mut gate, &frames);
    let first = run_pass(&mut pipeline, &mut gate, &frames);
    let second = run_pass(&mut pipeline, &mut gate, &frames);
    eprintln!("frames per pass: {}", frames.len());
    eprintln!("{first:#?}");

    // gradgate's own stages: nothing.
    assert_eq!(first.read, Tally::default(), "reading the file allocated");
    assert_eq!(
        first.preprocess,
        Tally::default(),
        "preprocessing allocated"
    );
    assert_eq!(
        first.activations,
        Tally::default(),
        "feature copy, head or finiteness check allocated"
    );
    assert_eq!(
        first.decide,
        Tally::default(),
        "scoring or the gate allocated"
    );
    assert_eq!(
        first.debounce,
        Tally::default(),
        "the debounced gate allocated"
    );
    assert!(
        gate.event().is_some(),
        "no event opened, so opening was not counted"
    );

    // Decoders: the same work each pass.
    assert_eq!(
        first.decode, second.decode,
        "decoder allocations differ between passes"
    );
    // tract: the same allocations for every pass over the same frames.
    assert_eq!(
        first.backbone.allocations, second.backbone.allocations,
        "tract allocations differ between passes"
    );
}
