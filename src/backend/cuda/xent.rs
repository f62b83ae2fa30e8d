//! The fused shifted softmax-cross-entropy on the GPU: which kernel of kernels/xent.cu runs
//! a shape, with which launch, and the launch itself. The contract (loss, gradient, special
//! values, bad labels) is the CPU reference's, `backend/cpu/xent.rs`; the host emulator
//! mirrors the single-pass kernels' thread partition and reduction order (`emulator/xent.rs`).
//!
//! # Which kernel for which C
//!
//! "Vectorized" means float4 loads and stores: `C % 4 == 0` and `z`, `s`, `dz` 16-byte
//! aligned (every whole device buffer is; a view at an odd offset is not).
//!
//! | C                          | kernel                  | shape of the work                      |
//! | -------------------------- | ----------------------- | -------------------------------------- |
//! | vectorized, 4..=128        | `xent_group_vec_f32`    | `next_pow2(C/4)` lanes per row, one float4 each |
//! | vectorized, 129..=512      | `xent_warp_vec_f32`     | a warp per row, 2 or 4 float4 per lane |
//! | vectorized, 513..=1024     | `xent_warp_vec8_f32`    | a warp per row, 8 float4 per lane      |
//! | 1025..=32768, vectorized   | `xent_block_vec_f32`    | a block per row, row in registers + shared memory |
//! | 1025..=32768, otherwise    | `xent_block_scalar_f32` | the same with scalar loads             |
//! | scalar, 1..=32             | `xent_small_c_f32`      | `32/next_pow2(C)` rows per warp        |
//! | scalar, 33..=1024          | `xent_warp_row_f32`     | a warp per row, row in registers       |
//! | over 32768                 | `xent_block_row_f32`    | a block per row, two passes            |
//!
//! Why: every kernel but the last reads `z` and `s` once and writes `dz` once (3·N·C·4 bytes,
//! against 5–6·N·C·4 for the unfused chain), so the choice is about keeping a whole row in
//! registers with enough rows in flight. Small C, the usual MAT shape (2–10 classes), packs
//! several rows per warp so no lane idles; up to 1024 columns a warp holds a row in
//! registers; beyond that a block does, spilling half its chunks to shared memory because
//! all of them in registers (with `z` and `s` in flight) need about 96 registers, and at 64
//! ptxas spills. float4 loads are what make the first five reach the copy bandwidth;
//! without them (an odd C, a misaligned view) the scalar kernels stand in. Rows over 32768
//! columns do not fit a block's registers and shared memory, so the fallback re-reads each
//! row once (mostly from L2). The last three are also the *fallback* set that
//! [`CudaDevice::set_xent_fallback_kernels`](super::CudaDevice::set_xent_fallback_kernels)
//! forces, for benchmarks comparing the two.
//!
//! The block kernels' blocks are `clamp(next_pow2(ceil(C/32)), 64, 512)` threads with
//! 64 bytes of shared memory each, or 192 (96 KiB a block) above 16384 columns: 32 (or 64)
//! columns a thread.

use std::sync::atomic::Ordering;

use super::index::with_index_check;
use super::kernels::Kernel;
use super::launch::{self, Region};
use super::plan::{grid_stride_blocks, next_pow2, row_blocks, row_variant, RowVariant};
use super::storage::{mul, CudaStorage};
use super::CudaIndex;
use crate::backend::XentArgs;
use crate::error::{Error, Result};

/// A fused cross-entropy launch: kernel, grid, block and dynamic shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct XentPlan {
    pub kernel: Kernel,
    pub blocks: u32,
    pub block: u32,
    pub smem_bytes: u32,
}

impl XentPlan {
    pub(super) fn new(kernel: Kernel, blocks: u32, block: u32, smem_bytes: u32) -> XentPlan {
        XentPlan {
            kernel,
            blocks,
            block,
            smem_bytes,
        }
    }
}

/// Longest row of the single-pass kernels.
pub(super) const XENT_SINGLE_PASS_MAX: usize = 32768;
/// float4 chunks per thread of the block kernels (xent.cu): in registers, in shared memory,
/// and in shared memory for rows over `32 · blockDim.x` columns.
pub(super) const XENT_BLOCK_VR: usize = 4;
pub(super) const XENT_BLOCK_VS: usize = 4;
pub(super) const XENT_BLOCK_VS_LONG: usize = 12;
/// Columns per thread of the block kernels up to `32 · blockDim.x` columns.
const XENT_BLOCK_PER_THREAD: usize = 4 * (XENT_BLOCK_VR + XENT_BLOCK_VS);
/// Dynamic shared memory of the block kernels at 512 threads over 16384 columns.
pub(super) const XENT_BLOCK_MAX_SMEM: u32 = (512 * XENT_BLOCK_VS_LONG * 16) as u32;

/// The launch for `rows × cols` (the table above); `vectorizable`: `z`, `s`, `dz` 16-byte
/// aligned; `fallback_only`: keep to the last three kernels.
pub(super) fn xent_plan(
    rows: usize,
    cols: usize,
    vectorizable: bool,
    fallback_only: bool,
) -> XentPlan {
    let vec = vectorizable && cols.is_multiple_of(4) && cols > 0;
    let plan = XentPlan::new;
    let warp_rows = grid_stride_blocks(rows, 8);
    if !fallback_only {
        if vec && cols <= 128 {
            let blocks = grid_stride_blocks(rows, 8 * (32 / next_pow2(cols / 4)));
            return plan(Kernel::XentGroupVec, blocks, 256, 0);
        }
        if vec && cols <= 512 {
            return plan(Kernel::XentWarpVec, warp_rows, 256, 0);
        }
        if vec && cols <= 1024 {
            return plan(Kernel::XentWarpVec8, warp_rows, 256, 0);
        }
        if cols > 1024 && cols <= XENT_SINGLE_PASS_MAX {
            let block = next_pow2(cols.div_ceil(XENT_BLOCK_PER_THREAD)).clamp(64, 512);
            let smem_bytes = match cols <= XENT_BLOCK_PER_THREAD * block {
                true => (block * 4 * 16) as u32,
                false => XENT_BLOCK_MAX_SMEM,
            };
            let kernel = if vec {
                Kernel::XentBlockVec
            } else {
                Kernel::XentBlockScalar
            };
            return plan(
                kernel,
                grid_stride_blocks(rows, 1),
                block as u32,
                smem_bytes,
            );
        }
    }
    let kernel = match row_variant(cols) {
        RowVariant::SmallC => Kernel::XentSmallC,
        RowVariant::WarpRow => Kernel::XentWarpRow,
        RowVariant::BlockRow => Kernel::XentBlockRow,
    };
    plan(kernel, row_blocks(rows, cols, 1), 256, 0)
}

/// [`BackendStorage::xent`](crate::backend::BackendStorage::xent) on the device: one launch
/// of the planned kernel, the labels checked as every index is ([`with_index_check`]).
pub(super) fn xent(
    z: &CudaStorage,
    a: XentArgs<'_, CudaStorage, CudaIndex>,
) -> Result<(CudaStorage, Option<CudaStorage>)> {
    for t in a.shift.into_iter().chain(a.weights) {
        t.check_device(&z.dev, "shifted_cross_entropy")?;
    }
    let (rows, cols) = (a.rows, a.cols);
    let loss = z.dev.output(rows)?;
    let grad = match a.write_grad {
        true => Some(z.dev.output(mul(rows, cols)?)?),
        false => None,
    };
    let region = |t: Option<&CudaStorage>| t.map_or(Region::NULL, CudaStorage::region);
    let (zr, s, w, dz) = (
        z.region(),
        region(a.shift),
        region(a.weights),
        region(grad.as_ref()),
    );
    // Whole device buffers are 256-byte aligned; checked anyway, as the float4 kernels need it.
    let aligned = [zr, s, dz].iter().all(|r| r.addr.is_multiple_of(16));
    let fallback_only = z.inner().xent_fallback.load(Ordering::Relaxed);
    let plan = xent_plan(rows, cols, aligned, fallback_only);
    let err = |row: usize, label: u32| Error::LabelOutOfRange {
        op: "shifted_cross_entropy",
        row,
        label,
        classes: cols,
    };
    with_index_check(&z.dev, a.labels, (rows, cols), err, |bad| {
        let bufs = [zr, s, a.labels.region(), w, loss.region(), dz, bad];
        launch::xent(z.inner(), &plan, bufs, (rows, cols), a.grad_scale)
    })?;
    Ok((loss, grad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::CudaDevice;
    use Kernel::*;

    #[test]
    fn plans_pick_the_single_pass_kernels_by_shape() {
        let pick = |rows, cols, vec| xent_plan(rows, cols, vec, false);
        // Vectorized small rows: 16 columns = 4 float4 = 4 lanes per row, 64 rows per block.
        let expect = XentPlan::new;
        assert_eq!(pick(1 << 22, 16, true), expect(XentGroupVec, 65535, 256, 0));
        assert_eq!(pick(1000, 4, true).blocks, 4); // 1 lane per row: 256 rows per block
        assert_eq!(pick(1000, 128, true).blocks, 125); // a warp per row
        assert_eq!(pick(33, 132, true).kernel, XentWarpVec);
        assert_eq!(pick(33, 512, true).kernel, XentWarpVec);
        assert_eq!(pick(65536, 1024, true).kernel, XentWarpVec8);
        assert_eq!(pick(65536, 1024, true).blocks, 8192);
        assert_eq!(pick(1000, 1000, true).kernel, XentWarpVec8);
        // Block per row: 32 columns per thread, half of them in 64 bytes of shared memory.
        assert_eq!(pick(7, 1028, true), expect(XentBlockVec, 7, 64, 4096));
        assert_eq!(pick(7, 8192, true).block, 256);
        assert_eq!(pick(7, 16384, false).smem_bytes, 32768);
        // Above 16384 columns: 512 threads with the long stash.
        let long = expect(XentBlockVec, 2048, 512, XENT_BLOCK_MAX_SMEM);
        assert_eq!(pick(2048, 32768, true), long);
        assert_eq!(pick(100_000, 16388, true).blocks, 65535);
        // Not vectorizable (cols % 4 != 0, or a misaligned buffer): scalar kernels.
        for (cols, kernel) in [
            (2, XentSmallC),
            (3, XentSmallC),
            (10, XentSmallC),
            (16, XentSmallC),
            (1001, XentWarpRow),
            (1000, XentWarpRow),
            (1025, XentBlockScalar),
            (32767, XentBlockScalar),
            (32768, XentBlockScalar),
        ] {
            let vec = cols % 4 == 0 && cols != 16 && cols != 1000 && cols != 32768;
            assert_eq!(pick(31, cols, vec).kernel, kernel, "cols {cols}");
        }
        assert_eq!(pick(31, 10, false).blocks, row_blocks(31, 10, 1));
        // Longer rows than the single-pass kernels hold: two passes.
        assert_eq!(pick(3, 32772, true).kernel, XentBlockRow);
        assert_eq!(pick(3, 40000, true).blocks, 3);
        // The fallback kernels on request, at the same shapes.
        assert_eq!(xent_plan(1 << 22, 16, true, true).kernel, XentSmallC);
        assert_eq!(xent_plan(65536, 1024, true, true).kernel, XentWarpRow);
        assert_eq!(xent_plan(2048, 32768, true, true).kernel, XentBlockRow);
        // Shared memory never exceeds what the kernels' attribute allows.
        for cols in (1025..=32768).step_by(97) {
            let p = pick(1, cols, true);
            assert!(p.smem_bytes <= XENT_BLOCK_MAX_SMEM && p.smem_bytes > 0);
            let per_thread = if p.smem_bytes == XENT_BLOCK_MAX_SMEM {
                64
            } else {
                32
            };
            let held = p.block as usize * per_thread;
            assert!(held >= cols, "{cols} columns, {held} held");
        }
    }

    #[test]
    fn fallback_grids_match_the_kernel_readme() {
        // small C: 8 warps × 32/next_pow2(C) rows per block.
        assert_eq!(row_blocks(256, 10, 1), 16); // 16 lanes per row: 2 rows per warp
        assert_eq!(row_blocks(256, 2, 1), 2); // 2 lanes per row: 128 rows per block
        assert_eq!(row_blocks(1 << 22, 16, 1), 65535);
        assert_eq!(row_blocks(65537, 1000, 1), 8193);
        assert_eq!(row_blocks(2048, 32768, 1), 2048);
    }

    #[test]
    fn misaligned_rows_take_the_scalar_kernels() {
        let dev = CudaDevice::emulated().expect("the emulator needs no driver");
        let (rows, cols) = (3, 8);
        let data: Vec<f32> = (0..rows * cols + 1).map(|i| (i % 7) as f32 * 0.5).collect();
        let z = dev.storage_from_host(&data).unwrap();
        let y = dev.index_from_host(&[1, 7, 0]).unwrap();
        let shifted = z.region().offset(1).unwrap();
        let run = |kernel: Kernel, z: Region| -> Result<Vec<f32>> {
            let loss = dev.output(rows)?;
            let plan = XentPlan::new(kernel, 1, 256, 0);
            let null = Region::NULL;
            let bufs = [z, null, y.region(), null, loss.region(), null, null];
            launch::xent(&dev.inner, &plan, bufs, (rows, cols), 1.0)?;
            crate::backend::BackendStorage::to_host(&loss)
        };
        // Rows 4 bytes past a 16-byte boundary: the float4 kernels refuse them…
        for kernel in [XentGroupVec, XentBlockVec] {
            let err = run(kernel, shifted).unwrap_err();
            assert!(err.to_string().contains("16-byte aligned"), "{err}");
        }
        // …the plan sends them to the scalar kernels, which agree with the float4 kernel on
        // an aligned copy.
        assert_eq!(xent_plan(rows, cols, false, false).kernel, XentSmallC);
        let aligned = dev.storage_from_host(&data[1..]).unwrap();
        let scalar = run(XentSmallC, shifted).unwrap();
        let vector = run(XentGroupVec, aligned.region()).unwrap();
        for (a, b) in scalar.iter().zip(&vector) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{scalar:?} vs {vector:?}"
            );
        }
    }
}
