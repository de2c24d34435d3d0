//! Heap allocations of the fitted detectors' per-frame path, counted through a global
//! allocator: `FittedScorer::score` must allocate nothing after `FittedScorer::new`.
//!
//! This file contains one test so that no other test thread allocates while it counts.

use gradgate::score::fitted::{fit, FitParams, FittedKind, FittedScorer};
use gradgate::{Activations, Head};
use serde_json::Value;
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

struct CountingAllocator;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to the system allocator with the same arguments; the
// counter is an atomic and never affects the returned memory.
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

fn rows(value: &Value) -> Vec<Vec<f32>> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

#[test]
fn fitted_scores_allocate_nothing() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/detectors.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let weights = rows(&fixture["weights"]).concat();
    let bias: Vec<f32> = fixture["bias"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let dim = fixture["feature_dim"].as_u64().unwrap() as usize;
    let head = Head::from_row_major(&weights, &bias, dim).unwrap();

    let fit_set = rows(&fixture["fit_sets"]["large"]);
    let fit_slices: Vec<&[f32]> = fit_set.iter().map(Vec::as_slice).collect();
    let frames: Vec<Activations> = rows(&fixture["test_features"])
        .iter()
        .map(|h| {
            let mut act = Activations::new(&head);
            act.features_mut().copy_from_slice(h);
            act.finish(&head).unwrap();
            act
        })
        .collect();

    for kind in FittedKind::ALL {
        let stats = fit(kind, &head, &fit_slices, &FitParams::default()).unwrap();
        let mut scorer = FittedScorer::new(stats, &head).unwrap();
        // Warm up: first calls may initialize lazily.
        for act in &frames {
            scorer.score(act, &head);
        }

        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let mut finite = 0usize;
        for _ in 0..3 {
            for act in &frames {
                finite += usize::from(scorer.score(act, &head).is_finite());
            }
        }
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;

        assert_eq!(allocations, 0, "{kind}: score allocated");
        assert_eq!(finite, 3 * frames.len(), "{kind}: a score is not finite");
    }
}
