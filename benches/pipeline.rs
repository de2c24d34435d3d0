//! Per-stage cost of the frame path on the bundled EfficientNet-Lite0 (C = 1000, D = 1280).
//!
//! Run with `cargo bench --bench pipeline`. Compare stages within one run: absolute times on a
//! shared machine drift between runs, ratios much less.

use criterion::{criterion_group, criterion_main, Criterion};
use gradgate::frame::FrameLimits;
use gradgate::{Gate, Model, Pipeline, Scorer, ScorerKind};
use std::hint::black_box;
use std::path::{Path, PathBuf};

const IMAGE: &str = "tests/data/id/espresso-cup.jpg";

fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn pipeline(model: &str) -> Pipeline {
    let model = Model::load(&repo(model)).unwrap();
    let mut pipeline = Pipeline::new(
        model,
        Scorer::new(ScorerKind::GradNorm),
        Gate::new(0.0),
        FrameLimits::default(),
    );
    pipeline.step(&repo(IMAGE)).unwrap();
    pipeline
}

fn stages(c: &mut Criterion) {
    let mut fp32 = pipeline("models/efficientnet-lite0-fp32.onnx");

    // Scoring from cached activations, per scorer.
    let mut group = c.benchmark_group("score");
    for kind in ScorerKind::ALL {
        let scorer = Scorer::new(kind);
        group.bench_function(kind.name(), |b| {
            b.iter(|| black_box(scorer.score(black_box(fp32.activations()))))
        });
    }
    group.finish();

    // Head (W·h + b, 1000 × 1280), ‖h‖₁ and the finiteness checks.
    let head = fp32.model().head().clone();
    let mut activations = fp32.activations().clone();
    c.bench_function("head", |b| {
        b.iter(|| activations.finish(black_box(&head)).unwrap())
    });

    let mut group = c.benchmark_group("frame-stages");
    group.bench_function("read+decode", |b| {
        b.iter(|| fp32.load_file(&repo(IMAGE)).unwrap())
    });
    group.bench_function("preprocess", |b| b.iter(|| fp32.preprocess()));
    group.finish();

    // Whole frames: read, decode, preprocess, infer, head, score, decide.
    let mut group = c.benchmark_group("frame");
    group.sample_size(20);
    group.bench_function("fp32", |b| b.iter(|| fp32.step(&repo(IMAGE)).unwrap()));
    let mut int8 = pipeline("models/efficientnet-lite0-int8.onnx");
    group.bench_function("int8", |b| b.iter(|| int8.step(&repo(IMAGE)).unwrap()));
    group.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
