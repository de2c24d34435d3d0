//! Rejects enabling both CUDA features before any crate compiles against them.
//!
//! `cuda` binds cudarc to the CUDA 13.0 API and `cuda-12` to the CUDA 12.2 API. With both,
//! cudarc 0.19 compiles both sets of bindings into one module and fails with over a thousand
//! errors, and cargo builds it before this crate, so a `compile_error!` here would never show.
//! A build script runs early, in parallel with the dependencies.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let cuda_13 = std::env::var_os("CARGO_FEATURE_CUDA").is_some();
    let cuda_12 = std::env::var_os("CARGO_FEATURE_CUDA_12").is_some();
    if cuda_13 && cuda_12 {
        eprintln!(
            "error: features `cuda` (CUDA 13.0 API) and `cuda-12` (CUDA 12.2 API, JetPack 6) are \
             mutually exclusive; enable only one. cudarc would bind both CUDA APIs at once and \
             fail to compile with errors such as \"the name `cudaDataType_t` is defined \
             multiple times\"."
        );
        std::process::exit(1);
    }
}
