//! Per-stage cost of the frame path on the bundled EfficientNet-Lite0 (C = 1000, D = 1280).
//!
//! `cargo bench --bench pipeline` runs every group; a filter picks some, e.g.
//! `cargo bench --bench pipeline -- score/`. Compare stages within one run: absolute times
//! on a shared machine drift between runs, ratios much less.
//!
//! Groups:
//! - `score/NAME`: each detector alone on the cached activations of a real frame, closed-form
//!   and fitted (with the bundled statistics of the fp32 model).
//! - `head`: `W·h + b`, `‖h‖₁` and the finiteness checks.
//! - `frame-stages/…`: reading and decoding the JPEG, preprocessing.
//! - `frame/MODEL/Nt`: the whole frame (read, decode, preprocess, infer, head, score, gate)
//!   for each bundled model variant on 1 and 2 threads.

use criterion::{criterion_group, criterion_main, Criterion};
use gradgate::frame::FrameLimits;
use gradgate::score::fitted::{FittedKind, FittedScorer, StatsFile};
use gradgate::{Gate, Model, Pipeline, Scorer, ScorerKind};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use tract_linalg::multithread::{multithread_tract_scope, Executor};

const IMAGE: &str = "tests/data/id/espresso-cup.jpg";
const MODELS: [(&str, &str); 2] = [
    ("fp32", "models/efficientnet-lite0-fp32.onnx"),
    ("int8", "models/efficientnet-lite0-int8.onnx"),
];
const THREADS: [usize; 2] = [1, 2];

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
    let mut fp32 = pipeline(MODELS[0].1);

    // The scoring core: each detector on the cached activations of one real frame.
    let mut group = c.benchmark_group("score");
    for kind in ScorerKind::ALL {
        let scorer = Scorer::new(kind);
        group.bench_function(kind.name(), |b| {
            b.iter(|| black_box(scorer.score(black_box(fp32.activations()))))
        });
    }
    let stats = StatsFile::load(&repo("models/efficientnet-lite0-fp32.stats.json")).unwrap();
    let head = fp32.model().head().clone();
    for kind in FittedKind::ALL {
        let Some(detector_stats) = stats.detector(kind) else {
            continue;
        };
        let mut scorer = FittedScorer::new(detector_stats.clone(), &head).unwrap();
        group.bench_function(kind.name(), |b| {
            b.iter(|| black_box(scorer.score(black_box(fp32.activations()), &head)))
        });
    }
    group.finish();

    // Head (W·h + b, 1000 × 1280), ‖h‖₁ and the finiteness checks.
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
    for (name, path) in MODELS {
        let mut pipeline = pipeline(path);
        for threads in THREADS {
            let executor = match threads {
                1 => Executor::SingleThread,
                n => Executor::multithread(n),
            };
            group.bench_function(format!("{name}/{threads}t"), |b| {
                multithread_tract_scope(executor.clone(), || {
                    b.iter(|| pipeline.step(&repo(IMAGE)).unwrap())
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
