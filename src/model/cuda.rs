//! The CUDA backend: prepares the backbone with tract-cuda's runtime, and detects the cases
//! where the model must run on the CPU instead.
//!
//! tract-cuda (0.23.9) loads the CUDA driver, cudart, NVRTC, cuBLAS and cuDNN with dlopen
//! through cudarc, so a binary built with the `cuda` or `cuda-12` feature starts on machines
//! without CUDA. Its runtime is registered in tract under the name `cuda`. It applies
//! `CudaTransform`, which moves every node it has a kernel for to the GPU and wires
//! host↔device copies around the rest, then optimizes and plans the model. The first
//! preparation creates the CUDA context, which compiles tract's kernels with NVRTC and
//! caches the cubins under `$XDG_CACHE_HOME/tract/0.23.9/cuda/<API>/cubins`, or `~/.cache/…`.
//!
//! # Important notes
//! - Creating the CUDA context panics inside tract-cuda when it fails (for example when the
//!   CUDA headers NVRTC needs are missing). [`prepare`] catches that panic and reports it as
//!   [`CudaUnavailable::PrepareFailed`], so this needs `panic = "unwind"`, Rust's default.
//! - A failed context creation is not retried by this process: the model falls back to the CPU.

use super::backend::CudaUnavailable;
use std::sync::Arc;
use tract_onnx::prelude::*;

// Enabling both `cuda` and `cuda-12` is rejected by build.rs, before cudarc fails on it.

/// Checks that the CUDA driver and libraries load and that the driver finds a GPU, without
/// preparing a model.
///
/// Returns [`CudaUnavailable::NotBuilt`] in a build without the `cuda` or `cuda-12` feature
/// and [`CudaUnavailable::NotFound`] when the driver, a library or a GPU is missing. The
/// message names the library that failed to load, or the driver's error.
pub fn probe_cuda() -> Result<(), CudaUnavailable> {
    #[cfg(any(feature = "cuda", feature = "cuda-12"))]
    {
        // Loads libcuda without cudarc, calls cuInit and checks the driver's CUDA API version
        // against the one this build binds, then dlopens cudart, NVRTC, cuBLAS and cuDNN. Only
        // after this succeeds is it safe to let cudarc bind symbols, which panics otherwise.
        tract_cuda::utils::ensure_cuda_runtime_dependencies("no usable CUDA")
            .map_err(|err| CudaUnavailable::NotFound(one_line(&format!("{err:#}"))))
    }
    #[cfg(not(any(feature = "cuda", feature = "cuda-12")))]
    {
        Err(CudaUnavailable::NotBuilt)
    }
}

/// Prepares a decluttered, not yet optimized backbone on the GPU and returns its plan.
///
/// Call only after [`probe_cuda`] succeeded. Logs at info level how many nodes run on the GPU
/// and names, grouped by operator, the nodes that stay on the CPU.
pub(super) fn prepare(model: TypedModel) -> Result<Arc<TypedSimplePlan>, CudaUnavailable> {
    #[cfg(any(feature = "cuda", feature = "cuda-12"))]
    {
        gpu::prepare(model)
    }
    #[cfg(not(any(feature = "cuda", feature = "cuda-12")))]
    {
        drop(model);
        Err(CudaUnavailable::NotBuilt)
    }
}

/// Joins a message's lines and runs of spaces into one line: tract-cuda's messages span
/// several lines, and the fallback is reported on one log line.
#[cfg_attr(not(any(feature = "cuda", feature = "cuda-12")), allow(dead_code))]
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(any(feature = "cuda", feature = "cuda-12"))]
mod gpu {
    use super::{one_line, CudaUnavailable};
    use std::collections::BTreeMap;
    use std::panic::{AssertUnwindSafe, PanicHookInfo};
    use std::sync::{Arc, Mutex, PoisonError};
    use tract_gpu::fact::DeviceTypedFactExt;
    use tract_gpu::sync::DeviceSync;
    use tract_onnx::prelude::*;
    use tract_onnx::tract_core::ops::konst::Const;

    /// Node names listed per operator in the info log; the debug log lists all of them.
    const NAMES_LOGGED: usize = 5;

    pub(super) fn prepare(model: TypedModel) -> Result<Arc<TypedSimplePlan>, CudaUnavailable> {
        // NOTE: this function has not run on a GPU. It and `log_placement` follow tract-cuda
        // 0.23.9's source; only its failures before the CUDA context exists are tested.

        // The runtime is found through tract's registry. `Err` means its own dependency check
        // failed; `None` that the linker dropped tract-cuda's registration.
        let runtime = match runtime_for_name("cuda") {
            Ok(Some(runtime)) => runtime,
            Ok(None) => {
                return Err(CudaUnavailable::PrepareFailed(
                    "tract's runtime registry has no 'cuda' runtime in this binary".into(),
                ))
            }
            Err(err) => return Err(CudaUnavailable::NotFound(one_line(&format!("{err:#}")))),
        };

        let runnable = catch_panic(|| runtime.prepare(model))
            .map_err(|panic| {
                CudaUnavailable::PrepareFailed(one_line(&format!("tract-cuda panicked: {panic}")))
            })?
            .map_err(|err| CudaUnavailable::PrepareFailed(one_line(&format!("{err:#}"))))?;
        let plan = runnable.typed_plan().cloned().ok_or_else(|| {
            CudaUnavailable::PrepareFailed(
                "tract-cuda's runtime returned a runnable without a typed plan".into(),
            )
        })?;
        log_placement(plan.model());
        Ok(plan)
    }

    /// Logs how many compute nodes run on the GPU, how many host↔device copies the transform
    /// wired, and which nodes stay on the CPU, grouped by operator name.
    ///
    /// A node runs on the GPU when its outputs are device tensors. Sources, constants and the
    /// copies themselves are not counted as compute nodes.
    fn log_placement(model: &TypedModel) {
        let mut on_gpu = 0usize;
        let mut copies = 0usize;
        let mut on_cpu: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for node in model.nodes() {
            if model
                .input_outlets()
                .is_ok_and(|inputs| inputs.iter().any(|o| o.node == node.id))
                || node.op_is::<Const>()
            {
                continue;
            }
            if node.op_is::<DeviceSync>() {
                copies += 1;
            } else if node
                .outputs
                .iter()
                .any(|output| output.fact.as_device_fact().is_some())
            {
                on_gpu += 1;
            } else {
                on_cpu
                    .entry(node.op.name().to_string())
                    .or_default()
                    .push(&node.name);
            }
        }

        let cpu_count: usize = on_cpu.values().map(Vec::len).sum();
        log::info!(
            "CUDA backend: {on_gpu} of {} compute nodes on the GPU, {cpu_count} on the CPU, \
             {copies} host-device copies per frame",
            on_gpu + cpu_count
        );
        for (op, names) in &on_cpu {
            let first_names = names[..names.len().min(NAMES_LOGGED)].join(", ");
            let more = names.len().saturating_sub(NAMES_LOGGED);
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            log::info!("on the CPU: {} × {op}: {first_names}{tail}", names.len());
            log::debug!("on the CPU, all {op} nodes: {}", names.join(", "));
        }
    }

    type PanicHook = Box<dyn Fn(&PanicHookInfo<'_>) + Send + Sync + 'static>;

    /// Runs `f`, turning a panic on this thread into `Err(message)`.
    ///
    /// tract-cuda panics when the CUDA context cannot be created. While `f` runs, the panic
    /// hook prints nothing for this thread, so the fallback's log line is the only output.
    /// Panics on other threads still reach the previous hook.
    fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
        // Two calls swapping the process-wide hook at once could restore each other's silent
        // hook, so calls take turns. A panic in `f` is caught before the guard drops, so the
        // lock is not poisoned by it.
        static HOOK_SWAP: Mutex<()> = Mutex::new(());
        let _turn = HOOK_SWAP.lock().unwrap_or_else(PoisonError::into_inner);
        let this_thread = std::thread::current().id();
        let previous: Arc<PanicHook> = Arc::new(std::panic::take_hook());
        let forward = Arc::clone(&previous);
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().id() != this_thread {
                forward(info);
            }
        }));

        let result = std::panic::catch_unwind(AssertUnwindSafe(f));

        // Dropping the silent hook drops `forward`, so `previous` is unique again.
        drop(std::panic::take_hook());
        match Arc::try_unwrap(previous) {
            Ok(hook) => std::panic::set_hook(hook),
            Err(shared) => std::panic::set_hook(Box::new(move |info| shared(info))),
        }
        result.map_err(|payload| {
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panic without a message".to_owned())
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn catch_panic_returns_message() {
            let caught = catch_panic(|| -> u32 { panic!("no context: {}", 7) });
            assert_eq!(caught, Err("no context: 7".to_owned()));
        }

        #[test]
        fn catch_panic_passes_value() {
            assert_eq!(catch_panic(|| 5), Ok(5));
        }

        #[test]
        fn cuda_runtime_is_registered() {
            // Without CUDA its dependency check fails (Err); with a GPU it is returned. `None`
            // would mean the linker dropped tract-cuda's registration.
            let found = runtime_for_name("cuda");
            assert!(!matches!(found, Ok(None)), "no 'cuda' runtime registered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_joins_lines() {
        assert_eq!(
            one_line("CUDA driver too old.\nDriver library: libcuda.so.1\n  Found 12.2."),
            "CUDA driver too old. Driver library: libcuda.so.1 Found 12.2."
        );
    }

    #[cfg(not(any(feature = "cuda", feature = "cuda-12")))]
    #[test]
    fn probe_without_feature_is_not_built() {
        assert_eq!(probe_cuda(), Err(CudaUnavailable::NotBuilt));
    }

    #[cfg(any(feature = "cuda", feature = "cuda-12"))]
    #[test]
    fn probe_failure_is_not_found() {
        // A build with CUDA support never reports NotBuilt or PrepareFailed from the probe.
        // Where a GPU is present the probe succeeds and there is nothing to check.
        if let Err(err) = probe_cuda() {
            assert!(matches!(err, CudaUnavailable::NotFound(_)), "{err:?}");
            assert!(err.to_string().starts_with("no usable CUDA: "), "{err}");
        }
    }
}
