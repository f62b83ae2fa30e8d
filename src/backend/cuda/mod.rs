//! The CUDA backend: device buffers, our own PTX kernels (kernels/README.md) and the launches
//! that implement every [`BackendStorage`](super::BackendStorage) primitive, through cudarc's
//! driver API loaded at run time (a build needs no CUDA installation; a machine without a
//! driver gets an error from [`CudaDevice::new`], never a panic).
//!
//! Reading order:
//! - `device.rs`: contexts, module loading, device memory and its pool (the driver's memory
//!   calls, each `unsafe` with its `// SAFETY:` argument);
//! - `storage.rs`: [`CudaStorage`] and the `BackendStorage` implementation;
//! - `index.rs`: [`CudaIndex`] and the one index check every indexed op goes through;
//! - `plan.rs`: which variant and grid each op uses, from the shape alone;
//! - `xent.rs`: the fused cross-entropy: its kernel-selection table, plan and launch;
//! - `kernels.rs`: the embedded PTX and the table of kernels with their parameter lists;
//! - `launch.rs`: every kernel launch, from that table (the other `unsafe` calls);
//! - `emulator/`: the host emulator of the kernels, for running all of this without a GPU.
//!
//! # Memory
//!
//! Storage is contiguous row-major f32 (indices u32). Host↔device copies happen only in
//! [`CudaDevice::storage_from_host`], [`CudaDevice::index_from_host`] and `to_host`. Each op
//! reads its inputs once and writes its output once, except the documented second passes
//! (block-row softmax re-reads its row, and so does the fused cross-entropy's fallback for
//! rows over 32768 columns).
//!
//! # Kernel choice and determinism
//!
//! Variants and grids are chosen from the shape alone, never from the device, so every GPU
//! runs the same reduction trees: results are bitwise reproducible run to run and GPU to GPU
//! (except `index_add_rows` with repeated indices, whose atomic adds may round in any
//! order). GPU and CPU agree to rounding: reductions and GEMM sum in other orders, the
//! transcendental functions are CUDA's, `affine` is one fused multiply-add, and Adam follows
//! `optim.cu` (`m = β1·m + (1-β1)·g` with `1-β` rounded in f32, PyTorch's formula up to
//! rounding). Special values: `max`, `maximum` and `relu` propagate NaN and `argmax` counts
//! NaN as the largest value (PyTorch's conventions), where the CPU backend ignores NaN.

mod device;
mod emulator;
mod index;
mod kernels;
mod launch;
mod plan;
mod storage;
mod xent;

pub use device::CudaDevice;
pub use index::CudaIndex;
pub use storage::CudaStorage;
